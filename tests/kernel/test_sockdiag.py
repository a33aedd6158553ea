"""The sock_diag observer against the real kernel: clients in `net` connect to listeners in `mx`, and
SockDiag (opened inside `mx`) must see exactly what was opened, grouped per source, and destroy what it is told to.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any
from unittest.mock import patch

import pytest

from govern.addr import Prefix
from govern.model import ScanOptions, Shed, SockCounts
from govern.observe import sockdiag
from govern.observe.sockdiag import SockDiag
from tests.netns import MX4, MX6, Lab, Listener, SmtpListener, connect, converse

PORTS = frozenset({25})


@pytest.fixture(params=["one walk", "per family", "unfiltered"])
def diag(request: pytest.FixtureRequest, lab: Lab) -> Iterator[SockDiag]:
    """A SockDiag in the MX namespace, through both dump requests (TCPDIAG_GETSOCK and SOCK_DIAG_BY_FAMILY), and
    without the in-kernel port filter."""
    with lab.mx.entered():
        d = SockDiag()
    d.one_walk = request.param != "per family"
    d.kernel_filter = request.param != "unfiltered"
    try:
        yield d
    finally:
        d.close()


@contextlib.contextmanager
def clients(lab: Lab, pairs: list[tuple[str, str, int]]) -> Iterator[list[socket.socket]]:
    """Connections from (source, destination, port); all closed afterwards."""
    socks: list[socket.socket] = []
    try:
        with lab.net.entered():
            for src, dst, port in pairs:
                socks.append(connect(src, dst, port))
        yield socks
    finally:
        for s in socks:
            s.close()


def wait_held(srv: Listener, n: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while len(srv.held) < n:
        assert time.monotonic() < deadline, f"listener holds {len(srv.held)} of {n}"
        time.sleep(0.01)


def p(text: str) -> Prefix:
    return Prefix.parse(text)


def test_counts_per_source_match_what_was_opened(lab: Lab, diag: SockDiag) -> None:
    srv = Listener(lab.mx, 25)
    # Three IPv4 sources (seen IPv4-mapped on the dual-stack listener) and two IPv6 /64s, 3 connections each;
    # the IPv6 ones come from three different addresses inside their /64.
    v4 = ["198.18.1.1", "198.18.1.2", "198.18.200.7"]
    pairs = [(a, MX4, 25) for a in v4 for _ in range(3)]
    pairs += [(f"2001:db8:bad:{n}::{i}", MX6, 25) for n in (1, 2) for i in (1, 2, 3)]
    try:
        with clients(lab, pairs):
            wait_held(srv, len(pairs))
            scan = diag.scan(ScanOptions(PORTS))
            expected = {p(a): SockCounts(3, 3, 0, 0, 0) for a in v4}
            expected |= {p(f"2001:db8:bad:{n}::/64"): SockCounts(3, 3, 0, 0, 0) for n in (1, 2)}
            assert scan.sources == expected
            assert scan.sockets == 15
            # The same sockets, grouped wider and narrower.
            wide = diag.scan(ScanOptions(PORTS, v4_len=16, v6_len=48))
            assert wide.sources == {
                p("198.18.0.0/16"): SockCounts(9, 9, 0, 0, 0),
                p("2001:db8:bad::/48"): SockCounts(6, 6, 0, 0, 0),
            }
            hosts = diag.scan(ScanOptions(PORTS, v6_len=128))
            assert hosts.sources[p("2001:db8:bad:2::3")] == SockCounts(1, 1, 0, 0, 0)
            assert len(hosts.sources) == 3 + 6
            # Nothing on other ports.
            assert diag.scan(ScanOptions(frozenset({587}))).sources == {}
    finally:
        srv.close()


def test_ipv4_listener_and_several_ports(lab: Lab, diag: SockDiag) -> None:
    """An IPv4-only listener (AF_INET sockets) next to the dual-stack one: the same source, counted once."""
    dual = Listener(lab.mx, 25)
    with lab.mx.entered():
        v4only = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    v4only.bind((MX4, 587))
    v4only.listen(16)
    accepted: list[socket.socket] = []
    try:
        with clients(lab, [("198.18.5.5", MX4, 25), ("198.18.5.5", MX4, 587), ("198.18.5.5", MX4, 587)]):
            wait_held(dual, 1)
            v4only.settimeout(2)
            accepted = [v4only.accept()[0] for _ in range(2)]
            scan = diag.scan(ScanOptions(frozenset({25, 587})))
            assert scan.sources == {p("198.18.5.5"): SockCounts(3, 3, 0, 0, 0)}
            assert diag.scan(ScanOptions(frozenset({587}))).sources == {p("198.18.5.5"): SockCounts(2, 2, 0, 0, 0)}
    finally:
        for c in accepted:
            c.close()
        v4only.close()
        dual.close()


def test_total_matches_ss(lab: Lab, diag: SockDiag) -> None:
    srv = Listener(lab.mx, 25)
    pairs = [(f"198.18.{i // 100}.{i % 100 + 1}", MX4, 25) for i in range(150)]
    pairs += [(f"2001:db8:bad:{i}::1", MX6, 25) for i in range(50)]
    try:
        with clients(lab, pairs):
            wait_held(srv, len(pairs))
            ss = lab.mx.sh("ss", "-Htn", "state", "established", "( sport = :25 )").splitlines()
            scan = diag.scan(ScanOptions(PORTS))
            assert len(ss) == len(pairs)
            assert sum(c.established for c in scan.sources.values()) == len(ss)
            assert len(scan.sources) == 200

            # 200 sockets take several buffers. A dump abandoned after the first leaves the kernel mid-dump, and it
            # refuses another meanwhile (EBUSY): the next scan must drain the rest first.
            def give_up(buf: bytearray, size: int) -> bool:
                raise RuntimeError("abandoned")

            with pytest.raises(RuntimeError):
                diag._dump_all(PORTS, sockdiag._STATES_SCAN, sockdiag._EXT_INFO, give_up)
            assert diag.scan(ScanOptions(PORTS)) == scan
    finally:
        srv.close()


def test_listeners_with_queue_and_backlog(lab: Lab, diag: SockDiag) -> None:
    srv = Listener(lab.mx, 25)  # accepts everything, backlog 4096
    with lab.mx.entered():
        lazy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lazy.bind((MX4, 465))
    lazy.listen(7)  # never accepts: its accept queue fills
    try:
        with clients(lab, [("198.18.9.1", MX4, 465), ("198.18.9.2", MX4, 465)]):
            deadline = time.monotonic() + 5
            while True:
                scan = diag.scan(ScanOptions(frozenset({25, 465})))
                listeners = {(ls.address, ls.port): ls for ls in scan.listeners}
                if listeners[(MX4, 465)].queued == 2 or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            somaxconn = int(lab.mx.sh("sysctl", "-n", "net.core.somaxconn"))
            assert set(listeners) == {("::", 25), (MX4, 465)}
            assert listeners[("::", 25)].backlog == min(4096, somaxconn)
            assert listeners[("::", 25)].queued == 0
            assert listeners[(MX4, 465)].backlog == 7
            assert listeners[(MX4, 465)].queued == 2
            # The listener's inode, as /proc/PID/fd names the socket (who holds it: the MTA, postscreen).
            assert listeners[(MX4, 465)].inode == os.fstat(lazy.fileno()).st_ino
            assert diag.listeners(frozenset({465})) == (listeners[(MX4, 465)],)
            # Connections waiting in the accept queue are ESTABLISHED sockets of their source all the same.
            assert scan.sources[p("198.18.9.1")] == SockCounts(1, 1, 0, 0, 0)
    finally:
        lazy.close()
        srv.close()


def test_idle_is_a_server_waiting_on_a_silent_client(lab: Lab, diag: SockDiag) -> None:
    greeting = SmtpListener(lab.mx, 25)
    mute = Listener(lab.mx, 587, banner=b"")  # never says anything: its clients wait on the server
    silent, talker, waiting = "198.18.20.1", "198.18.20.2", "198.18.20.3"
    try:
        with clients(lab, [(silent, MX4, 25), (talker, MX4, 25), (waiting, MX4, 587)]) as (s, t, _w):
            assert s.recv(64).startswith(b"220")
            replies = converse(t, b"EHLO talker.example", b"MAIL FROM:<a@x.example>", b"RCPT TO:<b@y.example>", b"DATA")
            assert replies[-1].startswith(b"354")
            # The talker keeps sending (a client in the middle of DATA); the server rightly waits for the end.
            deadline = time.monotonic() + 0.8
            while time.monotonic() < deadline:
                t.sendall(b"x" * 100)
                time.sleep(0.05)
            scan = diag.scan(ScanOptions(frozenset({25, 587}), idle_after_ms=300))
            assert scan.sources[p(silent)].idle == 1
            assert 300 <= scan.sources[p(silent)].max_idle_ms < 10_000
            assert scan.sources[p(talker)] == SockCounts(1, 1, 0, 0, 0)
            assert scan.sources[p(waiting)] == SockCounts(1, 1, 0, 0, 0)
            # The silent one was not idle long enough for the default threshold.
            assert diag.scan(ScanOptions(frozenset({25}))).sources[p(silent)].idle == 0
    finally:
        mute.close()
        greeting.close()


def test_syn_recv_counted_time_wait_not(lab: Lab, diag: SockDiag) -> None:
    srv = Listener(lab.mx, 25)
    # The MX drops the final ACK of one source's handshakes: its connections stay SYN_RECV on the MX side.
    lab.mx.sh("nft", "add", "table", "inet", "t")
    lab.mx.sh("nft", "add", "chain", "inet", "t", "in", "{ type filter hook input priority 0; }")
    lab.mx.sh(
        "nft", "add", "rule", "inet", "t", "in", "ip", "saddr", "198.18.30.1", "tcp", "flags", "==", "ack", "drop"
    )
    stuck: list[socket.socket] = []
    try:
        with lab.net.entered():
            for _ in range(2):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                stuck.append(s)
                s.bind(("198.18.30.1", 0))
                s.connect((MX4, 25))  # the client side completes: it got the SYN-ACK
        with clients(lab, [("198.18.30.2", MX4, 25)]) as (c,):
            wait_held(srv, 1)
            assert c.recv(64).startswith(b"220")
            # The server closes first and the client follows: the server side ends in TIME_WAIT.
            srv.held[0].close()
            assert c.recv(64) == b""
            c.close()
            deadline = time.monotonic() + 5
            while "198.18.30.2" not in lab.mx.sh("ss", "-Htn", "state", "time-wait"):
                assert time.monotonic() < deadline, "no TIME_WAIT socket on the MX"
                time.sleep(0.02)
            scan = diag.scan(ScanOptions(PORTS))
            assert scan.sources[p("198.18.30.1")] == SockCounts(2, 0, 2, 0, 0)
            assert p("198.18.30.2") not in scan.sources
            assert scan.sockets == 2
            # Half-open connections can be destroyed too (the kernel drops them from the SYN queue).
            assert diag.destroy([p("198.18.30.1")], PORTS) == 2
            assert diag.scan(ScanOptions(PORTS)).sources == {}
    finally:
        for s in stuck:
            s.close()
        srv.close()


def sockid(local: tuple[str, int], remote: tuple[str, int], cookie: int) -> bytes:
    """A SOCK_DESTROY request for a dual-stack listener's socket, as destroy() builds one from a dump."""
    mapped = [socket.inet_pton(socket.AF_INET6, a if ":" in a else f"::ffff:{a}") for a in (local[0], remote[0])]
    ident = struct.pack(">HH", local[1], remote[1]) + mapped[0] + mapped[1] + struct.pack("=IQ", 0, cookie)
    return sockdiag._REQ_V2.pack(socket.AF_INET6, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF, ident)


