"""The sock_diag parser on synthesized netlink bytes, laid out as Linux 6.x sends them (no root needed).

An inet_diag dump message is nlmsghdr + inet_diag_msg + attributes. For a full socket Linux 6.18 sends SHUTDOWN,
MARK, CGROUP_ID, SOCKOPT and then INFO (tcp_info, 280 bytes) when asked for it: 408 bytes in all (a dual-stack
listener adds SKV6ONLY); request sockets (SYN_RECV) and TIME_WAIT sockets carry MARK only: 96 bytes.
"""

from __future__ import annotations

import errno
import random
import socket
import struct
from collections.abc import Callable
from typing import Any

import pytest

from govern.addr import Prefix
from govern.errors import KernelError
from govern.model import ListenerStats, ScanOptions
from govern.observe.sockdiag import (
    ScanParser,
    SessionInfo,
    SockCounts,
    SockDiag,
    parse_dump,
    port_bytecode,
    stalled,
)

ESTABLISHED, SYN_RECV, TIME_WAIT, CLOSE_WAIT, LISTEN = 1, 3, 6, 8, 10
TCPDIAG_GETSOCK, SOCK_DIAG_BY_FAMILY = 18, 20
NLMSG_ERROR, NLMSG_DONE, NLM_F_MULTI = 2, 3, 2
TCP_INFO_SIZE = 280
PORTS = frozenset({25, 465, 587})


def addr16(text: str) -> bytes:
    if ":" in text:
        return socket.inet_pton(socket.AF_INET6, text)
    return socket.inet_pton(socket.AF_INET, text) + bytes(12)


def attr(atype: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), atype) + payload
    return raw + bytes(-len(raw) % 4)


def tcp_info(
    sent: int = 0, recv: int = 0, segs_out: int = 1, size: int = TCP_INFO_SIZE, segs_in: int = 0, brecv: int = 0
) -> bytes:
    info = bytearray(size)
    info[0] = ESTABLISHED
    struct.pack_into("=I", info, 44, sent)  # tcpi_last_data_sent
    struct.pack_into("=I", info, 52, recv)  # tcpi_last_data_recv
    if size >= 160:
        struct.pack_into("=Q", info, 128, brecv)  # tcpi_bytes_received
        struct.pack_into("=I", info, 152, segs_in)  # tcpi_data_segs_in
        struct.pack_into("=I", info, 156, segs_out)  # tcpi_data_segs_out
    return bytes(info)


def full_attrs(info: bytes | None, *, info_first: bool = False) -> bytes:
    rest = attr(8, b"\x00") + attr(15, struct.pack("=I", 0)) + attr(21, struct.pack("=Q", 1234)) + attr(22, b"\0\0")
    if info is None:
        return rest
    return attr(2, info) + rest if info_first else rest + attr(2, info)


def sock(
    remote: str,
    *,
    state: int = ESTABLISHED,
    local: str | None = None,
    sport: int = 25,
    family: int | None = None,
    sent: int = 0,
    recv: int = 0,
    segs_out: int = 1,
    segs_in: int = 0,
    brecv: int = 0,
    rqueue: int = 0,
    inode: int = 9,
    wqueue: int = 0,
    attrs: bytes | None = None,
    mtype: int = TCPDIAG_GETSOCK,
) -> bytes:
    """One dump message for a socket with local port `sport` and remote address `remote`."""
    if family is None:
        family = socket.AF_INET6 if ":" in remote else socket.AF_INET
    if local is None:
        local = "203.0.113.25" if family == socket.AF_INET else "2001:db8:25::25"
    if attrs is None:
        mark_only = attr(15, struct.pack("=I", 0))
        attrs = (
            mark_only
            if state in (SYN_RECV, TIME_WAIT)
            else full_attrs(tcp_info(sent, recv, segs_out, segs_in=segs_in, brecv=brecv))
        )
    sockid = struct.pack(">HH", sport, 0 if state == LISTEN else 41000) + addr16(local) + addr16(remote)
    sockid += struct.pack("=IQ", 0, 77)
    queues = struct.pack("=IIIII", 0, rqueue, wqueue, 0, inode)  # expires, rqueue, wqueue, uid, inode
    body = struct.pack("=BBBB", family, state, 0, 0) + sockid + queues + attrs
    return struct.pack("=IHHII", 16 + len(body), mtype, NLM_F_MULTI, 1, 0) + body


