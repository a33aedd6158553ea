"""Drop cost for blocked sources: XDP vs nftables vs iptables+ipset, side by side in one run, on a veth pair.

    .venv/bin/python bench/bench_drop.py [--seconds 5] [--rounds 3]

Root only. Each case builds its own namespaces (tests/netns.py: an MX and a client namespace joined by veth),
sets up the backend in the MX namespace as the daemon would (`govern.wiring.enforcer`), blocks 198.18.0.0/16, and
sends pre-built SYNs from random sources of that /16 to 203.0.113.25:25 through a raw socket for `--seconds`. Cases:
"no rule" (no govern: the SYNs reach TCP, which answers each with a RST, as no one listens), "nftables" (drop in the
raw prerouting chain), "iptables+ipset" (drop in the legacy raw table), "xdp" (drop at the veth's XDP hook, the
nftables backend behind it).

Measured per case: the sender's rate, the MX veth's received packets, and the kernel CPU time of the whole VM
(system + irq + softirq jiffies of /proc/stat over all CPUs) per packet sent. On veth, the receive path runs on the
sender's CPU (in its syscall, or in that CPU's softirq), so the sender is the bottleneck and the rates are alike;
what differs is the kernel time each packet costs, which is where a drop earlier in the path shows.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import machine
from govern import config, wiring
from govern.addr import Prefix
from govern.edges import Enforcer
from govern.model import Action, ActionKind, Plan, State
from govern_lab.traffic.syn import SynCrafter
from tests.netns import MX4, Lab

BLOCKED = Prefix.parse("198.18.0.0/16")
CASES = ("no rule", "nftables", "iptables+ipset", "xdp")


def kernel_jiffies() -> int:
    """system + irq + softirq jiffies of all CPUs (/proc/stat's first line)."""
    with open("/proc/stat") as fh:
        f = fh.readline().split()
    return int(f[3]) + int(f[6]) + int(f[7])


def rx_packets(lab: Lab) -> int:
    out = lab.mx.sh("cat", f"/sys/class/net/{mx_iface(lab)}/statistics/rx_packets")
    return int(out)


def mx_iface(lab: Lab) -> str:
    return f"v{lab.mx.name[-6:]}m"


@contextlib.contextmanager
def bpffs() -> Iterator[str]:
    mnt = Path(tempfile.mkdtemp(prefix="govern-bpffs-"))
    subprocess.run(["mount", "-t", "bpf", "bpf", str(mnt)], check=True)
    try:
        yield str(mnt / "govern")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        mnt.rmdir()


@contextlib.contextmanager
def backend(lab: Lab, case: str, pin_root: str) -> Iterator[None]:
    if case == "no rule":
        yield
        return
    b: dict[str, object] = {"firewall": "iptables" if case == "iptables+ipset" else "nftables"}
    if case == "xdp":
        b |= {"xdp": True, "xdp_interfaces": [mx_iface(lab)], "xdp_pin_root": pin_root}
    cfg = config.from_mapping({"backend": b})
    now = time.time()
    with lab.mx.entered():
        enf: Enforcer = wiring.enforcer(cfg)
        enf.setup(cfg.firewall(), (), State(), now)
        enf.apply(Plan((Action(ActionKind.BLOCK, BLOCKED, "bench", until=now + 3600),)), now)
    try:
        yield
    finally:
        with lab.mx.entered():
            enf.teardown()
            enf.close()


def packets(n: int, seed: int = 25) -> list[bytes]:
    rng = random.Random(seed)
    crafter = SynCrafter(MX4, 25)
    base = BLOCKED.value
    return [
        crafter.packet(base + rng.randrange(1, 65535), rng.randrange(1024, 65536), rng.getrandbits(32), 0)
        for _ in range(n)
    ]


def send(lab: Lab, pool: list[bytes], seconds: float) -> tuple[int, float]:
    with lab.net.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        sent = 0
        dst = (MX4, 0)
        sendto = sock.sendto
        t0 = time.monotonic()
        end = t0 + seconds
        while True:
            for pkt in pool:
                sendto(pkt, dst)
            sent += len(pool)
            if time.monotonic() >= end:
                break
        return sent, time.monotonic() - t0
    finally:
        sock.close()


def run_case(case: str, pool: list[bytes], seconds: float) -> dict[str, float]:
    lab = Lab().up()
    try:
        with bpffs() as pin_root, backend(lab, case, pin_root):
            send(lab, pool[:2000], 0.3)  # warm-up: caches, the neighbour entry
            rx0, j0 = rx_packets(lab), kernel_jiffies()
            sent, took = send(lab, pool, seconds)
            j1, rx1 = kernel_jiffies(), rx_packets(lab)
    finally:
        lab.down()
    hz = os.sysconf("SC_CLK_TCK")
    kernel_s = (j1 - j0) / hz
    return {"pps": sent / took, "rx": rx1 - rx0, "sent": sent, "kernel_ns_per_pkt": kernel_s * 1e9 / sent}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3, help="each case this many times, round-robin; medians")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_drop: needs root (namespaces, raw sockets, XDP)")
    print(machine())
    print(f"command: .venv/bin/python bench/bench_drop.py --seconds {args.seconds:g} --rounds {args.rounds}")
    pool = packets(8192)
    runs: dict[str, list[dict[str, float]]] = {c: [] for c in CASES}
    for r in range(args.rounds):
        for case in CASES:
            res = run_case(case, pool, args.seconds)
            runs[case].append(res)
            print(f"round {r + 1} {case:<15} {res['pps']:>10,.0f} pps  {res['kernel_ns_per_pkt']:>7,.0f} ns kernel/pkt")
    print("\n| case | sender pps (median) | kernel CPU per packet, ns (median) | vs nftables |")
    print("|---|---:|---:|---:|")
    nft = statistics.median(x["kernel_ns_per_pkt"] for x in runs["nftables"])
    for case in CASES:
        pps = statistics.median(x["pps"] for x in runs[case])
        ns = statistics.median(x["kernel_ns_per_pkt"] for x in runs[case])
        print(f"| {case} | {pps:,.0f} | {ns:,.0f} | {ns / nft:.2f} |")


if __name__ == "__main__":
    main()
