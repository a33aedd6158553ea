"""Benchmark: the netlink hot paths of two govern trees side by side in one run (before/after a change).

    .venv/bin/python bench/bench_ab.py scan --base /path/to/other/tree [--sockets 20000] [--reps 30]
    .venv/bin/python bench/bench_ab.py nft --base /path/to/other/tree [--elements 100000] [--reps 5]
    .venv/bin/python bench/bench_ab.py counts --base /path/to/other/tree [--elements 30000] [--reps 10]

Needs root; not part of the test suite. One worker process per tree (`--base` and this one), each importing govern
from its own tree, both in the same namespace, driven round-robin (one of each per round, the order alternating
between rounds) so that drift and whatever else runs on the machine hit both alike; medians in ms, min-max, and
the ratio this tree / base.
- scan: bench_observer's set-up (20k idle connections to a dual-stack listener on port 25 by default); per round
  `SockDiag.scan(idle_after_ms=0)`, the same with the cyclic GC held off, and the netlink dump alone.
- nft: a namespace with bench_enforcer's table; `NftNetlink.commit` of one new address into a hash set
  (`--reps` x 40 rounds), of `--elements` addresses as one transaction into the emptied interval set, `dump_set`
  of that set, and one new address into it (`--reps` x 40 rounds).
- counts: govern's own table (`NftBackend.setup` with the default config) whose counting set `seen4` (its shards)
  holds `--elements` sources with counters (and `seen6` a tenth as many /64s), as a spoofed SYN flood leaves it; per
  round `NftBackend.syn_counts()`, the read every tick makes. Each round also prints the worker's CPU (user+sys).
  Each tree reads its own table in a namespace of its own: the trees' shards may differ.
The namespaces are removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import machine  # noqa: E402
from bench.worker import Worker  # noqa: E402
from tests.netns import Netns, new_name, sh  # noqa: E402

Times = dict[tuple[str, str], list[float]]


def worker(root: str, kind: str, side: int) -> None:
    """Answer each command line on stdin with the ms it took, using the govern of `root`."""
    sys.path.insert(0, root)  # ahead of this file's tree (nothing imported govern yet) and the venv's
    import govern

    if not (govern.__file__ or "").startswith(root):
        raise SystemExit(f"govern from {govern.__file__}, not {root}")
    fns: dict[str, Callable[[list[str]], None]]
    if kind == "scan":
        from govern import model
        from govern.observe import sockdiag

        diag = sockdiag.SockDiag()
        ports = frozenset({25})
        # A base tree from before the scan's options were one value takes them as keywords.
        if hasattr(model, "ScanOptions"):
            opts = model.ScanOptions(ports, idle_after_ms=0)
            scan_once: Callable[[], Any] = lambda: diag.scan(opts)  # noqa: E731
        else:
            old_scan: Any = diag.scan
            scan_once = lambda: old_scan(ports, idle_after_ms=0)  # noqa: E731

        def gc_off(_args: list[str]) -> None:
            gc.disable()
            try:
                scan_once()
            finally:
                gc.enable()

        def scan(_args: list[str]) -> None:
            scan_once()

        def dump(_args: list[str]) -> None:
            # The same request, nothing parsed: the kernel's share and the syscalls.
            diag._dump_all(ports, sockdiag._STATES_SCAN, sockdiag._EXT_INFO, lambda b, n: b[4] == 3)

        fns = {"scan": scan, "scan-gc-off": gc_off, "dump": dump}
        ready = str(scan_once().sockets)
    elif kind == "counts":
        from govern import config
        from govern.model import State
        from govern.nft.backend import NftBackend

        backend = NftBackend()
        backend.setup(config.from_mapping({}).firewall(), [], State(), time.time())

        def read(_args: list[str]) -> None:
            backend.syn_counts()

        fns = {"syn_counts": read, "syn_counts-cpu": read}
        ready = str(sum(backend.syn_counts().values()))
    else:
        from govern.addr import Prefix
        from govern.nft.netlink import ElemOp, NftNetlink

        nl = NftNetlink()
        base = Prefix.parse("198.18.0.0").value
        iv = frozenset({"block4"})
        count = [0]

        def one(set_name: str) -> Callable[[list[str]], None]:
            def run(_args: list[str]) -> None:
                # Odd addresses, apart per side: never one the bulk adds, nor the other side's.
                count[0] += 1
                p = Prefix(4, base + 2 * (side * 50_000 + count[0]) + 1, 32)
                nl.commit([ElemOp(True, set_name, p, 3_600_000)], interval_sets=iv)

            return run

        def bulk(args: list[str]) -> None:
            ops = [ElemOp(True, "block4", Prefix(4, base + 2 * i, 32), 3_600_000) for i in range(int(args[0]))]
            nl.commit(ops, interval_sets=iv)

        def dump_set(_args: list[str]) -> None:
            nl.dump_set("block4")

        fns = {"one-hash": one("hash4"), "one-interval": one("block4"), "bulk": bulk, "dump": dump_set}
        ready = "0"
    print(f"ready {ready} {govern.__file__}", flush=True)
    for line in sys.stdin:
        cmd, *args = line.split()
        # "-cpu": the CPU time of the whole process (user and system, all threads: a dump's reader thread too).
        clock = time.process_time if cmd.endswith("-cpu") else time.perf_counter
        t0 = clock()
        fns[cmd](args)
        print(f"{(clock() - t0) * 1000:.4f}", flush=True)


class Side(Worker):
    """One tree's worker process, in namespace `ns`."""

    def __init__(self, name: str, root: Path, ns: str, kind: str, index: int) -> None:
        super().__init__(name, ns, [sys.executable, __file__, "--worker", str(root), kind, str(index)])


