"""The adversary matrix's traffic roles against a recording SMTP stand-in in a real namespace: the bots say exactly
what they claim (drip never a line end, babble N junk bytes after the banner, slowtalk a long pause then one command
a gap), reconnect when dropped, the IPv6 swarm spreads over distinct /64s, and the legitimate roles deliver."""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.kernel.test_lab_traffic import Responder, established, finish, run, start, wait_for
from tests.netns import MX4, MX6, Lab, Netns


@dataclass
class Conn:
    peer: str
    opened: float
    closed: float | None = None
    chunks: list[tuple[float, bytes]] = field(default_factory=list)

    @property
    def data(self) -> bytes:
        return b"".join(d for _, d in self.chunks)


class Recorder:
    """Accepts every connection, greets it, records what arrives and when; answers each complete line with 250 (QUIT
    with 221 and a close); with `close_after`, closes each connection that many seconds after accepting it."""

    def __init__(
        self, ns: Netns, close_after: float | None = None, banner: bytes = b"220 mx.lab.test ESMTP\r\n"
    ) -> None:
        self.close_after, self.banner = close_after, banner
        self.conns: list[Conn] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        with ns.entered():
            self.lsock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("::", 25))
        self.lsock.listen(256)
        self.lsock.settimeout(0.1)
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                s, addr = self.lsock.accept()
            except TimeoutError:
                continue
            c = Conn(str(addr[0]).removeprefix("::ffff:"), time.monotonic())
            with self.lock:
                self.conns.append(c)
            t = threading.Thread(target=self._serve, args=(s, c), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, s: socket.socket, c: Conn) -> None:
        with s:
            s.settimeout(0.05)
            s.sendall(self.banner)
            buf = b""
            while not self.stop.is_set():
                if self.close_after is not None and time.monotonic() - c.opened >= self.close_after:
                    with contextlib.suppress(OSError):
                        s.sendall(b"421 4.4.2 mx.lab.test Error: timeout exceeded\r\n")
                    break
                try:
                    data = s.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                c.chunks.append((time.monotonic(), data))
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line[:4].upper() == b"QUIT":
                        s.sendall(b"221 2.0.0 Bye\r\n")
                        c.closed = time.monotonic()
                        return
                    s.sendall(b"250 2.0.0 Ok\r\n")
            c.closed = time.monotonic()

    def close(self) -> None:
        self.stop.set()
        self.acceptor.join(5)
        for t in self.threads:
            t.join(5)
        self.lsock.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def recorded(
    lab: Lab, tmp_path: Path, role: str, *args: str, close_after: float | None = None
) -> tuple[dict[str, Any], str, list[Conn]]:
    """Run one bot role to its end against a Recorder: its report, its stdout and every connection the server saw."""
    with Recorder(lab.mx, close_after=close_after) as srv:
        doc, stdout = run(lab.net, role, tmp_path / f"{role}.json", *args)
        return doc, stdout, list(srv.conns)


def test_drip_one_junk_byte_a_drip_never_a_line_end_and_back_within_reconnect(lab: Lab, tmp_path: Path) -> None:
    doc, stdout, conns = recorded(
        lab, tmp_path, "drip", "--dst", MX4, "--dst", MX6, "--sources", "198.18.5.0/30", "--sources",
        "2001:db8:bad:5::/126", "--count", "2", "--per-source", "2", "--drip", "0.25", "--reconnect", "0.5",
        "--ramp", "0", "--duration", "3.5", close_after=1.2,
    )  # fmt: skip
    peers = Counter(c.peer for c in conns)
    assert len(peers) == 2 and sum(":" in p for p in peers) == 1  # one source of each family
    assert all(p.startswith(("198.18.5.", "2001:db8:bad:5::")) for p in peers)
    everything = b"".join(c.data for c in conns)
    assert everything and b"\r" not in everything and b"\n" not in everything and everything.isalnum()
    for c in conns:
        if c.closed is None or c.closed - c.opened < 1.1:
            continue  # the generator's own stop, or a connection it closed at the end
        # about one byte every 0.25 s for the 1.2 s the server kept it, none in the first ~0.2 s
        assert 3 <= len(c.data) <= 6, (c.peer, c.chunks)
        assert all(len(d) == 1 for _, d in c.chunks) and c.chunks[0][0] - c.opened > 0.2
    # the server cut each connection after 1.2 s; each slot was back within --reconnect 0.5 s (+ slack)
    for peer in peers:
        mine = sorted((c for c in conns if c.peer == peer), key=lambda c: c.opened)
        closes = sorted(c.closed for c in mine if c.closed is not None)
        opens = [c.opened for c in mine]
        assert len(mine) >= 2 * 3  # two slots, each cut at 1.2 s and 2.4 s
        for closed in closes[:-2]:
            later = [o for o in opens if o > closed]
            assert later and min(later) - closed < 0.5 + 0.3
    t = doc["totals"]
    assert t["sources"] == 2 and t["connections_wanted"] == 4 and t["dropped"] >= 8 and t["errors"] == 0
    assert t["bytes_sent"] == len(everything) and t["reconnects"] >= 8
    assert stdout.startswith("drip: 2 sources;")


