"""Benchmark: the per-tick check that govern's table is as it made it (govern.nft.backend.shape, docs/faults.md).

    .venv/bin/python bench/bench_shape.py [--blocks 0 100000] [--reps 200]

Needs root. In a throwaway network namespace (removed at the end, also on failure): govern's whole ruleset on the
default config, then N block elements in block4, and `shape` timed `--reps` times at each size (median, p90).
`list ruleset` is terse (sets without their elements); beside it, for scale, `list table inet govern` (nft 1.0.6
fetches every element for it even when terse), once.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, nargs="+", default=[0, 100_000])
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    print(machine())
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