def done(err: int = 0) -> bytes:
    return struct.pack("=IHHIIi", 20, NLMSG_DONE, NLM_F_MULTI, 1, 0, err)


def error(err: int) -> bytes:
    return struct.pack("=IHHIIi", 36, NLMSG_ERROR, 0, 1, 0, -err) + struct.pack("=IHHII", 92, 18, 0x301, 1, 0)


def p(text: str) -> Prefix:
    return Prefix.parse(text)


def test_ipv4_ipv6_and_mapped_sources() -> None:
    chunks = [
        sock("198.18.0.1") + sock("198.18.0.1") + sock("2001:db8:bad:1::1"),
        # A dual-stack listener's IPv4 client is an AF_INET6 socket with an IPv4-mapped address.
        sock("::ffff:198.18.0.1") + sock("2001:db8:bad:1::2") + sock("::ffff:198.18.7.9"),
        done(),
    ]
    scan = parse_dump(chunks, ScanOptions(PORTS))
    assert scan.sources == {
        p("198.18.0.1"): SockCounts(3, 3, 0, 0, 0),
        p("198.18.7.9"): SockCounts(1, 1, 0, 0, 0),
        p("2001:db8:bad:1::/64"): SockCounts(2, 2, 0, 0, 0),
    }
    assert scan.sockets == 6
    assert scan.listeners == ()


def test_states_time_wait_not_held_and_listeners_apart() -> None:
    chunks = [
        sock(
            "::",
            state=LISTEN,
            local="::",
            rqueue=3,
            wqueue=4096,
            inode=70001,
            attrs=full_attrs(tcp_info()) + attr(11, b"\0"),
        )
        + sock("0.0.0.0", state=LISTEN, local="203.0.113.25", sport=587, wqueue=100, inode=70002)
        + sock("198.18.0.1")
        + sock("198.18.0.1", state=TIME_WAIT)
        + sock("198.18.0.1", state=SYN_RECV)
        + sock("198.18.0.1", state=CLOSE_WAIT)
        + sock("198.18.0.2", state=TIME_WAIT),
        done(),
    ]
    scan = parse_dump(chunks, ScanOptions(PORTS))
    assert scan.sources == {p("198.18.0.1"): SockCounts(3, 1, 1, 0, 0)}
    assert scan.sockets == 3
    # Each with its socket's inode (who holds it: govern.observe.mta, govern.sysctl.backlog).
    assert scan.listeners == (
        ListenerStats("203.0.113.25", 587, 0, 100, 70002),
        ListenerStats("::", 25, 3, 4096, 70001),
    )


@pytest.mark.parametrize(
    ("sent", "recv", "segs_out", "segs_in", "brecv", "idle"),
    [
        (12_000, 15_000, 1, 0, 0, True),  # banner out 12 s ago, nothing from the client for longer: a silent bot
        (12_000, 15_000, 1, 2, 12, True),  # the same after a pre-banner burst: it has said nothing since the banner
        (10_000, 10_000, 3, 0, 0, True),  # greeted in the handshake's jiffy, never a word from the client
        (10_000, 10_000, 2, 1, 28, True),  # a pre-banner EHLO, answered within the jiffy it arrived: silent since
        (10_000, 10_000, 3, 1, 8, True),  # a command answered within its jiffy: the server spoke more, and waits
        (10_000, 10_000, 2, 2, 30, False),  # a command that came within the jiffy of the last reply: not answered yet
        (12_000, 40, 5, 9, 60_000, False),  # the client sent 40 ms ago, full segments: in the middle of DATA
        (200, 30_000, 2, 0, 0, False),  # the server answered 200 ms ago: not waiting long yet
        (15_000, 15_000, 0, 0, 0, False),  # the server never sent anything (accept queue, no greeting): not the client
        (9_999, 50_000, 1, 0, 0, False),  # just under the threshold
        (12_000, 500, 1, 6, 6, True),  # dripping since the banner, a byte at a time: nothing it sent was a command
        (12_000, 500, 1, 1, 300, True),  # babbling: 300 bytes that never made a command, no reply but the banner
        (12_000, 500, 3, 9, 40, True),  # answered twice, then a command dripped a few bytes at a time
        (12_000, 500, 3, 4, 40, False),  # one segment more than answered: a command waiting on a slow server
        (12_000, 500, 4, 3, 60, False),  # pipelined: fewer segments than replies, waiting on the server
    ],
)
def test_idle_rule(sent: int, recv: int, segs_out: int, segs_in: int, brecv: int, idle: bool) -> None:
    one = sock("198.18.0.1", sent=sent, recv=recv, segs_out=segs_out, segs_in=segs_in, brecv=brecv)
    scan = parse_dump([one, done()], ScanOptions(PORTS))
    expected = SockCounts(1, 1, 0, 1, sent) if idle else SockCounts(1, 1, 0, 0, 0)
    assert scan.sources == {p("198.18.0.1"): expected}


