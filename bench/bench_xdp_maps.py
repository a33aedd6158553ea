"""Benchmark: the XDP maps with N blocks, hosts in the hash map against hosts in the LPM trie: adding one, and the
program's own time per packet.

    .venv/bin/python bench/bench_xdp_maps.py [--sizes 1000 100000 1000000] [--reps 500]

Needs root. Loads govern's XDP object (not attached to any interface) with its maps pinned on a bpffs mounted for the
run alone (removed at the end, also on failure). For each size N: N IPv4 hosts written through XdpProgram.update
(they go to the host4 hash map), then `--reps` single updates of one more host, each timed alone (median, p90); and,
for the design before (hosts in the block4 LPM trie), the same into the trie, written directly, up to the trie's
capacity (maps.PREFIXES_MAX: a trie of 1M hosts cannot exist). Per packet: the kernel runs the program on one
prebuilt TCP SYN to port 25 (BPF_PROG_TEST_RUN, 1M repetitions, the kernel's own average in ns) from a host blocked
in the hash map, from one blocked only by a /32 in the trie (the design before, plus one hash miss), and from a
source that is not blocked (every map missed: the common packet).
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import machine  # noqa: E402
from govern.addr import Prefix  # noqa: E402
from govern.libbpf import lib  # noqa: E402
from govern.wiring import DEFAULT_OBJECT  # noqa: E402
from govern.xdp import maps  # noqa: E402
from govern.xdp.loader import XdpProgram  # noqa: E402

XDP_DROP, XDP_PASS = 1, 2


def host(i: int) -> Prefix:
    return Prefix(4, (10 << 24) | i, 32)


def fill_trie(prog: XdpProgram, start: int, stop: int) -> None:
    value = maps.BlockValue(0)
    fd = prog.fds[maps.MAP_BLOCK4]
    for i in range(start, stop):
        key = maps.lpm_key(host(i))
        assert lib().bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(value), 0) == 0


class TestRun(ctypes.Structure):  # struct bpf_test_run_opts, bpf/bpf.h
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


def syn_from(src: Prefix) -> bytes:
    eth = bytes(6) + bytes(6) + struct.pack("!H", 0x0800)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0, src.packed(), bytes([203, 0, 113, 25]))
    tcp = struct.pack("!HHIIBBHHH", 40000, 25, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    return eth + ip + tcp


def ns_per_packet(prog: XdpProgram, src: Prefix, repeat: int = 1_000_000) -> tuple[float, int]:
    pkt = ctypes.create_string_buffer(syn_from(src))
    opts = TestRun(sz=ctypes.sizeof(TestRun), data_in=ctypes.addressof(pkt), data_size_in=len(pkt) - 1)
    opts.repeat = repeat
    rc = lib().bpf_prog_test_run_opts(prog.prog_fd, ctypes.byref(opts))
    assert rc == 0, rc
    return float(opts.duration), int(opts.retval)


def timed(reps: int, one: object) -> tuple[float, float]:
    times = []
    for i in range(reps):
        t = time.perf_counter()
        one(i)  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    times.sort()
    return statistics.median(times) * 1000, times[int(len(times) * 0.9)] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    ap.add_argument("--reps", type=int, default=500)
    args = ap.parse_args()
    print(machine())
    print("command: bench/bench_xdp_maps.py --sizes", *args.sizes, "--reps", args.reps)
    with tempfile.TemporaryDirectory() as tmp:
        mnt = Path(tmp) / "bpffs"
        mnt.mkdir()
        subprocess.run(["mount", "-t", "bpf", "bpf", str(mnt)], check=True)
        try:
            prog = XdpProgram(str(DEFAULT_OBJECT), str(mnt / "govern"))
            prog.set_ports([25])
            try:
                held = trie = 0
                extra = 1 << 22  # the timed hosts, above every filled one
                for n in sorted(args.sizes):
                    added = n - held
                    t = time.perf_counter()
                    prog.update("block", dict.fromkeys((host(i) for i in range(held, n)), 600.0))
                    fill = time.perf_counter() - t
                    held = n
                    base = extra
                    med, p90 = timed(args.reps, lambda i, b=base: prog.update("block", {host(b + i): 600.0}))
                    extra += args.reps
                    line = (
                        f"{n:>9} blocks: add one host (hash map) median {med:.4f} ms, p90 {p90:.4f} ms; "
                        f"filled at {added / max(fill, 1e-9):,.0f}/s"
                    )
                    if n <= maps.PREFIXES_MAX - args.reps:
                        fill_trie(prog, trie, n)
                        trie = n
                        base = extra

                        def into_trie(i: int, b: int = base) -> None:
                            fill_trie(prog, b + i, b + i + 1)

                        tmed, tp90 = timed(args.reps, into_trie)
                        extra += args.reps
                        line += f"; into the LPM trie (before) median {tmed:.4f} ms, p90 {tp90:.4f} ms"
                    else:
                        line += f"; the LPM trie holds at most {maps.PREFIXES_MAX:,}"
                    print(line, flush=True)
                    hashed, verdict = ns_per_packet(prog, host(0))
                    assert verdict == XDP_DROP, verdict
                    free, verdict = ns_per_packet(prog, Prefix(4, (11 << 24) | 1, 32))
                    assert verdict == XDP_PASS, verdict
                    line = f"{n:>9} blocks: per packet, blocked in the hash map {hashed:.0f} ns"
                    line += f"; not blocked {free:.0f} ns"
                    if trie:
                        lone = host(trie - 1)
                        prog.update("block", [], [lone])  # out of the hash map: the trie alone blocks it
                        in_trie, verdict = ns_per_packet(prog, lone)
                        assert verdict == XDP_DROP, verdict
                        line += f"; blocked by the trie alone {in_trie:.0f} ns"
                        prog.update("block", {lone: 600.0})
                    print(line, flush=True)
            finally:
                prog.close()
        finally:
            subprocess.run(["umount", str(mnt)], check=False)


if __name__ == "__main__":
    main()