def rounds(sides: list[Side], cmd: str, reps: int, before: Callable[[], object] | None = None) -> Times:
    """`cmd` once on each side to warm up, then `reps` rounds, the order alternating."""
    times: Times = {(s.name, cmd): [] for s in sides}
    for r in range(-1, reps):
        for s in sides if r % 2 == 0 else sides[::-1]:
            if before:
                before()
            took = s.ask(cmd)
            if r >= 0:
                times[s.name, cmd].append(took)
    return times


def report(times: Times, names: tuple[str, str], reps: int) -> None:
    base, this = names
    for (name, cmd), _t in times.items():
        if name != base:
            continue
        a, b = times[base, cmd], times[this, cmd]
        ma, mb = statistics.median(a), statistics.median(b)
        print(
            f"  {cmd:22s} {base} {ma:9.3f} ({min(a):.3f}-{max(a):.3f})   {this} {mb:9.3f} ({min(b):.3f}-{max(b):.3f})"
            f"   ratio {mb / ma:.3f}   [{len(a)} rounds]"
        )


def run_scan(sides_for: Callable[[str], list[Side]], args: argparse.Namespace) -> Times:
    from bench.bench_observer import Population

    with Population(args.sockets, 1) as pop:
        pop.grow(args.sockets)
        sides = sides_for(pop.lab.mx.name)
        try:
            times: Times = {}
            for cmd in ("scan", "scan-gc-off", "dump"):
                times |= rounds(sides, cmd, args.reps)
            return times
        finally:
            for s in sides:
                s.close()


def shard_names(root: Path) -> tuple[list[str], list[str]]:
    """The counting sets' names of the tree at `root` (its shards differ between versions)."""
    code = (
        f"import sys; sys.path.insert(0, {str(root)!r}); from govern.nft.ruleset import seen_sets; "
        "print(' '.join(seen_sets(4))); print(' '.join(seen_sets(6)))"
    )
    v4, v6 = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(
        "\n"
    )[:2]
    return v4.split(), v6.split()


