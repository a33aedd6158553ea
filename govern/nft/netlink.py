"""Set elements of govern's nftables table over raw nfnetlink: the enforcer's fast path, no fork, no libnftables.

This module owns adding and deleting elements of existing sets (block4/6, allow4/6, throttle sets) as one
transaction per commit, and dumping a set's elements back as prefixes (with per-element counters): the nfnetlink
and nf_tables layouts, batches, and what the kernel's acks and errors mean for a transaction. The socket, netlink
framing, error parsing and the dump loop are govern/netlink.py's. It never creates or deletes tables, sets or
rules: the nft CLI does that once at start-up, where speed does not matter.

Wire format (linux/netfilter/nfnetlink.h, nf_tables.h), as nft 1.0.6 sends it (`nft --debug=netlink,mnl`):
- A commit is NFNL_MSG_BATCH_BEGIN, NFT_MSG_NEWSETELEM/DELSETELEM messages, NFNL_MSG_BATCH_END, in one sendmsg:
  nfnetlink makes one transaction of one skb. Every element message asks for an ack, so success is confirmed, not
  inferred from silence; errors carry the offset of the element the kernel refused (NETLINK_EXT_ACK).
- NFTA_SET_ELEM_LIST_ELEMENTS is one attribute and nla_len is u16, so a long list is split over several messages
  of the same batch (under 64 KiB of elements each).
- Interval sets (rbtree) hold a range as two elements: the start key, carrying the timeout, and the first address
  past the range flagged NFT_SET_ELEM_INTERVAL_END. A range reaching the top of the address space has no end
  element; nft marks its start with userdata "interval open" (for its own listing) and so do we. nft also adds a
  0.0.0.0 (::) end element when it fills an empty set; the kernel does not need it and we do not send it.

Kernel behaviour established on Linux 6.18 (tests/kernel/test_nft_netlink.py pins it):
- Adding an element that exists (same interval) without NLM_F_EXCL succeeds, and replaces its timeout and restarts
  its expiry with the new one, longer or shorter. With the timeout it already has, the expiry restarts only when
  NFTA_SET_ELEM_EXPIRATION is sent too (otherwise the kernel changes nothing), so every timed add carries it, equal
  to the timeout. Re-adding WITHOUT a timeout makes it permanent (set default 0).
- The ruleset generation (NFT_MSG_GETGEN) moves on by one with every committed transaction that changes anything,
  anyone's, in any table; a batch that changes nothing (only deletes of absent elements, or re-adds that change
  nothing) and a refused one leave it. A batch whose first message asks for NLM_F_ECHO gets the generation its
  commit made (NFT_MSG_NEWGEN) ahead of the acks, and that message's elements echoed.
- Deleting an element that does not exist fails with ENOENT and rolls back the whole batch; so does deleting one
  whose timeout has passed. `commit(missing_ok=True)` sends NFT_MSG_DESTROYSETELEM (Linux >= 6.3) instead.
- Adding a prefix that overlaps an existing one fails with EEXIST (the kernel's ENOTEMPTY, reported as EEXIST) and
  rolls back the batch - except one case the kernel does not catch: a prefix that contains an existing one and
  shares its last address (198.18.0.4/31 over 198.18.0.5, 198.18.0.0/23 over 198.18.1.0/24) is accepted, nested,
  and cannot be deleted (ENOENT) while the inner one exists. Callers must delete covered prefixes first, in the
  same commit.
- An element whose timeout has passed but that GC has not reaped is invisible to lookups and dumps; adding it again
  succeeds (the insert path reaps it).
- Dumps omit NFTA_SET_ELEM_TIMEOUT when an element's timeout equals the set's default, so `SetElem.timeout_ms` is
  0 then (as in `ElemOp`: "the set default").
- Cost: every commit that touches an interval set rebuilds the set's lookup array in the kernel, O(set size):
  ~0.3 ms at 10k elements, 10-30 ms at 100k, 100-250 ms at 1M (the more scattered the elements are in memory, the
  slower), whatever userspace does; a hash (non-interval) set stays ~20 us at any size. A hash set with timeouts
  walks all its elements at every garbage collection (`gc-interval`, by default every second: 9% of a core at
  1M). A dump restarts the kernel's walk for each ~32 KiB reply, O(size^2): 0.6-3 s for 100k intervals. Adding in
  key order keeps both at the fast end.
"""

from __future__ import annotations

import bisect
import errno
import itertools
import operator
import socket
import struct
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

from govern import netlink
from govern.addr import Prefix
from govern.errors import KernelError
from govern.heap import collector_held
from govern.keys import Counted, group_counts
from govern.netlink import (
    NLA_F_NESTED,
    NLA_TYPE_MASK,
    NLATTR,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NetlinkError,
    NlError,
    align,
)

_T = TypeVar("_T")

NETLINK_NETFILTER = 12
NLM_F_ECHO = 0x8

NFPROTO_INET = 1
NFPROTO_IPV4 = 2
NFPROTO_IPV6 = 10
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 16
NFNL_MSG_BATCH_END = 17
NFT_MSG_NEWSET = 9
NFT_MSG_GETSET = 10
NFT_MSG_NEWSETELEM = 12
NFT_MSG_GETSETELEM = 13
NFT_MSG_DELSETELEM = 14
NFT_MSG_NEWGEN = 15
NFT_MSG_GETGEN = 16
NFT_MSG_NEWOBJ = 18
NFT_MSG_GETOBJ = 19
NFT_MSG_DESTROYSETELEM = 30  # Linux >= 6.3: DELSETELEM that ignores missing elements

