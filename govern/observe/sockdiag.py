"""The fast socket observer: every TCP socket on the protected ports, per source, once per tick.

This module owns govern's NETLINK_SOCK_DIAG socket (one per namespace it was opened in), the byte layout of the
kernel's inet_diag messages, turning one dump into a `Scan` (per-source counts by TCP state, servers waiting on
silent clients, the listeners' accept queues), and SOCK_DESTROY of the sockets of chosen sources.

It is the daemon's hot path (target: 20k sockets in <= 30 ms, see docs/benchmarks.md), hence:
- precompiled `struct.Struct`s instead of a netlink library; one receive buffer, reused (govern/netlink.py owns
  the socket, framing, errors and the dump loop; this module the inet_diag requests and records);
- one dump for both address families: the original inet_diag request (TCPDIAG_GETSOCK) takes AF_UNSPEC, while
  SOCK_DIAG_BY_FAMILY takes one family per request and each request walks the whole host-wide established hash
  (~5 ms at 262k buckets even when it finds nothing). SOCK_DIAG_BY_FAMILY is the fallback if a kernel refuses;
- the kernel filters by local port (INET_DIAG_REQ_BYTECODE) and leaves TIME_WAIT out, and sends tcp_info
  (INET_DIAG_INFO) as the only optional extension;
- most of a dump is runs of messages of one kind (every full TCP socket of both families has the same length and
  attributes): `ScanParser.feed` copies each buffer's run aside after one comparison of the messages' first 8
  bytes, and `result` reads the runs as numpy records and counts them per source group with one argsort and
  bincounts; Python objects are made only per source (its Prefix and SockCounts). Whatever else a buffer holds
  (listeners, request sockets, NLMSG_DONE, a kind not seen before) goes through a per-socket loop that only
  unpacks, compares and appends, counted afterwards in C-level Counter/map/zip calls (or by the numpy path);
- each address's source group (its Prefix) is remembered from scan to scan: most sources outlive a tick.

What a source is and when it is idle:
- the source of a socket is its remote address, grouped to /v4_len (IPv4) or /v6_len (IPv6). A dual-stack
  listener shows IPv4 clients as IPv4-mapped IPv6 addresses (::ffff:a.b.c.d); they count as that IPv4 source.
- an ESTABLISHED socket is idle ("not advancing") when the server has spoken and its session has made no progress
  since: the server has sent data (tcpi_data_segs_out > 0; a connection still in the accept queue, or whose
  greeting is not out yet, waits on the server, not on the client) and has sent nothing for idle_after_ms
  (tcpi_last_data_sent), while the client
    * said nothing since (tcpi_last_data_recv >= tcpi_last_data_sent, both "ms ago"; when equal, which at jiffy
      resolution says nothing of the order, only if the server sent more data segments than it: it answered): a
      silent bot, or one whose command was answered at once; or
    * got nothing but the banner (tcpi_data_segs_out == 1) whatever it sent: no command of its was answered, so
      what it sent was never a command (a dripping, babbling or pre-banner-talking bot); or
    * sent at least two data segments more than the server answered, averaging under 16 bytes
      (tcpi_data_segs_in, tcpi_bytes_received): a command dripped a few bytes at a time.
  A client in the middle of DATA is not idle: its segments are full ones. While the server has sent only its first
  segment, the wait must also reach greet_ms: postscreen's "220-" asks a good client to stay silent (its pregreet
  test), and only smtpd's banner after it ends that wait; with pregreet_cut, only a silent client's: where postscreen
  enforces the test, a client that talked during the wait will carry no mail. The wait reported is
  tcpi_last_data_sent. `stalled` is the rule; the fast loop inlines it.
"""

from __future__ import annotations

import errno
import functools
import operator
import socket
import struct
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import compress, filterfalse, repeat
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from govern import netlink
from govern.addr import Prefix, PrefixSet
from govern.model import ListenerStats, Scan, ScanOptions, SessionInfo, Shed, SockCounts, loops, no_message
from govern.netlink import NLMSG_DONE, NLMSG_ERROR, NetlinkError

__all__ = ["Scan", "ScanParser", "SessionInfo", "SockCounts", "SockDiag", "parse_dump", "port_bytecode"]

NETLINK_SOCK_DIAG = 4
TCPDIAG_GETSOCK = 18
SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21

INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_INFO = 2
INET_DIAG_BC_JMP = 1
INET_DIAG_BC_S_EQ = 11

TCP_ESTABLISHED = 1
TCP_SYN_RECV = 3
TCP_TIME_WAIT = 6
TCP_LISTEN = 10

# TCP_ESTABLISHED .. TCP_NEW_SYN_RECV but TIME_WAIT: nothing needs TIME_WAIT, and after a flood it can outnumber
# the live sockets. Not TCP_BOUND_INACTIVE (13): asking for it makes the kernel walk the bind hash too (~5 ms).
_STATES_SCAN = 0x1FFE & ~(1 << TCP_TIME_WAIT)
_STATES_DESTROY = _STATES_SCAN & ~(1 << TCP_LISTEN)
_EXT_INFO = 1 << (INET_DIAG_INFO - 1)

_U32 = struct.Struct("=I")
# inet_diag_req_v2: family, protocol, ext, pad, states, the 48-byte inet_diag_sockid.
_REQ_V2 = struct.Struct("=BBBBI48s")
# inet_diag_req (TCPDIAG_GETSOCK): family, src_len, dst_len, ext, sockid, states, dbs.
_REQ_V1 = struct.Struct("=BBBB48sII")
# nlmsghdr + inet_diag_msg up to both addresses: length, type, family, state, local port (network order), local
# and remote address; for listeners, destroy and the slow path.
_MSG = struct.Struct("=IH10xBB2xH2x16s16s")
_QUEUES = struct.Struct("=II4xI")  # idiag_rqueue, idiag_wqueue, (idiag_uid), idiag_inode
_DIAG_MSG_END = 16 + 72  # attributes start after nlmsghdr + inet_diag_msg
_SOCKID_AT = 16 + 4  # the inet_diag_sockid inside a message
_COOKIE_AT = 2 + 2 + 16 + 16 + 4  # the sockid's cookie (after the ports, both addresses and the interface)
_QUEUES_AT = 16 + 56  # idiag_rqueue
# From an INET_DIAG_INFO attribute: its header word (len | type << 16), tcpi_last_data_sent, tcpi_last_data_recv,
# tcpi_bytes_received, tcpi_data_segs_in, tcpi_data_segs_out (struct tcp_info offsets 44, 52, 128, 152, 156; uapi,
# only ever appended to).
_INFO_FIELDS = "I44xI4xI72xQ16xII"
_INFO = struct.Struct("=" + _INFO_FIELDS)
_INFO_MIN = _INFO.size - 4  # the shortest tcp_info that has tcpi_data_segs_out
# `govern why`'s slow path, from the tcp_info payload: tcpi_last_data_sent (44), tcpi_last_data_recv (52),
# tcpi_bytes_acked (120, u64), tcpi_bytes_received (128, u64), tcpi_data_segs_in (152), tcpi_data_segs_out (156).
_SESSION_INFO = struct.Struct("=44xI4xI64xQQ16xII")
assert _SESSION_INFO.size == _INFO_MIN
_PORTS = struct.Struct("!HH")  # inet_diag_sockid's local and remote port, network order
_STATE_NAMES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "SYN_RECV",  # TCP_NEW_SYN_RECV: a request socket, the kernel's SYN_RECV since Linux 4.4
}
_LENWORD = struct.Struct("=Q")  # nlmsg_len | nlmsg_type << 32 | nlmsg_flags << 48