def run_counts(side: Callable[[int, str], Side], roots: tuple[Path, Path], args: argparse.Namespace) -> Times:
    """Each tree in a namespace of its own: each sets up its own table (the trees' counting shards may differ, and
    a set-up converges the table to its own tree's shape), then the same sources are dealt over its shards."""
    import random

    rng = random.Random(1)
    n = args.elements
    # Forged sources of the bot range 198.18.0.0/15 (docs: test addresses only), each with a few SYNs counted.
    addrs = rng.sample(range(0xC6120000, 0xC6120000 + (1 << 17)), n)
    v4 = [
        f"{a >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255} counter packets {rng.randint(1, 9)} bytes 0" for a in addrs
    ]
    v6 = [f"2001:db8:bad:{i:x}:: counter packets {rng.randint(1, 9)} bytes 0" for i in range(n // 10)]
    spaces = [Netns(new_name("ab")) for _ in roots]
    try:
        for i, (ns, root) in enumerate(zip(spaces, roots, strict=True)):
            sh("ip", "netns", "add", ns.name)
            side(i, ns.name).close()  # its set-up makes govern's table
            # Dealt over the shards in turn: a read does not care which shard holds a source.
            batch = "".join(
                f"add element inet govern {name} {{ {', '.join(elems[i :: len(names)])} }}\n"
                for elems, names in zip((v4, v6), shard_names(root), strict=True)
                for i, name in enumerate(names)
                if elems[i :: len(names)]
            )
            subprocess.run(["ip", "netns", "exec", ns.name, "nft", "-f", "-"], input=batch, text=True, check=True)
        sides = [side(i, ns.name) for i, ns in enumerate(spaces)]
        try:
            return rounds(sides, "syn_counts", args.reps) | rounds(sides, "syn_counts-cpu", args.reps)
        finally:
            for s in sides:
                s.close()
    finally:
        for ns in spaces:
            sh("ip", "netns", "del", ns.name, check=False)


def run_nft(sides_for: Callable[[str], list[Side]], args: argparse.Namespace) -> Times:
    from bench.bench_enforcer import TABLE

    ns = Netns(new_name("ab"))
    sh("ip", "netns", "add", ns.name)
    try:
        subprocess.run(["ip", "netns", "exec", ns.name, "nft", "-f", "-"], input=TABLE, text=True, check=True)
        sides = sides_for(ns.name)
        try:
            n = args.elements
            times = rounds(sides, "one-hash", args.reps * 40)
            times |= rounds(
                sides, f"bulk {n}", args.reps, lambda: ns.sh("nft", "flush", "set", "inet", "govern", "block4")
            )
            times |= rounds(sides, "dump", args.reps)  # the set as the last bulk left it
            times |= rounds(sides, "one-interval", args.reps * 40)
            return times
        finally:
            for s in sides:
                s.close()
    finally:
        sh("ip", "netns", "del", ns.name, check=False)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["scan", "nft", "counts"])
    ap.add_argument("--base", type=Path, required=True, help="the other govern tree (before the change)")
    ap.add_argument("--sockets", type=int, default=20000)
    ap.add_argument("--elements", type=int, help="nft: 100000; counts: 30000")
    ap.add_argument("--reps", type=int, help="rounds (scan: 30; nft: 5, x40 for single adds)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_ab: needs root (network namespaces)")
    base = args.base.resolve()
    if not (base / "govern" / "__init__.py").is_file():
        sys.exit(f"bench_ab: no govern tree at {base}")
    args.reps = args.reps or {"scan": 30, "nft": 5, "counts": 10}[args.kind]
    args.elements = args.elements or (30_000 if args.kind == "counts" else 100_000)
    names = ("base", "this")
    print(f"machine: {machine()}")
    print(f"command: {' '.join(['.venv/bin/python', *sys.argv])}")
    print(f"base: {base}; this: {ROOT}")

    roots = (base, ROOT)

    def side(i: int, ns: str) -> Side:
        return Side(names[i], roots[i], ns, args.kind, i)

    def sides_for(ns: str) -> list[Side]:
        return [side(0, ns), side(1, ns)]

    if args.kind == "scan":
        times = run_scan(sides_for, args)
        print(f"\n{args.sockets} sockets from as many sources, all idle; medians in ms (min-max), ratio this/base:")
    elif args.kind == "counts":
        times = run_counts(side, roots, args)
        n = args.elements
        print(f"\nseen4 of {n} elements, seen6 of {n // 10}; medians in ms (min-max), ratio this/base:")
    else:
        times = run_nft(sides_for, args)
        print(f"\n{args.elements} elements; medians in ms (min-max), ratio this/base:")
    report(times, names, args.reps)


if __name__ == "__main__":
    main()
