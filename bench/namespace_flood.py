"""A namespace flood unlike the test suite's: fast reconnectors that never hold a session (only the kernel's SYN
counter sees them), slot hogs over IPv4 and IPv6, ordinary senders, and an allowlisted relay with many sessions.
Reports when each bot source landed in govern's block sets and whether the relay was ever touched.

    .venv/bin/python bench/namespace_flood.py [--seconds 30]

Root only; it builds and removes its own namespaces (tests/netns.py) and every generator stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.kernel.daemon_harness import Daemon, nft_set, write_config
from tests.netns import MX4, MX6, Lab, Listener, connect


def reconnector(lab: Lab, src: str, dst: str, stop: threading.Event, counts: dict[str, int]) -> None:
    """Connect, read the banner, hang up, again, as fast as possible, until `stop` (bounded by the caller)."""
    with lab.net.entered():
        while not stop.is_set():
            try:
                s = connect(src, dst, 25, timeout=0.5)
                with contextlib.suppress(OSError):
                    s.recv(64)
                s.close()
                counts[src] = counts.get(src, 0) + 1
            except OSError:
                time.sleep(0.05)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0, help="how long the flood lasts (it stops by itself)")
    args = ap.parse_args()
    lab = Lab().up()
    tmp = Path(tempfile.mkdtemp(prefix="govern-flood-"))
    srv = Listener(lab.mx, 25)
    held: list[socket.socket] = []
    stop = threading.Event()
    d = Daemon(lab.mx, write_config(tmp)).start()
    try:
        reconnectors = [f"198.18.7.{i}" for i in range(1, 11)] + [f"2001:db8:bad:70{i}::1" for i in range(1, 4)]
        hogs4 = [f"198.18.9.{i}" for i in range(1, 9)]
        hogs6 = [f"2001:db8:bad:90{i}::{h}" for i in range(1, 4) for h in (1, 2, 3)]
        counts: dict[str, int] = {}
        t0 = time.monotonic()
        threads = [
            threading.Thread(target=reconnector, args=(lab, s, MX6 if ":" in s else MX4, stop, counts), daemon=True)
            for s in reconnectors
        ]
        for t in threads:
            t.start()
        with lab.net.entered():
            for s in hogs4:
                held += [connect(s, MX4, 25) for _ in range(25)]
            for s in hogs6:
                held += [connect(s, MX6, 25) for _ in range(9)]
            held += [connect("192.0.2.25", MX4, 25) for _ in range(40)]
            held += [connect(f"198.51.100.{i}", MX4, 25) for i in range(1, 31)]
        want4 = set(reconnectors[:10]) | set(hogs4)
        want6 = {f"2001:db8:bad:70{i}::/64" for i in range(1, 4)} | {f"2001:db8:bad:90{i}::/64" for i in range(1, 4)}
        landed: dict[str, float] = {}
        touched: set[str] = set()
        while time.monotonic() - t0 < args.seconds and len(landed) < len(want4) + len(want6):
            b4, b6 = nft_set(lab.mx, "block4"), nft_set(lab.mx, "block6")
            t4, t6 = nft_set(lab.mx, "throttle4"), nft_set(lab.mx, "throttle6")
            for x in (want4 & b4) | (want6 & b6):
                landed.setdefault(x, time.monotonic() - t0)
            touched |= {x for x in b4 | t4 | b6 | t6 if x.startswith(("192.0.2.", "198.51.100."))}
            time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(2)
        st = d.status()
        print(f"bot sources: {len(want4) + len(want6)}, in govern's block sets: {len(landed)}")
        for kind, group in (("reconnector", reconnectors), ("hog v4", hogs4)):
            times = sorted(v for k, v in landed.items() if k in group)
            if times:
                print(f"  {kind:<12} blocked after {times[0]:.1f}-{times[-1]:.1f} s")
        times6 = sorted(v for k, v in landed.items() if ":" in k)
        if times6:
            print(f"  {'v6 /64s':<12} blocked after {times6[0]:.1f}-{times6[-1]:.1f} s")
        print(f"  reconnections made before being stopped: {sum(counts.values())}")
        print(f"allowlisted relay or ordinary senders in any block/throttle set: {sorted(touched) or 'never'}")
        print(f"sessions ended by govern: {st['ended_sessions']}; daemon tick {st['last_tick_ms']} ms")
        return 0 if len(landed) == len(want4) + len(want6) and not touched else 1
    finally:
        stop.set()
        for sock in held:
            sock.close()
        d.stop()
        srv.close()
        lab.down()


if __name__ == "__main__":
    raise SystemExit(main())