def test_destroy_spares_what_is_gone_or_another_socket(lab: Lab, diag: SockDiag) -> None:
    """A destroy request names a socket by 4-tuple and cookie: a socket that vanished since the dump, or another
    socket on the same 4-tuple (another cookie), answers ENOENT, which is neither an error nor counted."""
    srv = Listener(lab.mx, 25)
    try:
        with clients(lab, [("198.18.50.1", MX4, 25), ("198.18.50.2", MX4, 25)]) as (live, gone):
            wait_held(srv, 2)
            live_end, gone_end = [(c.getpeername(), c.getsockname()) for c in (live, gone)]  # (MX, client)
            # The client leaves with the banner unread, so it resets: the server's socket is gone at once.
            gone.close()
            deadline = time.monotonic() + 5
            while p("198.18.50.2") in diag.scan(ScanOptions(PORTS)).sources:
                assert time.monotonic() < deadline, "the reset connection is still there"
                time.sleep(0.02)
            requests = [sockid(*live_end, cookie=0x1234), sockid(*gone_end, cookie=0)]
            assert diag._destroy(requests) == 0
            assert diag.scan(ScanOptions(PORTS)).sources[p("198.18.50.1")] == SockCounts(1, 1, 0, 0, 0)
            live.sendall(b"NOOP\r\n")
            assert live.recv(64).startswith(b"220")
    finally:
        srv.close()