def test_idle_counts_and_longest_wait_per_source() -> None:
    chunk = (
        sock("198.18.0.1", sent=12_000, recv=12_500)
        + sock("::ffff:198.18.0.1", sent=30_000, recv=31_000)
        + sock("198.18.0.1", sent=20_000, recv=25_000)
        + sock("198.18.0.1", sent=20_000, recv=100, segs_out=4, segs_in=4, brecv=80)  # waits on the server
        + sock("2001:db8:bad::1", sent=400, recv=900)
        + sock("2001:db8:bad::2", sent=700, recv=700)
    )
    scan = parse_dump([chunk, done()], ScanOptions(PORTS, idle_after_ms=500))
    assert scan.sources == {
        p("198.18.0.1"): SockCounts(4, 4, 0, 3, 30_000),
        p("2001:db8:bad::/64"): SockCounts(2, 2, 0, 1, 700),
    }


def test_grouping_lengths() -> None:
    chunk = (
        sock("198.18.0.1")
        + sock("::ffff:198.18.0.200")
        + sock("198.18.1.1")
        + sock("2001:db8:bad:1::1")
        + sock("2001:db8:bad:1:ffff::2")
        + sock("2001:db8:bad:2::1")
        + sock("2001:db8:bad:2::1:1", state=SYN_RECV)
    )
    one = SockCounts(1, 1, 0, 0, 0)

    def scan(v4: int, v6: int) -> dict[Prefix, SockCounts]:
        return parse_dump([chunk, done()], ScanOptions(PORTS, v4_len=v4, v6_len=v6)).sources

    assert scan(24, 48) == {
        p("198.18.0.0/24"): SockCounts(2, 2, 0, 0, 0),
        p("198.18.1.0/24"): one,
        p("2001:db8:bad::/48"): SockCounts(4, 3, 1, 0, 0),
    }
    assert scan(32, 128) == {
        p("198.18.0.1"): one,
        p("198.18.0.200"): one,
        p("198.18.1.1"): one,
        p("2001:db8:bad:1::1"): one,
        p("2001:db8:bad:1:ffff::2"): one,
        p("2001:db8:bad:2::1"): one,
        p("2001:db8:bad:2::1:1"): SockCounts(1, 0, 1, 0, 0),
    }
    assert scan(16, 96)[p("2001:db8:bad:2::/96")] == SockCounts(2, 1, 1, 0, 0)
    assert scan(0, 0) == {p("0.0.0.0/0"): SockCounts(3, 3, 0, 0, 0), p("::/0"): SockCounts(4, 3, 1, 0, 0)}
    assert scan(32, 63)[p("2001:db8:bad::/63")] == SockCounts(2, 2, 0, 0, 0)  # :0 and :1 /64s


