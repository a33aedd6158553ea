"""Benchmark: putting addresses into nftables block sets, govern's netlink fast path vs the nft CLI.

    .venv/bin/python bench/bench_enforcer.py [--elements 100000] [--singles 200] [--forks 300] [--reps 3]
    .venv/bin/python bench/bench_enforcer.py --sizes 1000 10000 100000 1000000 [--forks 300] [--reps 3] [--split 10]

Needs root. Everything happens in a throwaway network namespace (tests/netns.py names, removed at the end, also on
failure); the root namespace's firewall is never touched. Addresses come from 198.18.0.0/15 (docs/testing.md), in a
fixed pseudo-random order, each with a 1 h timeout. Side by side in one run:

1. bulk: NftNetlink.commit() of N block4 elements in one transaction into an empty interval set -> elements/s
2. one: commit() of one new address into the set already holding N elements, `--singles` times -> median latency
   (also into a 10k-element interval set and into an N-element hash set, for context)
3. fail2ban's way: one `nft add element` process per address, `--forks` addresses into an empty set of an
   otherwise empty table -> rate and per-address latency; and a few into the N-element set
4. libnftables: one `nft -f FILE` batch of the same N elements into an empty set (table otherwise empty)
5. dump: NftNetlink.dump_set() of the N-element set

Bulk, nft -f and dump are repeated `--reps` times (the set emptied in between) and medians reported.

With `--sizes`, a size sweep runs instead, in a namespace of its own (table `inet govern` with one interval set
per family, recreated empty before every measurement, so the nft CLI never sees other elements):
- NftNetlink.commit() of N elements as ONE transaction into the empty set, `--reps` times: IPv4 hosts from
  198.18.0.0/15 where N fits (it holds 131,072), and IPv6 at every size (random /128s in 2001:db8:bad::/48: the
  /48 holds only 65,536 /64s; start/end elements are encoded and stored alike for any prefix length). Also timed:
  encoding the batch alone (userspace's share), and its size (the send buffer is grown to hold it);
- at the largest size, the same elements as `--split` transactions of N/split each, one after the other;
- one `nft -f` batch of the same N elements (libnftables), once for N above 100,000 (it takes ~20 s and 1.5 GB
  at 1M);
- the nft CLI, one process per address, `--forks` addresses into the empty IPv4 set (fail2ban's way).

With `--ipset`, one block through the iptables+ipset backend (`IptBackend.apply`: ipset's netlink messages,
govern/ipt/netlink.py) into its block set holding nothing, then each of `--sizes` (default 100,000 and 1,000,000)
IPv4 hosts, `--reps` (30) times each.

With `--base OTHER_TREE`, govern's whole nftables backend of two trees side by side instead (before/after a change
to its sets), each a worker process importing govern from its own tree, in a namespace of its own, driven
round-robin (the order alternating) so that whatever else runs on the machine hits both alike:

    .venv/bin/python bench/bench_enforcer.py --base /path/to/other/tree [--sizes 100000 1000000] [--reps 40]

`NftBackend.setup` on the default config, then for each size: as many IPv4 hosts and as many IPv6 /64s (the
default source group) in one `NftNetlink.commit` each, into the sets the tree's backend puts them in (bulk, timed:
elements/s), `--reps` plans of one new IPv4 host and of one new /64 each through `NftBackend.apply` (median, p90),
one plan of 10,000 new hosts through `apply` (the daemon's path for a flood's tick), and the per-tick check
(`NftBackend.changed`), alone and right after another process's transaction. Hosts come from 10.0.0.0/8 and /64s
from 2001:db8::/32 in a scrambled order; every block has a 1 h timeout.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# A worker (--base) imports govern, and everything else, from the tree it measures.
sys.path.insert(0, sys.argv[2] if sys.argv[1:2] == ["--worker"] else str(ROOT))

from bench.machine import machine  # noqa: E402
from govern.addr import Prefix  # noqa: E402
from govern.nft.netlink import NFPROTO_INET, ElemOp, NftNetlink, encode_commit  # noqa: E402
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
BASE6 = Prefix.parse("2001:db8:bad::").value
SWEEP_TABLE = """
table inet govern {
    set sweep4 { type ipv4_addr; flags interval,timeout; }
    set sweep6 { type ipv6_addr; flags interval,timeout; }
}
"""
SWEEP_IV = frozenset({"sweep4", "sweep6"})


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms" if seconds < 0.01 else f"{seconds * 1000:.1f} ms"


# --- two trees side by side (--base) -------------------------------------------------------------------------

HOSTS4 = Prefix.parse("10.0.0.0/8")
NETS6 = Prefix.parse("2001:db8::/32")


def scrambled(version: int, i: int) -> Prefix:
    """The i-th block of a family, in an order far from the keys' (a bijection of the range: odd multiplier)."""
    if version == 4:
        return Prefix(4, HOSTS4.value + (i * 2654435761) % (1 << 24), 32)
    return Prefix(6, NETS6.value + (((i * 2654435761) % (1 << 32)) << 64), 64)


