"""The export guardrails: what may reach the ISP, as examples and as properties that hold for any blocks."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from govern.addr import Prefix, PrefixSet
from govern.export.formats import Target, json_doc, render
from govern.export.select import ExportPolicy, select
from govern.model import Block

NOW = 1_700_000_000.0
P = Prefix.parse
SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "export.schema.json").read_text())


def blk(p: str, age: float = 3600, left: float = 600, offences: int = 3) -> Block:
    return Block(P(p), "test", NOW - age, NOW + left, offences)


def exported(blocks: list[Block], allow: Sequence[str] = (), local: Sequence[str] = (), **kw: Any) -> list[str]:
    sel = select(blocks, PrefixSet(P(a) for a in allow), [P(x) for x in local], ExportPolicy(**kw), NOW)
    return [str(e.prefix) for e in sel.entries]


def test_expired_young_and_rare_blocks_stay_local() -> None:
    blocks = [
        blk("198.18.0.1", left=0),  # lapsed
        blk("198.18.0.3", age=10, offences=1),  # young and a first offence
        blk("198.18.0.5", age=10, offences=2),  # young but a repeat offender
        blk("198.18.0.7", age=600, offences=1),  # a first offence that has lasted
    ]
    assert exported(blocks, min_age=300, min_offences=2) == ["198.18.0.5", "198.18.0.7"]


def test_a_prefix_over_an_allowlisted_or_local_address_is_split_around_it() -> None:
    out = exported([blk("198.18.0.0/30")], allow=["198.18.0.1"], local=["198.18.0.2"], aggregate=False)
    assert out == ["198.18.0.0", "198.18.0.3"]
    assert exported([blk("192.0.2.7")], allow=["192.0.2.0/24"]) == []


def test_nothing_wider_than_the_cap_and_adjacent_prefixes_merge_up_to_it() -> None:
    assert exported([blk("10.0.0.0/8")]) == []
    halves = [blk("198.18.0.0/17"), blk("198.18.128.0/17"), blk("198.19.0.0/16")]
    # The two /17s make a /16; with the other /16 they would make a /15, wider than the cap of 16.
    assert exported(halves, min_len={4: 16, 6: 32}) == ["198.18.0.0/16", "198.19.0.0/16"]
    assert exported(halves, aggregate=False) == ["198.18.0.0/17", "198.18.128.0/17", "198.19.0.0/16"]


def test_the_cap_on_entries_keeps_the_worst_offenders() -> None:
    blocks = [blk("198.18.0.1", offences=1), blk("198.18.0.5", offences=9), blk("198.18.0.9", offences=4)]
    assert exported(blocks, max_entries=2) == ["198.18.0.5", "198.18.0.9"]


def test_a_prefix_inside_another_is_exported_once() -> None:
    sel = select([blk("198.18.0.0/24"), blk("198.18.0.9")], PrefixSet(), [], ExportPolicy(), NOW)
    assert [(str(e.prefix), e.blocks) for e in sel.entries] == [("198.18.0.0/24", 1)]


# -- properties ------------------------------------------------------------------------------------------------

v4 = st.builds(
    lambda value, length: Prefix(4, (value >> (32 - length)) << (32 - length), length),
    st.integers(0xC6120000, 0xC613FFFF),  # 198.18.0.0/15
    st.integers(8, 32),
)
blocks_st = st.lists(
    st.builds(
        lambda p, age, left, off: Block(p, "b", NOW - age, NOW + left, off),
        v4,
        st.floats(0, 7200),
        st.floats(-10, 7200),
        st.integers(0, 5),
    ),
    max_size=40,
)
hosts_st = st.lists(st.builds(lambda v: Prefix(4, v, 32), st.integers(0xC6120000, 0xC613FFFF)), max_size=6)


@settings(max_examples=300, deadline=None)
@given(blocks_st, hosts_st, hosts_st, st.integers(1, 20), st.integers(8, 32), st.booleans())
def test_no_export_covers_a_protected_address_is_too_wide_or_too_many(
    blocks: list[Block], allow: list[Prefix], local: list[Prefix], cap: int, shortest: int, agg: bool
) -> None:
    policy = ExportPolicy(max_entries=cap, min_len={4: shortest, 6: 32}, min_age=600, min_offences=2, aggregate=agg)
    sel = select(blocks, PrefixSet(allow), local, policy, NOW)
    assert len(sel.entries) <= cap
    eligible = [b.prefix for b in blocks if b.until > NOW and (NOW - b.since >= 600 or b.offences >= 2)]
    for e in sel.entries:
        assert e.prefix.length >= shortest
        assert not any(e.prefix.contains(h) for h in (*allow, *local))
        # Soundness: every exported address is blocked (aggregation merges only what is exported).
        assert _covered(e.prefix, eligible)
    prefixes = [e.prefix for e in sel.entries]
    assert not any(a != b and a.overlaps(b) for a in prefixes for b in prefixes)


def _covered(p: Prefix, by: list[Prefix]) -> bool:
    if any(b.contains(p) for b in by):
        return True
    if p.is_host:
        return False
    half = p.length + 1
    return _covered(Prefix(4, p.value, half), by) and _covered(Prefix(4, p.value | (1 << (32 - half)), half), by)


@settings(max_examples=100, deadline=None)
@given(blocks_st)
def test_the_json_export_validates_against_the_schema_in_docs(blocks: list[Block]) -> None:
    sel = select(blocks, PrefixSet(), [], ExportPolicy(min_age=0), NOW)
    jsonschema.validate(json.loads(render("json", sel, Target((), ()), NOW)), SCHEMA)
    assert len(json_doc(sel, NOW)["entries"]) == len(sel.entries)