def test_other_ports_are_ignored() -> None:
    chunk = sock("198.18.0.1", sport=80) + sock("198.18.0.2", sport=465) + sock("0.0.0.0", state=LISTEN, sport=22)
    scan = parse_dump([chunk, done()], ScanOptions(PORTS))
    assert scan.sources == {p("198.18.0.2"): SockCounts(1, 1, 0, 0, 0)}
    assert scan.listeners == ()
    assert scan.sockets == 1


def test_multipart_dump_over_many_buffers() -> None:
    parser = ScanParser(ScanOptions(PORTS, idle_after_ms=500))
    msgs = [sock(f"198.18.{i // 200}.{i % 200}", sent=i, recv=5000) for i in range(1000)]
    msgs += [sock(f"2001:db8:bad:{i}::1") for i in range(500)]
    msgs += [sock(f"198.18.9.{i}", state=SYN_RECV) for i in range(40)]
    # Buffers of varying numbers of whole messages, as recv() hands them over; DONE comes last, alone.
    start, sizes = 0, [1, 7, 80, 3, 200, 79]
    i = 0
    while start < len(msgs):
        n = sizes[i % len(sizes)]
        assert parser.feed(b"".join(msgs[start : start + n])) is False
        start += n
        i += 1
    assert parser.feed(done()) is True
    scan = parser.result()
    assert len(scan.sources) == 1000 + 500 + 40
    assert scan.sockets == 1540
    assert sum(c.idle for c in scan.sources.values()) == 500  # sent = i ms ago: i >= 500 waited long enough
    assert scan.sources[p("198.18.2.99")] == SockCounts(1, 1, 0, 0, 0)
    assert scan.sources[p("198.18.4.199")] == SockCounts(1, 1, 0, 1, 999)
    assert scan.sources[p("198.18.9.39")] == SockCounts(1, 0, 1, 0, 0)


def test_layouts_that_differ_from_the_first_seen() -> None:
    # Same length as the usual message, but INFO first: the remembered offset holds another attribute, so
    # the header check must catch it and walk.
    moved = sock("198.18.0.1", attrs=full_attrs(tcp_info(20_000, 30_000), info_first=True))
    usual = sock("198.18.0.2", sent=20_000, recv=30_000)
    assert len(moved) == len(usual)
    # A longer tcp_info (a newer kernel) and an extra attribute: other lengths, learnt as they come.
    longer = sock("198.18.0.3", attrs=full_attrs(tcp_info(20_000, 30_000, size=TCP_INFO_SIZE + 16)))
    extra = sock("198.18.0.4", attrs=full_attrs(tcp_info(20_000, 30_000)) + attr(13, b"cubic\0"))
    # An old kernel's short tcp_info (no tcpi_data_segs_out): counted, never idle.
    old = sock("198.18.0.5", attrs=full_attrs(tcp_info(20_000, 30_000, size=104)))
    # SOCK_DIAG_BY_FAMILY answers mixed in.
    v2 = sock("198.18.0.6", sent=20_000, recv=30_000, mtype=SOCK_DIAG_BY_FAMILY)
    scan = parse_dump([usual + moved + longer + usual + extra + old + v2 + moved, done()], ScanOptions(PORTS))
    idle = SockCounts(1, 1, 0, 1, 20_000)
    assert scan.sources == {
        p("198.18.0.1"): SockCounts(2, 2, 0, 2, 20_000),
        p("198.18.0.2"): SockCounts(2, 2, 0, 2, 20_000),
        p("198.18.0.3"): idle,
        p("198.18.0.4"): idle,
        p("198.18.0.5"): SockCounts(1, 1, 0, 0, 0),
        p("198.18.0.6"): idle,
    }


def test_nlmsg_error_raises_kernel_error() -> None:
    parser = ScanParser(ScanOptions(PORTS))
    assert parser.feed(sock("198.18.0.1")) is False
    with pytest.raises(KernelError) as exc:
        parser.feed(error(errno.EINVAL))
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(KernelError) as exc:
        parse_dump([sock("198.18.0.1") + done(-errno.EBUSY)], ScanOptions(PORTS))
    assert exc.value.errno == errno.EBUSY


