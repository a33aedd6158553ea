"""Benchmark: the per-tick check that govern's table is as it made it (govern.nft.backend.shape, docs/faults.md).

    .venv/bin/python bench/bench_shape.py [--blocks 0 100000] [--reps 200]

Needs root. In a throwaway network namespace (removed at the end, also on failure): govern's whole ruleset on the
default config, then N block elements in block4, and `shape` timed `--reps` times at each size (median, p90).
`list ruleset` is terse (sets without their elements); beside it, for scale, `list table inet govern` (nft 1.0.6
fetches every element for it even when terse), once.

    .venv/bin/python bench/bench_shape.py --base /path/to/other/tree [--blocks 0 100000] [--reps 200]

With `--base`, the whole per-tick check (`NftBackend.changed`) of two govern trees side by side instead, each in a
worker process importing govern from its own tree and in a namespace of its own (bench/bench_enforcer.py's
workers), round-robin: at each size (IPv4 hosts blocked, in one transaction into the set the tree's backend puts
them in), the check alone, and right after another process's transaction (which makes a tree that asks the ruleset
generation first list the table).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import machine  # noqa: E402
from govern import config  # noqa: E402
from govern.nft.backend import shape  # noqa: E402
from govern.nft.libnft import Nft  # noqa: E402
from govern.nft.ruleset import ruleset  # noqa: E402
from tests.netns import Netns, new_name, sh  # noqa: E402


def compare_trees(base: Path, sizes: list[int], reps: int) -> None:
    from bench.bench_enforcer import Side, both, pct

    sides: list[Side] = []
    rows: list[tuple[str, dict[str, list[float]]]] = []
    try:
        sides = [Side("base", base), Side("this", ROOT)]
        both(sides, "setup")
        held = 0
        for n in sorted(sizes):
            if n > held:
                both(sides, f"commit4 {n - held}")
                both(sides, "check")  # the commit went round the backend: its first check lists the table
                held = n
            rows.append((f"{n:,} blocks: the check", both(sides, "check", reps)))
            rows.append((f"{n:,} blocks: after another's transaction", both(sides, "check", reps, before="foreign")))
            for title, t in rows[-2:]:
                print(f"{title}: " + ", ".join(f"{k} {statistics.median(v):.3f} ms" for k, v in t.items()), flush=True)
    finally:
        for s in sides:
            s.close()
    print(f"\nbase: {base}; this: {ROOT}; ms, medians (p90) of {reps} rounds")
    print("| blocks | base | this | this/base |")
    print("|---|---:|---:|---:|")
    for title, t in rows:
        a, b = t["base"], t["this"]
        cells = [f"{statistics.median(x):.3f} (p90 {pct(x, 0.9):.3f})" for x in (a, b)]
        print(f"| {title} | {cells[0]} | {cells[1]} | {statistics.median(b) / statistics.median(a):.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, nargs="+", default=[0, 100_000])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--base", type=Path, help="compare the per-tick check of this other govern tree with this one's")
    args = ap.parse_args()
    print(machine())
    if args.base:
        print("command: bench/bench_shape.py --base", args.base, "--blocks", *args.blocks, "--reps", args.reps)
        compare_trees(args.base.resolve(), args.blocks, args.reps)
        return
    print("command: bench/bench_shape.py --blocks", *args.blocks, "--reps", args.reps)
    ns = Netns(new_name("bench"))
    sh("ip", "netns", "add", ns.name)
    try:
        with ns.entered():
            nft = Nft()
            nft.run(ruleset(config.from_mapping({}).firewall()))
            held = 0
            for n in sorted(args.blocks):
                if n > held:
                    els = ",".join(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" for i in range(held, n))
                    nft.run(f"add element inet govern block4 {{ {els} }}")
                    held = n
                times = []
                for _ in range(args.reps):
                    t = time.perf_counter()
                    shape(nft)
                    times.append(time.perf_counter() - t)
                times.sort()
                t = time.perf_counter()
                nft.json("list table inet govern", terse=True)
                table = time.perf_counter() - t
                print(
                    f"{n:>8} blocks: shape median {statistics.median(times) * 1000:.2f} ms, "
                    f"p90 {times[int(len(times) * 0.9)] * 1000:.2f} ms; list table (terse) {table * 1000:.0f} ms"
                )
            nft.close()
    finally:
        sh("ip", "netns", "del", ns.name, check=False)


if __name__ == "__main__":
    main()