# How the fast loop reads one kind of message: a function that unpacks, in one call, the first 8 bytes of the
# header (length, type, flags, as one integer), family, state, local port (network order), the remote address in
# three parts -- bytes 0-7 (an IPv4 address is the first 4; an IPv6 /64), 8-11 (0000ffff if IPv4-mapped), 12-15
# (the IPv4 address if mapped) -- and the _INFO fields; then the message length and the INFO header expected.
_Record = tuple[int, int, int, int, bytes, bytes, bytes, int, int, int, int, int, int]
_Unpack = Callable[[bytes | bytearray | memoryview, int], _Record]
_Layout = tuple[_Unpack, int, int]
_HEAD_FIELDS = "=QxxxxxxxxBB2xH2x16x8s4s4s"
_HEAD_SIZE = struct.calcsize(_HEAD_FIELDS)
_SLACK = 512  # how far past the last message the fast loop may read: the largest record it uses


def _layout(mlen: int, info_at: int, info_hdr: int) -> _Layout | None:
    """The reader of a message kind whose INET_DIAG_INFO attribute is at `info_at` (0: it has none).

    None when its record would reach further than _SLACK: the fast loop reads the current kind's record before it
    knows the message is of that kind, so the buffer must hold that much past any message.
    """
    if info_at:
        record = struct.Struct(f"{_HEAD_FIELDS}{info_at - _HEAD_SIZE}x{_INFO_FIELDS}")
    else:
        # Without tcp_info, the INFO fields are read from whatever follows the head, and never used: the
        # expected header word is -1, which no unsigned field equals.
        record = struct.Struct(_HEAD_FIELDS + _INFO_FIELDS)
        info_hdr = -1
    if record.size > _SLACK:
        return None
    return cast(_Unpack, record.unpack_from), mlen, info_hdr


_DIAG_TYPES = (TCPDIAG_GETSOCK, SOCK_DIAG_BY_FAMILY)
_DUMP = "sock_diag dump"  # what an error says was asked

_MAPPED = b"\x00" * 10 + b"\xff\xff"  # IPv4-mapped IPv6, ::ffff:0:0/96
_ZERO8, _MAPPED_MID = _MAPPED[:8], _MAPPED[8:]
_RECV_SIZE = 1 << 17  # the kernel fills dump buffers of at most 32 KiB; more room only guards against truncation
_RCVBUF = 8 << 20  # destroy: all acks of a batch queue up before the first is read
_SNDBUF = 4 << 20
_DESTROY_BATCH = 2048  # requests per sendmsg (147 KiB); their acks must all fit in _RCVBUF
_TIMEOUT_S = 10
_GROUPS_STALE = 1 << 14  # addresses gone since they were last seen that the source-group cache may keep
# A buffer whose messages from the first on are this many or more of one kind with tcp_info is read by numpy (see
# ScanParser.feed); fewer go through the per-message loop.
_MIN_RUN = 4
_V6_TAG = 1 << 64  # added to an IPv6 source's key in the source-group cache: IPv4 keys are below 2**32
_HEADS = np.dtype("=u8")
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]


@functools.cache
def _records(mlen: int, info_at: int) -> np.dtype[Any]:
    """The numpy record of a message kind of `mlen` bytes with tcp_info at `info_at`: the fields the scan reads."""
    info = info_at + 4
    fields = {
        "fam": ("u1", 16),
        "state": ("u1", 17),
        "sport": ("=u2", _SOCKID_AT),  # network order, read as the fast loop reads it
        "a4": (">u4", 40),  # the remote address: its first 4 bytes (IPv4), ...
        "hi": (">u8", 40),  # ... its first 8 (an IPv6 /64), ...
        "mid": (">u4", 48),  # ... bytes 8-11 (0000ffff if IPv4-mapped) and 12-15 (the mapped IPv4 address)
        "lo": (">u4", 52),
        "hdr": ("=u4", info_at),
        "sent": ("=u4", info + 44),
        "recv": ("=u4", info + 52),
        "brecv": ("=u8", info + 128),
        "segs_in": ("=u4", info + 152),
        "segs_out": ("=u4", info + 156),
    }
    return np.dtype(
        {
            "names": list(fields),
            "formats": [f for f, _o in fields.values()],
            "offsets": [o for _f, o in fields.values()],
            "itemsize": mlen,
        }
    )


# A NamedTuple's constructor is a Python function; map(_new, repeat(cls), tuples) builds the same objects in C.
_new = cast(Callable[[type[Any], tuple[int, ...]], Any], tuple.__new__)


def _check_ports(ports: frozenset[int]) -> None:
    for p in ports:
        if not 0 < p < 65536:
            raise ValueError(f"not a TCP port: {p!r}")