NFTA_LIST_ELEM = 1
NFTA_GEN_ID = 1
NFTA_DATA_VALUE = 1
NFTA_SET_TABLE = 1
NFTA_SET_NAME = 2
NFTA_SET_FLAGS = 3
NFTA_SET_KEY_LEN = 5
NFT_SET_INTERVAL = 0x4
NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_FLAGS = 3
NFTA_SET_ELEM_TIMEOUT = 4
NFTA_SET_ELEM_EXPIRATION = 5
NFTA_SET_ELEM_USERDATA = 6
NFTA_SET_ELEM_EXPR = 7
NFTA_SET_ELEM_EXPRESSIONS = 10
NFT_SET_ELEM_INTERVAL_END = 0x1
NFTA_EXPR_NAME = 1
NFTA_EXPR_DATA = 2
NFTA_COUNTER_PACKETS = 2
NFTA_OBJ_TABLE = 1
NFTA_OBJ_NAME = 2
NFTA_OBJ_TYPE = 3
NFTA_OBJ_DATA = 4
NFT_OBJECT_COUNTER = 1
# libnftnl's element userdata: TLV type NFTNL_UDATA_SET_ELEM_FLAGS (1), u32 in host order, F_INTERVAL_OPEN (1).
_UDATA_INTERVAL_OPEN = struct.pack("=BBI", 1, 4, 1)

# nla_len is u16: the ELEMENTS attribute, header included, must stay below 64 KiB.
MAX_ELEMENTS_ATTR = 0xFFFF
_ACK_TIMEOUT_S = 30
_RCVBUF = 8 << 20
_RECV_SIZE = 1 << 20
_INLINE_CHUNKS = 8  # dumps longer than this many recv()s are read on by a thread

_FAMILY_NAMES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}

_BE32 = struct.Struct(">I")
_U32 = struct.Struct("=I")
_BE64 = struct.Struct(">Q")
_NEVER = b"\xff" * 8  # above any expiration a counting set's element reports (big-endian ms)


class ElemOp(NamedTuple):
    """One element change of a commit."""

    add: bool  # True: NEWSETELEM, False: DELSETELEM
    set: str  # e.g. "block4"
    prefix: Prefix
    timeout_ms: int = 0  # 0: no per-element timeout (set default applies); ignored for deletes


class SetElem(NamedTuple):
    """One element as the kernel reports it."""

    prefix: Prefix  # for plain (non-interval) sets: the key as a host prefix (/32, /128)
    timeout_ms: int  # 0 if none, or if it equals the set's default timeout (the kernel omits it then)
    expires_ms: int  # ms left, 0 if none
    packets: int  # from a per-element counter expression, else 0


class _MsgInfo(NamedTuple):
    """Where one element message of a batch sits, to name the element an error points at."""

    seq: int
    add: bool
    set: str
    first_elem: int  # offset of the first list element from the start of the message
    op_offsets: list[int]  # offset of each op's first list element from the start of the message
    op_index: list[int]  # index into the commit's ops of each of those


class Batch(NamedTuple):
    """An encoded transaction: the bytes for one sendmsg and the map from sequence numbers back to ops."""

    data: bytes
    begin_seq: int
    end_seq: int
    messages: list[_MsgInfo]


def _nlmsg(mtype: int, flags: int, seq: int, family: int, res_id: int, body: bytes) -> bytes:
    """An nfnetlink message: the netlink header, then nfgenmsg (family, version 0, res_id big-endian on the wire)."""
    return netlink.nlmsg(mtype, flags, seq, bytes((family, 0)) + res_id.to_bytes(2, "big") + body)


def _msg_type(cmd: int) -> int:
    return (NFNL_SUBSYS_NFTABLES << 8) | cmd


def _key_hdr(klen: int) -> bytes:
    return NLATTR.pack(8 + klen, NLA_F_NESTED | NFTA_SET_ELEM_KEY) + NLATTR.pack(4 + klen, NFTA_DATA_VALUE)


def _elem_hdr(size: int) -> bytes:
    return NLATTR.pack(size, NLA_F_NESTED | NFTA_LIST_ELEM)


_TIMEOUT_HDR = NLATTR.pack(12, NFTA_SET_ELEM_TIMEOUT)
_EXPIRATION_HDR = NLATTR.pack(12, NFTA_SET_ELEM_EXPIRATION)
_FLAGS_END = NLATTR.pack(8, NFTA_SET_ELEM_FLAGS) + _BE32.pack(NFT_SET_ELEM_INTERVAL_END)
_UDATA_OPEN = netlink.attr(NFTA_SET_ELEM_USERDATA, _UDATA_INTERVAL_OPEN)
_KEY_HDR = {4: _key_hdr(4), 16: _key_hdr(16)}
# Per key length: list element header + key attribute headers of a start element, by what follows the key.
_START_PLAIN = {k: _elem_hdr(4 + 8 + k) + _KEY_HDR[k] for k in (4, 16)}
_START_TIMED = {k: _elem_hdr(4 + 8 + k + 24) + _KEY_HDR[k] for k in (4, 16)}
_START_OPEN = {k: _elem_hdr(4 + 8 + k + len(_UDATA_OPEN)) + _KEY_HDR[k] for k in (4, 16)}
_START_OPEN_TIMED = {k: _elem_hdr(4 + 8 + k + 24 + len(_UDATA_OPEN)) + _KEY_HDR[k] for k in (4, 16)}
_END = {k: _elem_hdr(4 + 8 + k + len(_FLAGS_END)) + _KEY_HDR[k] for k in (4, 16)}


def _timed(timeout: int) -> bytes:
    """The timeout, and the same as the expiration: re-adding an element whose timeout equals the one it has
    restarts its expiry only when the expiration is given (Linux 6.18), so an extension by the same duration as
    the block would otherwise change nothing in the kernel."""
    ms = timeout.to_bytes(8, "big")
    return _TIMEOUT_HDR + ms + _EXPIRATION_HDR + ms


