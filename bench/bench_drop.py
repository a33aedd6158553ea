"""Drop cost for blocked sources: XDP vs nftables vs iptables+ipset, side by side in one run, on a veth pair.

    .venv/bin/python bench/bench_drop.py [--seconds 5] [--rounds 3]

Root only. Each case builds its own namespaces (tests/netns.py: an MX and a client namespace joined by veth),
sets up the backend in the MX namespace as the daemon would (`govern.wiring.enforcer`), blocks 198.18.0.0/16, and
sends pre-built SYNs from random sources of that /16 to 203.0.113.25:25 through a raw socket for `--seconds`. Cases:
"no rule" (no govern: the SYNs reach TCP, which answers each with a RST, as no one listens), "nftables" (drop in the
raw prerouting chain), "iptables+ipset" (drop in the legacy raw table), "xdp" (drop at the veth's XDP hook, the
nftables backend behind it).

With `--base OTHER_TREE`, the nftables backend of two govern trees instead (before/after a change to the ruleset),
each set up by a process importing govern from its own tree, the cases alternating: 198.18.0.0/17 blocked as a
prefix and `--hosts` single addresses of 198.18.128.0/18 blocked one by one, then SYNs from the blocked prefix,
from the blocked hosts, and from 198.18.192.0/18, which nothing blocks (the cost every packet of a sender govern
leaves alone pays for the chain). Measured there: the CPU time of the sending thread per packet, which holds the
MX's receive path (it runs in the sender's context on veth) and, unlike the whole VM's kernel time, nothing of
what else runs on the machine.

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

ROOT = Path(__file__).resolve().parents[1]
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


def send(lab: Lab, pool: list[bytes], seconds: float) -> tuple[int, float, float]:
    """(packets sent, seconds, CPU seconds of the sending thread): on veth the receive path runs in the sender's
    context, so the thread's CPU time holds the MX's cost of each packet, and none of other processes'."""
    with lab.net.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        sent = 0
        dst = (MX4, 0)
        sendto = sock.sendto
        t0, c0 = time.monotonic(), time.thread_time()
        end = t0 + seconds
        while True:
            for pkt in pool:
                sendto(pkt, dst)
            sent += len(pool)
            if time.monotonic() >= end:
                break
        return sent, time.monotonic() - t0, time.thread_time() - c0
    finally:
        sock.close()


def run_case(case: str, pool: list[bytes], seconds: float) -> dict[str, float]:
    lab = Lab().up()
    try:
        with bpffs() as pin_root, backend(lab, case, pin_root):
            send(lab, pool[:2000], 0.3)  # warm-up: caches, the neighbour entry
            rx0, j0 = rx_packets(lab), kernel_jiffies()
            sent, took, _cpu = send(lab, pool, seconds)
            j1, rx1 = kernel_jiffies(), rx_packets(lab)
    finally:
        lab.down()
    hz = os.sysconf("SC_CLK_TCK")
    kernel_s = (j1 - j0) / hz
    return {"pps": sent / took, "rx": rx1 - rx0, "sent": sent, "kernel_ns_per_pkt": kernel_s * 1e9 / sent}


# --base: what each tree blocks, and the sources of each kind of traffic.
PREFIX_BLOCK = Prefix.parse("198.18.0.0/17")
HOSTS_FROM = Prefix.parse("198.18.128.0/18")
PASSING_FROM = Prefix.parse("198.18.192.0/18")
TRAFFIC = ("blocked prefix", "blocked hosts", "passing")
SETUP = """
import sys, time
sys.path.insert(0, sys.argv[1])
import govern
from govern import config, wiring
from govern.addr import Prefix
from govern.model import Action, ActionKind, Plan, State
assert govern.__file__.startswith(sys.argv[1]), govern.__file__
cfg = config.from_mapping({"backend": {"firewall": "nftables"}})
now = time.time()
enf = wiring.enforcer(cfg)
enf.setup(cfg.firewall(), (), State(), now)
blocks = [Prefix.parse(w) for w in sys.stdin.read().split()]
enf.apply(Plan(tuple(Action(ActionKind.BLOCK, p, "bench", until=now + 3600) for p in blocks)), now)
enf.close()
"""


def tree_case(tree: Path, blocks: list[Prefix], pools: dict[str, list[bytes]], seconds: float) -> dict[str, float]:
    """The nftables backend of `tree` set up in a fresh lab by a process of its own; each kind of traffic sent."""
    lab = Lab().up()
    try:
        subprocess.run(
            ["ip", "netns", "exec", lab.mx.name, sys.executable, "-c", SETUP, str(tree)],
            input="\n".join(map(str, blocks)),
            text=True,
            check=True,
        )
        out: dict[str, float] = {}
        for kind, pool in pools.items():
            send(lab, pool[:2000], 0.3)
            sent, took, cpu = send(lab, pool, seconds)
            out[kind] = cpu * 1e9 / sent
            out[f"{kind} pps"] = sent / took
        return out
    finally:
        lab.down()


def compare_trees(base: Path, args: argparse.Namespace) -> None:
    rng = random.Random(26)
    span = 1 << (32 - HOSTS_FROM.length)
    hosts = [Prefix(4, HOSTS_FROM.value + i, 32) for i in rng.sample(range(1, span), min(args.hosts, span - 1))]
    crafter = SynCrafter(MX4, 25)

    def pool(sources: list[int]) -> list[bytes]:
        return [
            crafter.packet(rng.choice(sources), rng.randrange(1024, 65536), rng.getrandbits(32), 0) for _ in range(8192)
        ]

    pools = {
        "blocked prefix": pool([PREFIX_BLOCK.value + rng.randrange(1, 1 << 15) for _ in range(8192)]),
        "blocked hosts": pool([h.value for h in hosts]),
        "passing": pool([PASSING_FROM.value + rng.randrange(1, 1 << 14) for _ in range(8192)]),
    }
    trees = {"base": base, "this": ROOT}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for r in range(args.rounds):
        for name in trees if r % 2 == 0 else list(trees)[::-1]:
            res = tree_case(trees[name], [PREFIX_BLOCK, *hosts], pools, args.seconds)
            runs[name].append(res)
            print(f"round {r + 1} {name}: " + ", ".join(f"{k} {res[k]:,.0f} ns" for k in TRAFFIC), flush=True)
    print(f"\nbase: {base}; this: {ROOT}; {len(hosts):,} hosts and one /17 blocked")
    print("| traffic | base: sender thread CPU per packet, ns (median) | this | this/base | sender pps base / this |")
    print("|---|---:|---:|---:|---:|")
    for kind in TRAFFIC:
        a = statistics.median(x[kind] for x in runs["base"])
        b = statistics.median(x[kind] for x in runs["this"])
        pa = statistics.median(x[f"{kind} pps"] for x in runs["base"])
        pb = statistics.median(x[f"{kind} pps"] for x in runs["this"])
        print(f"| {kind} | {a:,.0f} | {b:,.0f} | {b / a:.3f} | {pa:,.0f} / {pb:,.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3, help="each case this many times, round-robin; medians")
    ap.add_argument("--base", type=Path, help="compare the nftables backend of this other govern tree with this one's")
    ap.add_argument("--hosts", type=int, default=16000, help="--base: single addresses blocked beside the prefix")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_drop: needs root (namespaces, raw sockets, XDP)")
    print(machine())
    if args.base:
        print(f"command: .venv/bin/python bench/bench_drop.py --seconds {args.seconds:g} --rounds {args.rounds} "
              f"--base {args.base} --hosts {args.hosts}")  # fmt: skip
        compare_trees(args.base.resolve(), args)
        return
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