class ScanParser:
    """Turns the messages of inet_diag dumps into a `Scan`.

    `feed` takes each buffer as received (whole netlink messages, of one dump or several) and returns True at
    NLMSG_DONE; `result` counts what was fed. NLMSG_ERROR raises NetlinkError with the kernel's errno.
    """

    __slots__ = (
        "_bulk",
        "_est",
        "_greet",
        "_idle_after",
        "_idle_keys",
        "_idle_waits",
        "_info_at",
        "_last",
        "_layouts",
        "_listeners",
        "_other",
        "_ports_be",
        "_pregreet",
        "_records",
        "_refs",
        "_syn",
        "_v4_len",
        "_v6_len",
        "_vector",
    )

    def __init__(self, opts: ScanOptions, *, vector: bool = True) -> None:
        """`vector` False: every message through the per-message loop (the tests and benchmarks compare the two)."""
        _check_ports(opts.ports)
        v4_len, v6_len = opts.v4_len, opts.v6_len
        if not 0 <= v4_len <= 32 or not 0 <= v6_len <= 128:
            raise ValueError(f"bad source grouping /{v4_len} /{v6_len}")
        self._v4_len = v4_len
        self._v6_len = v6_len
        # The kernel sends ports in network order; comparing raw values saves a byte swap per socket.
        self._ports_be = frozenset(socket.htons(p) for p in opts.ports)
        self._idle_after = opts.idle_after_ms
        self._greet = opts.greet_ms
        self._pregreet = opts.pregreet_cut
        # The remote address of each socket, by what it counts as. The key of an IPv4 source (also when mapped) is
        # its 4 bytes; of an IPv6 one its first 8 (its /64) when grouping by /64 or less, else all 16: the
        # length tells the family, and the common grouping needs no arithmetic per address.
        self._est: list[bytes] = []
        self._other: list[bytes] = []  # held, not ESTABLISHED
        self._syn: list[bytes] = []  # SYN_RECV (also in _other)
        self._idle_keys: list[bytes] = []
        self._idle_waits: list[int] = []  # ms, in step with _idle_keys
        self._listeners: list[ListenerStats] = []
        # Message kind (first 8 bytes: length, type, flags) -> how to read it. The kernel sends the same
        # attributes in the same order for every socket of a kind, so one walk over the attributes per kind finds
        # INET_DIAG_INFO; its header is still checked at that offset for every socket before it is trusted.
        self._layouts: dict[int, _Layout] = {}
        self._last: tuple[int, _Layout] = (-1, cast(_Layout, _layout(0, 0, 0)))
        # The numpy path (keys of at most 8 bytes): message kind -> where its tcp_info is and its header word, and
        # the runs of messages of that kind, copied as received, read at once by `result`.
        self._vector = vector and v6_len <= 64
        self._info_at: dict[int, tuple[int, int]] = {}
        self._bulk: dict[int, bytearray] = {}
        self._refs: dict[tuple[int, int], array[int]] = {}  # (head word, n): n copies of it, what a run's heads are
        self._records: list[npt.NDArray[Any]] = []  # sockets read as records already (feed_records)

    def feed(self, buf: bytes | bytearray | memoryview, size: int | None = None) -> bool:
        """Parse the netlink messages in buf[:size]; True when a dump's NLMSG_DONE was among them.

        The fast loop reads a fixed-size record at each message before it knows the message's length, so `buf`
        must extend 512 bytes past `size`; shorter buffers are copied first.
        """
        if size is None:
            size = len(buf)
        if len(buf) < size + _SLACK:
            buf = bytes(buf[:size]) + bytes(_SLACK)
        start = self._take_run(buf, size) if self._vector else 0
        if start == size:
            return False  # all of it one run (most buffers of a large dump): nothing for the loop
        # Constants as locals (plain ints, not the IntEnum AF_INET6): this loop runs once per socket.
        af_inet6, established, syn_recv, listen, time_wait = (
            int(socket.AF_INET6),
            TCP_ESTABLISHED,
            TCP_SYN_RECV,
            TCP_LISTEN,
            TCP_TIME_WAIT,
        )
        zero8, mapped_mid = _ZERO8, _MAPPED_MID
        layouts = self._layouts
        ports = self._ports_be
        idle_after, greet, pregreet = self._idle_after, self._greet, self._pregreet
        short6 = self._v6_len <= 64
        est = self._est.append
        other = self._other.append
        syn = self._syn.append
        idle_key = self._idle_keys.append
        idle_wait = self._idle_waits.append
        # The layout of the previous message, tried first: runs of sockets of one kind share one.
        cur_lw, (unpack, mlen, info_hdr) = self._last
        off = start
        try:
            while off < size:
                lw, fam, state, sport, hi, mid, lo, hdr, sent, recv, brecv, segs_in, segs_out = unpack(buf, off)
                if lw != cur_lw:
                    layout = layouts.get(lw)
                    if layout is None:
                        done, off = self._slow(buf, off, size)
                        if done:
                            return True
                    else:
                        cur_lw, (unpack, mlen, info_hdr) = lw, layout
                    continue
                if sport in ports:
                    if fam != af_inet6:
                        key = hi[:4]
                    elif mid == mapped_mid and hi == zero8:
                        key = lo
                    else:
                        key = hi if short6 else hi + mid + lo
                    if state == established:
                        est(key)
                        if hdr != info_hdr:
                            sent, recv, brecv, segs_in, segs_out = _info(buf, off, mlen)
                        # stalled() inlined: this runs once per established socket.
                        if (
                            sent >= idle_after
                            and segs_out
                            and (segs_out != 1 or sent >= greet or (pregreet and segs_in))
                            and (
                                (recv > sent or (recv == sent and segs_in < segs_out))
                                or segs_out == 1
                                or (segs_in >= segs_out + 2 and brecv < 16 * segs_in)
                            )
                        ):
                            idle_key(key)
                            idle_wait(sent)
                    elif state == syn_recv:
                        other(key)
                        syn(key)
                    elif state == listen:
                        self._listener(buf, off)
                    elif state != time_wait:
                        other(key)
                off += mlen
        except struct.error:
            raise NetlinkError("sock_diag: a message overruns the buffer", errno.EPROTO) from None
        finally:
            self._last = (cur_lw, (unpack, mlen, info_hdr))
        if off != size:
            raise NetlinkError(f"sock_diag: a message overruns the buffer ({off} > {size})", errno.EPROTO)
        return False

    @property
    def v4_len(self) -> int:
        return self._v4_len

    @property
    def v6_len(self) -> int:
        return self._v6_len

    def feed_records(self, r: npt.NDArray[Any]) -> None:
        """Sockets as records with the fields the numpy path reads (fam, state, sport, a4, hi, mid, lo, sent, recv,
        brecv, segs_in, segs_out, as `_records` has them; the socket iterator's, govern.observe.sockiter) on
        the protected ports, TIME_WAIT left out; a listener's address is its local one, `recv` its accept queue
        and `sent` its backlog. Only with the numpy path (source groups of IPv6 /64 or shorter)."""
        if not self._vector:
            raise ValueError("records need the numpy path: IPv6 sources grouped by /64 or shorter")
        listening = r["state"] == TCP_LISTEN
        if listening.any():
            lr = r[listening]
            fields = ("fam", "sport", "recv", "sent", "a4", "hi", "mid", "lo")
            for fam, port_be, queued, backlog, a4, hi, mid, lo in zip(*(lr[f].tolist() for f in fields), strict=True):
                addr = a4.to_bytes(4) if fam == socket.AF_INET else hi.to_bytes(8) + mid.to_bytes(4) + lo.to_bytes(4)
                self._add_listener(fam, port_be, addr, queued, backlog)
            r = r[~listening]
        self._records.append(r)

    def _take_run(self, buf: bytes | bytearray | memoryview, size: int) -> int:
        """Copy the run of messages of one kind with tcp_info that starts the buffer aside for `result`'s numpy
        path; returns where the per-message loop goes on (0: no such run).

        The kernel fills a dump buffer with sockets of one hash walk, and every full TCP socket of both families
        is a message of one kind (length, attributes and their order): most buffers are one such run, then at
        most a listener, request sockets (SYN_RECV) or NLMSG_DONE, which the per-message loop takes.
        """
        if size < 8:
            return 0
        lw: int = _LENWORD.unpack_from(buf, 0)[0]
        if lw not in self._info_at:
            return 0  # a kind not seen yet (the loop learns it), or without tcp_info
        mlen = lw & 0xFFFFFFFF
        n = size // mlen
        if n < _MIN_RUN:
            return 0
        if mlen & 7:
            same = np.ndarray((n,), _HEADS, buf, 0, (mlen,)) == lw
            if not same.all():
                n = int(same.argmin())
        else:
            # Each message's first 8 bytes, compared in C (a memoryview compares in a fraction of numpy's time).
            heads = memoryview(buf)[: n * mlen].cast("Q")[:: mlen >> 3]
            ref = self._refs.get((lw, n))
            if ref is None:
                ref = self._refs[lw, n] = array("Q", [lw]) * n
            if heads != ref:
                n = next(i for i, h in enumerate(heads.tolist()) if h != lw)
        if n < _MIN_RUN:
            return 0
        run = self._bulk.get(lw)
        if run is None:
            run = self._bulk[lw] = bytearray()
        run += memoryview(buf)[: n * mlen]
        return n * mlen

    def _slow(self, buf: bytes | bytearray | memoryview, off: int, size: int) -> tuple[bool, int]:
        """A message of a kind the fast loop has no layout for: a control message, or a diag message to learn.

        Returns (dump done, offset of the next message to look at). A diag message of a new kind gets its layout
        and is left for the fast loop to take on its next turn.
        """
        mlen, mtype, flags, _seq = netlink.header(buf, off, size)
        step = netlink.align(mlen)
        if netlink.terminal(buf, off, mlen, mtype, flags, _DUMP):
            return True, off + step
        if mtype not in _DIAG_TYPES:
            return False, off + step
        if mlen < _DIAG_MSG_END:
            raise NetlinkError(f"sock_diag: diag message too short ({mlen})", errno.EPROTO)
        fam = buf[off + 16]
        if fam != socket.AF_INET and fam != socket.AF_INET6:
            raise NetlinkError(f"sock_diag: unexpected address family {fam}", errno.EPROTO)
        at, hdr = self._find_info(buf, off, mlen)
        # The fast loop steps by the raw length (the kernel pads every message) and reads a bounded record.
        layout = None if mlen & 3 else _layout(mlen, at, hdr)
        if layout is None:
            self._one(buf, off, mlen)
            return False, off + step
        lw = _LENWORD.unpack_from(buf, off)[0]
        self._layouts[lw] = layout
        if at:
            self._info_at[lw] = (at, hdr)
        return False, off

    def _one(self, buf: bytes | bytearray | memoryview, off: int, mlen: int) -> None:
        """The fast loop's work for one message, without its assumptions."""
        _l, _t, fam, state, sport_be, _src, dst = _MSG.unpack_from(buf, off)
        if sport_be not in self._ports_be:
            return
        if fam != socket.AF_INET6:
            key = dst[:4]
        elif dst.startswith(_MAPPED):
            key = dst[12:]
        else:
            key = dst[:8] if self._v6_len <= 64 else dst
        if state == TCP_ESTABLISHED:
            self._est.append(key)
            info = _info(buf, off, mlen)
            if stalled(*info, self._idle_after, self._greet, self._pregreet):
                sent = info[0]
                self._idle_keys.append(key)
                self._idle_waits.append(sent)
        elif state == TCP_SYN_RECV:
            self._other.append(key)
            self._syn.append(key)
        elif state == TCP_LISTEN:
            self._listener(buf, off)
        elif state != TCP_TIME_WAIT:
            self._other.append(key)

    @staticmethod
    def _find_info(buf: bytes | bytearray | memoryview, off: int, mlen: int) -> tuple[int, int]:
        """Walk a message's attributes: (offset of INET_DIAG_INFO from the message start, its header word)."""
        at = netlink.find_attr(buf, off + _DIAG_MSG_END, off + mlen, INET_DIAG_INFO)
        if at < 0:
            return 0, 0
        # The fast loop compares the attribute's whole header word (length | type << 16), flags included.
        (hdr,) = _U32.unpack_from(buf, at)
        if (hdr & 0xFFFF) - 4 < _INFO_MIN:
            return 0, 0  # a tcp_info too old to tell idle sockets: none will be
        return at - off, hdr

    def _listener(self, buf: bytes | bytearray | memoryview, off: int) -> None:
        _l, _t, fam, _state, sport_be, src, _dst = _MSG.unpack_from(buf, off)
        queued, backlog, inode = _QUEUES.unpack_from(buf, off + _QUEUES_AT)
        self._add_listener(fam, sport_be, src, queued, backlog, inode)

    def _add_listener(self, fam: int, sport_be: int, addr: bytes, queued: int, backlog: int, inode: int = 0) -> None:
        """A listener by its local address (4 bytes or more for IPv4, 16 for IPv6) and port in network order."""
        if fam == socket.AF_INET:
            text = socket.inet_ntop(socket.AF_INET, addr[:4])
        else:
            text = socket.inet_ntop(socket.AF_INET6, addr)
        self._listeners.append(ListenerStats(text, socket.ntohs(sport_be), queued, backlog, inode))

    def result(self, groups: dict[Any, Prefix] | None = None) -> Scan:
        """Count per source what was fed so far.

        `groups` caches address key -> source group across scans with the same grouping (a caller's dict, filled
        here): most sources outlive a tick, and this saves making their Prefix again.
        """
        if self._vector:
            return _result_vector(self, {} if groups is None else groups)
        # Runs once per distinct address, in C-level Counter/map/zip calls: at 20k sources a Python loop over
        # them would cost a third of the budget. The common shapes (one socket per address, nothing but
        # ESTABLISHED, no SYN_RECV) skip the lookups they do not need.
        est = Counter(self._est)
        held = est
        if self._other:
            held = est.copy()
            held.update(self._other)
        syn = Counter(self._syn)
        # The longest wait per address, and idle sockets per address: not counted while no address has two (then
        # it is 1 for each address in `longest`). Keeping the maximum in the per-socket loop instead costs more
        # there (a dict lookup per idle socket) than this costs here.
        longest = dict(zip(self._idle_keys, self._idle_waits, strict=True))
        idle = None
        if len(longest) != len(self._idle_keys):
            idle = Counter(self._idle_keys)
            for k, wait in zip(self._idle_keys, self._idle_waits, strict=True):
                if wait > longest[k]:
                    longest[k] = wait

        keys = list(held)
        if groups is None:
            groups = {}
        missing = list(filterfalse(groups.__contains__, keys))
        if missing:
            for kind_keys, version, plen, values in _kinds(missing, self._v4_len, self._v6_len):
                made = map(_new, repeat(Prefix), zip(repeat(version), values, repeat(plen), strict=False))
                groups.update(zip(kind_keys, made, strict=True))
        prefixes = list(map(groups.__getitem__, keys))
        if len(groups) > len(keys) + _GROUPS_STALE:
            # Addresses not seen any more pile up: keep only this scan's.
            groups.clear()
            groups.update(zip(keys, prefixes, strict=True))

        # One column per SockCounts field, in the order of `keys`.
        n_held: Iterable[int]
        n_est: Iterable[int]
        n_idle: Iterable[int]
        if not self._other and len(est) == len(self._est):  # all ESTABLISHED, one socket per address
            n_held = n_est = repeat(1)
        elif not self._other:
            n_held = n_est = list(map(est.__getitem__, keys))
        else:
            n_held, n_est = map(held.__getitem__, keys), map(est.get, keys, repeat(0))
        if not longest:
            n_idle = repeat(0)
        elif idle is None and len(longest) == len(keys):  # a silent bot on every address
            n_idle = repeat(1)
        elif idle is None:
            n_idle = map(int, map(longest.__contains__, keys))
        else:
            n_idle = map(idle.get, keys, repeat(0))
        counts = zip(
            n_held,
            n_est,
            map(syn.get, keys, repeat(0)) if syn else repeat(0),
            n_idle,
            map(longest.get, keys, repeat(0)) if longest else repeat(0),
            strict=False,
        )
        sources: dict[Prefix, SockCounts] = dict(zip(prefixes, map(_new, repeat(SockCounts), counts), strict=False))
        if len(sources) != len(keys):
            idle_n = idle if idle is not None else Counter(self._idle_keys)
            sources = _merged(prefixes, keys, held, est, syn, idle_n, longest)
        return Scan(sources, tuple(sorted(self._listeners)), len(self._est) + len(self._other))