def element_bytes(op: ElemOp, interval: bool) -> bytes:
    """The NFTA_LIST_ELEM attributes of one op: a plain key, or an interval's start (+ end) element.

    The timeout rides on the start element only, as nft sends it; the kernel ages the pair through the start.
    A range ending at the top of the address space has no end element: its start carries the "open" userdata.
    """
    version, value, plen = op.prefix
    klen = 4 if version == 4 else 16
    timeout = op.timeout_ms if op.add else 0
    if timeout < 0:
        raise ValueError(f"negative timeout {timeout} ms for {op.prefix}")
    key = value.to_bytes(klen, "big")
    if not interval:
        if timeout:
            return _START_TIMED[klen] + key + _timed(timeout)
        return _START_PLAIN[klen] + key
    bits = klen * 8
    end = (value | ((1 << (bits - plen)) - 1)) + 1
    if end >> bits:
        if timeout:
            return _START_OPEN_TIMED[klen] + key + _timed(timeout) + _UDATA_OPEN
        return _START_OPEN[klen] + key + _UDATA_OPEN
    tail = _END[klen] + end.to_bytes(klen, "big") + _FLAGS_END
    if timeout:
        return _START_TIMED[klen] + key + _timed(timeout) + tail
    return _START_PLAIN[klen] + key + tail


def encode_commit(
    ops: Sequence[ElemOp],
    *,
    table: str,
    family: int,
    interval_sets: frozenset[str],
    seq: int,
    missing_ok: bool = False,
    echo: bool = False,
) -> Batch:
    """Encode `ops` as one nfnetlink batch; message sequence numbers start at `seq` (the batch begin).

    Consecutive ops on the same set with the same verb share a message, up to the 64 KiB an attribute can hold;
    within such a run, adds go in key order (same outcome for non-overlapping elements; the kernel is faster).

    With `echo`, the first element message asks for NLM_F_ECHO: the kernel then tells this socket the ruleset
    generation its commit made (NFT_MSG_NEWGEN, sequence number of that message), and echoes that message's
    elements back too, which is why it carries only one.
    """
    chunks = [_nlmsg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, socket.AF_UNSPEC, NFNL_SUBSYS_NFTABLES, b"")]
    messages: list[_MsgInfo] = []
    table_attr = netlink.strz(NFTA_SET_ELEM_LIST_TABLE, table)
    limit = MAX_ELEMENTS_ATTR - 4
    delete_cmd = NFT_MSG_DESTROYSETELEM if missing_ok else NFT_MSG_DELSETELEM
    next_seq = seq + 1
    i, n = 0, len(ops)
    while i < n:
        add, set_name = ops[i].add, ops[i].set
        j = i + 1
        while j < n and ops[j].add == add and ops[j].set == set_name:
            j += 1
        interval = set_name in interval_sets
        # Encoded in the caller's order: walking 100k ops in sorted order instead costs 3x in cache misses.
        records = [element_bytes(ops[k], interval) for k in range(i, j)]
        run = list(range(i, j))
        if add:
            # Adds to one set go in key order: the kernel then allocates neighbouring elements together, and its
            # per-commit and per-dump walks of the tree run ~2.5x faster. Stable, so a repeated element keeps
            # its last timeout.
            keys = [(op.prefix.value << 8) | op.prefix.length for op in ops[i:j]]
            order = sorted(range(j - i), key=keys.__getitem__)
            records = [records[k] for k in order]
            run = [i + k for k in order]
        i = j
        head = table_attr + netlink.strz(NFTA_SET_ELEM_LIST_SET, set_name)
        first = 20 + len(head) + 4
        cmd = NFT_MSG_NEWSETELEM if add else delete_cmd
        flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE if add else 0)
        starts = [0, *itertools.accumulate(map(len, records))]  # offset of each record in the run, then the end
        lo = 0
        while lo < len(records):
            # As many records as fit under the attribute limit, and at least one.
            hi = max(bisect.bisect_right(starts, starts[lo] + limit) - 1, lo + 1)
            mflags = flags
            if echo and not messages:
                hi, mflags = lo + 1, flags | NLM_F_ECHO
            base = starts[lo] - first
            body = head + NLATTR.pack(4 + starts[hi] - starts[lo], NLA_F_NESTED | NFTA_SET_ELEM_LIST_ELEMENTS)
            chunks.append(_nlmsg(_msg_type(cmd), mflags, next_seq, family, 0, body + b"".join(records[lo:hi])))
            offsets = [off - base for off in starts[lo:hi]]
            messages.append(_MsgInfo(next_seq, add, set_name, first, offsets, run[lo:hi]))
            next_seq += 1
            lo = hi
    chunks.append(_nlmsg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, next_seq, socket.AF_UNSPEC, NFNL_SUBSYS_NFTABLES, b""))
    return Batch(b"".join(chunks), seq, next_seq, messages)


# --- replies ------------------------------------------------------------------------------------------------


def describe_errors(ops: Sequence[ElemOp], batch: Batch, errors: list[NlError], where: str) -> NetlinkError:
    """The NetlinkError for a refused batch, naming the operation and the element the kernel pointed at."""
    elem_errors = [e for e in errors if e.seq != batch.begin_seq]
    first = min(elem_errors, key=lambda e: e.seq) if elem_errors else errors[0]
    reason = netlink.strerror(first.errno) + (f" ({first.message})" if first.message else "")
    more = f"; {len(errors) - 1} more error(s) in the same transaction" if len(errors) > 1 else ""
    info = next((m for m in batch.messages if m.seq == first.seq), None)
    if info is None:
        text = f"nftables: transaction of {len(ops)} element changes in {where} failed: {reason}"
    else:
        verb, prep = ("add", "to") if info.add else ("delete", "from")
        target = f"set {info.set} of {where}"
        if first.offset >= info.first_elem:
            op = ops[info.op_index[bisect.bisect_right(info.op_offsets, first.offset) - 1]]
            timeout = f" timeout {op.timeout_ms} ms" if info.add and op.timeout_ms else ""
            text = f"nftables: cannot {verb} {op.prefix}{timeout} {prep} {target}: {reason}"
        else:
            # The kernel blamed the message itself (no such set or table, ...), not one element.
            text = f"nftables: cannot {verb} elements {prep} {target}: {reason}"
    return NetlinkError(text + more + "; nothing was changed", first.errno, detail=first.message, offset=first.offset)


