"""Benchmark: the iptables backend's per-tick reads of its ipsets, over netlink (govern/ipt/netlink.py) against the
`ipset` command it used before (one process per read).

    .venv/bin/python bench/bench_ipset_reads.py [--elements 100 5000 50000] [--reps 30]

Needs root. In a throwaway network namespace (removed at the end, also on failure): a counting set like govern's
`seen` sets (hash:net, timeouts, counters) filled with N elements at each size, and per round, alternating: the
set's elements with their packet counters (`IpsetNetlink.elements` / `ipset save`, as `syn_counts` reads each
family's set every tick) and the names of the sets (`IpsetNetlink.names` / `ipset list -n`, as the per-tick check of
the backend's objects does). Wall-clock medians in ms; the `ipset` column includes its process's start, which the
daemon's own CPU time does not show but the host pays.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import machine  # noqa: E402
from govern.ipt import ipset  # noqa: E402
from govern.ipt.netlink import IpsetNetlink  # noqa: E402
from tests.netns import Netns, new_name, sh  # noqa: E402

SET = "govern-bench-seen4"


def median_ms(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elements", type=int, nargs="+", default=[100, 5000, 50000])
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    print(machine())
    print("command: bench/bench_ipset_reads.py --elements", *args.elements, "--reps", args.reps)
    ns = Netns(new_name("bench"))
    sh("ip", "netns", "add", ns.name)
    try:
        ns.sh("ipset", "create", SET, "hash:net", "family", "inet", "timeout", "600", "counters", "maxelem", "1000000")
        with ns.entered():
            nl = IpsetNetlink()
        print("| elements | netlink elements | `ipset save` | netlink names | `ipset list -n` |")
        print("|---:|---:|---:|---:|---:|")
        held = 0
        try:
            for n in sorted(args.elements):
                lines = [f"add {SET} 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255} packets {i}" for i in range(held, n)]
                if lines:
                    cmd = ["ip", "netns", "exec", ns.name, "ipset", "restore"]
                    subprocess.run(cmd, input="\n".join(lines) + "\n", text=True, check=True)
                held = max(held, n)
                with ns.entered():
                    row = [
                        median_ms(lambda: nl.elements(SET), args.reps),
                        median_ms(lambda: ipset.save(SET), args.reps),
                        median_ms(nl.names, args.reps),
                        median_ms(ipset.names, args.reps),
                    ]
                print(f"| {n:,} | " + " | ".join(f"{x:.2f}" for x in row) + " |", flush=True)
        finally:
            nl.close()
    finally:
        sh("ip", "netns", "del", ns.name, check=False)


if __name__ == "__main__":
    main()
