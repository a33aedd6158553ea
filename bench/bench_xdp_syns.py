"""Benchmark: one read of the XDP program's SYN counters (the `syns` map) with N counted sources, as the daemon's tick
makes it with XDP in front (`XdpProgram.syn_counts`), in the tree given (this one by default).

    .venv/bin/python bench/bench_xdp_syns.py [--tree OTHER_TREE] [--sources 10000 100000] [--reps 7]

Needs root. Loads the tree's XDP object (not attached to any interface) with its maps pinned on a bpffs mounted for
the run alone, in a namespace of its own (both removed at the end, also on failure); writes N sources into `syns`
(nine in ten IPv4 hosts of 198.18.0.0/15, one in ten IPv6 /64s of 2001:db8:bad::/48, 1-9 SYNs each); then reads it
`--reps` times. Printed: the median wall time in ms with its range, and the sources and SYNs read (the same in every
tree). Run it once with `--tree` the tree before a change and once without, one after the other.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", type=Path, default=ROOT, help="the govern tree whose reader is timed")
    ap.add_argument("--sources", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    if max(args.sources) > 655_350:
        sys.exit("bench_xdp_syns: at most 655,350 sources (a /64 of 2001:db8:bad::/48 each tenth)")
    tree = args.tree.resolve()
    # The tree's govern first; the lab's namespaces and the machine line from this one.
    sys.path[:0] = [str(tree), str(ROOT)]
    from bench.machine import machine
    from govern.libbpf import lib
    from govern.wiring import DEFAULT_OBJECT
    from govern.xdp import maps
    from govern.xdp.loader import XdpProgram, unpin
    from tests.netns import Lab

    print(machine())
    print(f"command: {' '.join(['.venv/bin/python', *sys.argv])}")
    print(f"tree: {tree}")
    for n in args.sources:
        lab = Lab()
        lab.up()
        mnt = tempfile.mkdtemp(prefix="govern-bpffs-")
        subprocess.run(["mount", "-t", "bpf", "bpf", mnt], check=True)
        try:
            with lab.mx.entered():
                prog = XdpProgram(str(DEFAULT_OBJECT), f"{mnt}/govern")
                try:
                    fd = prog.fds[maps.MAP_SYNS]
                    for i in range(n):
                        key = maps.Src()
                        key.family = 6 if i % 10 == 0 else 4
                        v6 = bytes.fromhex("20010db80bad") + (i // 10).to_bytes(2, "big") + bytes(8)
                        raw = (0xC6120000 + i).to_bytes(4, "big") if key.family == 4 else v6
                        ctypes.memmove(key.addr, raw, len(raw))
                        value = ctypes.c_uint64(i % 9 + 1)
                        if lib().bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(value), 0) != 0:
                            raise SystemExit(f"bench_xdp_syns: cannot write source {i}")
                    took = []
                    for _ in range(args.reps):
                        t0 = time.perf_counter()
                        counts = prog.syn_counts()
                        took.append((time.perf_counter() - t0) * 1000)
                    span = f"{statistics.median(took):.1f} ms ({min(took):.1f}-{max(took):.1f})"
                    print(f"{n:>9,} sources: read {span}; {len(counts):,} sources, {sum(counts.values()):,} SYNs")
                finally:
                    prog.close()
                    unpin(f"{mnt}/govern")
        finally:
            subprocess.run(["umount", mnt], check=False)
            lab.down()


if __name__ == "__main__":
    main()