def test_destroy_one_prefix(lab: Lab, diag: SockDiag) -> None:
    srv = Listener(lab.mx, 25)
    doomed = [("198.18.40.1", MX4, 25), ("198.18.40.2", MX4, 25), ("2001:db8:bad:40::1", MX6, 25)]
    spared = [("198.18.41.1", MX4, 25), ("2001:db8:bad:41::1", MX6, 25)]
    try:
        with clients(lab, doomed + spared) as socks:
            wait_held(srv, 5)
            for s in socks:
                assert s.recv(64).startswith(b"220")
            n = diag.destroy([p("198.18.40.0/24"), p("2001:db8:bad:40::/64")], PORTS)
            assert n == 3
            for s in socks[:3]:
                s.settimeout(2)
                with pytest.raises(ConnectionResetError):
                    s.recv(64)
            for s in socks[3:]:
                s.sendall(b"EHLO spared\r\n")  # still connected
            scan = diag.scan(ScanOptions(PORTS))
            assert set(scan.sources) == {p("198.18.41.1"), p("2001:db8:bad:41::/64")}
            # The listener survived: a new client still gets in. Nothing left to destroy elsewhere.
            with clients(lab, [("198.18.40.3", MX4, 25)]) as (again,):
                assert again.recv(64).startswith(b"220")
            assert diag.destroy([p("198.18.42.0/24")], PORTS) == 0
            assert diag.destroy([p("198.18.41.1")], frozenset({587})) == 0
            # That client has hung up; the server, which never closes, holds its end in CLOSE_WAIT.
            deadline = time.monotonic() + 5
            while (scan := diag.scan(ScanOptions(PORTS))).sources.get(p("198.18.40.3")) != SockCounts(1, 0, 0, 0, 0):
                assert time.monotonic() < deadline, scan.sources
                time.sleep(0.02)
            assert scan.sockets == 3
    finally:
        srv.close()