# A raw element: (key << 1 | 1 for a start, 0 for an interval end), timeout ms, expiration ms, counter packets.
# Folding the flag into the key makes plain tuple order the order the kernel matches in: by key, ends first.
_RawElem = tuple[int, int, int, int]


def _parse_counter(buf: bytes | bytearray | memoryview, p: int, end: int) -> int:
    """Packets of a counter expression nested in buf[p:end] (NFTA_EXPR_NAME, NFTA_EXPR_DATA); 0 if another kind."""
    # Once per counted element of every tick's SYN-counter dump: loops inline, as in _parse_elements, because
    # netlink.attrs's generators cost a quarter more here (20k elements: 45 ms against 36).
    is_counter, packets = False, 0
    while p + 4 <= end:
        alen, atype = NLATTR.unpack_from(buf, p)
        if alen < 4:
            break
        atype &= NLA_TYPE_MASK
        if atype == NFTA_EXPR_NAME:
            is_counter = bytes(buf[p + 4 : p + alen]).rstrip(b"\0") == b"counter"
        elif atype == NFTA_EXPR_DATA:
            q, qend = p + 4, p + alen
            while q + 4 <= qend:
                blen, btype = NLATTR.unpack_from(buf, q)
                if blen < 4:
                    break
                if btype & NLA_TYPE_MASK == NFTA_COUNTER_PACKETS:
                    (packets,) = _BE64.unpack_from(buf, q + 4)
                q += align(blen)
        p += align(alen)
    return packets if is_counter else 0


def _parse_elements(buf: bytes | bytearray | memoryview, off: int, end: int, out: list[_RawElem]) -> int:
    """Append the elements of one NFTA_SET_ELEM_LIST_ELEMENTS payload to `out`; returns the key length seen."""
    # The hot loop of a 100k-element dump: locals only, no helper calls for the common attributes.
    unpack_nla = NLATTR.unpack_from
    be64 = _BE64.unpack_from
    be32 = _BE32.unpack_from
    from_bytes = int.from_bytes
    append = out.append
    klen = 0
    while off + 4 <= end:
        elen = unpack_nla(buf, off)[0]
        if elen < 4:
            break
        p, pend = off + 4, off + elen
        key = -1
        start = 1
        timeout = expires = packets = 0
        while p + 4 <= pend:
            alen, atype = unpack_nla(buf, p)
            if alen < 4:
                break
            atype &= NLA_TYPE_MASK
            if atype == NFTA_SET_ELEM_KEY:
                klen = unpack_nla(buf, p + 4)[0] - 4
                key = from_bytes(buf[p + 8 : p + 8 + klen], "big")
            elif atype == NFTA_SET_ELEM_EXPIRATION:
                expires = be64(buf, p + 4)[0]
            elif atype == NFTA_SET_ELEM_TIMEOUT:
                timeout = be64(buf, p + 4)[0]
            elif atype == NFTA_SET_ELEM_FLAGS:
                if be32(buf, p + 4)[0] & NFT_SET_ELEM_INTERVAL_END:
                    start = 0
            elif atype == NFTA_SET_ELEM_EXPR:
                packets += _parse_counter(buf, p + 4, p + alen)
            elif atype == NFTA_SET_ELEM_EXPRESSIONS:
                q, qend = p + 4, p + alen
                while q + 4 <= qend:
                    blen = unpack_nla(buf, q)[0]
                    if blen < 4:
                        break
                    packets += _parse_counter(buf, q + 4, q + blen)
                    q += (blen + 3) & ~3
            p += (alen + 3) & ~3
        if key >= 0:
            append((key << 1 | start, timeout, expires, packets))
        off += (elen + 3) & ~3
    return klen


class _CountLayout(NamedTuple):
    """How the fast loop of `CountParser` reads one shape of counted element, learnt from the first of its shape.

    `unpack` reads the whole element (`size` bytes, alignment included) at once; `check` picks every field but the
    key and the packets (the attribute headers, the counter's name, flags and user data), which must equal
    `expect` for the element to be read this way; `key_at`, `packets_at` and `expires_at` index the key bytes, the
    packets and the time left before the element times out (big-endian bytes, ms) in the record.
    """

    unpack: Callable[[bytes | bytearray | memoryview, int], tuple[Any, ...]]
    size: int
    check: Callable[[tuple[Any, ...]], tuple[Any, ...]]
    expect: tuple[Any, ...]
    key_at: int
    packets_at: int
    expires_at: int  # -1: this shape has no expiration (no timeout)


