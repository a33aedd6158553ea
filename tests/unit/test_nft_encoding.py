"""The nfnetlink encoding and dump parsing of govern.nft.netlink, checked against the uapi layout without a kernel.

The layout is read back by a TLV walker written here from linux/netlink.h and nf_tables.h, independent of the
module's own parser, so an encoding mistake cannot be hidden by a matching parsing mistake.
"""

from __future__ import annotations

import bisect
import errno
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from govern import netlink
from govern.addr import Prefix
from govern.errors import KernelError
from govern.keys import group_counts
from govern.nft import netlink as nl
from govern.nft.netlink import ElemOp, SetElem

IV = frozenset({"block4", "block6"})
P = Prefix.parse
NESTED = 0x8000


# --- an independent reader of the layout --------------------------------------------------------------------


def messages(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, seq, payload after nlmsghdr) of each netlink message."""
    out = []
    off = 0
    while off < len(data):
        ln, mtype, flags, seq, pid = struct.unpack_from("=IHHII", data, off)
        assert ln >= 16 and ln % 4 == 0 and pid == 0
        out.append((mtype, flags, seq, data[off + 16 : off + ln]))
        off += ln
    assert off == len(data)
    return out


def tlvs(data: bytes) -> list[tuple[int, bytes]]:
    """(type with flags, payload) of each attribute; checks lengths and padding."""
    out = []
    off = 0
    while off < len(data):
        ln, atype = struct.unpack_from("=HH", data, off)
        assert 4 <= ln <= len(data) - off
        out.append((atype, data[off + 4 : off + ln]))
        off += (ln + 3) & ~3
    assert off == len(data)
    return out


def decode_elem(payload: bytes) -> dict[str, object]:
    """One NFTA_LIST_ELEM's attributes by name."""
    elem: dict[str, object] = {}
    for atype, val in tlvs(payload):
        if atype == NESTED | 1:  # NFTA_SET_ELEM_KEY
            ((vtype, key),) = tlvs(val)
            assert vtype == 1  # NFTA_DATA_VALUE
            elem["key"] = key
        elif atype == 3:
            elem["flags"] = struct.unpack(">I", val)[0]
        elif atype == 4:
            elem["timeout"] = struct.unpack(">Q", val)[0]
        elif atype == 5:  # NFTA_SET_ELEM_EXPIRATION
            elem["expiration"] = struct.unpack(">Q", val)[0]
        elif atype == 6:
            elem["userdata"] = val
        else:
            raise AssertionError(f"unexpected element attribute {atype:#x}")
    # A timeout always comes with the same expiration (re-adding with an equal timeout restarts the expiry only
    # then), and an expiration never alone.
    assert elem.pop("expiration", None) == elem.get("timeout")
    return elem


def decode_setelem_msg(payload: bytes) -> tuple[int, str, str, list[dict[str, object]], int]:
    """(family, table, set, elements, nla_len of the ELEMENTS attribute) of a NEWSETELEM/DELSETELEM."""
    family, version, res_id = struct.unpack_from("=BBH", payload)
    assert version == 0 and res_id == 0
    attrs = tlvs(payload[4:])
    assert [a for a, _ in attrs] == [1, 2, NESTED | 3]
    table, set_name = (v.rstrip(b"\0").decode() for _, v in attrs[:2])
    elements = attrs[2][1]
    elems = []
    for atype, val in tlvs(elements):
        assert atype == NESTED | 1  # NFTA_LIST_ELEM
        elems.append(decode_elem(val))
    return family, table, set_name, elems, 4 + len(elements)


def batch_elements(ops: list[ElemOp]) -> list[dict[str, object]]:
    batch = nl.encode_commit(ops, table="govern", family=1, interval_sets=IV, seq=100)
    out: list[dict[str, object]] = []
    for mtype, _flags, _seq, payload in messages(batch.data)[1:-1]:
        assert mtype >> 8 == 10
        out += decode_setelem_msg(payload)[3]
    return out


def ip(text: str) -> bytes:
    return P(text).packed()


# --- encoding -----------------------------------------------------------------------------------------------


