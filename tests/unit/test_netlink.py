"""govern/netlink.py without the kernel: framing round-trips, error parsing, and dump iteration over a fake socket."""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable

import pytest

from govern import netlink
from govern.errors import KernelError
from govern.netlink import NLM_F_MULTI, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NetlinkError, NetlinkSocket, NlError

DATA = 0x30  # any type above the control messages
NETLINK_ROUTE = 0  # a protocol anyone may open: the fake socket replaces it at once


def data(seq: int, payload: bytes, *, flags: int = NLM_F_MULTI) -> bytes:
    return netlink.nlmsg(DATA, flags, seq, netlink.attr(1, payload))


def done(seq: int, err: int = 0) -> bytes:
    return netlink.nlmsg(NLMSG_DONE, NLM_F_MULTI, seq, struct.pack("=i", -err))


def nlmsgerr(seq: int, err: int, *, request: bytes | None = None, tlvs: bytes = b"") -> bytes:
    """An NLMSG_ERROR: capped (the request's header only) unless `request` is echoed whole."""
    flags = (0 if request is not None else 0x100) | (0x200 if tlvs else 0)
    echoed = request if request is not None else struct.pack("=IHHII", 60, 0x0A0C, 5, seq, 0)
    return netlink.NLMSGHDR.pack(20 + len(echoed) + len(tlvs), NLMSG_ERROR, flags, seq, 4242) + (
        struct.pack("=i", -err) + echoed + tlvs
    )


# --- framing --------------------------------------------------------------------------------------------------


def test_message_and_attributes_round_trip() -> None:
    body = netlink.attr(1, b"\x01\x02\x03") + netlink.strz(2, "govern") + netlink.attr(0x8000 | 3, netlink.attr(4, b""))
    assert len(body) % 4 == 0
    buf = netlink.nlmsg(DATA, 5, 77, body) + netlink.nlmsg(NLMSG_NOOP, 0, 78, b"")
    got = list(netlink.messages(buf, len(buf)))
    assert got == [(0, 16 + len(body), DATA, 5, 77), (16 + len(body), 16, NLMSG_NOOP, 0, 78)]
    found = [(t, bytes(buf[a:e])) for t, a, e in netlink.attrs(buf, 16, 16 + len(body))]
    assert found == [(1, b"\x01\x02\x03"), (2, b"govern\0"), (3, netlink.attr(4, b""))]  # nested flag masked off
    assert [netlink.align(n) for n in (0, 1, 4, 5, 8)] == [0, 4, 4, 8, 8]


@pytest.mark.parametrize(
    "buf",
    [
        netlink.nlmsg(DATA, 0, 1, b"")[:12],  # header cut short
        struct.pack("=IHHII", 8, DATA, 0, 1, 0),  # length below the header's
        struct.pack("=IHHII", 64, DATA, 0, 1, 0),  # length past the buffer
    ],
)
def test_malformed_messages_raise_eproto(buf: bytes) -> None:
    with pytest.raises(NetlinkError) as exc:
        list(netlink.messages(buf, len(buf)))
    assert exc.value.errno == errno.EPROTO
    with pytest.raises(NetlinkError):
        netlink.ends_dump(buf, len(buf), 1)  # a reader thread stops on it and passes the error on


def test_malformed_attributes_raise_eproto() -> None:
    for raw in (struct.pack("=HH", 2, 1), struct.pack("=HH", 12, 1) + b"\0\0\0\0"):
        with pytest.raises(NetlinkError) as exc:
            list(netlink.attrs(raw, 0, len(raw)))
        assert exc.value.errno == errno.EPROTO


# --- errors ---------------------------------------------------------------------------------------------------


def test_error_with_extended_ack_capped_and_echoed() -> None:
    text = b"no such element\0"
    tlvs = netlink.attr(1, text) + struct.pack("=HHI", 8, 2, 96)
    capped = nlmsgerr(9, errno.ENOENT, tlvs=tlvs)
    assert netlink.parse_errors(capped) == [NlError(9, errno.ENOENT, 96, "no such element")]
    request = netlink.nlmsg(DATA, 1, 9, netlink.attr(1, b"x" * 13))  # echoed whole: the TLVs follow its padding
    echoed = nlmsgerr(9, errno.ENOENT, request=request, tlvs=tlvs)
    assert netlink.parse_errors(echoed) == [NlError(9, errno.ENOENT, 96, "no such element")]
    ack = nlmsgerr(8, 0)
    assert netlink.parse_errors(ack + done(3) + capped) == [
        NlError(8, 0, -1, ""),
        NlError(9, errno.ENOENT, 96, "no such element"),
    ]