class _Family:
    """One address family's sockets as the numpy path counts them, as key arrays (an IPv4 address, or the first 64
    bits of an IPv6 one): the ESTABLISHED sockets with, in step, which are idle and their waits; the other held
    ones with, in step, which are in SYN_RECV; and the idle and SYN_RECV ones the per-message loop found (not in
    step with anything: looked up by key)."""

    __slots__ = ("est", "idle", "loose_idle", "loose_syn", "loose_waits", "other", "syn", "waits")

    def __init__(self) -> None:
        self.est: list[U64] = []
        self.idle: list[npt.NDArray[np.bool_]] = []
        self.waits: list[I64] = []
        self.other: list[U64] = []
        self.syn: list[npt.NDArray[np.bool_]] = []
        self.loose_idle: list[U64] = []
        self.loose_waits: list[I64] = []
        self.loose_syn: list[U64] = []

    def add_loop(self, est: U64, other: U64) -> None:
        """Sockets of the per-message loop: none idle or in SYN_RECV in step (theirs are loose)."""
        self.est.append(est)
        self.idle.append(np.zeros(len(est), dtype=bool))
        self.waits.append(np.zeros(len(est), dtype=np.int64))
        self.other.append(other)
        self.syn.append(np.zeros(len(other), dtype=bool))


def _split(keys: list[bytes], extra: list[int] | None = None) -> tuple[U64, U64, I64, I64]:
    """Keys of the per-message loop (4 bytes: IPv4, 8: an IPv6 /64) as arrays by family: (IPv4, IPv6, and the
    values of `extra`, in step with the keys, split the same way)."""
    if not keys:
        empty = np.zeros(0, np.uint64)
        return empty, empty, np.zeros(0, np.int64), np.zeros(0, np.int64)
    arr = np.array(list(map(int.from_bytes, keys)), dtype=np.uint64)
    is4 = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys)) == 4
    values = np.array(extra if extra is not None else [], dtype=np.int64)
    if extra is None:
        values = np.zeros(len(keys), np.int64)
    return arr[is4], arr[~is4], values[is4], values[~is4]