def test_shedding_past_the_greeting_takes_a_session_that_advanced_and_paused_only_when_asked(
    lab: Lab, diag: SockDiag
) -> None:
    """A holder's session that advances now and then (a command, answered, then a pause: the lab's loopers) is past
    the greeting: shed with `past` once it has paused for the wait, never without; a greeted, silent one goes
    either way; one that is still advancing stays."""
    greeting = SmtpListener(lab.mx, 25)
    looper, silent, busy = "198.18.21.1", "198.18.21.2", "198.18.21.3"
    try:
        with clients(lab, [(looper, MX4, 25), (silent, MX4, 25), (busy, MX4, 25)]) as (lo, si, bu):
            assert si.recv(64).startswith(b"220")
            assert converse(lo, b"EHLO looper.example", b"MAIL FROM:<a@x.example>")[-1].startswith(b"250")
            time.sleep(1.2)
            assert converse(bu, b"EHLO busy.example")[-1].startswith(b"250")  # it has just advanced
            wait = Shed(1000, queued=False)
            assert diag.cut({}, PORTS, {p(looper): wait, p(silent): wait}) == {p(silent): 1}
            past = Shed(1000, queued=False, past=True)
            assert diag.cut({}, PORTS, {p(looper): past, p(busy): past}) == {p(looper): 1}
            lo.settimeout(2)
            with pytest.raises(ConnectionResetError):
                lo.recv(64)
            bu.sendall(b"NOOP\r\n")  # still connected
            assert bu.recv(64).startswith(b"250")
    finally:
        greeting.close()