def test_malformed_buffers_raise_kernel_error() -> None:
    whole = sock("198.18.0.1")
    with pytest.raises(KernelError) as exc:
        parse_dump([whole + whole[:100]], ScanOptions(PORTS))  # the second message is cut short
    assert exc.value.errno == errno.EPROTO
    bad_len = bytearray(whole)
    struct.pack_into("=I", bad_len, 0, 8)
    with pytest.raises(KernelError):
        parse_dump([bytes(bad_len)], ScanOptions(PORTS))


def test_group_cache_is_reused() -> None:
    cache: dict[bytes, Prefix] = {}
    chunks = [sock("198.18.0.1") + sock("::ffff:198.18.0.2") + sock("2001:db8:bad::1"), done()]
    for _ in range(2):
        parser = ScanParser(ScanOptions(PORTS))
        for c in chunks:
            parser.feed(c)
        scan = parser.result(cache)
        assert set(scan.sources) == {p("198.18.0.1"), p("198.18.0.2"), p("2001:db8:bad::/64")}
        assert set(cache.values()) == set(scan.sources)
    # Addresses that went away are dropped once they pile up.
    cache.update((i.to_bytes(4, "big"), Prefix(4, i, 32)) for i in range(20_000))
    parser = ScanParser(ScanOptions(PORTS))
    for c in chunks:
        parser.feed(c)
    assert set(parser.result(cache).sources) == set(cache.values())
    assert len(cache) == 3


def random_dump(rng: random.Random, n: int, info_size: int = TCP_INFO_SIZE) -> list[bytes]:
    """A dump of `n` sockets of every kind the scan meets, in buffers of whole messages of varying size; full
    sockets carry a tcp_info of `info_size` bytes."""
    msgs = [sock("::", state=LISTEN, local="::", rqueue=2, wqueue=100, attrs=full_attrs(tcp_info()) + attr(11, b"\0"))]
    for _ in range(n):
        r = rng.random()
        v4 = f"198.18.{rng.randrange(4)}.{rng.randrange(40)}"
        remote = (
            v4
            if r < 0.3
            else f"::ffff:{v4}"
            if r < 0.6
            else f"2001:db8:bad:{rng.randrange(30):x}::{rng.randrange(1, 9)}"
            if r < 0.85
            else f"2001:db8:{rng.randrange(3):x}:{rng.randrange(30):x}::1"
        )
        state = rng.choice([ESTABLISHED] * 12 + [SYN_RECV, TIME_WAIT, CLOSE_WAIT])
        sent = rng.choice([0, 3, 499, 500, 501, 2000, 20_000])
        kw = {
            "state": state,
            "sport": rng.choice([25, 25, 25, 587, 80]),
            "sent": sent,
            "recv": rng.choice([0, sent, sent + 1, max(sent - 1, 0), 40_000]),
            "segs_out": rng.choice([0, 1, 1, 2, 5]),
            "segs_in": rng.choice([0, 1, 3, 9]),
            "brecv": rng.choice([0, 10, 100, 5000]),
        }
        info = tcp_info(
            kw["sent"], kw["recv"], kw["segs_out"], size=info_size, segs_in=kw["segs_in"], brecv=kw["brecv"]
        )
        if state == ESTABLISHED and rng.random() < 0.02:  # tcp_info elsewhere than its kind has it
            msgs.append(sock(remote, sport=kw["sport"], attrs=full_attrs(info, info_first=True)))
        elif state in (SYN_RECV, TIME_WAIT):
            msgs.append(sock(remote, **kw))  # type: ignore[arg-type]
        else:
            msgs.append(sock(remote, **kw, attrs=full_attrs(info)))  # type: ignore[arg-type]
    chunks, start = [], 0
    while start < len(msgs):
        k = rng.choice([1, 2, 5, 40, 80, 80, 80])
        chunks.append(b"".join(msgs[start : start + k]))
        start += k
    return [*chunks, done()]