def _counted(
    fam: _Family, mask: int
) -> tuple[U64, Iterable[int], Iterable[int], Iterable[int], Iterable[int], Iterable[int]] | None:
    """Per source group (key & mask), sorted: the groups, then held, ESTABLISHED, SYN_RECV and idle sockets and
    the longest wait, as lists or `repeat(n)`.

    One argsort of the held sockets' groups gives each socket its group's index; the counts are bincounts over it
    (the per-message loop's loose ones look their group up by key). The common shapes skip work: one socket per
    group, nothing but ESTABLISHED sockets, one idle socket per group."""
    m = np.uint64(mask)
    est = np.concatenate(fam.est) & m if fam.est else np.zeros(0, np.uint64)
    other = np.concatenate(fam.other) & m if fam.other else np.zeros(0, np.uint64)
    held = np.concatenate((est, other)) if len(other) else est
    if not len(held):
        return None
    order = held.argsort()
    ranked = held[order]
    first = np.empty(len(held), dtype=bool)
    first[0] = True
    np.not_equal(ranked[1:], ranked[:-1], out=first[1:])
    n_held: Iterable[int]
    if first.all():
        groups, n_held, gid_ranked = ranked, repeat(1), np.arange(len(held))
    else:
        groups, gid_ranked = ranked[first], np.cumsum(first) - 1
        n_held = np.bincount(gid_ranked).tolist()
    gid = np.empty(len(held), dtype=np.intp)
    gid[order] = gid_ranked
    n = len(groups)
    n_est: Iterable[int] = n_held
    if len(other):
        n_est = np.bincount(gid[: len(est)], minlength=n).tolist() if len(est) else repeat(0)
    n_syn: Iterable[int] = repeat(0)
    n_idle: Iterable[int] = repeat(0)
    longest: Iterable[int] = repeat(0)
    syn_at = [gid[len(est) :][np.concatenate(fam.syn)]] if fam.syn else []
    syn_at += [np.searchsorted(groups, k & m) for k in fam.loose_syn]
    if sum(map(len, syn_at)):
        n_syn = np.bincount(np.concatenate(syn_at), minlength=n).tolist()
    idle = np.concatenate(fam.idle) if fam.idle else np.zeros(0, dtype=bool)
    idle_at = [gid[: len(est)][idle], *(np.searchsorted(groups, k & m) for k in fam.loose_idle)]
    at = np.concatenate(idle_at)
    if len(at):
        in_step = np.concatenate(fam.waits)[idle] if fam.waits else np.zeros(0, np.int64)
        waits = np.concatenate([in_step, *fam.loose_waits])
        counts = np.bincount(at, minlength=n)
        n_idle = counts.tolist()
        most = np.zeros(n, np.int64)
        if counts.max() > 1:
            np.maximum.at(most, at, waits)
        else:
            most[at] = waits
        longest = most.tolist()
    return groups, n_held, n_est, n_syn, n_idle, longest


def _mask(length: int, bits: int) -> int:
    return ((1 << length) - 1) << (bits - length)


def _take(self: ScanParser, r: npt.NDArray[Any], v4: _Family, v6: _Family) -> int:
    """Records of non-listening sockets on the protected ports (TIME_WAIT left out) into the families' columns:
    their source keys, which are idle and their waits, which are in SYN_RECV. Returns how many there were."""
    state = r["state"]
    is4 = r["fam"] != socket.AF_INET6
    mapped = ~is4 & (r["hi"] == 0) & (r["mid"] == 0xFFFF)
    four = is4 | mapped
    key4 = np.where(is4, r["a4"], r["lo"]).astype(np.uint64)
    est = state == TCP_ESTABLISHED
    # stalled(), over arrays; int64 so that sums cannot wrap.
    sent = r["sent"].astype(np.int64)
    recv = r["recv"].astype(np.int64)
    segs_in = r["segs_in"].astype(np.int64)
    segs_out = r["segs_out"].astype(np.int64)
    idle = (
        est
        & (sent >= self._idle_after)
        & (segs_out != 0)
        & ((segs_out != 1) | (sent >= self._greet) | ((segs_in != 0) & self._pregreet))
        & (
            (recv > sent)
            | ((recv == sent) & (segs_in < segs_out))
            | (segs_out == 1)
            | ((segs_in >= segs_out + 2) & (r["brecv"] < (16 * segs_in).astype(np.uint64)))
        )
    )
    syn = state == TCP_SYN_RECV
    for fam, keys, sel in ((v4, key4, four), (v6, r["hi"], ~four)):
        mine, theirs = sel & est, sel & ~est
        fam.est.append(keys[mine])
        fam.idle.append(idle[mine])
        fam.waits.append(sent[mine])
        fam.other.append(keys[theirs])
        fam.syn.append(syn[theirs])
    return len(r)


def _result_vector(self: ScanParser, groups: dict[Any, Prefix]) -> Scan:
    """`ScanParser.result` for keys of at most 8 bytes: the runs `feed` set aside, read as numpy records, and the
    per-message loop's sockets, counted per source group in numpy; Python objects only for the sources."""
    v4, v6 = _Family(), _Family()
    ports = np.array(sorted(self._ports_be), dtype=np.uint16)
    sockets = 0
    for lw, run in self._bulk.items():
        at, info_hdr = self._info_at[lw]
        mlen = lw & 0xFFFFFFFF
        r = np.frombuffer(run, dtype=_records(mlen, at))
        state = r["state"]
        on = r["sport"] == ports[0] if len(ports) == 1 else np.isin(r["sport"], ports)
        # Listeners, and sockets whose tcp_info is not where their kind has it: the per-message loop's way.
        odd = on & ((state == TCP_LISTEN) | (r["hdr"] != info_hdr))
        for i in np.flatnonzero(odd).tolist():
            self._one(run, i * mlen, mlen)
        keep = on & ~odd & (state != TCP_TIME_WAIT)
        sockets += _take(self, r if keep.all() else r[keep], v4, v6)
    for r in self._records:
        sockets += _take(self, r, v4, v6)
    # What the per-message loop took (other kinds of message, and what `odd` sent there above).
    sockets += len(self._est) + len(self._other)
    est4, est6, _n4, _n6 = _split(self._est)
    other4, other6, _n4, _n6 = _split(self._other)
    v4.add_loop(est4, other4)
    v6.add_loop(est6, other6)
    syn4, syn6, _n4, _n6 = _split(self._syn)
    idle4, idle6, waits4, waits6 = _split(self._idle_keys, self._idle_waits)
    for fam, syn_keys, idle_keys, waits in ((v4, syn4, idle4, waits4), (v6, syn6, idle6, waits6)):
        fam.loose_syn.append(syn_keys)
        fam.loose_idle.append(idle_keys)
        fam.loose_waits.append(waits)

    sources: dict[Prefix, SockCounts] = {}
    seen = 0
    for version, fam, plen, mask in (
        (4, v4, self._v4_len, _mask(self._v4_len, 32)),
        (6, v6, self._v6_len, _mask(self._v6_len, 64)),
    ):
        counted = _counted(fam, mask)
        if counted is None:
            continue
        nets, *columns = counted
        keys = nets.tolist()
        if version == 6:
            keys = list(map(_V6_TAG.__add__, keys))
        seen += len(keys)
        # One lookup per source while every group is cached (a Prefix is never falsy, a miss is None).
        prefixes = list(map(groups.get, keys))
        if None in prefixes:
            missing = list(compress(keys, map(operator.not_, prefixes)))
            values: Iterable[int] = missing
            if version == 6:
                values = map(int.__lshift__, map(_V6_TAG.__rsub__, missing), repeat(64))
            made = map(_new, repeat(Prefix), zip(repeat(version), values, repeat(plen)))
            groups.update(zip(missing, made, strict=True))
            prefixes = list(map(groups.__getitem__, keys))
        counts = map(_new, repeat(SockCounts), zip(*columns, strict=False))
        sources.update(zip(cast(list[Prefix], prefixes), counts, strict=False))
    if len(groups) > seen + _GROUPS_STALE:
        kept = {k: groups[k] for k in groups if groups[k] in sources}
        groups.clear()
        groups.update(kept)
    return Scan(sources, tuple(sorted(self._listeners)), sockets)


