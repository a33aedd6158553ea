"""The decision core: the escalation ladder, its reasons, allowlist precedence, and its invariants."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from govern import config
from govern.addr import Prefix, PrefixSet
from govern.core.decide import (
    block_duration,
    decide,
    forget_offenders,
    manual_block,
    manual_unblock,
    most_prolific,
    release_allowlisted,
    sessions_to_end,
)
from govern.core.guard import refusal
from govern.core.policy import Policy
from govern.errors import RefusedError
from govern.model import PUNITIVE, Action, ActionKind, Block, Offender, Plan, Snapshot, SourceStats, State, Throttle

NOW = 1_700_000_000.0
BOT = Prefix.parse("198.18.0.7")
TRUSTED = Prefix.parse("192.0.2.10")


def policy(**limits: object) -> Policy:
    """The ladder in normal mode: automatic modes off, so a snapshot's pressure cannot start a wave here (that
    is tests/unit/test_modes.py's subject)."""
    return config.from_mapping(
        {"allow": {"cidrs": ["192.0.2.0/24", "2001:db8:2::/48"]}, "limits": dict(limits), "modes": {"auto": False}}
    ).policy()


def snap(sources: dict[Prefix, SourceStats]) -> Snapshot:
    return Snapshot(taken_at=NOW, interval=1.0, sources=sources)


def kinds(plan: Plan) -> list[tuple[ActionKind, str]]:
    return [(a.kind, str(a.prefix)) for a in plan.actions]


def test_source_over_connection_limit_is_throttled_with_reason() -> None:
    plan = decide(snap({BOT: SourceStats(held=30, established=30, idle=28)}), State(), policy(), NOW)
    assert kinds(plan) == [(ActionKind.THROTTLE, "198.18.0.7")]
    assert plan.actions[0].reason == "holds 30 connections, 28 idle (limit 20)"
    assert plan.actions[0].until == NOW + 600


def test_source_over_rate_limit_is_throttled() -> None:
    plan = decide(snap({BOT: SourceStats(new_per_minute=61)}), State(), policy(), NOW)
    assert kinds(plan) == [(ActionKind.THROTTLE, "198.18.0.7")]
    assert "opened 61 connections in the last minute (limit 60)" in plan.actions[0].reason


def test_source_at_the_limits_is_left_alone() -> None:
    plan = decide(snap({BOT: SourceStats(held=20, new_per_minute=60)}), State(), policy(), NOW)
    assert not plan


def test_throttled_source_still_over_is_blocked_after_escalate_after() -> None:
    st_ = State(throttles={BOT: Throttle(BOT, "x", since=NOW - 4, until=NOW + 500)})
    stats = {BOT: SourceStats(held=30)}
    assert not decide(snap(stats), st_, policy(), NOW)  # 4 s < escalate_after (5 s)
    plan = decide(snap(stats), st_, policy(), NOW + 1)
    assert kinds(plan) == [(ActionKind.BLOCK, "198.18.0.7")]
    a = plan.actions[0]
    assert a.until == NOW + 1 + 600 and a.offences == 1
    assert a.reason.endswith("still over after throttling")


def test_throttled_source_back_under_limits_is_not_blocked() -> None:
    st_ = State(throttles={BOT: Throttle(BOT, "x", since=NOW - 60, until=NOW + 500)})
    assert not decide(snap({BOT: SourceStats(held=3)}), st_, policy(), NOW)


def test_repeat_offender_block_doubles_up_to_max() -> None:
    p = policy()
    assert [block_duration(n, p) for n in (1, 2, 3, 4)] == [600, 1200, 2400, 4800]
    assert block_duration(100, p) == 86400
    st_ = State(
        throttles={BOT: Throttle(BOT, "x", since=NOW - 10, until=NOW + 500)},
        offenders={BOT: Offender(offences=2, last=NOW - 3600)},
    )
    a = decide(snap({BOT: SourceStats(held=30)}), st_, p, NOW).actions[0]
    assert a.kind is ActionKind.BLOCK and a.offences == 3 and a.until == NOW + 2400
    assert "offence 3: 40m" in a.reason