def test_batch_frame_and_message_header() -> None:
    batch = nl.encode_commit(
        [ElemOp(True, "block4", P("198.18.0.5"), 30_000)], table="govern", family=1, interval_sets=IV, seq=7
    )
    msgs = messages(batch.data)
    assert [(t, f, s) for t, f, s, _ in msgs] == [
        (16, 0x1, 7),  # NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST
        ((10 << 8) | 12, 0x1 | 0x4 | 0x400, 8),  # NFT_MSG_NEWSETELEM: REQUEST | ACK | CREATE
        (17, 0x1, 9),  # NFNL_MSG_BATCH_END
    ]
    # Batch messages carry nfgenmsg {AF_UNSPEC, NFNETLINK_V0, res_id = htons(NFNL_SUBSYS_NFTABLES)}.
    assert msgs[0][3] == msgs[2][3] == b"\x00\x00\x00\x0a"
    family, table, set_name, _elems, _ = decode_setelem_msg(msgs[1][3])
    assert (family, table, set_name) == (1, "govern", "block4")
    assert (batch.begin_seq, batch.end_seq, [m.seq for m in batch.messages]) == (7, 9, [8])


def test_host_interval_is_start_with_timeout_and_end_flagged() -> None:
    assert batch_elements([ElemOp(True, "block4", P("198.18.0.5"), 30_000)]) == [
        {"key": ip("198.18.0.5"), "timeout": 30_000},
        {"key": ip("198.18.0.6"), "flags": 1},  # NFT_SET_ELEM_INTERVAL_END, no timeout
    ]


def test_prefix_interval_ends_at_first_address_past_the_range() -> None:
    assert batch_elements([ElemOp(True, "block4", P("198.18.0.0/24"))]) == [
        {"key": ip("198.18.0.0")},
        {"key": ip("198.18.1.0"), "flags": 1},
    ]
    assert batch_elements([ElemOp(True, "block6", P("2001:db8:bad::/64"), 3_600_000)]) == [
        {"key": ip("2001:db8:bad::"), "timeout": 3_600_000},
        {"key": ip("2001:db8:bad:1::"), "flags": 1},
    ]


def test_range_at_top_of_address_space_is_an_open_start() -> None:
    udata_open = b"\x01\x04" + struct.pack("=I", 1) + b"\0\0"  # nftnl udata: SET_ELEM_FLAGS = INTERVAL_OPEN
    assert batch_elements([ElemOp(True, "block4", P("255.255.255.255"), 5000)]) == [
        {"key": ip("255.255.255.255"), "timeout": 5000, "userdata": udata_open[:6]},
    ]
    assert batch_elements([ElemOp(True, "block6", P("ffff::/16"))]) == [
        {"key": ip("ffff::"), "userdata": udata_open[:6]},
    ]
    assert batch_elements([ElemOp(True, "block4", P("0.0.0.0/0"))]) == [
        {"key": ip("0.0.0.0"), "userdata": udata_open[:6]},
    ]


def test_plain_set_gets_plain_keys() -> None:
    assert batch_elements([ElemOp(True, "seen4", P("198.18.0.5"), 60_000), ElemOp(True, "seen4", P("198.18.0.6"))]) == [
        {"key": ip("198.18.0.5"), "timeout": 60_000},
        {"key": ip("198.18.0.6")},
    ]
    # A masked IPv6 key (the /64 a rule stores as `ip6 saddr & ffff:ffff:ffff:ffff::`) is its network address.
    assert batch_elements([ElemOp(True, "seen6", P("2001:db8:bad:7::/64"))]) == [{"key": ip("2001:db8:bad:7::")}]


def test_delete_has_no_timeout_and_missing_ok_destroys() -> None:
    ops = [ElemOp(False, "block4", P("198.18.0.0/24"), 30_000)]
    assert batch_elements(ops) == [{"key": ip("198.18.0.0")}, {"key": ip("198.18.1.0"), "flags": 1}]
    for missing_ok, cmd in ((False, 14), (True, 30)):  # NFT_MSG_DELSETELEM, NFT_MSG_DESTROYSETELEM
        batch = nl.encode_commit(ops, table="govern", family=1, interval_sets=IV, seq=1, missing_ok=missing_ok)
        mtype, flags, _seq, _payload = messages(batch.data)[1]
        assert (mtype, flags) == ((10 << 8) | cmd, 0x1 | 0x4)


