"""Netlink as govern speaks it: the part every netlink client of govern shares (sock_diag and nfnetlink).

This module owns:
- framing: the nlmsghdr and nlattr layouts, 4-byte alignment, packing a message or an attribute, and walking the
  messages of a received buffer and the attributes of a message;
- errors: NLMSG_ERROR (with the extended ack's text and offset, when the socket asked for them) and an NLMSG_DONE
  that carries an error, parsed into `NlError` and raised as `NetlinkError` (a KernelError with the errno and a
  message that names what was asked and the kernel's reason); an NLMSG_ERROR of errno 0 is an ack;
- the socket: opening and binding a NETLINK_* socket in the network namespace of the thread that opens it (for
  good: a netlink socket stays in the namespace it was created in), its buffer sizes, capped (and extended) acks,
  the kernel-side receive timeout, sequence numbers, and draining what an abandoned exchange left queued;
- sending a request and reading its replies: one reused receive buffer (with room past its end for a parser that
  reads fixed-size records), and dump iteration until NLMSG_DONE, with a reader thread for long dumps.

What a protocol puts inside its messages (inet_diag requests and records, nfnetlink batches and set elements) and
what it does with the replies stays in its own module: govern/observe/sockdiag.py and govern/nft/netlink.py.
"""

from __future__ import annotations

import errno as errnos
import os
import queue
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import NamedTuple

from govern.errors import KernelError

__all__ = [
    "NLATTR",
    "NLA_F_NESTED",
    "NLA_TYPE_MASK",
    "NLMSGHDR",
    "NLMSG_DONE",
    "NLMSG_ERROR",
    "NLMSG_HDRLEN",
    "NLMSG_NOOP",
    "NLM_F_ACK",
    "NLM_F_CREATE",
    "NLM_F_DUMP",
    "NLM_F_DUMP_INTR",
    "NLM_F_MULTI",
    "NLM_F_REQUEST",
    "Buffer",
    "Feed",
    "NetlinkError",
    "NetlinkSocket",
    "NlError",
    "align",
    "attr",
    "attrs",
    "ends_dump",
    "find_attr",
    "header",
    "messages",
    "nlmsg",
    "parse_error",
    "parse_errors",
    "strerror",
    "strz",
    "terminal",
    "walk",
]

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_CAPPED = 0x100  # on an NLMSG_ERROR: the request is not echoed past its header
NLM_F_ACK_TLVS = 0x200  # on an NLMSG_ERROR: extended ack attributes follow
NLM_F_DUMP = 0x300
NLM_F_CREATE = 0x400
NLMSGERR_ATTR_MSG = 1
NLMSGERR_ATTR_OFFS = 2
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence number, port id
NLMSG_HDRLEN = NLMSGHDR.size
NLATTR = struct.Struct("=HH")  # length (header included), type
_I32 = struct.Struct("=i")
_U32 = struct.Struct("=I")
_FLAGS_SEQ = struct.Struct("=HI")  # nlmsg_flags, nlmsg_seq: what `dump` fills in a prepared request
_SEQ_MASK = 0xFFFFFFFF

Buffer = bytes | bytearray | memoryview


# --- framing --------------------------------------------------------------------------------------------------


def align(n: int) -> int:
    """`n` rounded up to netlink's 4-byte alignment (NLMSG_ALIGN, NLA_ALIGN)."""
    return (n + 3) & ~3