def test_old_offences_are_forgotten() -> None:
    st_ = State(
        throttles={BOT: Throttle(BOT, "x", since=NOW - 10, until=NOW + 500)},
        offenders={BOT: Offender(offences=5, last=NOW - 8 * 86400)},
    )
    a = decide(snap({BOT: SourceStats(held=30)}), st_, policy(), NOW).actions[0]
    assert a.offences == 1 and a.until == NOW + 600


def test_lapsed_offence_records_are_forgotten_by_a_plan_the_state_records() -> None:
    old, recent = Prefix.parse("198.18.0.7"), Prefix.parse("198.18.0.8")
    st_ = State(offenders={old: Offender(3, NOW - 8 * 86400), recent: Offender(1, NOW - 3600)})
    plan = forget_offenders(st_, policy(), NOW)
    assert plan.forget == (old,) and bool(plan) and not plan.actions
    st_.record(plan, NOW)
    assert set(st_.offenders) == {recent}
    assert not forget_offenders(st_, policy(), NOW)  # nothing left to forget: an empty plan


def test_expired_blocks_and_throttles_are_released() -> None:
    other = Prefix.parse("198.18.0.8")
    st_ = State(
        blocks={BOT: Block(BOT, "x", NOW - 600, NOW, 1)},
        throttles={other: Throttle(other, "x", NOW - 600, NOW - 1)},
    )
    plan = decide(snap({}), st_, policy(), NOW)
    assert sorted(kinds(plan)) == [(ActionKind.UNBLOCK, "198.18.0.7"), (ActionKind.UNTHROTTLE, "198.18.0.8")]


def test_blocked_source_still_hammering_is_extended_near_expiry() -> None:
    st_ = State(blocks={BOT: Block(BOT, "x", NOW - 500, NOW + 100, 1)})
    plan = decide(snap({BOT: SourceStats(new_per_minute=500)}), st_, policy(), NOW)
    assert kinds(plan) == [(ActionKind.EXTEND, "198.18.0.7")]
    assert plan.actions[0].until == NOW + 600
    # Plenty of block left: nothing to do.
    st_ = State(blocks={BOT: Block(BOT, "x", NOW - 10, NOW + 590, 1)})
    assert not decide(snap({BOT: SourceStats(new_per_minute=500)}), st_, policy(), NOW)


def test_manual_blocks_are_never_extended_automatically() -> None:
    st_ = State(blocks={BOT: Block(BOT, "manual: x", NOW - 500, NOW + 10, 0, manual=True)})
    assert not decide(snap({BOT: SourceStats(new_per_minute=500)}), st_, policy(), NOW)


def test_source_inside_a_blocked_prefix_is_not_acted_on_again() -> None:
    net = Prefix.parse("198.18.0.0/24")
    st_ = State(blocks={net: Block(net, "manual", NOW, NOW + 600, 0, manual=True)})
    assert not decide(snap({BOT: SourceStats(held=50)}), st_, policy(), NOW)


def test_ipv6_sources_follow_the_same_ladder() -> None:
    v6 = Prefix.parse("2001:db8:bad:1::/64")
    plan = decide(snap({v6: SourceStats(held=25)}), State(), policy(), NOW)
    assert kinds(plan) == [(ActionKind.THROTTLE, "2001:db8:bad:1::/64")]


def test_allowlisted_source_over_every_limit_is_never_acted_on() -> None:
    stats = SourceStats(held=500, new_per_minute=10_000)
    v6 = Prefix.parse("2001:db8:2:5::/64")
    st_ = State(throttles={TRUSTED: Throttle(TRUSTED, "x", NOW - 100, NOW + 100)})
    assert not decide(snap({TRUSTED: stats, v6: stats}), st_, policy(), NOW)


def test_manual_block_of_allowlisted_address_is_refused_with_reason() -> None:
    with pytest.raises(RefusedError, match=r"192\.0\.2\.10 is allowlisted \(allowlist entry 192\.0\.2\.0/24\)"):
        manual_block(TRUSTED, State(), policy(), NOW, 600, "test")
    # A prefix that merely contains an allowlisted address is refused too.
    with pytest.raises(RefusedError, match="allowlisted"):
        manual_block(Prefix.parse("192.0.0.0/16"), State(), policy(), NOW, 600, "test")