def worker(root: str) -> None:
    """Answer each command line on stdin with the ms it took, using the nftables backend of the tree at `root`."""
    import govern

    if not (govern.__file__ or "").startswith(root):
        raise SystemExit(f"govern from {govern.__file__}, not {root}")
    from govern import config as gconfig
    from govern.model import Action, ActionKind, Plan, State
    from govern.nft import ruleset
    from govern.nft.backend import NftBackend
    from govern.nft.ruleset import INTERVAL_SETS

    def home(kind: str, p: Prefix) -> str:
        part = getattr(ruleset, "part", None)  # trees before the split: one set per kind and family
        return str(part(kind, p)) if part else f"{kind}{p.version}"

    spec = gconfig.from_mapping({}).firewall()
    backend = NftBackend()
    made = {4: 0, 6: 0}

    def blocks(version: int, n: int) -> tuple[Plan, float]:
        now = time.time()
        first, made[version] = made[version], made[version] + n
        acts = (
            Action(ActionKind.BLOCK, scrambled(version, i), "bench", until=now + 3600) for i in range(first, first + n)
        )
        return Plan(tuple(acts)), now

    def run(cmd: str, arg: int) -> float:
        if cmd == "setup":
            t0 = time.perf_counter()
            backend.setup(spec, [], State(), time.time())
            return time.perf_counter() - t0
        if cmd == "add":  # arg: version; one block
            plan, now = blocks(arg, 1)
        elif cmd in ("bulk4", "bulk6"):
            plan, now = blocks(int(cmd[-1]), arg)
        elif cmd in ("commit4", "commit6"):  # NftNetlink alone, into the set the tree's backend would choose
            plan, _now = blocks(int(cmd[-1]), arg)
            ops = [ElemOp(True, home("block", a.prefix), a.prefix, 3_600_000) for a in plan.actions]
            t0 = time.perf_counter()
            backend.nl.commit(ops, interval_sets=INTERVAL_SETS)
            return time.perf_counter() - t0
        elif cmd == "check":
            t0 = time.perf_counter()
            if backend.changed() is not None:
                raise SystemExit("the table changed under the bench")
            return time.perf_counter() - t0
        elif cmd == "foreign":  # someone else's transaction (another table): the next check lists the table
            backend.nft.run("add table inet bench_foreign\ndelete table inet bench_foreign\n")
            return 0.0
        else:
            raise SystemExit(f"unknown command {cmd}")
        t0 = time.perf_counter()
        backend.apply(plan, now)
        return time.perf_counter() - t0

    print("ready", govern.__file__, flush=True)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        print(f"{run(cmd, int(arg or 0)) * 1000:.4f}", flush=True)


class Side:
    """One tree's worker process, in a namespace of its own (removed with it)."""

    def __init__(self, name: str, root: Path) -> None:
        # Here, not at the top: a worker process runs this file with the other tree first on its path.
        from bench.worker import Worker

        self.name = name
        self.ns = Netns(new_name(f"ab{name[:2]}"))
        sh("ip", "netns", "add", self.ns.name)
        self.worker = Worker(name, self.ns.name, [sys.executable, __file__, "--worker", str(root)], wait=120)

    def ask(self, cmd: str) -> float:
        return self.worker.ask(cmd)

    def close(self) -> None:
        self.worker.close()
        sh("ip", "netns", "del", self.ns.name, check=False, timeout=300)


