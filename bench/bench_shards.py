"""What a read of the counting sets costs by their size and the number of shards they are split into: why govern
counts new connections in SEEN_SHARDS sets per family (govern/nft/ruleset.py), not in one.

    .venv/bin/python bench/bench_shards.py [--sizes 0 2000 100000 250000] [--shards 1 4 8 16] [--reps 5]
        [--total 262144]

In a namespace of its own, per size and shard count: a table of that many sets (`seen4_0` ..., the counting sets'
declaration, each of size `--total` / shards, as govern declares them: the size also sets the kernel's first hash
table, which a dump walks whole, empty buckets included; as govern's backend does, one element added and deleted
in each shard shrinks that table to fit), filled with that many IPv4 hosts dealt over them in turn,
each element with a counter as the kernel's `update @set { ip saddr counter }` leaves it; then `--reps` reads of
every set with NftNetlink.count_columns, the call the daemon's tick makes. Printed: the median wall time of a
whole read in ms with its range, and the user and system CPU of the median read (os.times: the process and its
ended threads, which read the long dumps). The kernel's dump of a hash set walks it from the start for each batch
it fills (nft_rhash_walk skips what it has sent), so one set's read grows with the square of its size; shards
divide that term by their number.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import machine  # noqa: E402
from govern.nft.netlink import NftNetlink  # noqa: E402
from tests.netns import Netns, entered, new_name, sh  # noqa: E402

BASE = 0x0A000000  # 10.0.0.0: the namespace is the bench's own, nothing routes there


def fill(ns: Netns, size: int, shards: int, bound: int) -> None:
    sets = [f"seen4_{i}" for i in range(shards)]
    decl = "".join(
        f"set {name} {{ type ipv4_addr; size {bound}; flags dynamic,timeout; timeout 10m; }}\n" for name in sets
    )
    lines = [f"delete table inet govern\ntable inet govern {{\n{decl}}}\n"]
    # As govern's backend makes a shard: one element added and deleted, which shrinks the first hash table.
    lines += [
        f"add element inet govern {name} {{ 0.0.0.0 }}\ndelete element inet govern {name} {{ 0.0.0.0 }}\n"
        for name in sets
    ]
    for i, name in enumerate(sets):
        hosts = range(BASE + i, BASE + size, shards)
        for c in range(0, len(hosts), 5000):
            elems = ", ".join(
                f"{a >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255} counter" for a in hosts[c : c + 5000]
            )
            lines.append(f"add element inet govern {name} {{ {elems} }}\n")
    sh("ip", "netns", "exec", ns.name, "nft", "add", "table", "inet", "govern")
    subprocess.run(["ip", "netns", "exec", ns.name, "nft", "-f", "-"], input="".join(lines), text=True, check=True)


def read(ns: Netns, size: int, shards: int, reps: int) -> tuple[list[float], tuple[float, float]]:
    walls, cpu = [], []
    with entered(ns.name), NftNetlink() as nl:
        for _ in range(reps):
            t0, c0 = time.perf_counter(), os.times()
            got = len(nl.count_columns([f"seen4_{i}" for i in range(shards)], 4, 32).counts)
            c1 = os.times()
            walls.append((time.perf_counter() - t0) * 1000)
            cpu.append(((c1.user - c0.user) * 1000, (c1.system - c0.system) * 1000))
            if got != size:
                raise SystemExit(f"read {got} elements of {size}")
    at = sorted(range(reps), key=walls.__getitem__)[reps // 2]
    return walls, cpu[at]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[0, 2000, 100000, 250000])
    ap.add_argument("--shards", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument(
        "--total", type=int, default=262144, help="what the shards hold in all (each declared with its share)"
    )
    args = ap.parse_args()
    if any(n > args.total for n in args.sizes):
        sys.exit("bench_shards: a size larger than the sets hold")
    print(machine())
    ns = Netns(new_name("shards"))
    sh("ip", "netns", "add", ns.name)
    try:
        print(f"{'size':>8} {'shards':>6} {'read ms (median, range)':>28} {'user ms':>8} {'sys ms':>7}")
        for size in args.sizes:
            for shards in args.shards:
                fill(ns, size, shards, args.total // shards)
                walls, (user, system) = read(ns, size, shards, args.reps)
                span = f"{statistics.median(walls):.1f} ({min(walls):.1f}-{max(walls):.1f})"
                print(f"{size:>8,} {shards:>6} {span:>28} {user:>8.0f} {system:>7.0f}", flush=True)
    finally:
        sh("ip", "netns", "del", ns.name, check=False)


if __name__ == "__main__":
    main()