def nlmsg(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    """One netlink message: a header for `body` (whose length the caller keeps aligned), port id 0 (the kernel)."""
    return NLMSGHDR.pack(NLMSG_HDRLEN + len(body), mtype, flags, seq, 0) + body


def attr(atype: int, payload: bytes) -> bytes:
    """One attribute, padded to alignment."""
    n = 4 + len(payload)
    return NLATTR.pack(n, atype) + payload + bytes(align(n) - n)


def strz(atype: int, text: str) -> bytes:
    """A NUL-terminated string attribute."""
    return attr(atype, text.encode() + b"\0")


def header(buf: Buffer, off: int, n: int) -> tuple[int, int, int, int]:
    """(length, type, flags, sequence number) of the message at `off` in `buf[:n]`.

    A header cut short, or a length that is too short or runs past `n`, raises NetlinkError (EPROTO): the kernel
    never sends one.
    """
    if n - off < NLMSG_HDRLEN:
        raise NetlinkError("netlink: truncated message header", errnos.EPROTO)
    ln, mtype, flags, seq, _pid = NLMSGHDR.unpack_from(buf, off)
    if ln < NLMSG_HDRLEN or ln > n - off:
        raise NetlinkError(f"netlink: bad message length {ln}", errnos.EPROTO)
    return ln, mtype, flags, seq


def messages(buf: Buffer, n: int) -> Iterator[tuple[int, int, int, int, int]]:
    """The messages in `buf[:n]`: (offset, length, type, flags, sequence number) of each (checked as `header`)."""
    off = 0
    while off < n:
        ln, mtype, flags, seq = header(buf, off, n)
        yield off, ln, mtype, flags, seq
        off += align(ln)


def attrs(buf: Buffer, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """The attributes in `buf[start:end]`: (type without the nested/byte-order flags, payload start, payload end).

    An attribute whose length is too short or runs past `end` raises NetlinkError (EPROTO).
    """
    while start + 4 <= end:
        alen, atype = NLATTR.unpack_from(buf, start)
        if alen < 4 or alen > end - start:
            raise NetlinkError(f"netlink: bad attribute length {alen}", errnos.EPROTO)
        yield atype & NLA_TYPE_MASK, start + 4, start + alen
        start += align(alen)


def find_attr(buf: Buffer, start: int, end: int, atype: int) -> int:
    """The offset of the first attribute of type `atype` in `buf[start:end]` (of its header), -1 if none; checked
    as `attrs` checks. A plain loop, not a generator: it runs once per socket where sock_diag reads tcp_info."""
    while start + 4 <= end:
        alen, found = NLATTR.unpack_from(buf, start)
        if alen < 4 or alen > end - start:
            raise NetlinkError(f"netlink: bad attribute length {alen}", errnos.EPROTO)
        if found & NLA_TYPE_MASK == atype:
            return start
        start += (alen + 3) & ~3
    return -1


# --- errors ---------------------------------------------------------------------------------------------------


def strerror(code: int) -> str:
    """An errno for a person and for grep: "No such file or directory (ENOENT)"."""
    return f"{os.strerror(code)} ({errnos.errorcode.get(code, code)})"


class NetlinkError(KernelError):
    """The kernel refused a netlink request or a reply could not be read.

    `errno` is the kernel's (positive); `detail` the extended ack's text, "" if none; `offset` the byte of the
    request the kernel blamed (extended ack), -1 if none.
    """

    def __init__(self, what: str, errno: int = 0, *, detail: str = "", offset: int = -1) -> None:
        super().__init__(what, errno)
        self.detail = detail
        self.offset = offset


class NlError(NamedTuple):
    """An NLMSG_ERROR reply: errno 0 is an ack."""

    seq: int  # of the request it answers
    errno: int
    offset: int  # of the attribute the kernel blames, from the start of the request; -1 if none
    message: str  # the kernel's extended ack text, "" if none

    def error(self, what: str) -> NetlinkError:
        """The exception for this refusal of `what`: "what: reason (kernel's text)"."""
        text = f"{what}: {strerror(self.errno)}" + (f" ({self.message})" if self.message else "")
        return NetlinkError(text, self.errno, detail=self.message, offset=self.offset)


def parse_error(buf: Buffer, off: int, ln: int, flags: int) -> NlError:
    """The NLMSG_ERROR message at `off` (its length and flags as the header says)."""
    if ln < NLMSG_HDRLEN + 4:
        raise NetlinkError("netlink: truncated error message", errnos.EPROTO)
    (err,) = _I32.unpack_from(buf, off + NLMSG_HDRLEN)
    orig_len, orig_seq = 0, NLMSGHDR.unpack_from(buf, off)[3]
    if ln >= NLMSG_HDRLEN + 4 + NLMSG_HDRLEN:
        orig_len, _t, _f, orig_seq, _p = NLMSGHDR.unpack_from(buf, off + NLMSG_HDRLEN + 4)
    offset, text = -1, ""
    if flags & NLM_F_ACK_TLVS:
        # The request is echoed whole unless capped (NETLINK_CAP_ACK); the ack's attributes follow it.
        p = off + NLMSG_HDRLEN + 4 + (NLMSG_HDRLEN if flags & NLM_F_CAPPED else align(orig_len))
        for atype, a, end in attrs(buf, p, off + ln):
            if atype == NLMSGERR_ATTR_OFFS and end - a >= 4:
                (offset,) = _U32.unpack_from(buf, a)
            elif atype == NLMSGERR_ATTR_MSG:
                text = bytes(buf[a:end]).split(b"\0", 1)[0].decode(errors="replace")
    return NlError(orig_seq, -err, offset, text)


def parse_errors(buf: Buffer, n: int | None = None) -> list[NlError]:
    """The NLMSG_ERROR messages (acks and refusals) among the messages in `buf[:n]`."""
    return [
        parse_error(buf, off, ln, flags)
        for off, ln, mtype, flags, _seq in messages(buf, len(buf) if n is None else n)
        if mtype == NLMSG_ERROR
    ]


def terminal(buf: Buffer, off: int, ln: int, mtype: int, flags: int, what: str) -> bool:
    """Whether the message at `off` ends its request's replies (NLMSG_DONE, or an NLMSG_ERROR, which an ack is).

    A refusal (NLMSG_ERROR with an errno) and a dump that failed part-way (NLMSG_DONE whose payload is a negative
    errno) raise NetlinkError, as "what: reason".
    """
    if mtype == NLMSG_DONE:
        err = _I32.unpack_from(buf, off + NLMSG_HDRLEN)[0] if ln >= NLMSG_HDRLEN + 4 else 0
        if err < 0:
            raise NetlinkError(f"{what}: {strerror(-err)}", -err)
        return True
    if mtype == NLMSG_ERROR:
        e = parse_error(buf, off, ln, flags)
        if e.errno:
            raise e.error(what)
        return True
    return False


def walk(buf: Buffer, n: int, what: str, seq: int | None = None) -> Iterator[tuple[int, int, int, int]]:
    """The messages of one received buffer of replies to `what`, as (offset, length, type, flags), until one that
    ends them (NLMSG_DONE or an ack, yielded last). With `seq`, only the replies to that request; NLMSG_NOOP is
    skipped. An error raises NetlinkError (see `terminal`)."""
    for off, ln, mtype, flags, mseq in messages(buf, n):
        if (seq is not None and mseq != seq) or mtype == NLMSG_NOOP:
            continue
        end = terminal(buf, off, ln, mtype, flags, what)
        yield off, ln, mtype, flags
        if end:
            return


def ends_dump(buf: Buffer, n: int, seq: int) -> bool:
    """True if `buf[:n]` holds the NLMSG_DONE or NLMSG_ERROR that ends dump `seq` (a reader's test, before the
    buffer is parsed; a malformed one raises as `messages` does)."""
    return any(mseq == seq and mtype in (NLMSG_DONE, NLMSG_ERROR) for _o, _l, mtype, _f, mseq in messages(buf, n))


# --- the socket -----------------------------------------------------------------------------------------------

Feed = Callable[[Buffer, int], bool]


class NetlinkSocket:
    """A netlink socket to the kernel, for one protocol, in the network namespace of the thread that opened it.

    Blocking, with a kernel-side receive timeout (SO_RCVTIMEO) rather than settimeout(), which would poll() before
    every recv. Replies are read into `buf`, one buffer for the socket's life: `recv_size` bytes for the kernel,
    then `slack` bytes a parser may read past the last message. One exchange at a time, not for use from several
    threads at once (`dump`'s own reader thread aside); an exchange abandoned half-way leaves the socket `dirty`,
    and the next `send` first drains what it left queued (the kernel refuses a new dump while one is running).

    `name` prefixes every error ("sock_diag", "nftables").
    """

    def __init__(
        self,
        protocol: int,
        name: str,
        *,
        rcvbuf: int,
        sndbuf: int = 0,
        recv_size: int,
        slack: int = 0,
        ext_ack: bool = False,
        timeout_s: int,
    ) -> None:
        self.name = name
        self.recv_size = recv_size
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
        except OSError as exc:
            raise NetlinkError(f"{name}: cannot open a netlink socket: {exc.strerror}", exc.errno or 0) from None
        self._sock = sock
        try:
            self._setbuf(SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf)
            if sndbuf:
                self._setbuf(SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf)
            self.sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            # Errors without the echoed request (a destroy batch or a transaction can be megabytes).
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            if ext_ack:
                # The kernel's reason in words, and the offset of the attribute it refused.
                sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("=qq", timeout_s, 0))
            sock.bind((0, 0))
        except OSError as exc:
            sock.close()
            raise NetlinkError(f"{name}: cannot set up the netlink socket: {exc.strerror}", exc.errno or 0) from None
        self.buf = bytearray(recv_size + slack)
        self._view = memoryview(self.buf)
        # Random start: replies to an earlier process's requests on a recycled port id never match.
        self._seq = int.from_bytes(os.urandom(2), "big") << 8
        self.dirty = False

    def _setbuf(self, force_opt: int, opt: int, size: int) -> None:
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, force_opt, size)
        except PermissionError:
            # Without CAP_NET_ADMIN the kernel caps the size at net.core.[rw]mem_max.
            self._sock.setsockopt(socket.SOL_SOCKET, opt, size)

    def close(self) -> None:
        self._view.release()
        self._sock.close()

    def next_seq(self, count: int = 1) -> int:
        """Reserve `count` consecutive sequence numbers, the first returned; they never wrap around inside one
        reservation (the kernel only echoes them, so wrapping between requests is harmless)."""
        if self._seq + count > _SEQ_MASK:
            self._seq = 1
        seq = self._seq
        self._seq += count
        return seq

    def _error(self, exc: OSError, what: str) -> NetlinkError:
        if isinstance(exc, BlockingIOError):  # SO_RCVTIMEO ran out
            return NetlinkError(f"{self.name}: no answer from the kernel to {what}", errnos.ETIMEDOUT)
        # ENOBUFS: replies were lost, so the outcome of the request is unknown.
        return NetlinkError(f"{self.name}: {what}: {exc.strerror}", exc.errno or 0)

    def send(self, data: bytes | bytearray, what: str) -> None:
        """Send one or more requests in one sendmsg, after draining what an abandoned exchange left."""
        if self.dirty:
            self.drain()
        if len(data) + 1024 > self.sndbuf:
            # The kernel refuses a message longer than the send buffer; it doubles the value it is given.
            try:
                self._setbuf(SO_SNDBUFFORCE, socket.SO_SNDBUF, len(data) + 1024)
                self.sndbuf = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            except OSError as exc:
                raise self._error(exc, f"send buffer for {what}") from None
        self.dirty = True
        try:
            sent = self._sock.send(data)
        except OSError as exc:
            raise self._error(exc, f"sending {what} ({len(data)} bytes)") from None
        if sent != len(data):
            raise NetlinkError(f"{self.name}: short send of {what}: {sent} of {len(data)} bytes", errnos.EMSGSIZE)

    def recv(self, what: str) -> int:
        """Read one buffer of replies into `buf`; returns its length."""
        try:
            n = self._sock.recv_into(self._view, self.recv_size, socket.MSG_TRUNC)
        except OSError as exc:
            raise self._error(exc, f"reading the answer to {what}") from None
        if n > self.recv_size:
            raise NetlinkError(f"{self.name}: a {n}-byte answer to {what} did not fit the buffer", errnos.EMSGSIZE)
        return n

    def read_acks(self, what: str) -> list[NlError]:
        """Read one buffer of replies and return its acks and refusals."""
        return parse_errors(self.buf, self.recv(what))

    def drain(self) -> None:
        """Discard replies left over from an exchange that ended early."""
        try:
            while True:
                self._sock.recv_into(self._view, self.recv_size, socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno != errnos.ENOBUFS:  # an overrun lost stale replies only
                raise self._error(exc, "draining stale replies") from None
        self.dirty = False

    def dump(self, request: bytes, feed: Feed, what: str, *, seq: int = -1, read_ahead_after: int = 0) -> None:
        """Send `request` (one message; its flags and sequence number, `seq` or the next, are filled in here) as a
        dump, and give each buffer of its replies to `feed(buffer, length)` until it returns True (it saw
        NLMSG_DONE; `terminal` and `walk` tell). Buffers left over from an earlier request are skipped.

        The buffer `feed` gets is `buf`, reused for every read. With `read_ahead_after`, a dump longer than that
        many buffers is read on by a thread, which waits on the kernel (without the GIL) while `feed` parses the
        previous buffer (then a copy, without `slack`): worth it when the kernel's share of each read is large.
        """
        if seq < 0:
            seq = self.next_seq()
        msg = bytearray(request)
        _FLAGS_SEQ.pack_into(msg, 6, NLM_F_REQUEST | NLM_F_DUMP, seq)
        self.send(msg, what)
        sock, buf, view, size = self._sock, self.buf, self._view, self.recv_size
        unpack_hdr = NLMSGHDR.unpack_from
        reads = 0
        # The loop of the socket scan (hundreds of reads a tick): recv and the stale-reply test inline.
        try:
            while True:
                n = sock.recv_into(view, size, socket.MSG_TRUNC)
                if n > size:
                    raise NetlinkError(
                        f"{self.name}: a {n}-byte answer to {what} did not fit the buffer", errnos.EMSGSIZE
                    )
                if n >= NLMSG_HDRLEN and unpack_hdr(buf, 0)[3] != seq:
                    continue  # left over from an earlier, abandoned request
                if feed(buf, n):
                    break
                reads += 1
                if reads == read_ahead_after:
                    self._read_ahead(seq, feed, what)
                    return
        except OSError as exc:
            raise self._error(exc, what) from None
        self.dirty = False

    def _read_ahead(self, seq: int, feed: Feed, what: str) -> None:
        chunks: queue.SimpleQueue[bytes | BaseException | None] = queue.SimpleQueue()

        def reader() -> None:
            try:
                while True:
                    n = self.recv(what)
                    if n >= NLMSG_HDRLEN and NLMSGHDR.unpack_from(self.buf, 0)[3] != seq:
                        continue
                    chunks.put(bytes(self.buf[:n]))
                    if ends_dump(self.buf, n, seq):
                        break
                chunks.put(None)
            except BaseException as exc:
                chunks.put(exc)

        thread = threading.Thread(target=reader, name=f"{self.name}-dump", daemon=True)
        thread.start()
        try:
            while True:
                item = chunks.get()
                if item is None:
                    break  # the dump ended, but `feed` did not see its end: left to the caller to notice
                if isinstance(item, BaseException):
                    raise item
                if feed(item, len(item)):
                    break
        finally:
            thread.join()
        self.dirty = False