def both(sides: list[Side], cmd: str, reps: int = 1, before: str = "") -> dict[str, list[float]]:
    """`cmd` `reps` times on each side, round-robin, the order alternating; ms per side."""
    out: dict[str, list[float]] = {s.name: [] for s in sides}
    for r in range(reps):
        for s in sides if r % 2 == 0 else sides[::-1]:
            if before:
                s.ask(before)
            out[s.name].append(s.ask(cmd))
    return out


def pct(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def compare_trees(base: Path, sizes: list[int], reps: int) -> None:
    sides = []
    try:
        sides = [Side("base", base), Side("this", ROOT)]
        names = [s.name for s in sides]
        rows: list[tuple[str, dict[str, list[float]]]] = [("setup (empty kernel), ms", both(sides, "setup"))]
        held = 0
        for n in sorted(sizes):
            grow = n - held
            held = n
            label = f"{n:,}"
            for version, kind in ((4, "IPv4 hosts"), (6, "IPv6 /64s")):
                took = both(sides, f"commit{version} {grow}")
                rates = {k: [grow / (v[0] / 1000)] for k, v in took.items()}
                rows.append((f"bulk: {grow:,} {kind} in one transaction (to {label}), elements/s", rates))
                print(
                    f"bulk {version} to {label}: " + ", ".join(f"{k} {v[0]:,.0f}/s" for k, v in rates.items()),
                    flush=True,
                )
                rows.append((f"add one {kind[:-1]}, {label} held, ms", both(sides, f"add {version}", reps)))
            rows.append((f"apply: a plan of 10,000 IPv4 hosts, {label} held, ms", both(sides, "bulk4 10000")))
            both(sides, "check")  # the bulk commits went round the backend: its first check lists the table
            rows.append((f"per-tick check, {label} + {label} held, ms", both(sides, "check", reps)))
            rows.append(
                ("per-tick check after another's transaction, ms", both(sides, "check", reps, before="foreign"))
            )
            for title, t in rows[-6:]:
                print(f"{title}: " + ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in t.items()), flush=True)
    finally:
        for s in sides:
            s.close()
    print(f"\nbase: {base}; this: {ROOT}; medians (p90), {reps} rounds for single adds and checks")
    print(f"| what | {' | '.join(names)} | this/base |")
    print("|---|" + "---:|" * (len(names) + 1))
    for title, t in rows:
        cells = []
        for k in names:
            med = statistics.median(t[k])
            cells.append(
                f"{med:,.0f}"
                if med >= 1000
                else f"{med:.3f} (p90 {pct(t[k], 0.9):.3f})"
                if len(t[k]) > 1
                else f"{med:.3f}"
            )
        ratio = statistics.median(t["this"]) / statistics.median(t["base"])
        print(f"| {title} | {' | '.join(cells)} | {ratio:.3f} |")