# 280 bytes of tcp_info: 408-byte messages (Linux 6.18); 276: 404 bytes, not a multiple of 8 (the runs' heads are
# then compared in numpy instead of through a memoryview of 8-byte words).
@pytest.mark.parametrize(("seed", "info_size"), [(seed, 280) for seed in range(5)] + [(7, 276)])
def test_numpy_path_counts_as_the_per_message_loop(seed: int, info_size: int) -> None:
    rng = random.Random(seed)
    chunks = random_dump(rng, 3000, info_size)
    for v4_len, v6_len in ((32, 64), (24, 48), (0, 0)):
        idle_counts = []
        for idle_after, greet, pregreet in ((500, 0, False), (0, 2000, False), (0, 2000, True)):
            kw: dict[str, Any] = {
                "v4_len": v4_len,
                "v6_len": v6_len,
                "idle_after_ms": idle_after,
                "greet_ms": greet,
                "pregreet_cut": pregreet,
            }
            scans = []
            for vector in (False, True):
                parser = ScanParser(ScanOptions(PORTS, **kw), vector=vector)
                for c in chunks:
                    parser.feed(c)
                scans.append(parser.result())
                # The numpy path did take most of it (the per-message loop only what the runs left).
                assert bool(parser._bulk) is (vector and v6_len <= 64)
            assert scans[1] == scans[0]
            assert scans[1].sources and scans[1].listeners
            idle_counts.append(sum(c.idle for c in scans[1].sources.values()))
        # The dump holds talkers in the pregreet wait: cutting them makes more idle than the floor allows.
        assert idle_counts[2] > idle_counts[1]


def run_bytecode(bc: bytes, sport: int) -> bool:
    """inet_diag_bc_run() for the ops port_bytecode uses (S_EQ, JMP): accepted when the program ends exactly."""
    pos, left = 0, len(bc)
    while left > 0:
        code, yes, no = struct.unpack_from("=BBH", bc, pos)
        if code == 11:  # INET_DIAG_BC_S_EQ, the port in the next op's `no`
            ok = sport == struct.unpack_from("=BBH", bc, pos + 4)[2]
        elif code == 1:  # INET_DIAG_BC_JMP
            ok = False
        else:
            raise AssertionError(f"unexpected op {code}")
        step = yes if ok else no
        pos, left = pos + step, left - step
    return left == 0


def audit_bytecode(bc: bytes) -> None:
    """inet_diag_bc_audit(): every op on the `yes` path, jumps in range, 4-aligned, onto op boundaries."""
    boundaries, pos = set(), 0
    while pos < len(bc):
        boundaries.add(pos)
        pos += struct.unpack_from("=BBH", bc, pos)[1]
    boundaries.add(len(bc))
    pos, left = 0, len(bc)
    while left > 0:
        code, yes, no = struct.unpack_from("=BBH", bc, pos)
        min_len = 8 if code == 11 else 4
        assert left >= min_len
        assert min_len <= no <= left + 4 and no % 4 == 0
        if no < left:
            assert pos + no in boundaries
        assert min_len <= yes <= left + 4 and yes % 4 == 0
        pos, left = pos + yes, left - yes
    assert left == 0


@pytest.mark.parametrize("ports", [frozenset({25}), frozenset({25, 465, 587}), frozenset({1, 65535})])
def test_port_bytecode(ports: frozenset[int]) -> None:
    bc = port_bytecode(ports)
    audit_bytecode(bc)
    for port in (*ports, 24, 26, 80, 466, 586, 588, 2525):
        assert run_bytecode(bc, port) is (port in ports)
    with pytest.raises(ValueError):
        port_bytecode(frozenset({70000}))


def session_info(sent: int, recv: int, segs_in: int, segs_out: int, bytes_in: int, bytes_out: int) -> bytes:
    info = bytearray(tcp_info(sent, recv, segs_out, segs_in=segs_in))
    struct.pack_into("=QQ", info, 120, bytes_out, bytes_in)  # tcpi_bytes_acked, tcpi_bytes_received
    return bytes(info)


def sessions_from(chunks: list[bytes], prefix: str, ports: frozenset[int] = PORTS) -> list[SessionInfo]:
    """`SockDiag.sessions` over synthesized dump buffers instead of the kernel's."""
    diag = SockDiag()
    try:

        def dump(_ports: frozenset[int], _states: int, _ext: int, feed: Callable[[bytearray, int], bool]) -> None:
            for c in chunks:
                if feed(bytearray(c), len(c)):
                    return

        diag._dump_all = dump  # type: ignore[method-assign,assignment]
        return diag.sessions(p(prefix), ports)
    finally:
        diag.close()