def test_ops_keep_their_order_across_sets_and_verbs() -> None:
    ops = [
        ElemOp(False, "block4", P("198.18.0.1")),
        ElemOp(True, "block4", P("198.18.0.0/31"), 1000),
        ElemOp(True, "block6", P("2001:db8:bad::/64")),
        ElemOp(True, "block4", P("198.18.0.9")),
    ]
    batch = nl.encode_commit(ops, table="govern", family=1, interval_sets=IV, seq=1)
    got = [(t & 0xFF, decode_setelem_msg(p)[2]) for t, _f, _s, p in messages(batch.data)[1:-1]]
    assert got == [(14, "block4"), (12, "block4"), (12, "block6"), (12, "block4")]


def test_adds_of_a_run_go_in_key_order_and_errors_still_name_the_op() -> None:
    ops = [
        ElemOp(True, "block4", P("198.18.0.9")),
        ElemOp(True, "block4", P("198.18.0.1"), 1000),
        ElemOp(True, "block4", P("198.18.0.5")),
        ElemOp(True, "block4", P("198.18.0.1"), 2000),  # a repeat: its timeout must be the one that stays
        ElemOp(False, "block4", P("198.18.0.7")),
        ElemOp(True, "block4", P("198.18.0.3")),
    ]
    batch = nl.encode_commit(ops, table="govern", family=1, interval_sets=IV, seq=1)
    first = decode_setelem_msg(messages(batch.data)[1][3])[3]
    assert [(e["key"], e.get("timeout")) for e in first[::2]] == [
        (ip("198.18.0.1"), 1000),
        (ip("198.18.0.1"), 2000),
        (ip("198.18.0.5"), None),
        (ip("198.18.0.9"), None),
    ]
    assert [m.op_index for m in batch.messages] == [[1, 3, 2, 0], [4], [5]]
    adds = batch.messages[0]
    exc = nl.describe_errors(
        ops, batch, [netlink.NlError(adds.seq, errno.EEXIST, adds.op_offsets[2] + 8, "")], "table inet govern"
    )
    assert "cannot add 198.18.0.5 to set block4" in str(exc)


def test_encoding_is_deterministic() -> None:
    ops = [ElemOp(True, "block4", Prefix(4, 0xC6120000 + 2 * i, 32), 1000 * i) for i in range(3000)]
    a = nl.encode_commit(ops, table="govern", family=1, interval_sets=IV, seq=1)
    b = nl.encode_commit(list(ops), table="govern", family=1, interval_sets=IV, seq=1)
    assert a.data == b.data


def test_long_lists_split_below_64k_per_attribute() -> None:
    ops = [ElemOp(True, "block6", Prefix(6, (0x20010DB80BAD << 80) | (i << 64), 64), 60_000) for i in range(5000)]
    batch = nl.encode_commit(ops, table="govern", family=1, interval_sets=IV, seq=1)
    msgs = messages(batch.data)
    assert len(msgs) - 2 == len(batch.messages) > 1
    elems: list[dict[str, object]] = []
    for _t, _f, _s, payload in msgs[1:-1]:
        _fam, _table, _set, got, attr_len = decode_setelem_msg(payload)
        assert attr_len <= 0xFFFF
        assert len(got) % 2 == 0  # a prefix's start and end stay in one message
        elems += got
    assert [e["key"] for e in elems[::2]] == [op.prefix.packed() for op in ops]
    assert [m.seq for m in batch.messages] == list(range(2, 2 + len(batch.messages)))
    assert batch.end_seq == batch.messages[-1].seq + 1
    # Every op is findable from an offset inside its elements, as the kernel reports a bad element.
    for m in batch.messages:
        for off, idx in zip(m.op_offsets, m.op_index, strict=True):
            assert bisect.bisect_right(m.op_offsets, off + 5) - 1 == m.op_index.index(idx)


def test_negative_timeout_is_refused() -> None:
    with pytest.raises(ValueError):
        nl.element_bytes(ElemOp(True, "block4", P("198.18.0.1"), -1), True)


# --- acks and errors ------------------------------------------------------------------------------------------