def _count_layout(buf: bytes | bytearray | memoryview, off: int, elen: int) -> _CountLayout | None:
    """The layout of the element at `off` if it is a plain counted one (a key, one counter, no interval end, no
    data); None otherwise (the generic parse then takes every element of its shape)."""
    fields: list[tuple[int, str, str]] = [(off, "I", "check")]  # (offset, struct code, role)
    key = packets = 0
    for atype, p, end in netlink.attrs(buf, off + 4, off + elen):
        fields.append((p - 4, "I", "check"))
        if atype == NFTA_SET_ELEM_KEY:
            for itype, q, qend in netlink.attrs(buf, p, end):
                fields.append((q - 4, "I", "check"))
                if itype != NFTA_DATA_VALUE or qend - q not in (4, 16):
                    return None
                fields.append((q, f"{qend - q}s", "key"))
                key += 1
        elif atype == NFTA_SET_ELEM_EXPR:
            for itype, q, qend in netlink.attrs(buf, p, end):
                fields.append((q - 4, "I", "check"))
                if itype == NFTA_EXPR_NAME:
                    if bytes(buf[q:qend]).rstrip(b"\0") != b"counter":
                        return None
                    fields.append((q, f"{qend - q}s", "check"))
                elif itype == NFTA_EXPR_DATA:
                    for ctype, r, rend in netlink.attrs(buf, q, qend):
                        fields.append((r - 4, "I", "check"))
                        if ctype == NFTA_COUNTER_PACKETS and rend - r == 8:
                            fields.append((r, "8s", "packets"))
                            packets += 1
        elif atype in (NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_USERDATA):
            fields.append((p, f"{end - p}s", "check"))
        elif atype == NFTA_SET_ELEM_EXPIRATION and end - p == 8:
            fields.append((p, "8s", "expires"))
        elif atype != NFTA_SET_ELEM_TIMEOUT:
            return None  # data, expressions lists, object references: not a counting set's
    if key != 1 or packets != 1:
        return None
    fields.sort()
    fmt, at, roles = "=", off, []
    for foff, code, role in fields:
        if foff < at:
            return None
        fmt += f"{foff - at}x{code}" if foff > at else code
        at = foff + struct.calcsize("=" + code)
        roles.append(role)
    size = align(elen)
    fmt += f"{off + size - at}x" if off + size > at else ""
    record = struct.Struct(fmt)
    if record.size != size:
        return None
    rec = record.unpack_from(buf, off)
    checked = [i for i, role in enumerate(roles) if role == "check"]
    pick = operator.itemgetter(*checked)
    expires_at = roles.index("expires") if "expires" in roles else -1
    return _CountLayout(
        record.unpack_from, size, pick, pick(rec), roles.index("key"), roles.index("packets"), expires_at
    )