def ipset_sizes(sizes: list[int], reps: int) -> None:
    """The iptables+ipset backend: one block through `IptBackend.apply` into block sets holding each size, and into
    an empty one; and the bulk that grows them, through `apply` too."""
    from govern import config as gconfig
    from govern.ipt.backend import IptBackend
    from govern.model import Action, ActionKind, Plan, State

    spec = gconfig.from_mapping({}).firewall()
    ns = Netns(new_name("ipset"))
    sh("ip", "netns", "add", ns.name)
    made = 0
    rows = []
    try:
        with ns.entered():
            backend = IptBackend()
            backend.setup(spec, [], State(), time.time())

            def plan(n: int) -> tuple[Plan, float]:
                nonlocal made
                now = time.time()
                acts = (
                    Action(ActionKind.BLOCK, scrambled(4, i), "bench", until=now + 3600) for i in range(made, made + n)
                )
                made += n
                return Plan(tuple(acts)), now

            for n in [0, *sorted(sizes)]:
                if n > made:
                    p, now = plan(n - made)
                    took = timed(functools.partial(backend.apply, p, now))
                    print(f"bulk to {n:,}: {(len(p.actions)) / took:,.0f}/s", flush=True)
                singles = []
                for _ in range(reps):
                    p, now = plan(1)
                    singles.append(timed(functools.partial(backend.apply, p, now)) * 1000)
                rows.append((n, statistics.median(singles), pct(singles, 0.9)))
                print(f"one block into {n:,}: {rows[-1][1]:.2f} ms (p90 {rows[-1][2]:.2f})", flush=True)
            backend.teardown()
    finally:
        sh("ip", "netns", "del", ns.name, check=False)
    print("\n| block set holds | add one address (IptBackend.apply, median) | p90 |")
    print("|---:|---:|---:|")
    for n, med, p90 in rows:
        print(f"| {n:,} | {med:.2f} ms | {p90:.2f} ms |")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--elements", type=int, default=100_000)
    ap.add_argument("--singles", type=int, default=200)
    ap.add_argument("--forks", type=int, default=300)
    ap.add_argument("--reps", type=int, help="3; with --base: 40")
    ap.add_argument("--sizes", type=int, nargs="+", help="run the size sweep at these element counts instead")
    ap.add_argument("--split", type=int, default=10, help="sweep: transactions the largest size is also split into")
    ap.add_argument("--base", type=Path, help="compare govern's nftables backend of this other tree with this one's")
    ap.add_argument("--ipset", action="store_true", help="one block into the iptables+ipset backend's sets instead")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_enforcer: needs root (network namespaces)")
    if args.ipset:
        print(f"machine: {machine()}")
        print(f"command: {' '.join(['.venv/bin/python', *sys.argv])}")
        ipset_sizes(args.sizes or [100_000, 1_000_000], args.reps or 30)
        return
    if args.base:
        print(f"machine: {machine()}")
        print(f"command: {' '.join(['.venv/bin/python', *sys.argv])}")
        compare_trees(args.base.resolve(), args.sizes or [100_000, 1_000_000], args.reps or 40)
        return
    args.reps = args.reps or 3
    if args.sizes:
        print(f"machine: {machine()}")
        print(f"command: {' '.join(['.venv/bin/python', *sys.argv])}")
        sweep(sorted(set(args.sizes)), args)
        return
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


# --- the size sweep ---------------------------------------------------------------------------------------------


def sweep_prefixes(version: int, n: int) -> list[Prefix]:
    """n distinct addresses in a fixed pseudo-random order: IPv4 hosts of 198.18.0.0/15, IPv6 /128s of the /48."""
    if version == 4:
        return [Prefix(4, BASE + i, 32) for i in random.Random(25).sample(range(SPAN), n)]
    rng = random.Random(26)
    seen: dict[int, None] = {}
    while len(seen) < n:
        seen[rng.getrandbits(80)] = None
    return [Prefix(6, BASE6 | v, 128) for v in seen]