def nlmsgerr(err: int, seq: int, *, offs: int | None = None, msg: str | None = None) -> bytes:
    """An NLMSG_ERROR as the kernel sends it with NETLINK_CAP_ACK and NETLINK_EXT_ACK."""
    tlv = b""
    if msg is not None:
        raw = msg.encode() + b"\0"
        tlv += struct.pack("=HH", 4 + len(raw), 1) + raw + b"\0" * (-len(raw) % 4)
    if offs is not None:
        tlv += struct.pack("=HHI", 8, 2, offs)
    flags = 0x100 | (0x200 if tlv else 0)  # NLM_F_CAPPED, NLM_F_ACK_TLVS
    body = struct.pack("=i", -err) + struct.pack("=IHHII", 60, (10 << 8) | 12, 5, seq, 0) + tlv
    return struct.pack("=IHHII", 16 + len(body), 2, flags, seq, 4242) + body


def test_parse_errors_reads_errno_offset_and_message() -> None:
    data = nlmsgerr(0, 8) + nlmsgerr(errno.ENOENT, 9, offs=96, msg="no such element")
    assert netlink.parse_errors(data) == [
        netlink.NlError(8, 0, -1, ""),
        netlink.NlError(9, errno.ENOENT, 96, "no such element"),
    ]


def test_error_names_the_element_the_kernel_blamed() -> None:
    ops = [ElemOp(True, "block4", P("198.18.0.1"), 1000), ElemOp(False, "block4", P("198.18.0.9"))]
    ops += [ElemOp(False, "block4", P(f"198.18.1.{i}")) for i in range(10)]
    batch = nl.encode_commit(ops, table="govern", family=1, interval_sets=IV, seq=1)
    dels = batch.messages[1]
    bad = dels.op_offsets[4] + 4  # inside the element of ops[1 + 4]
    exc = nl.describe_errors(ops, batch, [netlink.NlError(dels.seq, errno.ENOENT, bad, "")], "table inet govern")
    assert isinstance(exc, KernelError) and exc.errno == errno.ENOENT
    assert "cannot delete 198.18.1.3 from set block4 of table inet govern" in str(exc)
    assert "No such file or directory" in str(exc)
    # Blame on the message header (e.g. no such set) names the operation and the set.
    exc = nl.describe_errors(ops, batch, [netlink.NlError(dels.seq, errno.ENOENT, 24, "")], "table inet govern")
    assert "cannot delete elements from set block4" in str(exc)
    # A failure of the commit itself is reported on the batch begin.
    exc = nl.describe_errors(ops, batch, [netlink.NlError(batch.begin_seq, errno.ENOMEM, -1, "")], "table inet govern")
    assert exc.errno == errno.ENOMEM and "transaction of 12 element changes" in str(exc)


# --- dumps ----------------------------------------------------------------------------------------------------


def attr(atype: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), atype) + payload + b"\0" * (-len(payload) % 4)


def kernel_elem(
    key: bytes,
    *,
    end: bool = False,
    timeout: int = 0,
    expires: int = 0,
    counter: int | None = None,
    multi: bool = False,
) -> bytes:
    """One element as nf_tables_fill_setelem() writes it (nests without NLA_F_NESTED)."""
    body = attr(1, attr(1, key))
    if counter is not None:
        expr = attr(1, b"counter\0") + attr(
            2, attr(1, struct.pack(">Q", counter * 60)) + attr(2, struct.pack(">Q", counter))
        )
        body += attr(10, attr(1, expr)) if multi else attr(7, expr)
    if end:
        body += attr(3, struct.pack(">I", 1))
    if timeout:
        body += attr(4, struct.pack(">Q", timeout))
    if expires:
        body += attr(5, struct.pack(">Q", expires))
    return attr(1, body)


def setelem_reply(seq: int, elems: list[bytes], *, flags: int = 0x2) -> bytes:
    payload = b"\x01\x00\x00\x00" + attr(1, b"govern\0") + attr(2, b"block4\0") + attr(3, b"".join(elems))
    return struct.pack("=IHHII", 16 + len(payload), (10 << 8) | 12, flags, seq, 4242) + payload


def done(seq: int) -> bytes:
    return struct.pack("=IHHIIi", 20, 3, 0x2, seq, 4242, 0)


