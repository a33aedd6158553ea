"""Modes: pressure from a snapshot, entry, hysteresis, the wave's timer, and the operator's on/off."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from govern import config
from govern.addr import Prefix
from govern.core.modes import Pressure, measure, next_mode, queues_call, wave_off, wave_on
from govern.model import ListenerStats, Mode, ModeState, Snapshot, SourceStats

NOW = 1_700_000_000.0
POLICY = config.from_mapping({"allow": {"cidrs": ["192.0.2.0/24"]}}).policy()
MP = POLICY.modes


def snap(
    queued: int = 0, backlog: int = 100, drops: int = 0, sources: dict[Prefix, SourceStats] | None = None
) -> Snapshot:
    return Snapshot(
        taken_at=NOW,
        interval=1.0,
        sources=sources or {},
        listeners=(ListenerStats("203.0.113.25", 25, queued, backlog),),
        counters={"ListenDrops": drops, "ListenOverflows": drops},
    )


def pressure(level: int, holds: int | None = None) -> Pressure:
    return Pressure(level, level if holds is None else holds, ("test",) if level else (), 0.0, 0.0, 0, 0.0, 0.0)


def test_each_pressure_figure_reaches_its_levels() -> None:
    assert measure(snap(queued=10), POLICY).level == 0
    assert measure(snap(queued=60), POLICY).level == 1
    assert measure(snap(queued=95), POLICY).level == 2
    assert measure(snap(drops=20), POLICY).level == 1
    assert measure(snap(drops=500), POLICY).level == 2
    half_open = {Prefix.parse(f"198.18.0.{i}"): SourceStats(held=30, syn_recv=30) for i in range(100)}
    assert measure(snap(sources=half_open), POLICY).syn_recv == 3000
    assert measure(snap(sources=half_open), POLICY).level == 2
    assert "95% full" in measure(snap(queued=95), POLICY).reasons[0]
    # Attempts counted in the kernel, also the ones govern drops: a held-back flood still holds the wave.
    knocking = {Prefix.parse(f"198.18.2.{i}"): SourceStats(new=20) for i in range(100)}  # 2000 a second
    pr = measure(snap(sources=knocking), POLICY)
    assert pr.level == 2 and pr.attempts_per_s == 2000.0 and "2000 new connections/s" in pr.reasons[0]
    partners = {Prefix.parse(f"192.0.2.{i}"): SourceStats(new=20) for i in range(100)}
    assert measure(snap(sources=partners), POLICY).level == 0
    # New connections a deferred read found count over the time since the read before it, not over the tick.
    pr = measure(replace(snap(sources=knocking), counted_over=10.0), POLICY)
    assert pr.attempts_per_s == 200.0 and pr.level == 0


def test_a_full_slot_budget_is_a_wave_and_most_of_it_elevated() -> None:
    budget = replace(POLICY, slot_budget=30)
    assert measure(replace(snap(), slotted=10), budget).level == 0
    assert measure(replace(snap(), slotted=24), budget).level == 1
    pr = measure(replace(snap(), slotted=30), budget)
    assert pr.level == 2 and pr.budget_fill == 1.0 and "strangers hold 100% of their slot budget" in pr.reasons[0]
    # Half of it holds the wave: a flood the budget keeps out still fills it.
    assert measure(replace(snap(), slotted=15), budget).holds == 2
    assert measure(replace(snap(), slotted=14), budget).holds == 1
    assert measure(replace(snap(), slotted=None), budget).level == 0  # no budget in force (iptables, dry run)
    assert measure(replace(snap(), slotted=30), replace(POLICY, slot_budget=0)).level == 0


def test_idle_share_counts_only_non_allowlisted_sessions_and_needs_enough_of_them() -> None:
    silent = {Prefix.parse(f"198.18.1.{i}"): SourceStats(held=1, established=1, idle=1) for i in range(30)}
    busy = {Prefix.parse(f"198.51.100.{i}"): SourceStats(held=1, established=1) for i in range(5)}
    assert measure(snap(sources=silent | busy), POLICY).level == 2  # 30 of 35 silent
    partner = {Prefix.parse(f"192.0.2.{i}"): SourceStats(held=1, established=1, idle=1) for i in range(30)}
    assert measure(snap(sources=partner | busy), POLICY).level == 0  # silent, but allowlisted
    few = dict(list(silent.items())[:10])
    assert measure(snap(sources=few), POLICY).idle_share == 0.0  # 10 sessions: below min_sessions


def test_pressure_enters_elevated_then_wave_at_once() -> None:
    cur = ModeState()
    m = next_mode(cur, pressure(1), MP, NOW)
    assert m is not None and m.mode is Mode.ELEVATED and m.until == 0
    w = next_mode(m, pressure(2), MP, NOW + 1)
    assert w is not None and w.mode is Mode.WAVE and w.until == NOW + 1 + MP.wave_duration
    assert next_mode(ModeState(), pressure(2), MP, NOW).mode is Mode.WAVE  # type: ignore[union-attr]


def test_a_mode_holds_through_pressure_above_its_exit_level_and_steps_down_after_calm_for() -> None:
    wave = ModeState(Mode.WAVE, NOW, NOW + MP.wave_duration, "flood")
    # Below the entry thresholds but above the exit ones: the wave holds, no calm clock.
    assert next_mode(wave, pressure(0, holds=2), MP, NOW + 10) is None
    calm = next_mode(wave, pressure(0, holds=0), MP, NOW + 10)
    assert calm is not None and calm.mode is Mode.WAVE and calm.calm_since == NOW + 10
    assert next_mode(calm, pressure(0, holds=0), MP, NOW + 10 + MP.calm_for - 1) is None
    # Pressure back before calm_for: the calm clock resets.
    back = next_mode(calm, pressure(1, holds=2), MP, NOW + 30)
    assert back is not None and back.calm_since == 0.0 and back.mode is Mode.WAVE
    down = next_mode(calm, pressure(0, holds=0), MP, NOW + 10 + MP.calm_for)
    assert down is not None and down.mode is Mode.ELEVATED  # one step at a time
    calm2 = next_mode(down, pressure(0, holds=0), MP, NOW + 100)
    assert calm2 is not None
    end = next_mode(calm2, pressure(0, holds=0), MP, NOW + 100 + MP.calm_for)
    assert end is not None and end.mode is Mode.NORMAL


def test_an_automatic_wave_is_renewed_while_pressure_lasts_and_ends_by_its_timer() -> None:
    wave = ModeState(Mode.WAVE, NOW, NOW + MP.wave_duration, "flood")
    assert next_mode(wave, pressure(2), MP, NOW + 60) is None  # more than half its time left
    late = NOW + MP.wave_duration * 0.6
    renewed = next_mode(wave, pressure(2), MP, late)
    assert renewed is not None and renewed.until == late + MP.wave_duration
    # A wave whose timer runs out while pressure is only elevated ends (to elevated), whatever the calm clock.
    over = next_mode(wave, pressure(1, holds=2), MP, NOW + MP.wave_duration)
    assert over is not None and over.mode is Mode.ELEVATED and "timer ran out" in over.reason


def test_operator_wave_ignores_calm_and_ends_by_its_timer() -> None:
    on = wave_on(ModeState(), MP, NOW, 600)
    assert on.mode is Mode.WAVE and on.manual and on.until == NOW + 600
    assert next_mode(on, pressure(0, holds=0), MP, NOW + 300) is None
    off = next_mode(on, pressure(0, holds=0), MP, NOW + 600)
    assert off is not None and off.mode is Mode.NORMAL


def test_operator_wave_asked_during_a_wave_goes_on_with_it() -> None:
    # The wave's start stays (its cut counts and holders are keyed to it); its end and its owner are the operator's.
    flood = ModeState(Mode.WAVE, NOW, NOW + MP.wave_duration, "flood")
    on = wave_on(flood, MP, NOW + 40, 600)
    assert on.since == NOW and on.until == NOW + 640 and on.manual
    assert wave_on(ModeState(Mode.ELEVATED, NOW, NOW + 60, "busy"), MP, NOW + 40, 600).since == NOW + 40


def test_wave_off_keeps_automatic_waves_away_for_calm_for_but_not_elevated() -> None:
    off = wave_off(ModeState(Mode.WAVE, NOW, NOW + 100, "flood"), MP, NOW)
    assert off.mode is Mode.NORMAL and off.quiet_until == NOW + MP.calm_for
    m = next_mode(off, pressure(2), MP, NOW + 1)
    assert m is not None and m.mode is Mode.ELEVATED and m.quiet_until == off.quiet_until
    assert next_mode(m, pressure(2), MP, NOW + MP.calm_for).mode is Mode.WAVE  # type: ignore[union-attr]


def test_auto_off_never_enters_a_mode_by_itself() -> None:
    mp = config.from_mapping({"modes": {"auto": False}}).policy().modes
    assert next_mode(ModeState(), pressure(2), mp, NOW) is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2), st.floats(0.1, 120)), max_size=60))
def test_mode_moves_at_most_one_step_down_per_change_and_never_waves_during_quiet(
    steps: list[tuple[int, int, float]],
) -> None:
    cur = wave_off(ModeState(Mode.WAVE, NOW, NOW + 10), MP, NOW)
    t = NOW
    for level, extra, dt in steps:
        t += dt
        new = next_mode(cur, pressure(level, min(2, level + extra)), MP, t)
        if new is None:
            continue
        if new.mode.level < cur.mode.level and not (cur.mode is Mode.WAVE and cur.until <= t):
            assert new.mode.level == cur.mode.level - 1
        if new.mode is Mode.WAVE and new.since == t and not new.manual:
            assert t >= new.quiet_until
        cur = new


def test_queues_read_between_ticks_call_for_a_tick_only_to_go_higher() -> None:
    def q(queued: int, backlog: int = 100) -> list[ListenerStats]:
        return [ListenerStats("203.0.113.25", 25, 3, 100), ListenerStats("203.0.113.25", 587, queued, backlog)]

    normal, elevated = ModeState(Mode.NORMAL, NOW), ModeState(Mode.ELEVATED, NOW)
    assert not queues_call(q(49), normal, MP, NOW)  # under modes.queue_fill's elevated 50%
    assert queues_call(q(50), normal, MP, NOW)
    assert not queues_call(q(89), elevated, MP, NOW)  # elevated already; the wave's 90% not reached
    assert queues_call(q(90), elevated, MP, NOW)
    assert not queues_call(q(100), ModeState(Mode.WAVE, NOW, until=NOW + 60), MP, NOW)  # a wave ticks fast anyway
    assert not queues_call(q(0, backlog=0), normal, MP, NOW)  # a listener without a backlog says nothing
    # A flood the cap holds back before the wave fills no queue: the budget's fill calls the wave between ticks.
    assert queues_call(q(0), elevated, MP, NOW, budget_fill=1.0)
    assert not queues_call(q(0), elevated, MP, NOW, budget_fill=0.9)
    assert queues_call(q(0), normal, MP, NOW, budget_fill=0.8)
    # After an operator's "wave off", nothing automatic above elevated until its quiet time is over.
    quiet = ModeState(Mode.ELEVATED, NOW, quiet_until=NOW + 60)
    assert not queues_call(q(100), quiet, MP, NOW)
    assert queues_call(q(100), quiet, MP, NOW + 61)
    assert not queues_call(q(100), normal, replace(MP, auto=False), NOW)
    # The kernel's count of new connections, read between ticks, calls too: behind postscreen no queue fills.
    assert not queues_call(q(0), normal, MP, NOW, attempts_per_s=299)  # under modes.elevated_attempts
    assert queues_call(q(0), normal, MP, NOW, attempts_per_s=300)
    assert not queues_call(q(0), elevated, MP, NOW, attempts_per_s=1499)
    assert queues_call(q(0), elevated, MP, NOW, attempts_per_s=1500)


def test_the_highest_rate_read_between_ticks_counts_at_its_own_rate_in_the_next_tick() -> None:
    # 600 connections in the tick's 2 s: 300 a second, elevated; but they all came in the last quarter second.
    knocking = {Prefix.parse(f"198.18.2.{i}"): SourceStats(new=6) for i in range(100)}
    calm_then_flood = Snapshot(taken_at=NOW, interval=2.0, sources=knocking)
    assert measure(calm_then_flood, POLICY).level == 1
    pr = measure(replace(calm_then_flood, attempts_peak=2400.0), POLICY)
    assert pr.level == 2 and pr.attempts_per_s == 2400.0