def test_one_exception_type_with_errno_and_the_kernels_words() -> None:
    exc = NlError(9, errno.ENOENT, 96, "no such element").error("nftables: cannot add 198.18.0.1")
    assert isinstance(exc, KernelError) and exc.errno == errno.ENOENT and exc.offset == 96
    assert str(exc) == "nftables: cannot add 198.18.0.1: No such file or directory (ENOENT) (no such element)"
    assert exc.detail == "no such element"


def test_terminal_messages_and_their_errors() -> None:
    for msg, ends in ((data(1, b"x"), False), (done(1), True), (nlmsgerr(1, 0), True)):
        assert netlink.terminal(msg, 0, len(msg), msg[4], msg[6], "dump") is ends
    for msg, code in ((done(1, errno.EBUSY), errno.EBUSY), (nlmsgerr(1, errno.EPERM), errno.EPERM)):
        with pytest.raises(NetlinkError, match=r"^sock_diag dump: .*\(E") as exc:
            netlink.terminal(msg, 0, len(msg), msg[4], msg[6], "sock_diag dump")
        assert exc.value.errno == code


def test_walk_keeps_its_request_and_stops_at_the_end() -> None:
    buf = data(4, b"a") + netlink.nlmsg(NLMSG_NOOP, 0, 5, b"") + data(3, b"stale") + data(5, b"b") + done(5)
    buf += data(5, b"after the end")
    got = [(mtype, bytes(buf[off + 20 : off + ln])) for off, ln, mtype, _f in netlink.walk(buf, len(buf), "d", 5)]
    assert got == [(DATA, b"b\0\0\0"), (NLMSG_DONE, b"")]
    assert netlink.ends_dump(buf, len(buf), 5) and not netlink.ends_dump(buf, len(buf), 4)


# --- the socket, over a fake --------------------------------------------------------------------------------


class FakeSock:
    """Stands in for the kernel: each request sent gets `replies(seq)`, one buffer per recv; nothing queued is a
    timeout (SO_RCVTIMEO's EAGAIN), or the end of a drain."""

    def __init__(self, replies: Callable[[int], list[bytes]]) -> None:
        self.replies = replies
        self.queued: list[bytes] = []
        self.sent: list[bytes] = []
        self.drained = 0

    def send(self, data: bytes) -> int:
        self.sent.append(bytes(data))
        self.queued += self.replies(netlink.NLMSGHDR.unpack_from(data, 0)[3])
        return len(data)

    def recv_into(self, view: memoryview, size: int, flags: int = 0) -> int:
        if not self.queued:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        chunk = self.queued.pop(0)
        if flags & socket.MSG_DONTWAIT:
            self.drained += 1
        view[: min(len(chunk), size)] = chunk[:size]
        return len(chunk) if flags & socket.MSG_TRUNC else min(len(chunk), size)

    def setsockopt(self, *args: object) -> None:
        pass

    def getsockopt(self, *args: object) -> int:
        return 1 << 20

    def close(self) -> None:
        pass


def fake(replies: Callable[[int], list[bytes]], recv_size: int = 4096) -> tuple[NetlinkSocket, FakeSock]:
    nl = NetlinkSocket(NETLINK_ROUTE, "test", rcvbuf=1 << 16, recv_size=recv_size, slack=64, timeout_s=1)
    nl._sock.close()
    sock = FakeSock(replies)
    nl._sock = sock  # type: ignore[assignment]
    return nl, sock


def collect(out: list[bytes], what: str = "test dump") -> Callable[[netlink.Buffer, int], bool]:
    """A feed that keeps each data message's attribute payload and ends at the dump's end."""

    def feed(buf: netlink.Buffer, n: int) -> bool:
        for off, ln, mtype, _flags in netlink.walk(buf, n, what):
            if mtype == NLMSG_DONE:
                return True
            out.append(bytes(buf[off + 20 : off + ln]).rstrip(b"\0"))
        return False

    return feed


def test_dump_reads_a_multipart_reply_split_across_reads() -> None:
    nl, sock = fake(lambda seq: [data(seq, b"a") + data(seq, b"b"), data(seq, b"c"), data(seq, b"d") + done(seq)])
    out: list[bytes] = []
    nl.dump(netlink.nlmsg(DATA, 0, 0, b""), collect(out), "the dump")
    assert out == [b"a", b"b", b"c", b"d"]
    ln, mtype, flags, seq, _pid = netlink.NLMSGHDR.unpack(sock.sent[0])
    assert (ln, mtype, flags) == (16, DATA, netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP)
    assert not nl.dirty
    # The next request has the next number; nothing to drain.
    nl.dump(netlink.nlmsg(DATA, 0, 0, b""), collect(out), "the dump")
    assert netlink.NLMSGHDR.unpack(sock.sent[1])[3] == seq + 1 and sock.drained == 0