def parse(data: bytes, seq: int, *, interval: bool, key_len: int) -> tuple[nl.DumpChunk, list[SetElem]]:
    raw: list[nl._RawElem] = []
    chunk = nl.parse_dump_chunk(data, len(data), seq, raw)
    return chunk, nl.build_elems(raw, interval=interval, key_len=key_len)


def test_interval_dump_rebuilds_prefixes_in_kernel_order() -> None:
    # The rbtree dumps from the highest key down: each range's end before its start.
    elems = [
        kernel_elem(ip("255.255.255.255"), timeout=9000, expires=8000),  # open range at the top
        kernel_elem(ip("198.18.2.0"), end=True),
        kernel_elem(ip("198.18.1.0"), timeout=60_000, expires=59_000),  # 198.18.1.0/24
        kernel_elem(ip("198.18.0.7"), end=True),
        kernel_elem(ip("198.18.0.6")),  # adjacent ranges share a key: .6 (end of .5, start of .6)
        kernel_elem(ip("198.18.0.6"), end=True),
        kernel_elem(ip("198.18.0.5"), timeout=30_000, expires=1),
        kernel_elem(ip("198.18.0.3"), end=True),  # its start timed out, GC has not reaped the end yet
        kernel_elem(ip("0.0.0.0"), end=True),  # nft's never-matching first element
    ]
    chunk, got = parse(setelem_reply(5, elems[:4]) + setelem_reply(5, elems[4:]) + done(5), 5, interval=True, key_len=4)
    assert chunk.done and not chunk.interrupted
    assert got == [
        SetElem(P("198.18.0.5"), 30_000, 1, 0),
        SetElem(P("198.18.0.6"), 0, 0, 0),
        SetElem(P("198.18.1.0/24"), 60_000, 59_000, 0),
        SetElem(P("255.255.255.255"), 9000, 8000, 0),
    ]


def test_interval_dump_splits_a_range_that_is_not_one_prefix() -> None:
    elems = [kernel_elem(ip("198.18.0.7"), end=True), kernel_elem(ip("198.18.0.1"), timeout=5, expires=4)]
    _chunk, got = parse(setelem_reply(1, elems) + done(1), 1, interval=True, key_len=4)
    assert [str(e.prefix) for e in got] == ["198.18.0.1", "198.18.0.2/31", "198.18.0.4/31", "198.18.0.6"]
    assert {(e.timeout_ms, e.expires_ms) for e in got} == {(5, 4)}


def test_plain_dump_reads_counters_in_both_expression_forms() -> None:
    elems = [
        kernel_elem(ip("198.18.0.1"), expires=50_000, counter=3),
        kernel_elem(ip("198.18.0.2"), expires=40_000, counter=7, multi=True),
        kernel_elem(ip("198.18.0.3"), timeout=1000, expires=900),
    ]
    _chunk, got = parse(setelem_reply(3, elems) + done(3), 3, interval=False, key_len=4)
    assert got == [
        SetElem(P("198.18.0.1"), 0, 50_000, 3),
        SetElem(P("198.18.0.2"), 0, 40_000, 7),
        SetElem(P("198.18.0.3"), 1000, 900, 0),
    ]
    six = [kernel_elem(ip("2001:db8:bad:7::"), counter=2)]
    _chunk, got = parse(setelem_reply(3, six) + done(3), 3, interval=False, key_len=16)
    assert got == [SetElem(Prefix(6, P("2001:db8:bad:7::").value, 128), 0, 0, 2)]


def test_count_parser_reads_the_same_keys_and_packets_as_the_generic_parse() -> None:
    # Runs of one shape (the fast path), shapes that change mid-run (a per-element timeout), the list form of the
    # expressions and an element without a counter (the generic parse) all give what the generic parse gives.
    elems = [kernel_elem(ip(f"198.18.0.{i}"), expires=50_000 - i, counter=i) for i in range(1, 40)]
    elems[5] = kernel_elem(ip("198.18.1.5"), timeout=9000, expires=8000, counter=11)
    elems[6] = kernel_elem(ip("198.18.1.6"), expires=7000, counter=12, multi=True)
    elems[7] = kernel_elem(ip("198.18.1.7"), expires=7000)
    elems[8] = kernel_elem(ip("198.18.1.8"), timeout=9000, expires=8000, counter=13)
    payload = b"".join(elems)
    parser = nl.CountParser()
    parser.feed(payload, 0, len(payload))
    raw: list[nl._RawElem] = []
    nl._parse_elements(payload, 0, len(payload), raw)
    assert sorted(parser.result()) == sorted((k >> 1, pk) for k, _t, _e, pk in raw)
    assert len(parser._raw) == 2  # only the list form and the counter-less element took the slow way
    six = b"".join(kernel_elem(ip(f"2001:db8:bad:{i}::"), expires=1, counter=2**40 + i) for i in range(3))
    parser = nl.CountParser()
    parser.feed(six, 0, len(six))
    assert parser.result() == [(P(f"2001:db8:bad:{i}::").value, 2**40 + i) for i in range(3)]


