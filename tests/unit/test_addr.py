"""Prefixes: parsing, grouping sources, containment and allowlist lookups."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from govern.addr import Prefix, PrefixSet, group_key, parse_canonical, parse_full
from govern.errors import AddressError


def test_parse_and_print() -> None:
    assert str(Prefix.parse("198.51.100.7")) == "198.51.100.7"
    assert str(Prefix.parse("198.51.100.0/24")) == "198.51.100.0/24"
    assert str(Prefix.parse("2001:db8:bad::/48")) == "2001:db8:bad::/48"
    assert str(Prefix.parse("198.51.100.7/24")) == "198.51.100.0/24"
    with pytest.raises(AddressError, match="host bits set"):
        Prefix.parse("198.51.100.7/24", strict=True)
    for bad in ("", "example.org", "1.2.3.4.5", "2001:db8:::1", "10.0.0.0/33"):
        with pytest.raises(AddressError):
            Prefix.parse(bad)


def test_group_key_masks_ipv6_to_64() -> None:
    host = Prefix.parse("2001:db8:bad:1:2:3:4:5")
    assert str(group_key(host, 32, 64)) == "2001:db8:bad:1::/64"
    assert group_key(Prefix.parse("198.18.3.4"), 32, 64) == Prefix.parse("198.18.3.4")
    assert str(group_key(Prefix.parse("198.18.3.4"), 24, 64)) == "198.18.3.0/24"


def test_prefix_set_covers_and_intersects() -> None:
    s = PrefixSet([Prefix.parse("192.0.2.0/24"), Prefix.parse("2001:db8:2::/48"), Prefix.parse("198.51.100.9")])
    assert s.covers(Prefix.parse("192.0.2.55"))
    assert s.covers(Prefix.parse("2001:db8:2:1::/64"))
    assert not s.covers(Prefix.parse("192.0.0.0/16"))
    assert s.intersects(Prefix.parse("192.0.0.0/16"))
    assert s.intersects(Prefix.parse("198.51.100.0/24"))
    assert not s.intersects(Prefix.parse("198.18.0.0/15"))


# Addresses close together, so that random prefixes really do nest and overlap.
v4nets = st.builds(
    lambda n, ln: Prefix.from_packed((((192 << 24) | (2 << 8)) ^ n).to_bytes(4, "big"), ln),
    st.integers(0, 2**12 - 1),
    st.integers(16, 32),
)
v6nets = st.builds(
    lambda n, ln: Prefix.from_packed(((0x20010DB8 << 96) | (n << 60)).to_bytes(16, "big"), ln),
    st.integers(0, 2**10 - 1),
    st.integers(40, 128),
)
nets = st.one_of(v4nets, v6nets)


@given(st.lists(nets, max_size=8), nets)
def test_prefix_set_agrees_with_ipaddress(members: list[Prefix], probe: Prefix) -> None:
    ps = PrefixSet(members)
    nprobe = ipaddress.ip_network(str(probe))
    nm = [ipaddress.ip_network(str(m)) for m in members]
    assert ps.covers(probe) == any(n.version == nprobe.version and nprobe.subnet_of(n) for n in nm)  # type: ignore[arg-type]
    assert ps.intersects(probe) == any(n.version == nprobe.version and n.overlaps(nprobe) for n in nm)


@given(st.lists(nets, max_size=8), st.lists(nets, max_size=30))
def test_prefix_set_asked_many_at_once_answers_as_asked_one_by_one(members: list[Prefix], probes: list[Prefix]) -> None:
    ps = PrefixSet(members)
    # Beside random ones, probes that overlap a member: the member widened and narrowed by a few bits.
    for m in members:
        bits = m.bits
        for length in (max(0, m.length - 3), min(bits, m.length + 5)):
            shift = bits - length
            probes.append(Prefix(m.version, ((m.value | (1 << shift) - 1) >> shift) << shift, length))
    hits = ps.intersecting(probes)
    assert hits == {p for p in probes if ps.intersects(p)}
    assert not members or hits  # the widened members at least


# -- the fast path for canonical text (parse_canonical) against the full parser --------------------------------


# Any network of either family: random bits, random length, host bits cleared as str() would print them. The
# IPv4-compatible (::/96) and IPv4-mapped (::ffff:0:0/96) corners are drawn on purpose: inet_ntop writes both with
# a dotted tail, and the full parser turns the mapped ones into IPv4.
def _net(version: int, value: int, length: int) -> Prefix:
    bits = 32 if version == 4 else 128
    return Prefix(version, value >> (bits - length) << (bits - length), length)


any_v4 = st.builds(lambda v, ln: _net(4, v, ln), st.integers(0, 2**32 - 1), st.integers(0, 32))
any_v6 = st.builds(lambda v, ln: _net(6, v, ln), st.integers(0, 2**128 - 1), st.integers(0, 128))
v4_tail = st.builds(
    lambda top, v, ln: _net(6, (top << 32) | v, ln),
    st.sampled_from([0, 0xFFFF, 0x1, 0xFFFF0000]),
    st.integers(0, 2**32 - 1),
    st.integers(80, 128),
)
any_net = st.one_of(any_v4, any_v6, v4_tail)


def _outcome(parse: Callable[..., Prefix], text: str, strict: bool = False) -> Prefix | str:
    """What a parser makes of `text`: the Prefix, or its error's message."""
    try:
        return parse(text, strict=strict)
    except AddressError as exc:
        return f"AddressError: {exc}"