def _kinds(keys: list[bytes], v4_len: int, v6_len: int) -> list[tuple[list[bytes], int, int, list[int]]]:
    """Sort address keys into IPv4 (4 bytes) and IPv6 (8 or 16).

    Returns, per kind present: (its keys, IP version, group length, each key's group network as an integer).
    """
    lens = list(map(len, keys))
    n4 = lens.count(4)
    if n4 == len(keys):
        k4, k6 = keys, []
    elif n4 == 0:
        k4, k6 = [], keys
    else:
        k4 = list(compress(keys, map((4).__eq__, lens)))
        k6 = list(compress(keys, map((4).__ne__, lens)))
    out: list[tuple[list[bytes], int, int, list[int]]] = []
    if k4:
        ints = list(map(int.from_bytes, k4))
        if v4_len < 32:
            ints = list(map(int.__and__, ints, repeat(((1 << v4_len) - 1) << (32 - v4_len))))
        out.append((k4, 4, v4_len, ints))
    if k6:
        ints = list(map(int.from_bytes, k6))
        if v6_len <= 64:
            ints = list(map(int.__lshift__, ints, repeat(64)))  # the key was the first 8 bytes
        if v6_len not in (64, 128):
            ints = list(map(int.__and__, ints, repeat(((1 << v6_len) - 1) << (128 - v6_len))))
        out.append((k6, 6, v6_len, ints))
    return out


def _merged(
    prefixes: list[Prefix],
    keys: list[bytes],
    held: Counter[bytes],
    est: Counter[bytes],
    syn: Counter[bytes],
    idle: Counter[bytes],
    longest: dict[bytes, int],
) -> dict[Prefix, SockCounts]:
    """The slow way, for groups wider than an address key (IPv4 /24, IPv6 /48): add addresses up one by one."""
    acc: dict[Prefix, list[int]] = {}
    for g, k in zip(prefixes, keys, strict=True):
        c = acc.get(g)
        if c is None:
            acc[g] = [held[k], est[k], syn[k], idle[k], longest.get(k, 0)]
        else:
            c[0] += held[k]
            c[1] += est[k]
            c[2] += syn[k]
            c[3] += idle[k]
            c[4] = max(c[4], longest.get(k, 0))
    return {g: SockCounts(*c) for g, c in acc.items()}


def parse_dump(chunks: Iterable[bytes], opts: ScanOptions) -> Scan:
    """A `Scan` from received buffers, as `SockDiag.scan` makes one (for tests and tools)."""
    parser = ScanParser(opts)
    for chunk in chunks:
        parser.feed(chunk)
    return parser.result()


def port_bytecode(ports: frozenset[int]) -> bytes:
    """An inet_diag filter program: "local port is one of `ports`".

    Laid out the way ss compiles "sport = :a or sport = :b": every test but the last is followed by a JMP to the
    end (accept) that a failed test jumps over, so every op lies on the `yes` path the kernel's auditor follows.
    """
    _check_ports(ports)
    if not ports:
        raise ValueError("no ports to filter on")
    order = sorted(ports)
    total = 12 * (len(order) - 1) + 8
    out = bytearray()
    for i, port in enumerate(order):
        out += struct.pack("=BBH", INET_DIAG_BC_S_EQ, 8, 12)
        out += struct.pack("=BBH", 0, 0, port)
        if i < len(order) - 1:
            out += struct.pack("=BBH", INET_DIAG_BC_JMP, 4, total - len(out))
    return bytes(out)


def _walk(
    buf: bytes | bytearray | memoryview, size: int, visit: Callable[[bytes | bytearray | memoryview, int, int], None]
) -> bool:
    """The slow paths' loop over one received buffer: `visit(buf, offset, length)` for each inet_diag message;
    True at the end of the dump. An error the kernel reports, in NLMSG_ERROR or NLMSG_DONE, raises NetlinkError."""
    for off, mlen, mtype, _flags in netlink.walk(buf, size, _DUMP):
        if mtype in (NLMSG_DONE, NLMSG_ERROR):
            return True
        if mtype in _DIAG_TYPES and mlen >= _DIAG_MSG_END:
            visit(buf, off, mlen)
    return False


class Scanner:
    """A per-tick socket scan: the parser set up from the scan's arguments, fed by a subclass's kernel interface
    (`_feed`: sock_diag's dump, the BPF iterator's records), and the source groups kept from scan to scan (address
    key -> Prefix: most sources outlive a tick, and making their Prefix again costs), forgotten when the grouping
    changes."""

    def __init__(self) -> None:
        self.groups: dict[Any, Prefix] = {}
        self._grouping = (32, 64)

    def scan(self, opts: ScanOptions) -> Scan:
        """Enumerate every TCP socket whose local port is one of `opts.ports` and count them per source."""
        parser = ScanParser(opts)
        if opts.ports:
            self._feed(opts.ports, parser)
        if (opts.v4_len, opts.v6_len) != self._grouping:
            self.groups, self._grouping = {}, (opts.v4_len, opts.v6_len)
        return parser.result(self.groups)

    def _feed(self, ports: frozenset[int], parser: ScanParser) -> None:
        raise NotImplementedError