def test_count_parser_reports_the_least_time_left_of_any_element_read() -> None:
    # What tells a tick whether a count may have timed out since the last read (NftBackend.syn_counts_unchanged):
    # the least expiration of the fast path's elements and of the generic parse's alike.
    def soonest(elems: list[bytes]) -> int | None:
        payload = b"".join(elems)
        parser = nl.CountParser()
        parser.feed(payload, 0, len(payload))
        return parser.soonest_ms()

    run = [kernel_elem(ip(f"198.18.0.{i}"), expires=50_000 - 100 * i, counter=i) for i in range(1, 40)]
    assert soonest(run) == 50_000 - 3_900
    assert soonest([*run, kernel_elem(ip("198.18.1.1"), expires=2**40, counter=1)]) == 50_000 - 3_900
    # The later of two big-endian expirations is not the one with the larger first byte by chance.
    assert soonest([kernel_elem(ip("198.18.1.1"), expires=0x1_00, counter=1), run[0]]) == 0x1_00
    assert soonest([*run, kernel_elem(ip("198.18.1.7"), expires=700)]) == 700  # the generic parse's element
    assert soonest([*run, kernel_elem(ip("198.18.1.8"), expires=600, counter=2, multi=True)]) == 600
    # Whether the columns are made first or not (they take in the generic parse's elements).
    payload = b"".join([*run, kernel_elem(ip("198.18.1.7"), expires=700)])
    parser = nl.CountParser()
    parser.feed(payload, 0, len(payload))
    assert len(parser.columns(4, 32)) == 40 and parser.soonest_ms() == 700
    assert soonest([kernel_elem(ip("198.18.1.9"), counter=3)]) is None  # no timeout: none will time out
    assert soonest([]) is None


def test_counts_are_grouped_per_source_group_as_columns_and_add_up_a_group() -> None:
    def counts(addrs: list[str], packets: list[int], version: int, plen: int) -> dict[Prefix, int]:
        keys = b"".join(P(a).packed() for a in addrs)
        return dict(group_counts(keys, b"".join(n.to_bytes(8, "big") for n in packets), version, plen))

    four = ["198.18.0.1", "198.18.0.2", "198.18.1.9"]
    assert counts(four, [3, 4, 1], 4, 32) == {P("198.18.0.1"): 3, P("198.18.0.2"): 4, P("198.18.1.9"): 1}
    assert counts(four, [3, 4, 1], 4, 24) == {P("198.18.0.0/24"): 7, P("198.18.1.0/24"): 1}
    assert counts(["2001:db8:bad:7::"], [2], 6, 64) == {P("2001:db8:bad:7::/64"): 2}
    assert counts(["2001:db8:bad:7::1", "2001:db8:bad:7::2"], [2**40, 1], 6, 64) == {
        P("2001:db8:bad:7::/64"): 2**40 + 1
    }
    assert counts(["2001:db8:bad:7::1"], [5], 6, 72) == {P("2001:db8:bad:7::/72"): 5}
    assert counts([], [], 4, 32) == {}
    # The parser's columns are its pairs, grouped.
    payload = b"".join(kernel_elem(ip(f"198.18.0.{i}"), expires=1, counter=i) for i in range(1, 4))
    parser = nl.CountParser()
    parser.feed(payload, 0, len(payload))
    got = parser.columns(4, 32)
    assert dict(got) == {Prefix(4, k, 32): n for k, n in parser.result()} and len(got) == 3