@given(any_net)
def test_canonical_text_reads_back_as_the_full_parser_reads_it(p: Prefix) -> None:
    text = str(p)
    full = parse_full(text)
    for strict in (False, True):
        assert Prefix.parse(text, strict=strict) == full == parse_full(text, strict=strict)
    fast = parse_canonical(text)
    if p.version == 6 and p.length >= 96 and p.value >> 32 == 0xFFFF:
        assert fast is None and full == Prefix(4, p.value & 0xFFFFFFFF, p.length - 96)  # the full parser's IPv4
    else:
        assert fast == full == p


# Spellings of a network that are not the canonical one, or not a network at all.
def _respell(p: Prefix, how: int) -> str:
    text = str(p)
    addr = ipaddress.ip_network(f"{text}" if "/" in text else f"{text}/{p.bits}")
    last = (ipaddress.IPv4Address if p.version == 4 else ipaddress.IPv6Address)(p.last)
    return [
        text.upper(),
        f"{addr.network_address.exploded}/{p.length}",
        f"{text}/{p.length}" if "/" not in text else text.replace("/", "/0"),
        f" {text}",
        f"{text}\n",
        text.replace("/", "/+"),
        text + "/",
        "/" + text,
        text.replace(".", ".0", 1),
        text.replace(":", "::", 1),
        text.replace("1", "\u0661"),  # ARABIC-INDIC DIGIT ONE: int() takes it, inet_pton and ipaddress do not
        f"{text.split('/')[0]}/{addr.netmask}",
        f"{last}/{p.length}",  # host bits set: cleared, or refused when strict
    ][how]


@given(any_net, st.integers(0, 12))
def test_other_spellings_get_exactly_what_the_full_parser_gives(p: Prefix, how: int) -> None:
    text = _respell(p, how)
    fast = parse_canonical(text)
    assert fast is None or fast == parse_full(text)
    for strict in (False, True):
        assert _outcome(Prefix.parse, text, strict) == _outcome(parse_full, text, strict)


@given(st.text(alphabet="0123456789abcdefABCDEF:./ %x-", max_size=60))
def test_any_text_gets_the_full_parsers_answer_or_its_error(text: str) -> None:
    fast = parse_canonical(text)
    assert fast is None or (fast == parse_full(text) and str(fast) == text)
    assert _outcome(Prefix.parse, text) == _outcome(parse_full, text)


def test_the_fast_path_takes_only_canonical_text() -> None:
    assert parse_canonical("198.51.100.7") == Prefix.parse("198.51.100.7")
    assert parse_canonical("2001:db8:bad::/48") == Prefix.parse("2001:db8:bad::/48")
    assert parse_canonical("0.0.0.0/0") == Prefix(4, 0, 0) and parse_canonical("::/0") == Prefix(6, 0, 0)
    for other in (
        "198.51.100.7/32",  # a host is written without its length
        "198.51.100.7/24",  # host bits set
        "198.51.100.0/024",
        "2001:DB8:BAD::/48",
        "2001:db8:bad:0::/48",
        "::ffff:198.51.100.7",  # IPv4-mapped: IPv4 to govern
        " 198.51.100.7",
        "198.51.100.0/33",
        "10.0.0.0/-1",
        "example.org",
        "",
        "1" * 100,
    ):
        assert parse_canonical(other) is None, other
    assert Prefix.parse("::ffff:198.51.100.7") == Prefix.parse("198.51.100.7")
    with pytest.raises(AddressError, match="host bits set"):
        Prefix.parse("198.51.100.7/24", strict=True)


def test_what_is_not_text_is_still_the_full_parsers() -> None:
    # ipaddress takes 4 or 16 packed bytes: Prefix.parse did, through it, before the fast path, and still does.
    packed: Any = b"\xc6\x33\x64\x07"
    assert parse_canonical(packed) is None and Prefix.parse(packed) == Prefix.parse("198.51.100.7")
