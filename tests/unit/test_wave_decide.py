"""The decision core under pressure: the wave's immediate blocks and tighter limits, idle-session cuts, softer
limits for sources that delivered, and what reverts when the wave ends."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from govern import config
from govern.addr import Prefix
from govern.core.decide import decide
from govern.core.policy import Policy
from govern.model import PUNITIVE, ActionKind, CutRecord, Mode, ModeState, Snapshot, SourceStats, State, Throttle

NOW = 1_700_000_000.0
PARTNER = Prefix.parse("192.0.2.10")


def policy(**sections: dict[str, object]) -> Policy:
    return config.from_mapping({"allow": {"cidrs": ["192.0.2.0/24"]}, **sections}).policy()


def wave_state() -> State:
    return State(mode=ModeState(Mode.WAVE, NOW - 10, NOW + 1000, "flood"))


def snap(sources: dict[Prefix, SourceStats], trusted: frozenset[Prefix] = frozenset()) -> Snapshot:
    return Snapshot(taken_at=NOW, interval=1.0, sources=sources, trusted=trusted)


def src(i: int) -> Prefix:
    return Prefix.parse(f"198.18.{i // 250}.{i % 250 + 1}")


def test_wave_blocks_the_top_n_most_prolific_at_once_and_throttles_the_rest_tightly() -> None:
    pol = policy(wave={"top_n": 3})
    # 5 sources over the wave's 10-connection limit (20 would be fine in normal mode), ranked by held.
    sources = {src(i): SourceStats(held=11 + i, established=11 + i) for i in range(5)}
    plan = decide(snap(sources), wave_state(), pol, NOW)
    blocks = {a.prefix for a in plan.actions if a.kind is ActionKind.BLOCK}
    throttles = [a for a in plan.actions if a.kind is ActionKind.THROTTLE]
    assert blocks == {src(4), src(3), src(2)}
    assert {a.prefix for a in throttles} == {src(0), src(1)} and all(a.tight for a in throttles)
    assert all("most prolific" in a.reason for a in plan.actions if a.kind is ActionKind.BLOCK)
    # The same sources in normal mode are under every limit.
    assert not decide(snap(sources), State(), policy(modes={"auto": False}), NOW).actions


def test_wave_leaves_sources_under_its_limits_and_trusted_senders_get_softer_ones() -> None:
    relay = Prefix.parse("198.51.100.7")
    sources = {relay: SourceStats(held=14, established=14, new_per_minute=40)}
    assert decide(snap(sources), wave_state(), policy(), NOW).actions  # over 10 held / 30 a minute
    soft = replace(policy(), trust_factor=4)
    assert not decide(snap(sources, trusted=frozenset({relay})), wave_state(), soft, NOW).actions


def test_idle_sessions_are_cut_under_pressure_and_their_sources_throttled() -> None:
    silent = src(7)
    busy = Prefix.parse("198.51.100.9")
    sources = {
        silent: SourceStats(held=1, established=1, idle=1, max_idle_ms=6_000),
        busy: SourceStats(held=4, established=4),  # sessions carrying data: not idle
        PARTNER: SourceStats(held=3, established=3, idle=3, max_idle_ms=600_000),
    }
    plan = decide(snap(sources), wave_state(), policy(), NOW)
    assert [(c.prefix, c.idle_ms) for c in plan.cuts] == [(silent, 3_000)]
    assert [(a.kind, a.prefix, a.tight) for a in plan.actions] == [(ActionKind.THROTTLE, silent, True)]
    assert "no progress for 6s" in plan.cuts[0].reason
    # Elevated mode cuts only past its longer threshold.
    elevated = State(mode=ModeState(Mode.ELEVATED, NOW - 10, reason="queue"))
    pol = policy(modes={"auto": False})
    assert not decide(snap(sources), elevated, pol, NOW).cuts
    long_silent = {silent: SourceStats(held=1, established=1, idle=1, max_idle_ms=31_000)}
    assert [c.prefix for c in decide(snap(long_silent), elevated, pol, NOW).cuts] == [silent]
    # Normal mode never cuts.
    assert not decide(snap(long_silent), State(), pol, NOW).cuts


def test_a_cut_source_that_comes_back_silent_after_escalate_after_is_blocked() -> None:
    silent = src(8)
    state = wave_state()
    state.throttles[silent] = Throttle(silent, "cut", NOW - 6, NOW + 600, tight=True)
    again = {silent: SourceStats(held=1, established=1, idle=1, max_idle_ms=5_500)}
    plan = decide(snap(again), state, policy(), NOW)
    assert [a.kind for a in plan.actions] == [ActionKind.BLOCK] and len(plan.cuts) == 1


def test_a_source_cut_twice_in_one_wave_is_blocked_not_throttled_again() -> None:
    bot = src(9)
    state = wave_state()
    stalling = {bot: SourceStats(held=2, established=2, idle=2, max_idle_ms=3_500)}
    first = decide(snap(stalling), state, policy(), NOW)
    assert [a.kind for a in first.actions] == [ActionKind.THROTTLE] and len(first.cuts) == 1
    state.record(first, NOW)
    assert state.cuts_in_wave(bot, state.mode.since) == 1
    # It reconnects (a throttle lets a few through) and stalls again: blocked, and cut once more.
    second = decide(snap(stalling), state, policy(), NOW + 4)
    assert [a.kind for a in second.actions] == [ActionKind.BLOCK] and len(second.cuts) == 1
    assert "cut 2 times in this wave" in second.actions[0].reason
    # With block_after 1, the first cut blocks.
    once = decide(snap(stalling), wave_state(), policy(cut={"block_after": 1}), NOW)
    assert [a.kind for a in once.actions] == [ActionKind.BLOCK]
    # A new wave starts the count again; elevated mode never counts.
    state.record(replace(first, mode=ModeState(Mode.WAVE, NOW + 5, NOW + 1000, "again")), NOW + 5)
    assert state.cuts_in_wave(bot, NOW + 5) == 1
    elevated = State(mode=ModeState(Mode.ELEVATED, NOW - 10, reason="queue"))
    elevated.record(replace(first, mode=None), NOW)
    assert not elevated.cuts


def test_the_pregreet_wait_the_mta_asks_for_is_a_floor_the_observer_and_the_cut_apply() -> None:
    # The threshold stays the wave's; the floor goes with it to the sockets, where the pregreet phase shows.
    pol = policy(cut={"greet_wait": "6s"})
    assert pol.cut_idle_after == (30.0, 3.0) and pol.greet_floor == 7.0
    assert policy(cut={"greet_wait": "auto"}).greet_floor == 0.0
    # Talkers during the wait are cut only when asked to (the daemon resolves "auto" from postscreen's settings).
    assert policy(cut={"pregreet": "cut"}).pregreet_cut
    assert not policy(cut={"pregreet": "wait"}).pregreet_cut and not policy().pregreet_cut


def test_leaving_the_wave_lifts_its_tight_throttles_and_keeps_the_others() -> None:
    state = State(mode=ModeState(Mode.WAVE, NOW - 100, NOW, "flood"))  # its timer runs out now
    a, b = src(1), src(2)
    state.throttles[a] = Throttle(a, "wave", NOW - 50, NOW + 500, tight=True)
    state.throttles[b] = Throttle(b, "rate", NOW - 50, NOW + 500)
    plan = decide(snap({}), state, policy(), NOW)
    assert plan.mode is not None and plan.mode.mode is Mode.NORMAL
    assert [(x.kind, x.prefix) for x in plan.actions] == [(ActionKind.UNTHROTTLE, a)]


def test_pressure_in_the_snapshot_starts_the_wave_in_the_same_tick() -> None:
    sources = {src(i): SourceStats(held=1, established=1, idle=1, max_idle_ms=6_000) for i in range(40)}
    plan = decide(snap(sources), State(), policy(), NOW)
    assert plan.mode is not None and plan.mode.mode is Mode.WAVE and "silent" in plan.mode.reason
    assert len(plan.cuts) == 40


stats = st.builds(
    SourceStats,
    held=st.integers(0, 60),
    established=st.integers(0, 60),
    syn_recv=st.integers(0, 40),
    idle=st.integers(0, 60),
    max_idle_ms=st.integers(0, 120_000),
    new=st.integers(0, 100),
    new_per_minute=st.integers(0, 500),
)
addresses = st.one_of(
    st.integers(0, 255).map(lambda i: Prefix.parse(f"192.0.2.{i}")),  # allowlisted
    st.integers(0, 65535).map(lambda i: Prefix.parse(f"198.18.{i >> 8}.{i & 255}")),
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(addresses, stats, max_size=40), st.sampled_from(list(Mode)))
def test_allowlisted_sources_are_never_cut_throttled_or_blocked_in_any_mode(
    sources: dict[Prefix, SourceStats], mode: Mode
) -> None:
    pol = policy(aggregate={"ipv4_min_blocked": 2})
    state = State(mode=ModeState(mode, NOW - 5, NOW + 100 if mode is Mode.WAVE else 0.0))
    plan = decide(snap(sources), state, pol, NOW)
    for a in plan.actions:
        if a.kind in PUNITIVE:
            assert not pol.allow.intersects(a.prefix), a
    for c in plan.cuts:
        assert not pol.allow.intersects(c.prefix), c


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(addresses, stats, max_size=40),
    st.dictionaries(addresses, st.integers(0, 4), max_size=40),
    st.integers(1, 3),
)
def test_in_a_wave_only_a_source_cut_block_after_times_is_blocked_for_its_cuts(
    sources: dict[Prefix, SourceStats], earlier: dict[Prefix, int], block_after: int
) -> None:
    pol = policy(cut={"block_after": block_after}, aggregate={"enabled": False}, wave={"top_n": 0})
    state = wave_state()
    state.cuts = {p: CutRecord(n, state.mode.since, NOW - 1) for p, n in earlier.items() if n}
    plan = decide(snap(sources), state, pol, NOW)
    cut = {c.prefix for c in plan.cuts}
    for a in plan.actions:
        if a.kind is ActionKind.BLOCK and "times in this wave" in a.reason:
            assert a.prefix in cut and not pol.allow.intersects(a.prefix)
            assert state.cuts_in_wave(a.prefix, state.mode.since) + 1 >= block_after
    for p in cut:
        blocked = any(a.kind is ActionKind.BLOCK and a.prefix == p for a in plan.actions)
        if state.cuts_in_wave(p, state.mode.since) + 1 >= block_after:
            assert blocked, p  # stalled again: never throttled again


def test_under_pressure_sources_nearing_a_limit_are_tarpitted_and_released_when_it_ends() -> None:
    elevated = State(mode=ModeState(Mode.ELEVATED, NOW - 10, reason="queue"))
    pol = policy(modes={"auto": False}, tarpit={"max_sources": 2})
    # Half of 20 connections or more, some silent (but not long enough to be cut), under 20.
    near = {src(i): SourceStats(held=10, established=10, idle=2, max_idle_ms=12_000) for i in range(4)}
    busy = {src(10 + i): SourceStats(held=12, established=12, new_per_minute=50) for i in range(3)}  # all talking
    relay = Prefix.parse("198.51.100.7")
    hoard = SourceStats(held=15, established=15, idle=5, max_idle_ms=12_000)
    sources = near | busy | {relay: hoard, PARTNER: hoard}
    plan = decide(snap(sources, trusted=frozenset({relay})), elevated, pol, NOW)
    tarpitted = [a for a in plan.actions if a.kind is ActionKind.TARPIT]
    assert len(tarpitted) == 2  # the cap
    assert all(a.prefix in near and "2 silent" in a.reason for a in tarpitted)
    # Normal mode tarpits nothing, and lifts what the pressure brought.
    assert not decide(snap(sources), State(), pol, NOW).actions
    state = State()
    state.record(plan, NOW)
    state.mode = ModeState()  # the pressure is over
    done = decide(snap(sources), state, pol, NOW + 1)
    assert sorted((a.kind, a.prefix) for a in done.actions) == sorted(
        (ActionKind.UNTARPIT, a.prefix) for a in tarpitted
    )
    # A host that cannot tarpit: max 0.
    assert not decide(snap(near), elevated, policy(modes={"auto": False}, tarpit={"enabled": False}), NOW).actions


def test_over_the_slot_budget_a_wave_sheds_the_queued_sessions_of_strangers_holding_the_most() -> None:
    pol = policy(wave={"slot_budget": 30, "top_n": 0}, cut={"enabled": False})
    relay = Prefix.parse("198.51.100.7")
    sources = {src(i): SourceStats(held=3 if i < 10 else 2, established=3 if i < 10 else 2) for i in range(40)}
    newcomer = Prefix.parse("198.51.100.200")
    sources |= {newcomer: SourceStats(held=1, established=1)}  # a never-seen sender: one session
    sources |= {PARTNER: SourceStats(held=20, established=20), relay: SourceStats(held=9, established=9)}
    plan = decide(snap(sources, trusted=frozenset({relay})), wave_state(), pol, NOW)
    shed = [c for c in plan.cuts if c.shed]
    # Strangers hold 10 x 3 + 30 x 2 + 1 = 91 sessions: 61 over the budget. The allowlisted partner's 20 and the
    # trusted relay's 9 are not counted. Those holding the most go first, queue and all, until what they held
    # covers the excess; a single session is not among them.
    assert [c.prefix for c in shed] == [src(i) for i in range(10)] + [src(i) for i in range(10, 26)]
    assert all(c.queued and c.idle_ms == 1000 for c in shed)  # cut.shed_after
    assert all("over the slot budget of 30" in c.reason for c in shed)
    assert not plan.actions  # shedding judges nothing: no throttle, no block
    state = wave_state()
    state.record(plan, NOW)
    assert not state.cuts  # and it never counts towards "cut twice in a wave"
    # Within the budget, or outside a wave, or without a budget the kernel enforces: nothing is shed.
    few = {src(i): SourceStats(held=2, established=2) for i in range(15)}
    assert not decide(snap(few), wave_state(), pol, NOW).cuts
    assert not decide(snap(sources), State(), replace(pol, modes=replace(pol.modes, auto=False)), NOW).cuts
    assert not [c for c in decide(snap(sources), wave_state(), policy(), NOW).cuts if c.shed]


def test_when_the_many_do_not_cover_the_excess_single_sessions_silent_after_the_greeting_are_shed_too() -> None:
    pol = policy(wave={"slot_budget": 30, "top_n": 0}, cut={"enabled": False})
    sources = {src(i): SourceStats(held=1, established=1) for i in range(40)}
    sources |= {src(100 + i): SourceStats(held=2, established=2) for i in range(3)}
    plan = decide(snap(sources), wave_state(), pol, NOW)
    # 46 sessions, 16 over: the three pairs (6) do not cover it. Every single one is asked, the socket decides: only
    # a session silent for `cut.shed_single_after` (2 s) since the greeting goes, never one still queued for it.
    many = [c.prefix for c in plan.cuts if c.queued]
    lone = [c for c in plan.cuts if c.shed and not c.queued]
    assert many == [src(100), src(101), src(102)]
    assert {c.prefix for c in lone} == {src(i) for i in range(40)}
    assert all(c.idle_ms == 2000 and "its session not answering the greeting" in c.reason for c in lone)


def test_a_single_session_gets_a_slow_mtas_pause_before_it_is_shed_and_both_waits_are_the_operators() -> None:
    # The lab's slow MTA pauses 1.5 s before each command, in one session: a lone session waits longer than that;
    # several sessions none of which answers are a flood's pattern, and go after a second.
    sources = {src(i): SourceStats(held=2, established=2) for i in range(3)}
    sources |= {src(100 + i): SourceStats(held=1, established=1) for i in range(20)}
    cuts = decide(snap(sources), wave_state(), policy(wave={"slot_budget": 10, "top_n": 0}), NOW).cuts
    assert {(c.queued, c.idle_ms) for c in cuts if c.shed} == {(True, 1000), (False, 2000)}
    pol = policy(wave={"slot_budget": 10, "top_n": 0}, cut={"shed_after": "3s", "shed_single_after": "5s"})
    assert {(c.queued, c.idle_ms) for c in decide(snap(sources), wave_state(), pol, NOW).cuts} == {
        (True, 3000),
        (False, 5000),
    }


def test_sessions_the_kernels_budget_does_not_count_are_over_it_while_a_flood_fills_what_it_counts() -> None:
    # 28 strangers' sessions against a budget of 30: within it by number. But the kernel holds only 8 of them in
    # its slots (made in the wave); the other 20 were opened before it, and the flood takes the 22 free slots at
    # once: those 20 are over the budget.
    pol = policy(wave={"slot_budget": 30, "top_n": 0}, cut={"enabled": False})
    sources = {src(i): SourceStats(held=2, established=2) for i in range(14)}
    within = decide(snap(sources), wave_state(), pol, NOW)
    assert not [c for c in within.cuts if c.shed]
    counted = decide(replace(snap(sources), slotted=8), wave_state(), pol, NOW)
    assert [c.prefix for c in counted.cuts if c.shed] == [src(i) for i in range(10)]  # 20 sessions
    assert all(c.queued and c.idle_ms == 1000 for c in counted.cuts)
    # Once the kernel counts them all, nothing more: but for the loops' question, the budget being full by then.
    full = decide(replace(snap(sources), slotted=28), wave_state(), pol, NOW).cuts
    assert full and all(c.idle_ms == 0 and c.loops == 6 and not c.queued for c in full)
    # Without the kernel's count (no budget in force), the number alone: within it.
    assert not decide(replace(snap(sources), slotted=None), wave_state(), pol, NOW).cuts


def test_the_strangers_holding_sessions_when_the_wave_began_are_shed_first_while_the_kernel_counts_fewer() -> None:
    # A flood's first second: 5 strangers hold 2 sessions each, made before the wave (the kernel never counted
    # them). The wave begins on that snapshot, and the plan names them.
    pol = policy(wave={"slot_budget": 30, "top_n": 0}, cut={"enabled": False})
    early = {src(100 + i): SourceStats(held=2, established=2) for i in range(5)}
    flood = replace(snap(early | {PARTNER: SourceStats(held=3, established=3)}), attempts_peak=1e6)
    start = decide(flood, State(), pol, NOW)
    assert start.mode is not None and start.mode.mode is Mode.WAVE
    assert start.holders == frozenset(early)  # not the allowlisted partner
    state = State()
    state.record(start, NOW)
    assert state.holders == frozenset(early)
    # A tick later 10 more strangers hold 2 sessions each, made in the wave. The kernel counts 20 of the 30: the 10
    # it does not count are the early ones', who go first, though they hold no more than the others: shedding the
    # others' would free counted slots the flood takes again at once and leave the uncounted to hold the MTA.
    later = {src(i): SourceStats(held=2, established=2) for i in range(10)}
    tick = decide(replace(snap(early | later), slotted=20), state, pol, NOW + 1)
    assert tick.holders is None  # the same wave: the holders stay as they were
    assert [c.prefix for c in tick.cuts if c.shed] == sorted(early, key=lambda p: p.value)
    # ... past the greeting too: a holder's sessions that advance now and then (a command every second or two, the
    # lab's loopers) would otherwise hold the MTA outside the budget for the whole wave.
    assert all(c.past and c.queued and c.idle_ms == 1000 for c in tick.cuts if c.shed)
    assert all("opened before the wave" in c.reason for c in tick.cuts if c.shed)
    # Once the kernel counts every session, the order is by sessions held again, whoever came first.
    many = later | {src(50): SourceStats(held=5, established=5)}
    over = decide(replace(snap(early | many), slotted=35), state, pol, NOW + 2)
    assert next(c.prefix for c in over.cuts if c.shed) == src(50)
    assert not any(c.past for c in over.cuts)  # the kernel counts them all: the greeting's rule again
    # The wave's end forgets them; a new wave names its own.
    state.record(replace(start, mode=replace(start.mode, mode=Mode.NORMAL), holders=None), NOW + 3)
    assert state.holders == frozenset()


def test_a_single_session_whose_source_tried_several_connections_goes_with_the_many() -> None:
    # Before the wave, the full accept queue dropped the second SYN of many flood sources: each holds one session,
    # queued, as a never-seen sender's would be. Its attempts tell them apart: the sender tried once.
    pol = policy(wave={"slot_budget": 10, "top_n": 0}, cut={"enabled": False})
    sources = {src(i): SourceStats(held=1, established=1, new_per_minute=2 + i % 3) for i in range(20)}
    sender = Prefix.parse("198.51.100.200")
    sources |= {sender: SourceStats(held=1, established=1, new_per_minute=1)}
    relay = Prefix.parse("198.51.100.7")  # delivered a minute ago and came back: trusted, never shed
    sources |= {relay: SourceStats(held=1, established=1, new_per_minute=6)}
    plan = decide(snap(sources, trusted=frozenset({relay})), wave_state(), pol, NOW)
    shed = [c for c in plan.cuts if c.shed]
    # 21 strangers' sessions, 11 over: the eleven sources that tried the most, queue and all, after a second.
    assert len(shed) == 11 and all(c.queued and c.idle_ms == 1000 for c in shed)
    tried = [sources[c.prefix].new_per_minute for c in shed]
    assert tried == sorted(tried, reverse=True) and min(tried) >= 3
    assert "of 4 connections tried in a minute" in shed[0].reason
    assert sender not in {c.prefix for c in shed} and relay not in {c.prefix for c in plan.cuts}
    # When they do not cover the excess, the lone sessions are asked as before: the sender's included, after 2 s
    # of silence since its greeting, never while it is queued.
    few = {src(i): SourceStats(held=1, established=1, new_per_minute=2) for i in range(3)}
    lone = {src(100 + i): SourceStats(held=1, established=1, new_per_minute=1) for i in range(12)}
    cuts = decide(snap(few | lone), wave_state(), pol, NOW).cuts
    assert {(c.prefix in few, c.queued, c.idle_ms) for c in cuts} == {(True, True, 1000), (False, False, 2000)}


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(addresses, stats, max_size=60), st.integers(1, 40))
def test_shedding_spares_the_allowlisted_and_the_trusted_and_queues_only_of_the_many(
    sources: dict[Prefix, SourceStats], budget: int
) -> None:
    pol = policy(wave={"slot_budget": budget}, aggregate={"enabled": False})
    trusted = frozenset(list(sources)[::3])
    plan = decide(snap(sources, trusted=trusted), wave_state(), pol, NOW)
    shed = [c for c in plan.cuts if c.shed]
    others = {c.prefix for c in plan.cuts if not c.shed} | {a.prefix for a in plan.actions}
    strangers = {p: s for p, s in sources.items() if p not in trusted and not pol.allow.intersects(p)}
    for c in shed:
        assert c.prefix in strangers and c.prefix not in others
        # A single session's queue is ended only when its source tried several connections.
        assert c.queued == (strangers[c.prefix].established >= 2 or strangers[c.prefix].new_per_minute >= 2)
    many = [c.prefix for c in shed if c.queued]
    excess = sum(s.established for s in strangers.values()) - budget
    if excess <= 0:
        assert not shed
    else:
        # No more of the many than the excess needs: without the last one, it was not yet covered; the single
        # sessions are asked only when the many did not cover it.
        assert sum(sources[p].established for p in many[:-1]) < excess
        if any(not c.queued for c in shed):
            assert sum(sources[p].established for p in many) < excess


def test_in_a_wave_trust_doubles_the_patience_for_silence_at_most() -> None:
    # Trust bought with a spam bot's dialogue a second before the wave must not let its silent sessions outlive
    # Postfix's own stress timeout (10 s), as 4 x 3 s did: govern never cut them.
    relay = Prefix.parse("198.51.100.7")
    soft = replace(policy(), trust_factor=4)

    def cuts(idle_ms: int, state: State) -> list[tuple[Prefix, int]]:
        sources = {relay: SourceStats(held=2, established=2, idle=2, max_idle_ms=idle_ms)}
        return [(c.prefix, c.idle_ms) for c in decide(snap(sources, frozenset({relay})), state, soft, NOW).cuts]

    assert cuts(5_000, wave_state()) == []  # a stranger's would be cut from 3 s
    assert cuts(7_000, wave_state()) == [(relay, 6_000)]
    # Elevated mode keeps the whole factor: 4 x 30 s.
    elevated = State(mode=ModeState(Mode.ELEVATED, NOW - 10, reason="queue"))
    assert cuts(100_000, elevated) == [] and cuts(121_000, elevated) == [(relay, 120_000)]


def test_in_a_wave_trust_bought_during_it_buys_no_patience() -> None:
    """A source first proven during the wave (the lab's deliverers: a message queued, then silence) is judged as a
    stranger: its silent sessions go after the wave's 3 s, not the trusted 6 s; its connection limits stay soft."""
    bot = Prefix.parse("198.51.100.66")
    soft = replace(policy(), trust_factor=4)
    sources = {bot: SourceStats(held=2, established=2, idle=2, max_idle_ms=4_000)}
    trusted = frozenset({bot})
    assert decide(snap(sources, trusted), wave_state(), soft, NOW).cuts == ()  # old trust: 6 s
    young = replace(snap(sources, trusted), young=trusted)
    assert [(c.prefix, c.idle_ms) for c in decide(young, wave_state(), soft, NOW).cuts] == [(bot, 3_000)]
    busy = {bot: SourceStats(held=30, established=30)}  # over a stranger's 10 in a wave, under 4 x 10
    assert decide(replace(snap(busy, trusted), young=trusted), wave_state(), soft, NOW).actions == ()


def test_while_strangers_fill_the_budget_their_sessions_that_loop_with_no_message_are_shed() -> None:
    # The lab's lone-loopers: each stranger holds one session that advances (a recipient every 2 s, each answered)
    # and never delivers. No session is over the budget (the kernel counts every one), but the strangers' lanes
    # are full and every never-seen sender is refused: the sessions that loop go, whichever they are, so that the
    # lanes turn over. Which of a source's sessions loop only its socket shows: the cut asks each (a wait of 0:
    # nothing else).
    pol = policy(wave={"slot_budget": 30, "top_n": 0}, cut={"enabled": False})
    loopers = {src(i): SourceStats(held=1, established=1) for i in range(30)}
    relay = Prefix.parse("198.51.100.7")  # delivered before: trusted, never asked
    sources = loopers | {relay: SourceStats(held=2, established=2), PARTNER: SourceStats(held=3, established=3)}
    plan = decide(replace(snap(sources, trusted=frozenset({relay})), slotted=30), wave_state(), pol, NOW)
    shed = [c for c in plan.cuts if c.shed]
    assert {c.prefix for c in shed} == set(loopers)
    assert all(c.loops == 6 and c.stale_ms == 10_000 and c.idle_ms == 0 and not c.queued and not c.past for c in shed)
    assert "looping with no message" in shed[0].reason
    # Only the crowds' part of the first contacts' lane left (3 of 30): full for a never-seen sender all the same.
    assert pol.slot_crowds == 3
    for p in [src(i) for i in range(3)]:
        del sources[p]
    assert {c.prefix for c in decide(replace(snap(sources, trusted=frozenset({relay})), slotted=27), wave_state(),
                                     pol, NOW).cuts} == set(loopers) - {src(0), src(1), src(2)}  # fmt: skip
    # Room left in the budget beyond it: nothing is shed, however long the sessions loop.
    del sources[src(3)]
    assert not decide(replace(snap(sources, trusted=frozenset({relay})), slotted=26), wave_state(), pol, NOW).cuts
    # The operator's number, and 0 for never.
    pol7 = policy(wave={"slot_budget": 30, "top_n": 0}, cut={"enabled": False, "loop_replies": 7})
    full = replace(snap(sources, trusted=frozenset({relay})), slotted=30)
    assert {c.loops for c in decide(full, wave_state(), pol7, NOW).cuts} == {7}
    pol20 = policy(wave={"slot_budget": 30, "top_n": 0}, cut={"enabled": False, "loop_after": "20s"})
    assert {c.stale_ms for c in decide(full, wave_state(), pol20, NOW).cuts} == {20_000}
    # Either question alone still asks; both off, nothing is.
    one = policy(wave={"slot_budget": 30, "top_n": 0}, cut={"enabled": False, "loop_replies": 0})
    assert {(c.loops, c.stale_ms) for c in decide(full, wave_state(), one, NOW).cuts} == {(0, 10_000)}
    off = policy(wave={"slot_budget": 30, "top_n": 0}, cut={"enabled": False, "loop_replies": 0, "loop_after": "off"})
    assert not decide(full, wave_state(), off, NOW).cuts


def test_over_the_budget_each_shed_also_asks_whether_the_session_loops() -> None:
    # The flood's loopers opened before the wave hold the MTA's processes and its accept queue, one session each,
    # outside the budget: each shed asks the same question of them (the same number of replies as in the wave: a
    # slow MTA that does not pipeline reaches DATA's 354 after four, and lost its message in the pause before its
    # body when three were asked of the sessions opened before the wave).
    pol = policy(wave={"slot_budget": 30, "top_n": 0}, cut={"enabled": False})
    early = {src(100 + i): SourceStats(held=1, established=1) for i in range(40)}
    state = State()
    state.record(decide(replace(snap(early), attempts_peak=1e6), State(), pol, NOW), NOW)
    assert state.holders == frozenset(early)
    later = {src(i): SourceStats(held=1, established=1) for i in range(10)}
    plan = decide(replace(snap(early | later), slotted=10), state, pol, NOW + 1)
    shed = {c.prefix: c for c in plan.cuts if c.shed}
    assert set(shed) == set(early) | set(later)
    assert {(c.loops, c.stale_ms) for c in shed.values()} == {(6, 10_000)}
    # ... and silent ones still after the single session's wait, as before.
    assert all(c.idle_ms == 2000 for c in shed.values())
    # A holder's session not greeted yet was opened before the wave as well: it goes from the accept queue, where it
    # would be served next for a loop's time, in a look that finds loops in front of it (the cut's `behind`); a
    # session of a source that came in the wave waits its turn.
    assert {p for p, c in shed.items() if c.behind} == set(early) and not any(c.queued for c in shed.values())
    off = policy(wave={"slot_budget": 30, "top_n": 0}, cut={"enabled": False, "loop_replies": 0})
    assert {c.loops for c in decide(replace(snap(early | later), slotted=10), state, off, NOW + 1).cuts} == {0}


def test_while_the_budget_is_pressed_a_source_proven_during_the_wave_is_asked_whether_it_loops() -> None:
    # The kernel's count of replies proves a loop of accepted recipients after the banner and three answers; trusted,
    # it passed the budget and held its slot for the whole wave. Proven during the wave, its sessions are asked the
    # loop's questions (nothing else: a wait of 0), and a session that went takes its proof (`unproves`).
    pol = policy(wave={"slot_budget": 1, "top_n": 0}, cut={"enabled": False})
    looper, sender, relay = (Prefix.parse(f"198.51.100.{n}") for n in (43, 44, 7))
    sources = {p: SourceStats(held=1, established=1) for p in (looper, sender, relay)}
    trusted = frozenset({looper, sender, relay})
    young = replace(snap(sources, trusted), young=frozenset({looper, sender}), slotted=1)  # the relay's is older
    cuts = decide(young, wave_state(), pol, NOW).cuts
    assert {c.prefix for c in cuts} == {looper, sender}
    assert all(c.shed and c.unproves and c.loops == 6 and c.stale_ms == 10_000 and c.idle_ms == 0 for c in cuts)
    assert all(not (c.queued or c.past or c.behind) for c in cuts)
    assert cuts[0].reason.startswith("its session looping with no message")
    # Room in the budget: nothing is asked. Allowlisted: never. Acted on by the silence cut first: left to it.
    roomy = replace(young, sources={looper: SourceStats(held=1, established=1)}, slotted=0)
    assert decide(roomy, wave_state(), pol, NOW).cuts == ()
    allowed = policy(wave={"slot_budget": 1, "top_n": 0}, cut={"enabled": False}, allow={"cidrs": ["198.51.100.43"]})
    assert {c.prefix for c in decide(young, wave_state(), allowed, NOW).cuts} == {sender}
    # Strangers' sessions over the budget are shed as before, and the young loops asked beside them.
    crowd = {src(i): SourceStats(held=2, established=2) for i in range(3)}
    over = replace(young, sources=sources | crowd, slotted=1)
    both = decide(over, wave_state(), pol, NOW).cuts
    assert {c.prefix for c in both if c.unproves} == {looper, sender}
    assert {c.prefix for c in both if not c.unproves} and not {c.prefix for c in both if not c.unproves} & trusted
    # No loop question asked at all (both off): none for them either.
    off = policy(wave={"slot_budget": 1, "top_n": 0}, cut={"enabled": False, "loop_replies": 0, "loop_after": "off"})
    assert not [c for c in decide(young, wave_state(), off, NOW).cuts if c.unproves]


def test_a_session_loops_when_its_server_answered_commands_and_its_client_sent_no_message() -> None:
    from govern.model import loops

    # A looper after EHLO, MAIL and four RCPTs: seven segments out (the greeting and six replies), ~30 bytes each in.
    assert loops(received=6 * 30, segs_in=6, segs_out=7, replies=6)
    assert not loops(received=5 * 30, segs_in=5, segs_out=6, replies=6)  # one reply short
    # A sender that pipelines: EHLO, then MAIL, RCPT and DATA in one write, then its message.
    assert not loops(received=30 + 90 + 20_000, segs_in=17, segs_out=4, replies=3)
    # ... a short message in one segment still averages far over a command's size.
    assert not loops(received=30 + 90 + 900, segs_in=3, segs_out=4, replies=3)
    # A TLS handshake (a ClientHello of several hundred bytes) is no command either.
    assert not loops(received=600 + 5 * 70, segs_in=8, segs_out=9, replies=6)
    assert not loops(received=0, segs_in=0, segs_out=9, replies=6)  # silent: the cuts' business
    assert not loops(received=300, segs_in=10, segs_out=11, replies=0)  # 0: never


def test_a_client_sent_no_message_while_its_bytes_are_its_commands_and_perhaps_a_tls_handshake() -> None:
    from govern.model import loops, no_message

    # The lab's tls-loopers after STARTTLS and ten commands: EHLO and STARTTLS in the clear, a 517-byte ClientHello,
    # 80 bytes of Finished, then records of about 48 bytes: over 64 a segment on average, never a loop by `loops`.
    received, segs = 39 + 517 + 80 + 10 * 48, 2 + 2 + 10
    assert not loops(received, segs, segs_out=16, replies=6)
    assert no_message(received, segs)
    assert no_message(0, 0)  # silent
    # A message's bytes put a session over: a short one (3 KB with its headers) after a pipelined batch ...
    assert not no_message(30 + 90 + 3_000, 4)
    # ... but not one under the handshake's allowance: such a session is only ever taken once it delivered (our
    # reply to its message the last word, 10 s after the greeting); in its message, it is the one that spoke last.
    assert no_message(30 + 90 + 1_500, 4)
    # ... and after STARTTLS, with a post-quantum ClientHello of 1.8 KB.
    assert not no_message(39 + 1_800 + 80 + 50 + 120 + 2_000, 7)


def test_a_shed_cut_asks_the_socket_edge_every_question_it_carries() -> None:
    """The daemon hands each shed cut to the socket edge as a Shed: every field goes across, each in its place."""
    from govern.model import Cut, Shed

    p = Prefix.parse("198.18.0.7")
    cut = Cut(p, 1500, "r", shed=True, queued=True, past=True, loops=6, stale_ms=10_000, behind=True)
    assert cut.shedding() == Shed(1500, True, True, 6, 10_000, True)
    assert Cut(p, 0, "r", shed=True).shedding() == Shed(0, False)
    assert Shed._fields == ("wait_ms", "queued", "past", "loops", "stale_ms", "behind")