def test_a_session_that_loops_with_no_message_is_shed_and_a_sender_reaching_its_message_is_not(
    lab: Lab, diag: SockDiag
) -> None:
    """A looper (EHLO, MAIL, then recipient after recipient, each answered, never a message) is shed once its
    server has answered the asked number of commands, even while it advances; a session one reply short stays,
    and so does a sender that pipelined to its message; with a wait of 0 nothing else is asked (a silent session
    stays)."""
    greeting = SmtpListener(lab.mx, 25)
    looper, short, sender, silent = "198.18.23.1", "198.18.23.2", "198.18.23.3", "198.18.23.4"
    try:
        with clients(lab, [(looper, MX4, 25), (short, MX4, 25), (sender, MX4, 25), (silent, MX4, 25)]) as socks:
            lo, sh, se, si = socks
            assert si.recv(64).startswith(b"220")
            rcpts = [f"RCPT TO:<r{k}@lab.test>".encode() for k in range(4)]
            assert converse(lo, b"EHLO looper.example", b"MAIL FROM:<a@x.example>", *rcpts)[-1].startswith(b"250")
            assert converse(sh, b"EHLO short.example", b"MAIL FROM:<a@x.example>", *rcpts[:3])[-1].startswith(b"250")
            message = b"MAIL FROM:<a@x.example>\r\nRCPT TO:<r@lab.test>\r\nDATA"
            assert converse(se, b"EHLO sender.example", message)[-1]
            se.sendall(b"Subject: hello\r\n\r\n" + b"x" * 2000 + b"\r\n")
            time.sleep(0.3)
            asked = Shed(0, queued=False, loops=6)
            # Behind postscreen ("220-", then smtpd's banner: a greeting of two segments) the same session is a
            # reply short.
            assert diag.cut({}, PORTS, {p(looper): asked}, greet_ms=7000) == {}
            got = diag.cut({}, PORTS, {p(looper): asked, p(short): asked, p(sender): asked, p(silent): asked})
            assert got == {p(looper): 1}
            lo.settimeout(2)
            with pytest.raises(ConnectionResetError):
                lo.recv(64)
            for c in (sh, si):
                c.sendall(b"NOOP\r\n")  # still connected
                assert c.recv(64).startswith(b"250")
    finally:
        greeting.close()


def test_a_session_greeted_long_ago_with_no_message_is_shed_at_any_pace_and_a_sender_or_a_newcomer_is_not(
    lab: Lab, diag: SockDiag
) -> None:
    """A session whose client, greeted `stale_ms` ago (counted from the first cut that saw it), has sent no message
    and keeps the server waiting is shed, however few commands it said and whatever their size (600 bytes at once,
    as a TLS ClientHello: `loops` never takes it); a sender that sent its message stays, so does a session first
    seen by the later cut, and one whose server has yet to answer it (a slow server's client is not looping)."""
    greeting = SmtpListener(lab.mx, 25)
    hello, sender, late, waiting = "198.18.24.1", "198.18.24.2", "198.18.24.3", "198.18.24.4"
    now = [1000.0]
    diag.clock = lambda: now[0]
    asked = Shed(0, queued=False, stale_ms=15000)
    try:
        with clients(lab, [(hello, MX4, 25), (sender, MX4, 25)]) as (he, se):
            assert converse(he, b"EHLO tls.example", b"x" * 600, b"MAIL FROM:<a@x.example>")[-1]
            assert converse(se, b"EHLO sender.example", b"MAIL FROM:<a@x.example>\r\nRCPT TO:<r@lab.test>\r\nDATA")
            se.sendall(b"Subject: hello\r\n\r\n" + b"x" * 3000 + b"\r\n")
            assert diag.cut({}, PORTS, {p(hello): Shed(0, queued=False, loops=3)}) == {}  # not a loop: 600 bytes
            assert diag.cut({}, PORTS, {p(hello): asked, p(sender): asked}) == {}  # seen greeted now
            with clients(lab, [(late, MX4, 25), (waiting, MX4, 25)]) as (la, wa):
                assert converse(la, b"EHLO late.example")[-1].startswith(b"250")
                assert converse(wa, b"EHLO waiting.example")[-1].startswith(b"250")
                wa.sendall(b"RCPT TO:<r@lab.test>")  # no line end: its server has yet to answer
                time.sleep(0.2)
                now[0] += 15.0
                everyone = {p(hello): asked, p(sender): asked, p(late): asked, p(waiting): asked}
                assert diag.cut({}, PORTS, everyone) == {p(hello): 1}
                he.settimeout(2)
                with pytest.raises(ConnectionResetError):
                    he.recv(64)
                la.sendall(b"NOOP\r\n")  # still connected: its age counts from the second cut
                assert la.recv(64).startswith(b"250")
                time.sleep(0.2)
                # A look that does not ask about it keeps its age all the same.
                assert diag.cut({}, PORTS, {p(sender): asked}) == {}
                now[0] += 15.0
                assert diag.cut({}, PORTS, everyone) == {p(late): 1}
                wa.sendall(b"\r\n")  # still connected, and answered
                assert wa.recv(64).startswith(b"250")
    finally:
        diag.clock = time.monotonic
        greeting.close()