def test_sessions_of_one_prefix_with_their_tcp_info() -> None:
    chunks = [
        sock("198.18.0.1", attrs=full_attrs(session_info(41_000, 41_000, 0, 1, 0, 19)))  # silent since the banner
        + sock("::ffff:198.18.0.1", sport=587, attrs=full_attrs(session_info(300, 20, 9, 4, 9, 120)))  # dripping
        + sock("198.18.0.1", state=SYN_RECV)  # a request socket: no tcp_info
        + sock("198.18.0.1", state=TIME_WAIT)
        + sock("198.18.0.1", sport=22)
        + sock("198.18.0.2", attrs=full_attrs(session_info(1, 1, 0, 1, 0, 19))),
        done(),
    ]
    got = sessions_from(chunks, "198.18.0.1")
    assert got == [
        SessionInfo("198.18.0.1", 41000, 25, "ESTABLISHED", True, 41_000, 41_000, 0, 1, 0, 19),
        SessionInfo("198.18.0.1", 41000, 587, "ESTABLISHED", True, 300, 20, 9, 4, 9, 120),
        SessionInfo("198.18.0.1", 41000, 25, "SYN_RECV", False),
    ]
    assert [s.remote for s in sessions_from(chunks, "198.18.0.0/24")] == ["198.18.0.1"] * 3 + ["198.18.0.2"]
    assert sessions_from(chunks, "2001:db8::/32") == []


def test_sessions_report_a_failed_dump() -> None:
    with pytest.raises(KernelError, match="EPERM"):
        sessions_from([error(errno.EPERM)], "198.18.0.1")


@pytest.mark.parametrize(
    ("sent", "segs_out", "idle"),
    [
        (5_000, 1, False),  # postscreen's "220-" 5 s ago: waiting out its pregreet test, as told
        (8_000, 1, True),  # past the pregreet wait and a second: not postscreen's doing any more
        (5_000, 2, True),  # smtpd's banner followed: the wave's threshold alone
    ],
)
def test_the_pregreet_floor_holds_only_while_the_server_sent_its_first_segment(
    sent: int, segs_out: int, idle: bool
) -> None:
    one = sock("198.18.0.1", sent=sent, recv=sent + 100, segs_out=segs_out)
    scan = parse_dump([one, done()], ScanOptions(PORTS, idle_after_ms=3_000, greet_ms=7_000))
    assert (scan.sources[p("198.18.0.1")].idle == 1) is idle
    # The rule itself, as the cut applies it per socket.
    assert stalled(sent, sent + 100, 0, 0, segs_out, 3_000, 7_000) is idle


@pytest.mark.parametrize(
    ("pregreet_cut", "segs_in", "idle"),
    [
        (False, 1, False),  # a talker in the wait, postscreen letting it through: waited for like the silent
        (True, 1, True),  # postscreen enforces its test: the talker's session carries no mail, judged at once
        (True, 0, False),  # the silent client is waiting as told, whatever postscreen does to talkers
    ],
)
def test_a_client_that_talks_during_an_enforced_pregreet_wait_is_not_under_the_floor(
    pregreet_cut: bool, segs_in: int, idle: bool
) -> None:
    # postscreen's "220-" went out 5 s ago (the floor is 7 s); the client talked 4.9 s ago, or never.
    recv = 4_900 if segs_in else 5_100
    one = sock("198.18.0.1", sent=5_000, recv=recv, segs_out=1, segs_in=segs_in, brecv=12 * segs_in)
    scan = parse_dump([one, done()], ScanOptions(PORTS, idle_after_ms=3_000, greet_ms=7_000, pregreet_cut=pregreet_cut))
    assert (scan.sources[p("198.18.0.1")].idle == 1) is idle
    assert stalled(5_000, recv, 12 * segs_in, segs_in, 1, 3_000, 7_000, pregreet_cut) is idle