def sweep(sizes: list[int], args: argparse.Namespace) -> None:
    ns = Netns(new_name("sweep"))
    sh("ip", "netns", "add", ns.name)
    rows: list[dict[str, float]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            table = Path(tmp) / "table.nft"
            table.write_text(SWEEP_TABLE)

            def fresh_table() -> None:
                ns.sh("nft", "delete", "table", "inet", "govern", check=False, timeout=300)
                ns.sh("nft", "-f", str(table))

            with ns.entered():
                nl = NftNetlink()
            with nl:
                for n in sizes:
                    for version in (4, 6):
                        if version == 4 and n > SPAN:
                            continue
                        row = sweep_one(ns, nl, fresh_table, version, n, args, Path(tmp), split=n == sizes[-1])
                        rows.append(row)
                # fail2ban's way, on a sample, into an empty set of an otherwise empty table
                fresh_table()
                sample = sweep_prefixes(4, args.forks)
                with ns.entered():
                    t0 = time.perf_counter()
                    for p in sample:
                        subprocess.run(
                            ["nft", "add", "element", "inet", "govern", "sweep4", f"{{ {p} timeout 1h }}"],
                            check=True,
                            timeout=120,
                        )
                    fork_s = time.perf_counter() - t0
    finally:
        sh("ip", "netns", "del", ns.name, check=False)
    fork_rate = args.forks / fork_s
    each = fork_s / args.forks * 1000
    print(f"nft per address: {args.forks} addresses in {fork_s:.2f} s: {fork_rate:.0f}/s, {each:.2f} ms each")

    print("\n| elements | family | NftNetlink, one transaction | of which encoding | batch | nft -f (libnftables) | "
          "vs nft -f | vs nft per address |")  # fmt: skip
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        n = int(r["n"])
        rate = n / r["bulk_s"]
        nft = n / r["nft_s"]
        print(
            f"| {n:,} | IPv{r['version']:.0f} | {rate:,.0f}/s ({fmt_s(r['bulk_s'])}) | {fmt_s(r['encode_s'])} | "
            f"{r['bytes'] / 1e6:.1f} MB | {nft:,.0f}/s ({fmt_s(r['nft_s'])}) | {rate / nft:.1f}x | "
            f"{rate / fork_rate:,.0f}x |"
        )
    for r in rows:
        if "split_s" in r:
            n, k = int(r["n"]), int(r["split"])
            print(
                f"IPv{r['version']:.0f}, {n:,} as {k} transactions of {n // k:,}: {n / r['split_s']:,.0f}/s "
                f"({r['split_s']:.2f} s; one transaction: {r['bulk_s']:.2f} s)"
            )
    print(f"nft per address (fail2ban's way), {args.forks} into an empty set: {fork_rate:,.0f}/s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process (elements, batch, dumps): {peak:,.0f} MB")


def fmt_s(seconds: float) -> str:
    return ms(seconds) if seconds < 1 else f"{seconds:.2f} s"


def sweep_one(
    ns: Netns,
    nl: NftNetlink,
    fresh_table: Callable[[], None],
    version: int,
    n: int,
    args: argparse.Namespace,
    tmp: Path,
    split: bool,
) -> dict[str, float]:
    set_name = f"sweep{version}"
    prefixes = sweep_prefixes(version, n)
    ops = [ElemOp(True, set_name, p, TIMEOUT_MS) for p in prefixes]
    r: dict[str, float] = {"n": n, "version": version}

    def check() -> None:
        got = len(nl.dump_set(set_name)) if n <= 100_000 else -1  # a dump of 1M takes minutes (O(n^2))
        if got not in (-1, n):
            raise RuntimeError(f"{set_name} holds {got} elements, expected {n}")

    # Userspace's share: the same encoding commit() does, alone.
    t0 = time.perf_counter()
    batch = encode_commit(ops, table="govern", family=NFPROTO_INET, interval_sets=SWEEP_IV, seq=1)
    r["encode_s"] = time.perf_counter() - t0
    r["bytes"] = len(batch.data)
    del batch
    times = []
    for _ in range(args.reps):
        fresh_table()
        times.append(timed(lambda: nl.commit(ops, interval_sets=SWEEP_IV)))
    check()
    r["bulk_s"] = statistics.median(times)
    line = f"IPv{version} {n:,}: one transaction {', '.join(f'{t:.3f}' for t in times)} s"
    line += f" (encoding {r['encode_s']:.3f} s, {r['bytes'] / 1e6:.1f} MB, send buffer {nl._nl.sndbuf / 1e6:.1f} MB)"
    if split:
        k = args.split
        per = -(-n // k)
        fresh_table()
        t0 = time.perf_counter()
        for lo in range(0, n, per):
            nl.commit(ops[lo : lo + per], interval_sets=SWEEP_IV)
        r["split_s"], r["split"] = time.perf_counter() - t0, k
        check()
        line += f"; as {k} transactions: {r['split_s']:.3f} s"
    ops.clear()  # free them before nft -f runs
    # One nft -f batch of the same elements.
    batch_file = tmp / "batch.nft"
    with open(batch_file, "w") as f:
        f.write(f"add element inet govern {set_name} {{\n")
        f.writelines(f"  {p} timeout 1h,\n" for p in prefixes)
        f.write("}\n")
    times = []
    for _ in range(args.reps if n <= 100_000 else 1):
        fresh_table()
        times.append(timed(lambda: ns.sh("nft", "-f", str(batch_file), timeout=600)))
    batch_file.unlink()
    r["nft_s"] = statistics.median(times)
    line += f"; nft -f {', '.join(f'{t:.3f}' for t in times)} s"
    print(line, flush=True)
    return r


if __name__ == "__main__":
    main()