class CountParser:
    """The elements of a dump of a counting set (a plain set whose elements carry a counter, like `seen4`): each
    key (big-endian, as an integer) and its counter's packets, for every tick's read of the SYN counters.

    The kernel sends every element of such a set in one of very few shapes (with or without a per-element timeout),
    so each element is read with one precompiled struct learnt per shape, and checked against it; any other
    element goes through the generic parse (`_parse_elements`), which gives the same key and packets.
    """

    __slots__ = ("_keys", "_layouts", "_packets", "_raw", "_soonest")

    def __init__(self) -> None:
        # Each element's key and packets appended to one buffer each, not kept as a bytes object per element
        # (~80 B an element more at the peak of a tick that reads a flood's counters; docs/benchmarks.md, "Memory").
        self._keys = bytearray()
        self._packets = bytearray()
        self._raw: list[_RawElem] = []  # the elements the generic parse took
        self._layouts: dict[int, _CountLayout | None] = {}
        # The least time left before an element read times out, as big-endian bytes (compared as they are).
        self._soonest = _NEVER

    def feed(self, buf: bytes | bytearray | memoryview, off: int, end: int) -> None:
        """Read the elements of one NFTA_SET_ELEM_LIST_ELEMENTS payload, buf[off:end]."""
        keys, packets = self._keys.extend, self._packets.extend
        layouts = self._layouts
        unpack_nla = NLATTR.unpack_from
        cur: _CountLayout | None = None
        soonest = self._soonest
        ex = -1
        while off + 4 <= end:
            if cur is not None and off + cur.size <= end:
                rec = cur.unpack(buf, off)
                if cur.check(rec) == cur.expect:
                    keys(rec[cur.key_at])
                    packets(rec[cur.packets_at])
                    if ex >= 0 and rec[ex] < soonest:
                        soonest = rec[ex]
                    off += cur.size
                    continue
            elen, _atype = unpack_nla(buf, off)
            if elen < 4:
                break
            (word,) = _U32.unpack_from(buf, off)
            if word not in layouts:
                layouts[word] = _count_layout(buf, off, elen) if off + elen <= end else None
            layout = layouts[word]
            if layout is not None and layout is not cur and off + layout.size <= end:
                rec = layout.unpack(buf, off)
                if layout.check(rec) == layout.expect:
                    cur, ex = layout, layout.expires_at
                    continue
            step = (elen + 3) & ~3
            raw, taken = self._raw, len(self._raw)
            _parse_elements(buf, off, min(off + step, end), raw)
            for _k, t, e, _pk in raw[taken:]:
                if (t or e) and (left := e.to_bytes(8, "big")) < soonest:
                    soonest = left
            off += step
        self._soonest = soonest

    def soonest_ms(self) -> int | None:
        """The least time left, in ms, before an element read times out; None if none has a timeout."""
        return None if self._soonest == _NEVER else int.from_bytes(self._soonest, "big")

    def result(self) -> list[tuple[int, int]]:
        """(key, packets) of every element read."""
        n = len(self._packets) // 8
        size = len(self._keys) // n if n else 0
        keys, packets = bytes(self._keys), bytes(self._packets)
        out = [
            (int.from_bytes(keys[i * size : (i + 1) * size]), int.from_bytes(packets[i * 8 : i * 8 + 8]))
            for i in range(n)
        ]
        out += [(k >> 1, pk) for k, _t, _e, pk in self._raw]
        return out

    def columns(self, version: int, plen: int) -> Counted:
        """The packets of every element read, per source group of `plen` bits, as columns (govern.keys.Counted): the
        per-tick read, without a Python object per element beyond the bytes the loop took."""
        size = 4 if version == 4 else 16
        keys, packets = self._keys, self._packets  # read in place by numpy (group_counts copies what it keeps)
        if self._raw:
            keys += b"".join((k >> 1).to_bytes(size, "big") for k, _t, _e, _pk in self._raw)
            packets += b"".join(pk.to_bytes(8, "big") for _k, _t, _e, pk in self._raw)
            self._raw = []  # taken into the buffers: a second call reads them once
        if len(keys) != size * (len(packets) // 8):
            raise KernelError(f"nftables: a counting set's keys are not IPv{version} addresses", 4)
        return group_counts(keys, packets, version, plen)


class CountRead(NamedTuple):
    """One read of a family's counting sets: the counts, and the least time left (ms) before one of the elements
    read times out (None: none has a timeout). Until then, and while no new connection is counted, a read again
    would find the same."""

    counts: Counted
    soonest_ms: int | None


class DumpChunk(NamedTuple):
    done: bool  # NLMSG_DONE seen
    interrupted: bool  # NLM_F_DUMP_INTR seen: the set changed during the dump
    key_len: int  # key length of the last element parsed, 0 if none


def parse_dump_chunk(
    buf: bytes | bytearray | memoryview, n: int, seq: int, out: list[_RawElem], what: str = "a set dump"
) -> DumpChunk:
    """Parse one recv()'s worth of GETSETELEM dump `seq`, appending raw elements to `out`.

    An error the kernel reports raises NetlinkError ("nftables: cannot list `what`: reason").
    """
    done = interrupted = False
    key_len = 0
    for off, ln, mtype, flags in netlink.walk(buf, n, f"nftables: cannot list {what}", seq):
        if flags & NLM_F_DUMP_INTR:
            interrupted = True
        if mtype in (NLMSG_DONE, NLMSG_ERROR):
            done = True  # NLMSG_DONE, or an ack: `walk` raised if it was a refusal
        elif mtype == _msg_type(NFT_MSG_NEWSETELEM):
            for atype, p, end in netlink.attrs(buf, off + 20, off + ln):
                if atype == NFTA_SET_ELEM_LIST_ELEMENTS:
                    key_len = _parse_elements(buf, p, end, out) or key_len
    return DumpChunk(done, interrupted, key_len)


def range_to_prefixes(version: int, start: int, stop: int) -> list[Prefix]:
    """The CIDR prefixes that exactly cover [start, stop), largest first-fit from `start`."""
    bits = 32 if version == 4 else 128
    out: list[Prefix] = []
    while start < stop:
        # The largest aligned block at `start` that does not pass `stop`.
        size = start & -start if start else 1 << bits
        while size > stop - start:
            size >>= 1
        out.append(Prefix(version, start, bits - size.bit_length() + 1))
        start += size
    return out


def build_elems(raw: list[_RawElem], *, interval: bool, key_len: int) -> list[SetElem]:
    """SetElems from raw dumped elements; for interval sets, pair starts with ends by kernel lookup semantics."""
    if not raw:
        return []
    if key_len not in (4, 16):
        raise KernelError(f"nftables: set keys of {key_len} bytes are not IPv4/IPv6 addresses", 0)
    version = 4 if key_len == 4 else 6
    bits = key_len * 8
    new = tuple.__new__  # NamedTuple construction without the keyword-handling __new__: 100k of them per dump
    if not interval:
        return [new(SetElem, (new(Prefix, (version, k >> 1, bits)), t, e, pk)) for k, t, e, pk in raw]
    # The kernel matches a key against the closest element at or below it: a start means "inside" up to the next
    # element, an end (or nothing) means "outside". The rbtree dumps in descending order, which timsort
    # reverses in linear time.
    raw.sort()
    out: list[SetElem] = []
    start: _RawElem | None = None
    for r in raw:
        if start is not None:
            _add_range(out, version, start, r[0] >> 1)
            start = None
        if r[0] & 1:
            start = r
    if start is not None:
        _add_range(out, version, start, 1 << bits)
    return out


def _add_range(out: list[SetElem], version: int, start: _RawElem, stop: int) -> None:
    key2, timeout, expires, packets = start
    key = key2 >> 1
    size = stop - key
    if size & (size - 1) == 0 and key & (size - 1) == 0:
        prefix = tuple.__new__(Prefix, (version, key, (32 if version == 4 else 128) - size.bit_length() + 1))
        out.append(tuple.__new__(SetElem, (prefix, timeout, expires, packets)))
        return
    for p in range_to_prefixes(version, key, stop):
        out.append(SetElem(p, timeout, expires, packets))


def _gen_id(buf: bytes | bytearray | memoryview, off: int, ln: int) -> int | None:
    """NFTA_GEN_ID of an NFT_MSG_NEWGEN message at `off`."""
    p = netlink.find_attr(buf, off + 20, off + ln, NFTA_GEN_ID)
    return None if p < 0 else int(_BE32.unpack_from(buf, p + 4)[0])


# --- the socket ---------------------------------------------------------------------------------------------


class NftNetlink:
    """A NETLINK_NETFILTER socket bound to one nftables table, in the network namespace it was opened in."""

    def __init__(self, table: str = "govern", family: int = NFPROTO_INET) -> None:
        self.table = table
        self.family = family
        self._where = f"table {_FAMILY_NAMES.get(family, str(family))} {table}"
        # Extended acks: the offset of the element the kernel refused, and its reason in words.
        self._nl = netlink.NetlinkSocket(
            NETLINK_NETFILTER, "nftables", rcvbuf=_RCVBUF, recv_size=_RECV_SIZE, ext_ack=True, timeout_s=_ACK_TIMEOUT_S
        )

    def close(self) -> None:
        self._nl.close()

    def __enter__(self) -> NftNetlink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def commit(self, ops: Sequence[ElemOp], *, interval_sets: frozenset[str], missing_ok: bool = False) -> int | None:
        """Apply `ops` in order as one transaction: all of them or, with KernelError, none.

        Sets named in `interval_sets` get the start/end encoding, others plain keys. With `missing_ok`, deletes
        of absent elements (never added, or already timed out) succeed instead of failing the whole batch.

        Returns the ruleset generation the transaction made (`generation`), or None when it changed nothing (no
        ops, or only deletes of absent elements): the kernel then keeps the generation it had.
        """
        if not ops:
            return None
        # At most one message per op (and one more for the echoed first element), plus begin and end.
        seq = self._nl.next_seq(len(ops) + 3)
        batch = encode_commit(
            ops,
            table=self.table,
            family=self.family,
            interval_sets=interval_sets,
            seq=seq,
            missing_ok=missing_ok,
            echo=True,
        )
        what = f"a transaction of {len(ops)} element changes"
        self._nl.send(batch.data, what)
        pending = {m.seq for m in batch.messages}
        errors: list[NlError] = []
        aborted = False
        gen: int | None = None
        buf = self._nl.buf
        # nfnetlink handles the batch inside sendmsg, so the replies are usually queued already: the kernel's
        # notifications of the commit (the echoed element, then the new generation) ahead of the acks. The socket
        # stays dirty: after an abort more replies may follow, and the next exchange drains them first.
        while pending and not aborted:
            n = self._nl.recv(what)
            for off, ln, mtype, flags, mseq in netlink.messages(buf, n):
                if mtype == _msg_type(NFT_MSG_NEWGEN) and mseq == seq + 1:
                    gen = _gen_id(buf, off, ln)
                    continue
                if mtype != NLMSG_ERROR:
                    continue
                e = netlink.parse_error(buf, off, ln, flags)
                if e.seq == batch.begin_seq and e.errno:
                    aborted = True  # the commit phase failed, or the batch as a whole was refused
                elif e.seq not in pending:
                    continue
                pending.discard(e.seq)
                if e.errno:
                    errors.append(e)
        if errors:
            raise describe_errors(ops, batch, errors, self._where)
        return gen

    def generation(self) -> int:
        """The ruleset's generation id in this namespace (NFT_MSG_GETGEN): it moves on with every transaction
        the kernel commits, anyone's, in any table, and with nothing else."""
        seq = self._nl.next_seq()
        what = "the ruleset's generation"
        self._nl.send(_nlmsg(_msg_type(NFT_MSG_GETGEN), NLM_F_REQUEST | NLM_F_ACK, seq, socket.AF_UNSPEC, 0, b""), what)
        buf = self._nl.buf
        gen: int | None = None
        while True:
            n = self._nl.recv(what)
            for off, ln, mtype, _flags in netlink.walk(buf, n, f"nftables: cannot read {what}", seq):
                if mtype == _msg_type(NFT_MSG_NEWGEN):
                    gen = _gen_id(buf, off, ln)
                elif mtype == NLMSG_ERROR:  # the ack, after the answer
                    self._nl.dirty = False
                    if gen is None:
                        raise KernelError(f"nftables: no generation id in the answer to {what}", 0)
                    return gen

    def set_info(self, set: str) -> tuple[int, int]:
        """(NFTA_SET_FLAGS, key length in bytes) of a set."""
        body = netlink.strz(NFTA_SET_TABLE, self.table) + netlink.strz(NFTA_SET_NAME, set)
        flags = key_len = 0
        buf, start, end = self._get_one(NFT_MSG_GETSET, NFT_MSG_NEWSET, body, f"the description of set {set}")
        for atype, p, _end in netlink.attrs(buf, start, end):
            if atype == NFTA_SET_FLAGS:
                (flags,) = _BE32.unpack_from(buf, p)
            elif atype == NFTA_SET_KEY_LEN:
                (key_len,) = _BE32.unpack_from(buf, p)
        return flags, key_len

    def counter_packets(self, name: str) -> int:
        """The packets a named counter object of the table has counted (NFT_MSG_GETOBJ): one small request, cheap
        enough to read between ticks."""
        body = (
            netlink.strz(NFTA_OBJ_TABLE, self.table)
            + netlink.strz(NFTA_OBJ_NAME, name)
            + netlink.attr(NFTA_OBJ_TYPE, _BE32.pack(NFT_OBJECT_COUNTER))
        )
        packets = 0
        buf, start, end = self._get_one(NFT_MSG_GETOBJ, NFT_MSG_NEWOBJ, body, f"counter {name}")
        for atype, p, aend in netlink.attrs(buf, start, end):
            if atype == NFTA_OBJ_DATA:
                for btype, q, _e in netlink.attrs(buf, p, aend):
                    if btype == NFTA_COUNTER_PACKETS:
                        (packets,) = _BE64.unpack_from(buf, q)
        return packets

    def _get_one(self, cmd: int, reply: int, body: bytes, what: str) -> tuple[bytearray, int, int]:
        """Ask for one object of the table (`cmd`); the buffer and the span of the attributes of its answer (`reply`),
        valid until the next request."""
        seq = self._nl.next_seq()
        what = f"{what} of {self._where}"
        self._nl.send(_nlmsg(_msg_type(cmd), NLM_F_REQUEST, seq, self.family, 0, body), what)
        buf = self._nl.buf
        while True:
            n = self._nl.recv(what)
            for off, ln, mtype, _flags in netlink.walk(buf, n, f"nftables: cannot read {what}", seq):
                if mtype == _msg_type(reply):
                    self._nl.dirty = False
                    return buf, off + 20, off + ln

    def dump_set(self, set: str) -> list[SetElem]:
        """Every live element of `set`; interval sets come back as prefixes rebuilt from their ranges."""
        flags, key_len = self.set_info(set)
        with collector_held():  # the elements made of the dump too
            return build_elems(self._raw_elements(set), interval=bool(flags & NFT_SET_INTERVAL), key_len=key_len)

    def holds(self, set: str, key: Prefix) -> bool:
        """Whether plain set `set` holds `key` (its value is the element's key), live: one GETSETELEM of that
        element, which the kernel answers with the element or ENOENT (a lapsed one too). For a few keys of a large
        set, where a dump costs what the set holds; one request a key, for the kernel ends a request's list at the
        first element it lacks. A set that does not exist holds nothing (ENOENT says that too)."""
        elem = element_bytes(ElemOp(False, set, key), interval=False)
        body = (
            netlink.strz(NFTA_SET_ELEM_LIST_TABLE, self.table)
            + netlink.strz(NFTA_SET_ELEM_LIST_SET, set)
            + NLATTR.pack(4 + len(elem), NLA_F_NESTED | NFTA_SET_ELEM_LIST_ELEMENTS)
            + elem
        )
        try:
            self._get_one(NFT_MSG_GETSETELEM, NFT_MSG_NEWSETELEM, body, f"element {key} of set {set}")
        except NetlinkError as exc:
            if exc.errno != errno.ENOENT:
                raise
            self._nl.dirty = False  # the refusal ends the exchange
            return False
        return True

    def count_elements(self, set: str) -> int:
        """How many live elements `set` holds: the slot budget's sets (at most a budget's worth), read each tick."""
        return len(self._raw_elements(set))

    def _raw_elements(self, set: str) -> list[_RawElem]:
        """A whole dump of `set`, again if the set changed meanwhile."""
        what = f"the elements of set {set} of {self._where}"
        body = netlink.strz(NFTA_SET_ELEM_LIST_TABLE, self.table) + netlink.strz(NFTA_SET_ELEM_LIST_SET, set)
        # A dump is hundreds of thousands of small tuples; the cyclic GC would rescan them again and again.
        with collector_held():
            for _attempt in range(5):
                raw: list[_RawElem] = []
                if self._dump_raw(body, what, raw):
                    return raw
        raise KernelError(f"nftables: {what} kept changing during the dump", 4)

    def dump_counts(self, set: str) -> list[tuple[int, int]]:
        """(key as an integer, counter packets) of every live element of a counting set (a plain set whose
        elements carry a counter): what `dump_set` would give as (prefix value, packets), for the per-tick read of
        the SYN counters, without making a SetElem and a Prefix per element."""
        return self._counted((set,), CountParser.result)

    def count_columns(self, sets: Sequence[str], version: int, plen: int) -> CountRead:
        """`dump_counts` of the shards of one family's counting set, as the tick reads them: the packets per source
        group of `plen` bits, as columns, and how long until the first element read times out. One parser takes
        every shard's dump, so the columns are made once a family, not once a shard (~0.1 ms each time, which many
        small shards would pay on every read)."""
        return self._counted(sets, lambda parser: CountRead(parser.columns(version, plen), parser.soonest_ms()))

    def _counted(self, sets: Sequence[str], read: Callable[[CountParser], _T]) -> _T:
        """What `read` makes of whole dumps of counting sets (all of them again if one changed meanwhile), with the
        cyclic GC held off throughout: the dump and what is made of it are many small objects at once."""
        named = sets[0] if len(sets) == 1 else f"{sets[0]} to {sets[-1]}"
        what = f"the elements of set {named} of {self._where}"
        bodies = [
            netlink.strz(NFTA_SET_ELEM_LIST_TABLE, self.table) + netlink.strz(NFTA_SET_ELEM_LIST_SET, set)
            for set in sets
        ]
        with collector_held():
            for _attempt in range(5):
                parser = CountParser()
                if all(self._dump_into(body, what, parser) for body in bodies):
                    return read(parser)
        raise KernelError(f"nftables: {what} kept changing during the dump", 4)

    def _dump_into(self, body: bytes, what: str, parser: CountParser) -> bool:
        """One GETSETELEM dump read by `parser`; False if the set changed meanwhile (NLM_F_DUMP_INTR)."""
        seq = self._nl.next_seq()
        interrupted = done = False
        elements_type = _msg_type(NFT_MSG_NEWSETELEM)

        def feed(buf: bytes | bytearray | memoryview, n: int) -> bool:
            nonlocal interrupted, done
            for off, ln, mtype, flags in netlink.walk(buf, n, f"nftables: cannot list {what}", seq):
                if flags & NLM_F_DUMP_INTR:
                    interrupted = True
                if mtype in (NLMSG_DONE, NLMSG_ERROR):
                    done = True
                elif mtype == elements_type:
                    for atype, p, end in netlink.attrs(buf, off + 20, off + ln):
                        if atype == NFTA_SET_ELEM_LIST_ELEMENTS:
                            parser.feed(buf, p, end)
            return done

        request = _nlmsg(_msg_type(NFT_MSG_GETSETELEM), 0, 0, self.family, 0, body)
        self._nl.dump(request, feed, what, seq=seq, read_ahead_after=_INLINE_CHUNKS)
        return not interrupted

    def _dump_raw(self, body: bytes, what: str, raw: list[_RawElem]) -> bool:
        """One GETSETELEM dump into `raw`; False if the set changed meanwhile (NLM_F_DUMP_INTR)."""
        seq = self._nl.next_seq()
        interrupted = False

        def feed(buf: bytes | bytearray | memoryview, n: int) -> bool:
            nonlocal interrupted
            chunk = parse_dump_chunk(buf, n, seq, raw, what)
            interrupted |= chunk.interrupted
            return chunk.done

        # A large set: the kernel restarts its walk from the first element for every chunk of a dump (~32 KiB),
        # so its share grows with the square of the set size and dominates; reading ahead in a thread overlaps
        # it with parsing.
        request = _nlmsg(_msg_type(NFT_MSG_GETSETELEM), 0, 0, self.family, 0, body)
        self._nl.dump(request, feed, what, seq=seq, read_ahead_after=_INLINE_CHUNKS)
        return not interrupted
