"""Prefix aggregation: crowded prefixes are blocked whole, never over an allowlisted address."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from govern import config
from govern.addr import Prefix, PrefixSet
from govern.core.aggregate import aggregate, split_around
from govern.core.policy import Policy
from govern.model import Action, ActionKind, Block, State

NOW = 1_700_000_000.0


def policy(allow: list[str], min_blocked: int = 4) -> Policy:
    return config.from_mapping(
        {"allow": {"cidrs": allow}, "aggregate": {"ipv4_min_blocked": min_blocked, "ipv6_min_blocked": min_blocked}}
    ).policy()


def block(p: str, until: float = NOW + 600) -> Action:
    return Action(ActionKind.BLOCK, Prefix.parse(p), "test", until=until, offences=1)


def test_enough_blocked_sources_of_one_slash24_become_one_block() -> None:
    state = State()
    for i in (1, 2, 3):
        p = Prefix.parse(f"198.18.5.{i}")
        state.blocks[p] = Block(p, "old", NOW - 10, NOW + 300, 1)
    out = aggregate([block("198.18.5.9", NOW + 900)], state, policy([]), NOW)
    kinds = sorted((a.kind.value, str(a.prefix)) for a in out)
    assert kinds == [
        ("block", "198.18.5.0/24"),
        ("unblock", "198.18.5.1"),
        ("unblock", "198.18.5.2"),
        ("unblock", "198.18.5.3"),
    ]
    agg = next(a for a in out if a.kind is ActionKind.BLOCK)
    assert agg.until == NOW + 900 and "4 sources of 198.18.5.0/24" in agg.reason


def test_below_the_threshold_or_in_other_prefixes_nothing_changes() -> None:
    acts = [block(f"198.18.{i}.1") for i in range(10)]
    assert aggregate(acts, State(), policy([]), NOW) == acts


def test_the_aggregate_is_split_around_an_allowlisted_address() -> None:
    acts = [block(f"198.18.5.{i}") for i in range(10, 14)]
    out = aggregate(acts, State(), policy(["198.18.5.77/32"]), NOW)
    pieces = [a.prefix for a in out if a.kind is ActionKind.BLOCK]
    assert len(pieces) == 8  # /25 .. /32 down the path to .77
    assert not any(p.overlaps(Prefix.parse("198.18.5.77")) for p in pieces)
    covered = sum(1 << (32 - p.length) for p in pieces)
    assert covered == 255


def test_a_prefix_with_a_manual_block_is_left_to_the_operator() -> None:
    state = State()
    m = Prefix.parse("198.18.5.200")
    state.blocks[m] = Block(m, "manual", NOW, NOW + 999, 0, manual=True)
    acts = [block(f"198.18.5.{i}") for i in range(4)]
    assert aggregate(acts, state, policy([]), NOW) == acts


def test_ipv6_sources_gather_into_slash48() -> None:
    acts = [block(f"2001:db8:bad:{i}::/64") for i in range(4)]
    out = aggregate(acts, State(), policy([]), NOW)
    assert [str(a.prefix) for a in out if a.kind is ActionKind.BLOCK] == ["2001:db8:bad::/48"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 511), min_size=1, max_size=40),
    st.lists(st.tuples(st.integers(0, 511), st.integers(22, 32)), max_size=6),
)
def test_no_aggregate_ever_covers_an_allowlisted_address(blocked: list[int], allowed: list[tuple[int, int]]) -> None:
    def addr(i: int) -> str:
        return f"198.18.{4 + (i >> 8)}.{i & 255}"

    allow = sorted({str(Prefix.parse(f"{addr(i)}/{n}", strict=False)) for i, n in allowed})
    pol = policy(allow, min_blocked=2)
    acts = [block(addr(i)) for i in sorted(set(blocked)) if not pol.allow.intersects(Prefix.parse(addr(i)))]
    out = aggregate(acts, State(), pol, NOW)
    final = {a.prefix for a in out if a.kind is ActionKind.BLOCK}
    for p in final:
        assert not pol.allow.intersects(p), p
    # Every source that was to be blocked still is, by itself or inside an aggregate.
    fs = PrefixSet(final)
    for a in acts:
        assert fs.covers(a.prefix)


@given(st.integers(0, 255), st.integers(24, 32))
def test_split_around_covers_exactly_the_rest(i: int, n: int) -> None:
    outer = Prefix.parse("198.18.5.0/24")
    hole = Prefix.parse(f"198.18.5.{i}/{n}", strict=False)
    pieces = split_around(outer, (hole,))
    assert sum(1 << (32 - p.length) for p in pieces) == 256 - (1 << (32 - hole.length))
    assert all(outer.contains(p) and not p.overlaps(hole) for p in pieces)