def test_manual_prefix_block_replaces_the_blocks_it_covers() -> None:
    st_ = State(blocks={BOT: Block(BOT, "x", NOW, NOW + 100, 1)})
    plan = manual_block(Prefix.parse("198.18.0.0/24"), st_, policy(), NOW, 3600, "swarm")
    assert kinds(plan) == [(ActionKind.UNBLOCK, "198.18.0.7"), (ActionKind.BLOCK, "198.18.0.0/24")]
    assert plan.actions[-1].manual and plan.actions[-1].reason == "manual: swarm"


def test_manual_block_inside_a_blocked_prefix_is_refused() -> None:
    net = Prefix.parse("198.18.0.0/24")
    st_ = State(blocks={net: Block(net, "x", NOW, NOW + 100, 1)})
    with pytest.raises(RefusedError, match=r"already blocked as part of 198\.18\.0\.0/24"):
        manual_block(BOT, st_, policy(), NOW, 600, "x")


def test_manual_unblock() -> None:
    st_ = State(blocks={BOT: Block(BOT, "x", NOW, NOW + 100, 1)}, throttles={BOT: Throttle(BOT, "x", NOW, NOW + 9)})
    assert kinds(manual_unblock(BOT, st_)) == [
        (ActionKind.UNBLOCK, "198.18.0.7"),
        (ActionKind.UNTHROTTLE, "198.18.0.7"),
    ]
    with pytest.raises(RefusedError, match="is not blocked"):
        manual_unblock(Prefix.parse("198.18.0.9"), st_)


def test_release_allowlisted_lifts_blocks_touching_the_allowlist() -> None:
    inside = Prefix.parse("192.0.2.77")
    wide = Prefix.parse("192.0.0.0/16")
    st_ = State(blocks={inside: Block(inside, "x", NOW, NOW + 9, 1), wide: Block(wide, "x", NOW, NOW + 9, 0),
                        BOT: Block(BOT, "x", NOW, NOW + 9, 1)})  # fmt: skip
    assert sorted(kinds(release_allowlisted(st_, policy()))) == [
        (ActionKind.UNBLOCK, "192.0.0.0/16"),
        (ActionKind.UNBLOCK, "192.0.2.77"),
    ]


# -- properties -------------------------------------------------------------------------------------------


_wide_or_narrow = st.builds(
    lambda v, n, ln: (
        Prefix(4, (n >> (32 - ln)) << (32 - ln), ln) if v == 4 else Prefix(6, (n >> (128 - ln)) << (128 - ln), ln)
    ),
    st.sampled_from([4, 6]),
    st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0x7F000001, (192 << 24) | (2 << 8) | 77, 1])),
    st.integers(0, 32),
)


@settings(max_examples=300)
@given(st.lists(_wide_or_narrow, max_size=40, unique=True))
def test_release_allowlisted_asks_the_allowlist_and_the_guard_of_every_block(prefixes: list[Prefix]) -> None:
    # It asks them of the whole set at once: the answer is what asking each block in turn gives.
    pol = policy()
    pol = replace(pol, own=PrefixSet([Prefix.parse("198.51.100.9"), Prefix.parse("::1")]))
    state = State(blocks={p: Block(p, "x", NOW, NOW + 9, 1) for p in prefixes})
    want = []
    for p in prefixes:
        why = "allowlisted" if pol.allow.intersects(p) else refusal(p, pol.widest, pol.own)
        if why:
            want.append((ActionKind.UNBLOCK, p, why))
    assert [(a.kind, a.prefix, a.reason) for a in release_allowlisted(state, pol).actions] == want