def test_babble_sends_its_bytes_without_a_line_end_after_the_banner_then_holds(lab: Lab, tmp_path: Path) -> None:
    with Recorder(lab.mx) as srv:
        proc = start(
            lab.net, "babble", tmp_path / "b.json", "--dst", MX4, "--dst", MX6, "--sources", "198.18.6.0/30",
            "--sources", "2001:db8:bad:6::/126", "--count", "4", "--per-source", "1", "--bytes", "300",
            "--ramp", "0", "--duration", "2.5",
        )  # fmt: skip
        wait_for(lambda: len(srv.conns) == 4 and all(len(c.data) == 300 for c in srv.conns), 5, "300 bytes each")
        held = established(lab.mx, "198.18.6.") + established(lab.mx, "2001:db8:bad:6:")
        doc, _ = finish(proc, tmp_path / "b.json")
        conns = list(srv.conns)
    assert sum(held.values()) == 4  # held after babbling, not closed
    for c in conns:
        assert len(c.data) == 300 and b"\r" not in c.data and b"\n" not in c.data and c.data.isalnum()
        assert c.chunks[-1][0] - c.opened < 0.5  # all of it at once, right after the banner
    t = doc["totals"]
    assert t["bytes_sent"] == 1200 and t["held_at_end"] == 4 and t["dropped"] == t["reconnects"] == 0


def test_slowtalk_pauses_before_ehlo_then_one_command_a_gap(lab: Lab, tmp_path: Path) -> None:
    doc, _, conns = recorded(
        lab, tmp_path, "slowtalk", "--dst", MX4, "--sources", "198.18.7.0/30", "--count", "2", "--per-source", "1",
        "--pause", "1.2", "--gap", "0.5", "--ramp", "0", "--duration", "3",
    )  # fmt: skip
    assert len(conns) == 2
    for c in conns:
        lines = c.data.split(b"\r\n")
        assert lines[0] == b"EHLO slowtalk.bots.lab.test" and lines[1].startswith(b"MAIL FROM:<")
        assert all(x.startswith(b"RCPT TO:<") for x in lines[2:-1]) and lines[-1] == b""
        times = [t - c.opened for t, _ in c.chunks]
        assert 1.1 < times[0] < 1.5, times  # nothing at all during the pause
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert gaps and all(0.4 < g < 0.7 for g in gaps), gaps
        assert len(c.chunks) in (3, 4)  # 1.2 s, then every 0.5 s until 3 s
    t = doc["totals"]
    assert t["commands"] == sum(len(c.chunks) for c in conns) and t["held_at_end"] == 2


def test_prove_holds_a_spam_bots_dialogue_at_once_then_stays_silent(lab: Lab, tmp_path: Path) -> None:
    # The Recorder answers every line with 250: DATA too, the bot does not mind.
    doc, _, conns = recorded(
        lab, tmp_path, "prove", "--dst", MX4, "--sources", "198.18.8.0/30", "--count", "2", "--per-source", "1",
        "--ramp", "0", "--duration", "2",
    )  # fmt: skip
    assert len(conns) == 2
    for c in conns:
        lines = c.data.split(b"\r\n")
        assert lines[0] == b"EHLO prove.bots.lab.test" and lines[1].startswith(b"MAIL FROM:<")
        assert lines[2].startswith(b"RCPT TO:<") and lines[3] == b"DATA" and lines[4:] == [b""]
        assert c.chunks[-1][0] - c.opened < 0.5  # the whole dialogue at once, each line after its reply
    t = doc["totals"]
    assert t["commands"] == 8 and t["held_at_end"] == 2 and t["dropped"] == 0  # then held, silent


def test_ipv6_swarm_spreads_one_source_per_64(lab: Lab, tmp_path: Path) -> None:
    with Responder(lab.mx, slots=1000, backlog=1024):
        proc = start(
            lab.net, "swarm", tmp_path / "v6.json", "--dst", MX6, "--sources", "2001:db8:bad::/48", "--count", "300",
            "--per-source", "1", "--spread", "64", "--ramp", "0.5", "--duration", "3",
        )  # fmt: skip
        wait_for(lambda: sum(established(lab.mx, "2001:db8:bad:").values()) == 300, 5, "300 swarm sessions")
        peers = established(lab.mx, "2001:db8:bad:")
        finish(proc, tmp_path / "v6.json")
    nets = {ipaddress.IPv6Network((int(ipaddress.IPv6Address(p)) >> 64 << 64, 64)) for p in peers}
    assert len(peers) == len(nets) == 300


def test_strangers_and_slowlegit_deliver(lab: Lab, tmp_path: Path) -> None:
    with Responder(lab.mx) as srv:
        st = start(
            lab.net, "strangers", tmp_path / "st.json", "--dst", MX4, "--dst", MX6, "--count", "40", "--over", "2",
            "--duration", "3", "--size", "2-20",
        )  # fmt: skip
        sl = start(lab.net, "slowlegit", tmp_path / "sl.json", "--dst", MX4, "--pause", "0.2", "--rate", "1",
                   "--duration", "3", "--size", "4")  # fmt: skip
        sdoc, _ = finish(st, tmp_path / "st.json")
        ldoc, _ = finish(sl, tmp_path / "sl.json")
        peers = set(srv.peers)
    ev = sdoc["events"]
    assert 40 <= len(ev) <= 80 and all(e["ok"] for e in ev)
    srcs = {e["src"] for e in ev}
    assert len(srcs) == 40 and srcs <= peers
    assert all(
        ipaddress.ip_address(s) in ipaddress.ip_network("198.51.100.128/25")
        or ipaddress.ip_address(s) in ipaddress.ip_network("2001:db8:51:100::/56")
        for s in srcs
    )
    assert max(e["t_start"] for e in ev) < 2.0  # every message within --over
    lt = ldoc["totals"]
    assert lt["ok"] >= 1 and lt["failed"] == 0  # one started each second; the later ones are still talking
    # a pause before each of EHLO, MAIL, RCPT, DATA and QUIT (the message follows the 354 at once)
    assert min(e["latency"] for e in ldoc["events"] if e["ok"]) >= 5 * 0.2
    assert {e["src"] for e in ldoc["events"]} == {"198.51.100.20"}
