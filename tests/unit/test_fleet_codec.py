"""The fleet's signed decisions (govern.fleet.codec): a round trip gives the decision back; any change to any
single field, a missing or foreign signature, an expired or malformed entry is refused with a reason."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from govern.addr import Prefix
from govern.fleet import codec
from govern.fleet.codec import Decision, Rejected

KEY = b"0123456789abcdef0123456789abcdef"
NOW = 1_800_000_000.0

names = st.text(string.ascii_letters + string.digits + "-._", min_size=1, max_size=64)
NOW_MS = int(NOW * 1000)


@st.composite
def decisions(draw: st.DrawFn) -> Decision:
    v4 = draw(st.booleans())
    bits = 32 if v4 else 128
    length = draw(st.integers(8 if v4 else 16, bits))
    value = draw(st.integers(0, (1 << bits) - 1)) >> (bits - length) << (bits - length)
    # Times are signed to the millisecond: whole milliseconds come back exactly.
    at_ms = NOW_MS - 500_000 + draw(st.integers(0, 800_000))
    at, until = at_ms / 1000, (NOW_MS + draw(st.integers(1, 10**8))) / 1000
    return Decision(
        kind=draw(st.sampled_from(codec.KINDS)),
        prefix=Prefix(4 if v4 else 6, value, length),
        reason=draw(
            st.text(
                st.characters(categories=("L", "N", "P", "S"), include_characters=" ", max_codepoint=0x2FFF),
                max_size=80,
            )
        ),
        until=until,
        offences=draw(st.integers(0, 100)),
        origin=draw(names),
        id=draw(names),
        at=at,
    )


def block(**over: object) -> Decision:
    base = {
        "kind": "block",
        "prefix": Prefix.parse("198.18.0.7/32"),
        "reason": "opened 300 connections in a minute",
        "until": NOW + 600,
        "offences": 2,
        "origin": "mx1",
        "id": "a1b2",
        "at": NOW,
    }
    base.update(over)
    return Decision(**base)  # type: ignore[arg-type]


@given(decisions())
def test_round_trip(d: Decision) -> None:
    entry = codec.encode(d, KEY)
    assert codec.verify(entry, KEY, NOW) == d
    # Redis hands back bytes; the sorted set's member is the same fields as JSON.
    raw = {k.encode(): v.encode() for k, v in entry.items()}
    assert codec.verify(raw, KEY, NOW) == d
    assert codec.verify(codec.from_member(codec.member(entry)), KEY, NOW) == d


@given(decisions(), st.sampled_from(codec.FIELDS), st.text(max_size=20))
def test_any_single_field_changed_breaks_the_signature(d: Decision, name: str, value: str) -> None:
    entry = codec.encode(d, KEY)
    if entry[name] == value:
        value += "x"
    entry[name] = value
    with pytest.raises(Rejected):
        codec.verify(entry, KEY, NOW)
    if name != "v":  # a changed version is refused before the signature is looked at
        with pytest.raises(Rejected, match="bad signature"):
            codec.verify(entry, KEY, NOW)


@given(decisions(), st.binary(min_size=16, max_size=40))
def test_another_key_never_verifies(d: Decision, other: bytes) -> None:
    entry = codec.encode(d, other)
    if other != KEY:
        with pytest.raises(Rejected, match="bad signature"):
            codec.verify(entry, KEY, NOW)


def test_unsigned_and_malformed_entries_name_why() -> None:
    entry = codec.encode(block(), KEY)
    unsigned = {k: v for k, v in entry.items() if k != codec.SIG}
    with pytest.raises(Rejected, match="unsigned"):
        codec.verify(unsigned, KEY, NOW)
    with pytest.raises(Rejected, match="no field reason"):
        codec.verify({k: v for k, v in entry.items() if k != "reason"}, KEY, NOW)
    with pytest.raises(Rejected, match="unknown field 'extra'"):
        codec.verify({**entry, "extra": "1"}, KEY, NOW)
    with pytest.raises(Rejected, match="not UTF-8"):
        codec.verify({b"sig": b"\xff"}, KEY, NOW)
    with pytest.raises(Rejected, match="version"):
        codec.verify({**entry, "v": "9"}, KEY, NOW)
    for text in ("[1]", "{", '{"a": 1}'):
        with pytest.raises(Rejected):
            codec.from_member(text)


def test_expired_and_future_entries_are_refused() -> None:
    entry = codec.encode(block(until=NOW - 1, at=NOW - 700), KEY)
    with pytest.raises(Rejected, match="expired"):
        codec.verify(entry, KEY, NOW)
    entry = codec.encode(block(at=NOW + 3600, until=NOW + 7200), KEY)
    with pytest.raises(Rejected, match="in the future"):
        codec.verify(entry, KEY, NOW)


def test_a_signer_cannot_ship_a_malformed_decision() -> None:
    """What encode refuses to sign, verify refuses even when the signature is right (a buggy or older signer)."""
    good = codec.encode(block(), KEY)
    for name, value in [
        ("prefix", "198.18.0.7/16"),
        ("prefix", "nonsense"),
        ("kind", "allow"),
        ("reason", "two\nlines"),
        ("until", "nan"),
        ("offences", "-1"),
        ("origin", "mx 1"),
    ]:
        bad = {**good, name: value}
        bad[codec.SIG] = codec.sign(bad, KEY)
        with pytest.raises(Rejected):
            codec.verify(bad, KEY, NOW)
    with pytest.raises(ValueError, match="printable"):
        codec.encode(block(reason="x\n"), KEY)
