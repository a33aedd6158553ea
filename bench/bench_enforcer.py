"""Benchmark: putting addresses into nftables block sets, govern's netlink fast path vs the nft CLI.

    .venv/bin/python bench/bench_enforcer.py [--elements 100000] [--singles 200] [--forks 300] [--reps 3]

Needs root. Everything happens in a throwaway network namespace (tests/netns.py names, removed at the end, also on
failure); the root namespace's firewall is never touched. Addresses come from 198.18.0.0/15 (shared/LAB.md), in a
fixed pseudo-random order, each with a 1 h timeout. Side by side in one run:

1. bulk: NftNetlink.commit() of N block4 elements in one transaction into an empty interval set -> elements/s
2. one: commit() of one new address into the set already holding N elements, `--singles` times -> median latency
   (also into a 10k-element interval set and into an N-element hash set, for context)
3. fail2ban's way: one `nft add element` process per address, `--forks` addresses into an empty set of an
   otherwise empty table -> rate and per-address latency; and a few into the N-element set
4. libnftables: one `nft -f FILE` batch of the same N elements into an empty set (table otherwise empty)
5. dump: NftNetlink.dump_set() of the N-element set

Bulk, nft -f and dump are repeated `--reps` times (the set emptied in between) and medians reported.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import machine  # noqa: E402
from govern.addr import Prefix  # noqa: E402
from govern.nft.netlink import ElemOp, NftNetlink  # noqa: E402
from tests.netns import Netns, new_name, sh  # noqa: E402

TIMEOUT_MS = 3_600_000
IV = frozenset({"block4", "small4", "nft4", "fork4"})
TABLE = """
table inet govern {
    set block4 { type ipv4_addr; flags interval,timeout; }
    set small4 { type ipv4_addr; flags interval,timeout; }
    set hash4 { type ipv4_addr; flags timeout; }
    set nft4 { type ipv4_addr; flags interval,timeout; }
    set fork4 { type ipv4_addr; flags interval,timeout; }
}
"""
BASE = Prefix.parse("198.18.0.0").value
SPAN = 1 << 17  # 198.18.0.0/15


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms" if seconds < 0.01 else f"{seconds * 1000:.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--elements", type=int, default=100_000)
    ap.add_argument("--singles", type=int, default=200)
    ap.add_argument("--forks", type=int, default=300)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_enforcer: needs root (network namespaces)")
    n = args.elements
    if n + args.singles * 2 + args.forks > SPAN:
        sys.exit(f"bench_enforcer: 198.18.0.0/15 holds {SPAN} addresses, not enough for --elements {n}")

    print(f"machine: {machine()}")
    print(f"command: {' '.join(['.venv/bin/python', *sys.argv])}")
    order = random.Random(25).sample(range(SPAN), n + args.singles * 2 + args.forks)
    bulk = [Prefix(4, BASE + i, 32) for i in order[:n]]
    singles = [Prefix(4, BASE + i, 32) for i in order[n : n + args.singles * 2]]
    forked = [Prefix(4, BASE + i, 32) for i in order[n + args.singles * 2 :]]

    ns = Netns(new_name("bench"))
    sh("ip", "netns", "add", ns.name)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "table.nft"
            path.write_text(TABLE)
            ns.sh("nft", "-f", str(path))
            with ns.entered():
                nl = NftNetlink()
            with nl:
                results = run(ns, nl, args, bulk, singles, forked, Path(tmp))
    finally:
        sh("ip", "netns", "del", ns.name, check=False)
    report(results, n)


def run(
    ns: Netns,
    nl: NftNetlink,
    args: argparse.Namespace,
    bulk: list[Prefix],
    singles: list[Prefix],
    forked: list[Prefix],
    tmp: Path,
) -> dict[str, float]:
    n = len(bulk)
    r: dict[str, float] = {}

    def flush(set_name: str) -> None:
        ns.sh("nft", "flush", "set", "inet", "govern", set_name)

    # The nft CLI reads every set of the table into its cache before it adds anything, so it is measured first,
    # while the table is otherwise empty (as the DESIGN anchors were), and its set is emptied afterwards.

    # 4. one libnftables batch
    batch = tmp / "batch.nft"
    lines = ["add element inet govern nft4 {"]
    lines += [f"  {p} timeout 1h," for p in bulk]
    lines.append("}")
    batch.write_text("\n".join(lines) + "\n")
    times = []
    for _ in range(args.reps):
        times.append(timed(lambda: ns.sh("nft", "-f", str(batch), timeout=600)))
        flush("nft4")
    r["nft_batch_s"] = statistics.median(times)
    print(f"4. nft -f batch of {n}: {', '.join(f'{t:.3f} s' for t in times)}")

    # 3. one nft process per address (run directly in the namespace: this thread's netns is inherited)
    def fork_nft(set_name: str, p: Prefix) -> None:
        subprocess.run(
            ["nft", "add", "element", "inet", "govern", set_name, f"{{ {p} timeout 1h }}"], check=True, timeout=120
        )

    with ns.entered():
        t0 = time.perf_counter()
        each = [timed(functools.partial(fork_nft, "fork4", p)) for p in forked]
        total = time.perf_counter() - t0
    r["fork_rate"] = len(forked) / total
    r["fork_s"] = statistics.median(each)
    print(f"3. nft per address: {r['fork_rate']:.0f}/s, median {ms(r['fork_s'])} each into an empty set")

    # 1. bulk commit
    ops = [ElemOp(True, "block4", p, TIMEOUT_MS) for p in bulk]
    times = []
    for rep in range(args.reps):
        if rep:
            flush("block4")
        times.append(timed(lambda: nl.commit(ops, interval_sets=IV)))
    r["bulk_s"] = statistics.median(times)
    print(f"1. bulk commit of {n}: {', '.join(f'{t:.3f} s' for t in times)}")

    # 3b. nft per address into the full set
    with ns.entered():
        few = [timed(functools.partial(fork_nft, "block4", p)) for p in singles[args.singles : args.singles + 5]]
    r["fork_full_s"] = statistics.median(few)
    print(f"3b. nft per address into the {n}-element set: median {ms(r['fork_full_s'])} each")

    # 2. one address into the full set (and, for context, into a 10k interval set and a full hash set)
    def singles_into(set_name: str, prefixes: list[Prefix]) -> list[float]:
        return [
            timed(functools.partial(nl.commit, [ElemOp(True, set_name, p, TIMEOUT_MS)], interval_sets=IV))
            for p in prefixes
        ]

    one = singles_into("block4", singles[: args.singles])
    r["one_s"], r["one_p90_s"] = statistics.median(one), statistics.quantiles(one, n=10)[-1]
    nl.commit([ElemOp(True, "small4", p, TIMEOUT_MS) for p in bulk[:10_000]], interval_sets=IV)
    r["one_10k_s"] = statistics.median(singles_into("small4", singles[: args.singles]))
    nl.commit([ElemOp(True, "hash4", p, TIMEOUT_MS) for p in bulk], interval_sets=IV)
    r["one_hash_s"] = statistics.median(singles_into("hash4", singles[args.singles :]))
    print(f"2. one address: median {ms(r['one_s'])} (p90 {ms(r['one_p90_s'])}) into {n};", end=" ")
    print(f"{ms(r['one_10k_s'])} into 10k; {ms(r['one_hash_s'])} into a {n}-element hash set")

    # 5. dump
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        got = nl.dump_set("block4")
        times.append(time.perf_counter() - t0)
    assert len(got) == n + args.singles + 5, len(got)
    r["dump_s"] = statistics.median(times)
    print(f"5. dump_set of {len(got)}: {', '.join(f'{t:.3f} s' for t in times)}")
    return r


def report(r: dict[str, float], n: int) -> None:
    bulk_rate = n / r["bulk_s"]
    nft_rate = n / r["nft_batch_s"]
    rows = [
        (f"bulk add {n:,} (one transaction)", f"{bulk_rate:,.0f} elements/s", ">= 200,000/s",
         f"{bulk_rate / nft_rate:.1f}x nft -f, {bulk_rate / r['fork_rate']:.0f}x nft per address"),
        (f"add one address, set holds {n:,}", f"{ms(r['one_s'])} (p90 {ms(r['one_p90_s'])})", "<= 1 ms, no fork",
         f"{r['fork_full_s'] / r['one_s']:.0f}x faster than nft per address ({ms(r['fork_full_s'])})"),
        ("add one address, set holds 10,000", ms(r["one_10k_s"]), "", ""),
        (f"add one address, hash set holds {n:,}", ms(r["one_hash_s"]), "", "no interval flag"),
        ("nft per address (fail2ban's way), empty set", f"{r['fork_rate']:,.0f}/s, {ms(r['fork_s'])} each", "", "fork"),
        (f"nft -f batch of {n:,} (libnftables)", f"{nft_rate:,.0f} elements/s", "", "reference"),
        (f"dump_set of {n:,}", f"{r['dump_s']:.2f} s", "well under 2 s", ""),
    ]  # fmt: skip
    print("\n| what | measured (median) | target | comparison |")
    print("|---|---:|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