def test_an_error_in_the_middle_of_a_dump_raises_and_the_rest_is_drained_before_the_next() -> None:
    first = True

    def replies(seq: int) -> list[bytes]:
        nonlocal first
        if first:
            first = False
            return [data(seq, b"a"), done(seq, errno.EBUSY), data(seq, b"left over")]
        return [data(seq, b"z") + done(seq)]

    nl, sock = fake(replies)
    out: list[bytes] = []
    with pytest.raises(NetlinkError) as exc:
        nl.dump(netlink.nlmsg(DATA, 0, 0, b""), collect(out, "test dump"), "the dump")
    assert exc.value.errno == errno.EBUSY and "test dump: Device or resource busy (EBUSY)" in str(exc.value)
    assert out == [b"a"] and nl.dirty
    nl.dump(netlink.nlmsg(DATA, 0, 0, b""), collect(out), "the dump")
    assert sock.drained == 1 and out == [b"a", b"z"] and not nl.dirty


def test_a_refusal_as_the_first_answer_raises() -> None:
    nl, _sock = fake(lambda seq: [nlmsgerr(seq, errno.EOPNOTSUPP)])
    with pytest.raises(NetlinkError) as exc:
        nl.dump(netlink.nlmsg(DATA, 0, 0, b""), collect([]), "the dump")
    assert exc.value.errno == errno.EOPNOTSUPP


def test_dump_skips_buffers_of_an_earlier_request() -> None:
    nl, _sock = fake(lambda seq: [data(seq - 1, b"old") + done(seq - 1), data(seq, b"new") + done(seq)])
    out: list[bytes] = []
    nl.dump(netlink.nlmsg(DATA, 0, 0, b""), collect(out), "the dump")
    assert out == [b"new"]


def test_a_long_dump_is_read_ahead_by_a_thread_in_order() -> None:
    n = 50
    nl, _sock = fake(lambda seq: [data(seq, str(i).encode()) for i in range(n)] + [done(seq)])
    out: list[bytes] = []
    nl.dump(netlink.nlmsg(DATA, 0, 0, b""), collect(out), "the dump", read_ahead_after=3)
    assert out == [str(i).encode() for i in range(n)] and not nl.dirty


def test_read_ahead_passes_on_an_error_in_the_middle() -> None:
    nl, _sock = fake(lambda seq: [data(seq, b"x")] * 5 + [nlmsgerr(seq, errno.EINTR)])
    out: list[bytes] = []
    with pytest.raises(NetlinkError) as exc:
        nl.dump(netlink.nlmsg(DATA, 0, 0, b""), collect(out), "the dump", read_ahead_after=2)
    assert exc.value.errno == errno.EINTR and out == [b"x"] * 5


def test_no_answer_and_a_truncated_answer() -> None:
    nl, _sock = fake(lambda seq: [])
    with pytest.raises(NetlinkError, match="no answer from the kernel to the dump") as exc:
        nl.dump(netlink.nlmsg(DATA, 0, 0, b""), collect([]), "the dump")
    assert exc.value.errno == errno.ETIMEDOUT
    nl, _sock = fake(lambda seq: [data(seq, bytes(200)) + done(seq)], recv_size=128)
    with pytest.raises(NetlinkError) as exc:
        nl.dump(netlink.nlmsg(DATA, 0, 0, b""), collect([]), "the dump")
    assert exc.value.errno == errno.EMSGSIZE


def test_acks_and_sequence_numbers() -> None:
    nl, sock = fake(lambda seq: [nlmsgerr(seq, 0) + nlmsgerr(seq + 1, errno.ENOENT)])
    first = nl.next_seq(2)
    assert nl.next_seq() == first + 2
    nl.send(netlink.nlmsg(DATA, netlink.NLM_F_ACK, first, b"") + netlink.nlmsg(DATA, 0, first + 1, b""), "two")
    assert nl.read_acks("two") == [NlError(first, 0, -1, ""), NlError(first + 1, errno.ENOENT, -1, "")]
    # A reservation never wraps around inside itself.
    nl._seq = 0xFFFFFFFF - 3
    assert nl.next_seq(8) == 1 and nl.next_seq() == 9
    assert len(sock.sent) == 1