v4 = st.builds(lambda n: Prefix(4, n, 32), st.integers(0, 2**32 - 1))
v6 = st.builds(lambda n: Prefix(6, n << 64, 64), st.integers(0, 2**64 - 1))
trusted_v4 = st.builds(lambda n: Prefix(4, (192 << 24) | (2 << 8) | n, 32), st.integers(0, 255))
trusted_v6 = st.builds(lambda n: Prefix(6, ((0x20010DB80002 << 16) | n) << 64, 64), st.integers(0, 0xFFFF))
stats = st.builds(
    SourceStats,
    held=st.integers(0, 200),
    established=st.integers(0, 200),
    syn_recv=st.integers(0, 50),
    idle=st.integers(0, 200),
    max_idle_ms=st.integers(0, 10**6),
    new=st.integers(0, 1000),
    new_per_minute=st.integers(0, 5000),
)
sources = st.dictionaries(st.one_of(v4, v6, trusted_v4, trusted_v6), stats, max_size=40)


@st.composite
def states(draw: st.DrawFn) -> State:
    s = State()
    for p in draw(st.lists(st.one_of(v4, v6, trusted_v4), max_size=10)):
        since = NOW - draw(st.floats(0, 3600))
        if draw(st.booleans()):
            s.throttles[p] = Throttle(p, "x", since, since + draw(st.floats(1, 7200)))
        else:
            s.blocks[p] = Block(p, "x", since, since + draw(st.floats(1, 7200)), draw(st.integers(0, 5)))
        if draw(st.booleans()):
            s.offenders[p] = Offender(draw(st.integers(1, 9)), since)
    return s


@settings(max_examples=300)
@given(sources, states())
def test_no_allowlisted_address_ever_appears_in_a_punitive_action(srcs: dict[Prefix, SourceStats], s: State) -> None:
    pol = policy()
    plan = decide(snap(srcs), s, pol, NOW)
    for a in plan.actions:
        if a.kind in PUNITIVE:
            assert not pol.allow.intersects(a.prefix), a


@settings(max_examples=300)
@given(sources, states())
def test_a_source_under_every_limit_is_never_acted_on(srcs: dict[Prefix, SourceStats], s: State) -> None:
    pol = policy()
    plan = decide(snap(srcs), s, pol, NOW)
    for a in plan.actions:
        stats_ = srcs.get(a.prefix)
        if a.kind in PUNITIVE and stats_ is not None:
            assert stats_.held > pol.max_connections or stats_.new_per_minute > pol.max_new_per_minute, a
        if a.kind in PUNITIVE:
            assert stats_ is not None, "punished a source the snapshot does not show"


@settings(max_examples=200)
@given(sources, states())
def test_decide_is_deterministic_and_does_not_touch_its_inputs(srcs: dict[Prefix, SourceStats], s: State) -> None:
    before = (dict(s.blocks), dict(s.throttles), dict(s.offenders))
    assert decide(snap(srcs), s, policy(), NOW) == decide(snap(srcs), s, policy(), NOW)
    assert (s.blocks, s.throttles, s.offenders) == before


@settings(max_examples=200)
@given(sources, states())
def test_every_block_lasts_between_duration_and_max_duration(srcs: dict[Prefix, SourceStats], s: State) -> None:
    pol = policy()
    for a in decide(snap(srcs), s, pol, NOW).actions:
        if a.kind is ActionKind.BLOCK:
            assert pol.block_duration <= a.until - NOW <= pol.max_block_duration


def test_the_most_prolific_hold_the_most_sessions_then_open_the_most_connections() -> None:
    a, b, c = Prefix.parse("198.18.0.1"), Prefix.parse("198.18.0.2"), Prefix.parse("198.18.0.3")
    sources = {
        a: SourceStats(held=5, new_per_minute=90),
        b: SourceStats(held=9, new_per_minute=1),
        c: SourceStats(held=5, new_per_minute=200),
    }
    assert [p for p, _s in most_prolific(sources, 2)] == [b, c]
    assert [p for p, _s in most_prolific(sources, 10)] == [b, c, a]


def test_a_newly_blocked_source_s_sessions_end_only_when_the_policy_says_so() -> None:
    plan = Plan(
        (
            Action(ActionKind.BLOCK, BOT, "b", until=NOW + 600, offences=1),
            Action(ActionKind.THROTTLE, Prefix.parse("198.18.0.9"), "t", until=NOW + 600),
        )
    )
    assert sessions_to_end(plan, policy()) == [BOT]
    assert sessions_to_end(plan, replace(policy(), end_sessions=False)) == []