def test_a_session_waiting_in_the_accept_queue_goes_with_behind_only_in_a_look_that_finds_a_loop(
    lab: Lab, diag: SockDiag
) -> None:
    """A holder's session not greeted yet (the MTA busy: still in the accept queue) is taken with `behind` only by a
    cut that finds a loop among the sessions it looks at: without loops in front of it, it waits its turn."""
    greeting = SmtpListener(lab.mx, 25)
    looper, waiting = "198.18.25.1", "198.18.25.2"
    try:
        with clients(lab, [(looper, MX4, 25)]) as (lo,):
            rcpts = [f"RCPT TO:<r{k}@lab.test>".encode() for k in range(3)]
            assert converse(lo, b"EHLO looper.example", b"MAIL FROM:<a@x.example>", *rcpts)[-1].startswith(b"250")
            time.sleep(0.3)  # the listener's last accept is done
            greeting.accepting.clear()  # busy: new connections wait in the accept queue
            time.sleep(0.3)
            with clients(lab, [(waiting, MX4, 25)]) as (wa,):
                time.sleep(0.2)
                queued = Shed(2000, queued=False, behind=True)
                assert diag.cut({}, PORTS, {p(waiting): queued}) == {}  # no loop in front of it
                assert diag.cut({}, PORTS, {p(waiting): queued, p(looper): Shed(0, queued=False, loops=9)}) == {}
                got = diag.cut({}, PORTS, {p(waiting): queued, p(looper): Shed(0, queued=False, loops=4)})
                assert got == {p(looper): 1, p(waiting): 1}
                for c in (lo, wa):
                    c.settimeout(2)
                    with pytest.raises(ConnectionResetError):
                        c.recv(64)
    finally:
        greeting.accepting.set()
        greeting.close()


def test_sessions_of_one_source_with_waits_segments_and_bytes(lab: Lab, diag: SockDiag) -> None:
    """`govern why`'s view: a silent client's wait since the banner, a talker's segments and bytes, and only the
    asked prefix's sessions."""
    srv = Listener(lab.mx, 25)
    silent, talker, other = "198.18.22.1", "198.18.22.2", "2001:db8:bad:22::1"
    try:
        with clients(lab, [(silent, MX4, 25), (talker, MX4, 25), (other, MX6, 25)]) as (s, t, o):
            for c in (s, t, o):
                assert c.recv(64) == srv.banner
            for line in (b"EH", b"LO ", b"client.example\r\n"):
                t.sendall(line)
                time.sleep(0.05)
            time.sleep(0.4)
            (quiet,) = diag.sessions(p(silent), PORTS)
            assert quiet.state == "ESTABLISHED" and quiet.local_port == 25 and quiet.info
            assert quiet.remote == silent and quiet.remote_port == s.getsockname()[1]
            assert quiet.segs_in == 0 and quiet.bytes_in == 0
            assert quiet.segs_out == 1 and quiet.bytes_out == len(srv.banner)
            assert 400 <= quiet.server_sent_ms < 10_000 and quiet.client_sent_ms >= quiet.server_sent_ms
            (busy,) = diag.sessions(p(talker), PORTS)
            assert busy.segs_in == 3 and busy.bytes_in == len(b"EHLO client.example\r\n")
            assert busy.client_sent_ms < busy.server_sent_ms
            assert sorted(x.remote for x in diag.sessions(p("198.18.22.0/24"), PORTS)) == [silent, talker]
            assert [x.remote for x in diag.sessions(p("2001:db8:bad:22::/64"), PORTS)] == [other]
            assert diag.sessions(p(silent), frozenset({587})) == []
    finally:
        srv.close()