class SockDiag(Scanner):
    """A sock_diag netlink socket, bound for life to the network namespace of the thread that opened it.

    One request at a time: not for use from several threads at once. A request abandoned half-way (an exception
    from a dump) is drained before the next one.
    """

    # Let the kernel drop sockets on other ports (INET_DIAG_REQ_BYTECODE) before it formats them; the parser
    # checks the port again either way. The benchmark turns it off to measure what it saves.
    kernel_filter = True
    # One TCPDIAG_GETSOCK dump for both families; False: one SOCK_DIAG_BY_FAMILY dump per family. Switches itself
    # off if the kernel refuses the old request.
    one_walk = True
    scanner = "sock_diag"

    def __init__(self) -> None:
        # The receive buffer's slack lets the fast loop read a whole record at any message (ScanParser.feed). The
        # send and receive buffers hold a destroy batch and all its acks.
        self._nl = netlink.NetlinkSocket(
            NETLINK_SOCK_DIAG,
            "sock_diag",
            rcvbuf=_RCVBUF,
            sndbuf=_SNDBUF,
            recv_size=_RECV_SIZE,
            slack=_SLACK,
            timeout_s=_TIMEOUT_S,
        )
        self._requests: dict[tuple[int, int, frozenset[int], int, int, bool], bytes] = {}
        # When each session of a source being shed was first seen greeted, by socket cookie (`cut`'s stale_ms): no
        # tcp_info field says how old a session is. Only the sessions the last cut's dump saw are kept.
        self._greeted: dict[bytes, float] = {}
        self.clock: Callable[[], float] = time.monotonic
        super().__init__()

    def close(self) -> None:
        self._nl.close()

    def __enter__(self) -> SockDiag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _feed(self, ports: frozenset[int], parser: ScanParser) -> None:
        self._dump_all(ports, _STATES_SCAN, _EXT_INFO, parser.feed)

    def listeners(self, ports: frozenset[int]) -> tuple[ListenerStats, ...]:
        """The listening sockets on `ports`, with their accept queues: a dump of listeners only, which the kernel
        answers from its listening hash without walking the established sessions (microseconds, not a scan's
        milliseconds), so the daemon can look at its accept queues between ticks."""
        parser = ScanParser(ScanOptions(ports))
        if ports:
            self._dump_all(ports, 1 << TCP_LISTEN, 0, parser.feed)
        # Not the scans' cache of source groups: a result without sources would prune it whole, and the next tick's
        # scan would make every source's group again (measured: 2.5 ms here and ~10 ms more a scan at 20k sources).
        return tuple(parser.result().listeners)

    def destroy(self, prefixes: Sequence[Prefix], ports: frozenset[int]) -> int:
        """SOCK_DESTROY every non-listening socket on `ports` whose remote address lies in one of `prefixes`.

        The kernel aborts each one: the client gets a RST, the server's next call ECONNABORTED. Returns how many
        it destroyed; a socket that went away between the dump and its destroy request is not counted.
        """
        if not prefixes or not ports:
            return 0
        wanted = PrefixSet(prefixes)
        return self._destroy_matching(ports, _STATES_DESTROY, 0, lambda remote, _info, _ident: wanted.covers(remote))

    def cut(
        self,
        idle_ms: Mapping[Prefix, int],
        ports: frozenset[int],
        shed: Mapping[Prefix, Shed] | None = None,
        greet_ms: int = 0,
        pregreet_cut: bool = False,
    ) -> dict[Prefix, int]:
        """SOCK_DESTROY the ESTABLISHED sockets on `ports` of these sources on which the server has waited on a
        client whose session has not advanced (as `Scan` counts idle) for at least the source's `idle_ms`. Of the
        sources to `shed` (govern.model.Shed), those that got nothing but the greeting (or never said a word) and
        have not advanced for the wait, and with `queued` those the server has not greeted yet (no data sent: in the
        accept queue, or accepted and about to be); a session past the greeting only with `past`. No session is
        judged before `greet_ms` while the server has sent it only its first segment (postscreen's "220-" asks the
        client to wait), unless, with `pregreet_cut`, its client talked meanwhile. A session's age for `stale_ms` is
        counted from the first cut that saw it greeted; one not greeted yet of a source shed with `behind` is taken
        only if this look took a loop (by `loops` or `stale_ms`). Returns how many were picked of each source (a
        socket gone before its destroy request is counted all the same)."""
        shed = shed or {}
        picked: Counter[Prefix] = Counter()
        if not (idle_ms or shed) or not ports:
            return {}  # no dump: the sessions' first sights stay as they are
        now = self.clock()
        greeted, self._greeted = self._greeted, {}
        # Sessions not greeted yet of the sources shed with `behind`: taken only if this look finds a loop.
        behind: list[tuple[Prefix, tuple[int, bytes]]] = []
        looped = False
        lengths = sorted({(p.version, p.length) for p in (*shed, *idle_ms)}, reverse=True)

        def group(remote: Prefix, of: Mapping[Prefix, object]) -> Prefix | None:
            """The longest prefix of `of` that holds `remote`."""
            for version, length in lengths:
                if version == remote.version:
                    shift = remote.bits - length
                    p = Prefix(version, (remote.value >> shift) << shift, length)
                    if p in of:
                        return p
            return None

        def idle(remote: Prefix, info: tuple[int, int, int, int, int], ident: tuple[int, bytes]) -> bool:
            nonlocal looped
            # A session keeps its first sight while it lives, asked in this look or not: a shedding asks only the
            # sources it needs, and an age started afresh whenever one was left out would never reach the wait.
            cookie = ident[1][_COOKIE_AT:]
            if (seen := greeted.get(cookie)) is not None:
                self._greeted[cookie] = seen
            q = group(remote, shed) if shed else None
            if q is not None:
                wait, queued, past, replies, stale_ms, later = shed[q]
                segs_out = info[4]
                # Behind postscreen the greeting is two segments ("220-", then smtpd's banner): the replies are
                # the segments after both (a client postscreen passed before gets one, and one reply more).
                if loops(info[2], info[3], segs_out - 1 if greet_ms else segs_out, replies):
                    picked[q] += 1
                    looped = True
                    return True
                if later and segs_out == 0 and not queued:
                    behind.append((q, ident))
                    return False
                if stale_ms and segs_out > (1 if greet_ms else 0):
                    since = self._greeted.setdefault(cookie, now)
                    # Only while the server waits on it: a client waiting on a slow server (a policy check under
                    # stress) is not the one looping. No wait asked beyond that, or a loop a command every 0.3 s
                    # apart would always be in one; a sender this late is at most a round trip from its message.
                    aged = (now - since) * 1000 >= stale_ms
                    if aged and no_message(info[2], info[3]) and waits_on_client(info[0], info[1], info[3], segs_out):
                        picked[q] += 1
                        looped = True
                        return True
                # Not past the greeting (the server sent only it, or the client never said a word; behind
                # postscreen the greeting is two segments, "220-" and, after the pregreet wait, the real banner), or
                # past it with `past`.
                judged = wait > 0 and (past or segs_out == 1 or (segs_out > 1 and info[3] == 0))
                if (segs_out == 0 and queued) or (judged and stalled(*info, wait, greet_ms, pregreet_cut)):
                    picked[q] += 1
                    return True
            p = group(remote, idle_ms) if idle_ms else None
            if p is not None and stalled(*info, idle_ms[p], greet_ms, pregreet_cut):
                picked[p] += 1
                return True
            return False

        self._destroy_matching(ports, 1 << TCP_ESTABLISHED, _EXT_INFO, idle, per_socket=True)
        if looped and behind:
            # The dump's own family and sockid (a v4 client of a dual-stack listener is an AF_INET6 socket).
            self._destroy([_REQ_V2.pack(f, socket.IPPROTO_TCP, 0, 0, _STATES_DESTROY, i) for _, (f, i) in behind])
            picked.update(q for q, _ in behind)
        return dict(picked)

    def sessions(self, prefix: Prefix | PrefixSet, ports: frozenset[int]) -> list[SessionInfo]:
        """Every session on `ports` (but TIME_WAIT) whose remote address lies in `prefix` (or in one of a set's),
        with its tcp_info.

        A slow path on demand (`govern why` for one source, `govern status` for its top sources at once): one dump
        of the protected ports, filtered here.
        """
        inside = prefix.covers if isinstance(prefix, PrefixSet) else prefix.contains
        _check_ports(ports)
        if not ports:
            return []
        ports_be = frozenset(socket.htons(p) for p in ports)
        found: list[SessionInfo] = []

        def visit(buf: bytes | bytearray | memoryview, off: int, mlen: int) -> None:
            _l, _t, fam, state, sport_be, _src, dst = _MSG.unpack_from(buf, off)
            if sport_be not in ports_be or state in (TCP_LISTEN, TCP_TIME_WAIT):
                return
            remote = _remote(fam, dst)
            if not inside(remote):
                return
            lport, rport = _PORTS.unpack_from(buf, off + _SOCKID_AT)
            at, _hdr = ScanParser._find_info(buf, off, mlen)
            base = SessionInfo(str(remote), rport, lport, _STATE_NAMES.get(state, str(state)), bool(at))
            if at:
                sent, recv, acked, received, segs_in, segs_out = _SESSION_INFO.unpack_from(buf, off + at + 4)
                base = base._replace(
                    server_sent_ms=sent,
                    client_sent_ms=recv,
                    segs_in=segs_in,
                    segs_out=segs_out,
                    bytes_in=received,
                    bytes_out=acked,
                )
            found.append(base)

        self._dump_all(ports, _STATES_DESTROY, _EXT_INFO, lambda buf, size: _walk(buf, size, visit))
        return found

    def _destroy_matching(
        self,
        ports: frozenset[int],
        states: int,
        ext: int,
        match: Callable[[Prefix, tuple[int, int, int, int, int], tuple[int, bytes]], bool],
        *,
        per_socket: bool = False,
    ) -> int:
        """Dump the sockets on `ports` in `states`, and SOCK_DESTROY those `match` picks by remote address (and,
        with `per_socket`, by their tcp_info's last data sent, last data received, bytes received and data segments
        in and out, and their family and sockid, cookie included)."""
        _check_ports(ports)
        ports_be = frozenset(socket.htons(p) for p in ports)
        targets: list[bytes] = []
        seen: dict[tuple[int, bytes], bool] = {}
        no_info = (0, 0, 0, 0, 0)

        def collect(buf: bytes | bytearray | memoryview, off: int, mlen: int) -> None:
            _l, _t, fam, state, sport_be, _src, dst = _MSG.unpack_from(buf, off)
            if sport_be in ports_be and state != TCP_LISTEN and state != TCP_TIME_WAIT:
                if per_socket:
                    at = off + _SOCKID_AT
                    hit = match(_remote(fam, dst), _info(buf, off, mlen), (fam, bytes(buf[at : at + 48])))
                elif (fam, dst) in seen:
                    hit = seen[fam, dst]
                else:
                    hit = seen[fam, dst] = match(_remote(fam, dst), no_info, (fam, b""))
                if hit:
                    # The dump's own sockid, cookie included: the kernel destroys that very socket or, if it is
                    # gone, none (a new socket on the same 4-tuple has another cookie).
                    sockid = bytes(buf[off + _SOCKID_AT : off + _SOCKID_AT + 48])
                    targets.append(_REQ_V2.pack(fam, socket.IPPROTO_TCP, 0, 0, _STATES_DESTROY, sockid))

        self._dump_all(ports, states, ext, lambda buf, size: _walk(buf, size, collect))
        return self._destroy(targets)

    # --- requests (govern/netlink.py sends them and reads the replies) ---

    def _dump_all(self, ports: frozenset[int], states: int, ext: int, feed: Callable[[bytearray, int], bool]) -> None:
        if self.one_walk:
            fed = 0

            def counted(buf: bytearray, size: int) -> bool:
                nonlocal fed
                done = feed(buf, size)
                fed += 1
                return done

            try:
                self._dump(self._request(TCPDIAG_GETSOCK, socket.AF_UNSPEC, ports, states, ext), counted)
                return
            except NetlinkError as exc:
                # Refused outright (the request's first answer is the error): ask the newer way. Not when the
                # dump failed half-way, as the parser already holds part of it.
                if fed or exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOENT):
                    raise
                self.one_walk = False
        for family in (socket.AF_INET, socket.AF_INET6):
            self._dump(self._request(SOCK_DIAG_BY_FAMILY, family, ports, states, ext), feed)

    def _request(self, mtype: int, family: int, ports: frozenset[int], states: int, ext: int) -> bytes:
        key = (mtype, family, ports, states, ext, self.kernel_filter)
        req = self._requests.get(key)
        if req is None:
            if mtype == TCPDIAG_GETSOCK:
                body = _REQ_V1.pack(family, 0, 0, ext, bytes(48), states, 0)
            else:
                body = _REQ_V2.pack(family, socket.IPPROTO_TCP, ext, 0, states, bytes(48))
            if self.kernel_filter:
                body += netlink.attr(INET_DIAG_REQ_BYTECODE, port_bytecode(ports))
            # Flags and sequence number are filled in per request.
            req = self._requests[key] = netlink.nlmsg(mtype, 0, 0, body)
        return req

    def _dump(self, request: bytes, feed: Callable[[bytearray, int], bool]) -> None:
        self._nl.dump(request, cast(netlink.Feed, feed), "the dump")

    def _destroy(self, targets: list[bytes]) -> int:
        destroyed = 0
        failure = 0
        what = "the destroy requests"
        for start in range(0, len(targets), _DESTROY_BATCH):
            batch = targets[start : start + _DESTROY_BATCH]
            first = self._nl.next_seq(len(batch))
            flags = netlink.NLM_F_REQUEST | netlink.NLM_F_ACK
            out = b"".join(netlink.nlmsg(SOCK_DESTROY, flags, first + i, body) for i, body in enumerate(batch))
            self._nl.send(out, what)
            pending = len(batch)
            while pending:
                for ack in self._nl.read_acks(what):
                    if 0 <= ack.seq - first < len(batch):
                        pending -= 1
                        if ack.errno == 0:
                            destroyed += 1
                        elif ack.errno != errno.ENOENT and not failure:
                            failure = ack.errno
            self._nl.dirty = False
        if failure:
            text = f"sock_diag destroy refused ({destroyed} destroyed): {netlink.strerror(failure)}"
            raise NetlinkError(text, failure)
        return destroyed


