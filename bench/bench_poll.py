"""Benchmark: what the daemon reads between ticks (`daemon.queue_poll`, four times a second): the kernel's count of
new connections (`NftBackend.attempts`, one NFT_MSG_GETOBJ of the named counter) beside the listening sockets'
accept queues (`SockDiag.listeners`).

    .venv/bin/python bench/bench_poll.py [--reps 5000]

Needs root; not part of the test suite. It runs in a network namespace of its own (`gv-bench-poll`), with govern's
table made by the nftables backend on the embedded defaults and one listener on port 25, and removes the namespace
at the end, also on failure. Each read runs once to warm up, then `--reps` times round-robin; medians and 99th
percentiles in microseconds.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import machine  # noqa: E402
from govern import config  # noqa: E402
from govern.model import State  # noqa: E402
from govern.nft.backend import NftBackend  # noqa: E402
from govern.observe.sockdiag import SockDiag  # noqa: E402
from tests.netns import entered  # noqa: E402

NS = "gv-bench-poll"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5000)
    args = ap.parse_args()
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        with entered(NS):
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
            listener = socket.create_server(("127.0.0.1", 25))
            backend = NftBackend()
            backend.setup(config.from_mapping({}).firewall(), [], State(), time.time())
            diag = SockDiag()
        ports = frozenset({25})

        def listeners() -> object:
            return diag.listeners(ports)

        reads: dict[str, Callable[[], object]] = {"attempts counter": backend.attempts, "listeners": listeners}
        times: dict[str, list[float]] = {name: [] for name in reads}
        for fn in reads.values():
            fn()
        for _ in range(args.reps):
            for name, fn in reads.items():
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e6)
        print(f"machine: {machine()}; {args.reps} reps each")
        for name, ts in times.items():
            ts.sort()
            p99 = ts[int(len(ts) * 0.99)]
            print(f"{name:18s} median {statistics.median(ts):7.1f} us  p99 {p99:7.1f} us")
        listener.close()
        diag.close()
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)


if __name__ == "__main__":
    main()