def test_falls_back_to_one_dump_per_family(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that refuses the one-walk request: stand in DCCPDIAG_GETSOCK (19) for it, which this kernel
    refuses, and the observer must switch to SOCK_DIAG_BY_FAMILY for good and count the same."""
    monkeypatch.setattr(sockdiag, "TCPDIAG_GETSOCK", 19)
    srv = Listener(lab.mx, 25)
    with lab.mx.entered():
        d = SockDiag()
    try:
        with clients(lab, [("198.18.60.1", MX4, 25), ("2001:db8:bad:60::1", MX6, 25)]):
            wait_held(srv, 2)
            scan = d.scan(ScanOptions(PORTS))
            assert d.one_walk is False
            assert scan.sources == {
                p("198.18.60.1"): SockCounts(1, 1, 0, 0, 0),
                p("2001:db8:bad:60::/64"): SockCounts(1, 1, 0, 0, 0),
            }
    finally:
        d.close()
        srv.close()


def test_numpy_path_parses_a_real_dump_as_the_per_message_loop(lab: Lab, diag: SockDiag) -> None:
    # Enough sockets that most dump buffers are runs of one message kind (the numpy path): two listeners, IPv4
    # (mapped) and IPv6 sources, several per source, on two ports; idle or not as the thresholds say.
    srv = Listener(lab.mx, 25)
    srv4 = Listener(lab.mx, 465)
    pairs = [(f"198.18.{i // 100}.{i % 100}", MX4, 25) for i in range(300)]
    pairs += [(f"198.18.9.{i % 40}", MX4, 465) for i in range(120)]
    pairs += [(f"2001:db8:bad:{i % 50:x}::{i // 50 + 1}", MX6, 25) for i in range(200)]
    ports = frozenset({25, 465})
    try:
        with clients(lab, pairs):
            wait_held(srv, 500)
            wait_held(srv4, 120)
            chunks: list[bytes] = []

            def record(buf: bytes | bytearray | memoryview, size: int) -> bool:
                chunks.append(bytes(buf[:size]))
                return sockdiag._walk(buf, size, lambda _b, _o, _n: None)

            diag._dump_all(ports, sockdiag._STATES_SCAN, sockdiag._EXT_INFO, record)
            assert len(chunks) > 4
            cases: tuple[dict[str, Any], ...] = ({}, {"idle_after_ms": 0}, {"v4_len": 24, "v6_len": 48})
            for kw in cases:
                scans = []
                for vector in (False, True):
                    parser = sockdiag.ScanParser(ScanOptions(ports, **kw), vector=vector)
                    for c in chunks:
                        parser.feed(c)
                    scans.append(parser.result())
                assert scans[1] == scans[0]
            assert scans[1].sockets == 620
            assert len(scans[1].listeners) == 2
            assert diag.scan(ScanOptions(ports)).sources == sockdiag.parse_dump(chunks, ScanOptions(ports)).sources
    finally:
        srv.close()
        srv4.close()


def test_reading_the_listeners_between_ticks_leaves_the_scans_cache_alone(lab: Lab) -> None:
    """The daemon reads the accept queues between ticks (daemon.queue_poll): that read must not empty the cache of
    source groups the scans keep, or every tick's scan would pay for every source as new."""
    from govern.observe import sockdiag as sd

    srv = Listener(lab.mx, 25, backlog=64)
    conns = []
    try:
        with lab.net.entered():
            conns = [connect(f"198.18.9.{i}", MX4, 25) for i in range(1, 41)]
        with lab.mx.entered():
            diag = SockDiag()
        try:
            with patch.object(sd, "_GROUPS_STALE", 0):  # any pruning would show at once
                diag.scan(ScanOptions(frozenset({25})))
                cached = dict(diag.groups)
                assert len(cached) >= 40
                (listener,) = diag.listeners(frozenset({25}))
                assert listener.port == 25 and listener.backlog == 64
                assert diag.groups == cached
        finally:
            diag.close()
    finally:
        for c in conns:
            c.close()
        srv.close()
