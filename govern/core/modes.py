"""The host's mode (normal -> elevated -> wave) and the pressure that moves it: pure, like the rest of the core.

Pressure is read from one Snapshot: the fullest accept queue of a protected listener, the connections the kernel
dropped at a full queue (ListenDrops) per second, half-open connections (SYN_RECV), new connection attempts per
second from non-allowlisted sources (counted in the kernel before any of govern's drops, so a flood govern is holding
back still counts), the share of the MTA's sessions that non-allowlisted clients hold while saying nothing, and how
full the slot budget is (before a wave it caps strangers: a flood it holds back keeps no queue full).
Each gives a level (0, 1 elevated, 2 wave); the highest counts.

Hysteresis, so a flood that pulses does not flap the mode:
- a mode is entered as soon as pressure reaches its entry thresholds;
- it holds while pressure stays above the entry thresholds times `exit_ratio`;
- below that for `calm_for`, it steps down one mode (and may step again after another `calm_for`).
A wave also has a timer (`wave_duration`), renewed while pressure stays at wave level, so a wave the daemon can no
longer judge ends by itself. A wave switched on by hand ends by its timer or `govern wave off`, not by calm; after
`wave off`, no automatic wave starts for `calm_for`, so the operator's word holds for a while.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from govern.addr import Prefix
from govern.core.policy import ModePolicy, Policy
from govern.durations import format_duration
from govern.model import ListenerStats, Mode, ModeState, Snapshot, SourceStats, Totals


@dataclass(frozen=True, slots=True)
class Pressure:
    level: int  # reached with the entry thresholds
    holds: int  # reached with the entry thresholds times exit_ratio: the mode that may stay
    reasons: tuple[str, ...]
    queue_fill: float
    listen_drops_per_s: float
    syn_recv: int
    attempts_per_s: float
    idle_share: float
    budget_fill: float = 0.0


def measure(snap: Snapshot, policy: Policy) -> Pressure:
    mp = policy.modes
    fill = max((ls.queued / ls.backlog for ls in snap.listeners if ls.backlog > 0), default=0.0)
    drops = snap.counters.get("ListenDrops", 0) or snap.counters.get("ListenOverflows", 0)
    drops_per_s = drops / snap.interval if snap.interval > 0 else 0.0
    established, syn_recv, idle_foreign, attempts = snap.totals or totals(snap.sources, policy.allow.intersects)
    over = snap.counted_over or snap.interval
    attempts_per_s = attempts / over if over > 0 else 0.0
    # A flood's first fraction of a second, seen between ticks, is not diluted by the calm before it in the tick.
    attempts_per_s = max(attempts_per_s, snap.attempts_peak)
    idle_share = idle_foreign / established if established >= mp.min_sessions else 0.0
    fill_of_budget = budget_fill(snap.slotted, policy.slot_budget)
    figures = (
        ("queue_fill", fill, mp.queue_fill, "accept queue {:.0%} full"),
        ("listen_drops", drops_per_s, mp.listen_drops, "{:.0f} connections/s dropped at a full listen queue"),
        ("syn_recv", syn_recv, mp.syn_recv, "{} half-open connections"),
        # Counted in the kernel before any drop: a flood that govern holds back keeps the mode it needs.
        ("attempts", attempts_per_s, mp.attempts, "{:.0f} new connections/s from non-allowlisted sources"),
        ("idle_share", idle_share, mp.idle_share, "{:.0%} of sessions held silent by non-allowlisted clients"),
        # The budget caps strangers before a wave: a flood it holds back fills no queue, and would hold the budget,
        # shed by nothing, until it tired.
        ("budget_fill", fill_of_budget, mp.budget_fill, "strangers hold {:.0%} of their slot budget"),
    )
    level = holds = 0
    reasons = []
    for _name, value, (elevated, wave), text in figures:
        lv = 2 if value >= wave else 1 if value >= elevated else 0
        hv = 2 if value >= wave * mp.exit_ratio else 1 if value >= elevated * mp.exit_ratio else 0
        if lv:
            reasons.append(text.format(value))
        level, holds = max(level, lv), max(holds, hv)
    return Pressure(
        level, holds, tuple(reasons), fill, drops_per_s, syn_recv, attempts_per_s, idle_share, fill_of_budget
    )


def budget_fill(slotted: int | None, budget: int) -> float:
    """The share of the slot budget its sets hold (`slotted`, the kernel's count; None or no budget: 0)."""
    return slotted / budget if slotted is not None and budget > 0 else 0.0


def totals(sources: Mapping[Prefix, SourceStats], allowlisted: Callable[[Prefix], bool]) -> Totals:
    """The sums pressure is judged by; `allowlisted` is asked only about sources with idle sockets or attempts."""
    established = syn_recv = idle = new = 0
    for p, s in sources.items():
        established += s.established
        syn_recv += s.syn_recv
        if (s.idle or s.new) and not allowlisted(p):
            idle += s.idle
            new += s.new
    return Totals(established, syn_recv, idle, new)


def next_mode(cur: ModeState, pr: Pressure, mp: ModePolicy, now: float) -> ModeState | None:
    """The mode after this tick's pressure, or None if it stays as it is (timers included)."""
    level = cur.mode.level
    if cur.mode is Mode.WAVE and cur.until <= now:
        if pr.level < 2 or cur.manual or not mp.auto:
            after = Mode.of(pr.level if mp.auto else 0)
            return ModeState(after, now, reason=f"wave timer ran out{_under(pr)}")
        return _wave(now, mp, "renewed: " + "; ".join(pr.reasons))
    wanted = pr.level if mp.auto else 0
    if now < cur.quiet_until:
        wanted = min(wanted, 1)
    if wanted > level:
        if wanted == 2:
            return replace(_wave(now, mp, "; ".join(pr.reasons)), quiet_until=cur.quiet_until)
        return ModeState(Mode.ELEVATED, now, reason="; ".join(pr.reasons), quiet_until=cur.quiet_until)
    if level == 0 or cur.manual:
        return None
    if pr.holds >= level:
        if cur.mode is Mode.WAVE and pr.level == 2 and cur.until - now < mp.wave_duration / 2:
            return replace(cur, until=now + mp.wave_duration, calm_since=0.0)
        return replace(cur, calm_since=0.0) if cur.calm_since else None
    if not cur.calm_since:
        return replace(cur, calm_since=now)
    if now - cur.calm_since < mp.calm_for:
        return None
    down = Mode.of(max(wanted, level - 1))
    return ModeState(
        down,
        now,
        until=0.0,
        reason=f"calm for {format_duration(mp.calm_for)} after {cur.mode}",
        quiet_until=cur.quiet_until,
    )


def queues_call(
    listeners: Iterable[ListenerStats],
    cur: ModeState,
    mp: ModePolicy,
    now: float,
    attempts_per_s: float = 0.0,
    budget_fill: float = 0.0,
) -> bool:
    """Whether the accept queues, the new connections counted since the last look, or the slot budget's fill alone
    already call for a higher mode than the host is in: read between ticks, so a flood starts the mode it needs at
    once rather than at the next tick (up to `daemon.tick` later, while the flood takes the MTA's slots). The
    connection rate is what shows a flood on an MTA that accepts everything at once (postscreen): no accept queue
    fills there; the budget's fill, one the cap holds back before the wave at a rate below the attempts figure's."""
    if not mp.auto or cur.mode is Mode.WAVE:
        return False
    fill = max((ls.queued / ls.backlog for ls in listeners if ls.backlog > 0), default=0.0)
    level = 0
    for value, (elevated, wave) in (
        (fill, mp.queue_fill),
        (attempts_per_s, mp.attempts),
        (budget_fill, mp.budget_fill),
    ):
        level = max(level, 2 if value >= wave else 1 if value >= elevated else 0)
    if now < cur.quiet_until:  # an operator switched the wave off: nothing automatic above elevated for a while
        level = min(level, 1)
    return level > cur.mode.level


def wave_on(cur: ModeState, mp: ModePolicy, now: float, duration: float) -> ModeState:
    """`govern wave on --for DURATION`: a wave of the operator's, from now on. Asked during a wave, the same wave
    goes on (its start, so its cut counts and the strangers it found holding sessions), as the operator's now."""
    since = cur.since if cur.mode is Mode.WAVE else now
    return ModeState(Mode.WAVE, since, now + duration, "switched on by the operator", manual=True)


def wave_off(cur: ModeState, mp: ModePolicy, now: float) -> ModeState:
    """`govern wave off`: back to normal; no automatic wave for `calm_for`."""
    return ModeState(Mode.NORMAL, now, reason="switched off by the operator", quiet_until=now + mp.calm_for)


def _wave(now: float, mp: ModePolicy, why: str) -> ModeState:
    return ModeState(Mode.WAVE, now, now + mp.wave_duration, why)


def _under(pr: Pressure) -> str:
    return f" (still {'; '.join(pr.reasons)})" if pr.reasons else ""