def test_dump_reports_interruption_errors_and_ignores_other_sequences() -> None:
    chunk, got = parse(
        setelem_reply(4, [kernel_elem(ip("198.18.0.1"))], flags=0x2 | 0x10), 4, interval=False, key_len=4
    )
    assert chunk.interrupted and not chunk.done and len(got) == 1
    chunk, got = parse(setelem_reply(3, [kernel_elem(ip("198.18.0.1"))]) + done(3), 4, interval=False, key_len=4)
    assert not chunk.done and got == []
    with pytest.raises(KernelError) as exc:
        parse(nlmsgerr(errno.ENOENT, 4), 4, interval=False, key_len=4)
    assert exc.value.errno == errno.ENOENT


def test_dump_of_non_address_keys_is_refused() -> None:
    with pytest.raises(KernelError):
        nl.build_elems([(2, 0, 0, 0)], interval=False, key_len=2)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 2**32))
def test_range_to_prefixes_covers_exactly(a: int, b: int) -> None:
    start, stop = min(a, b), max(a, b)
    got = nl.range_to_prefixes(4, start, stop)
    at = start
    for p in got:
        assert p.value == at and p.value & ((1 << (32 - p.length)) - 1) == 0
        at = p.last + 1
    assert at == stop or (start == stop and got == [])


prefixes4 = st.builds(
    lambda v, n: Prefix(4, (v >> (32 - n)) << (32 - n), n), st.integers(0, 2**32 - 1), st.integers(0, 32)
)
prefixes6 = st.builds(
    lambda v, n: Prefix(6, (v >> (128 - n)) << (128 - n), n), st.integers(0, 2**128 - 1), st.integers(0, 128)
)


@settings(max_examples=200, deadline=None)
@given(st.lists(prefixes4, max_size=40) | st.lists(prefixes6, max_size=40), st.integers(0, 2**40))
def test_encoded_elements_parse_back_as_the_same_prefixes(prefixes: list[Prefix], timeout: int) -> None:
    """What we send is in the format the kernel dumps: encode, wrap as a reply, parse, get the prefixes back."""
    disjoint: list[Prefix] = []
    for p in sorted(set(prefixes), key=lambda p: p.length):
        if not any(q.overlaps(p) for q in disjoint):
            disjoint.append(p)
    if not disjoint:
        return
    name = "block4" if disjoint[0].version == 4 else "block6"
    ops = [ElemOp(True, name, p, timeout) for p in disjoint]
    batch = nl.encode_commit(ops, table="govern", family=1, interval_sets=IV, seq=1)
    records = b"".join(tlvs(payload[4:])[2][1] for _t, _f, _s, payload in messages(batch.data)[1:-1])
    reply = struct.pack("=IHHII", 20 + 4 + len(records), (10 << 8) | 12, 2, 9, 0) + b"\x01\0\0\0"
    reply += attr(3, records) + done(9)
    _chunk, got = parse(reply, 9, interval=True, key_len=4 if name == "block4" else 16)
    # The expiration sent beside each timeout reads back as the time left: all of it.
    assert got == [SetElem(p, timeout, timeout, 0) for p in sorted(disjoint)]


def test_echo_asks_it_of_the_first_message_alone_which_carries_one_element() -> None:
    """The kernel tells the new generation to the socket whose batch's first message asks for NLM_F_ECHO, and
    echoes that message's elements back as well: one, not a message's worth."""
    ops = [ElemOp(True, "block4h", Prefix(4, P("198.18.0.0").value + i, 32), 60_000) for i in range(3000)]
    ops.append(ElemOp(False, "block6", P("2001:db8::/48")))
    batch = nl.encode_commit(ops, table="govern", family=1, interval_sets=IV, seq=1, echo=True)
    msgs = messages(batch.data)[1:-1]
    echo = 0x8
    assert msgs[0][1] & echo and len(decode_setelem_msg(msgs[0][3])[3]) == 1
    assert all(not f & echo for _t, f, _s, _p in msgs[1:])
    assert sum(len(decode_setelem_msg(p)[3]) for _t, _f, _s, p in msgs) == 3000 + 2  # the /48: start and end
    assert [m.seq for m in batch.messages] == [s for _t, _f, s, _p in msgs]
    assert not any(
        f & echo
        for _t, f, _s, _p in messages(nl.encode_commit(ops, table="govern", family=1, interval_sets=IV, seq=1).data)
    )