def _info(buf: bytes | bytearray | memoryview, off: int, mlen: int) -> tuple[int, int, int, int, int]:
    """tcpi_last_data_sent, tcpi_last_data_recv, tcpi_bytes_received, tcpi_data_segs_in, tcpi_data_segs_out of one
    message (zeros without tcp_info)."""
    at, _hdr = ScanParser._find_info(buf, off, mlen)
    if not at:
        return 0, 0, 0, 0, 0
    _h, sent, recv, brecv, segs_in, segs_out = _INFO.unpack_from(buf, off + at)
    return sent, recv, brecv, segs_in, segs_out


def waits_on_client(sent: int, recv: int, segs_in: int, segs_out: int) -> bool:
    """The client has said nothing since the server last spoke (`sent`, `recv`: ms since the last data segment
    each way, in jiffies): equal ages count when the server has sent more data segments than the client, the one
    that answered (see `stalled`). The scan's per-socket loop and its numpy path inline the same comparison."""
    return recv > sent or (recv == sent and segs_in < segs_out)


def stalled(
    sent: int,
    recv: int,
    brecv: int,
    segs_in: int,
    segs_out: int,
    after_ms: int,
    greet_ms: int = 0,
    pregreet_cut: bool = False,
) -> bool:
    """The server has spoken, and its session has not advanced for at least `after_ms` (see the module docstring),
    or for `greet_ms` if longer while the server has sent only its first segment: the silence postscreen's "220-"
    asks for is not a stall. With `pregreet_cut` that floor is for silent clients only: one that talked during the
    wait failed postscreen's pregreet test, which postscreen enforces, and its session will carry no mail.

    The kernel keeps both times in jiffies (4 ms at HZ=250), so equal ages say nothing of the order: a client that
    never spoke (its last "data" time is the handshake's), a command answered within the jiffy it arrived (a
    pre-banner talker's EHLO, answered as the banner goes out; a fast server's reply), or a command that arrived
    within the jiffy of the server's last segment and is not answered yet. The data segments tell them apart: a
    server that has sent more than the client is the one that answered (the greeting and a reply per command), and
    waits on the client; otherwise the last command is still the server's to answer.
    """
    if sent < after_ms or segs_out <= 0 or (segs_out == 1 and sent < greet_ms and not (pregreet_cut and segs_in)):
        return False
    if waits_on_client(sent, recv, segs_in, segs_out):
        return True
    return segs_out == 1 or (segs_in >= segs_out + 2 and brecv < 16 * segs_in)


def _remote(family: int, dst: bytes) -> Prefix:
    if family == socket.AF_INET:
        return Prefix.from_packed(dst[:4])
    if dst.startswith(_MAPPED):
        return Prefix.from_packed(dst[12:])
    return Prefix.from_packed(dst)
