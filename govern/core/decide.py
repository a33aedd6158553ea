"""The decision core: `decide(snapshot, state, policy, now) -> Plan`, and the pure checks behind manual actions.

No I/O, no clock, no globals: everything it knows arrives as arguments, so every judgement here is unit-tested.

The ladder, per source (an IPv4 /32 or IPv6 /64 by default):
  - under every limit: left alone, whatever it did before;
  - over a limit (concurrent sockets, or new connections in the last minute): throttled, i.e. its new-connection
    rate is capped in the kernel;
  - still over a limit `escalate_after` after being throttled: blocked for `duration`, doubled for every earlier
    offence within `forget_after`, up to `max_duration`;
  - still hammering while blocked, with less than half its block left: the block is extended.
Allowlisted sources are never throttled, blocked or extended; blocks and throttles lapse by their own timeout.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import chain

from govern.addr import Prefix
from govern.core.aggregate import aggregate
from govern.core.guard import refusal, refused, this_host
from govern.core.modes import measure, next_mode
from govern.core.policy import Policy
from govern.core.shedding import shed, strangers_holding
from govern.durations import format_duration
from govern.errors import RefusedError
from govern.model import Action, ActionKind, Block, Cut, Mode, Plan, Snapshot, Sources, SourceStats, State


def decide(snap: Snapshot, state: State, policy: Policy, now: float) -> Plan:
    """One tick's judgement: the mode, which sources to throttle, block, extend or cut, and what lapsed."""
    pressure = measure(snap, policy)
    new_mode = next_mode(state.mode, pressure, policy.modes, now)
    mode = (new_mode or state.mode).mode
    wave_since = (new_mode or state.mode).since
    wave = mode is Mode.WAVE
    actions: list[Action] = []
    released: set[Prefix] = set()
    for p, b in state.blocks.items():
        if b.until <= now:
            actions.append(Action(ActionKind.UNBLOCK, p, "expired"))
            released.add(p)
    for p, t in state.throttles.items():
        if t.until <= now:
            actions.append(Action(ActionKind.UNTHROTTLE, p, "expired"))
            released.add(p)
        elif t.tight and not wave:
            actions.append(Action(ActionKind.UNTHROTTLE, p, "the wave is over"))
            released.add(p)
    for p, tp in state.tarpits.items():
        if tp.until <= now or mode is Mode.NORMAL:
            actions.append(Action(ActionKind.UNTARPIT, p, "expired" if tp.until <= now else "the pressure is over"))

    limits = Limits.of(policy, mode)
    cut_after = policy.cut_idle_after[mode.level - 1] if policy.cut_idle_after and mode.level else None
    trusted = snap.trusted
    cuts: list[Cut] = []
    ranked: list[tuple[SourceStats, Prefix, list[str]]] = []  # wave: sources over a limit, to block the top N
    tarpit_room = policy.tarpit_max - len(state.tarpits) if mode.level else 0
    block_lengths = _lengths(state.blocks)
    # Most sources are under every limit and near none: let them pass at the cost of a few comparisons (the tightest
    # limits in force are the untrusted ones; trust only raises them).
    conn, new = limits.max_connections, limits.max_new_per_minute
    cut_ms = cut_after * 1000 if cut_after is not None else float("inf")
    near = conn / 2 if tarpit_room > 0 else float("inf")
    for p, s in _to_judge(snap.sources, conn, new, cut_ms):
        held = s.held
        if held <= conn and s.new_per_minute <= new and s.max_idle_ms < cut_ms and (held < near or not s.idle):
            continue
        lim = limits.trusted if p in trusted else limits
        over = over_limits(s, lim)
        over_any = bool(over)
        # A tarpitted source's sessions wait on the tarpit's queue, not on the client: never cut for that wait.
        # Trust bought during this wave (a delivery, then silence: the lab's deliverers) buys no patience.
        patience = (limits if p in snap.young else lim).patience(mode)
        cut = cut_after is not None and s.max_idle_ms >= cut_after * patience * 1000 and p not in state.tarpits
        if not (over or cut):
            if tarpit_room > 0 and nearing(s, lim) and _may_tarpit(p, state, policy, trusted, block_lengths):
                tarpit_room -= 1
                why = f"holds {s.held} connections, {s.idle} silent, under pressure ({mode})"
                actions.append(Action(ActionKind.TARPIT, p, why, until=now + policy.tarpit_duration))
            continue
        if p in released or policy.allow.intersects(p):
            continue
        blocked = _covering(state.blocks, block_lengths, p)
        if blocked is not None:
            ext = _extension(blocked, p, s, policy, now) if over else None
            if ext is not None:
                actions.append(ext)
            continue
        if cut and cut_after is not None:
            wait = format_duration(s.max_idle_ms / 1000)
            why = f"no progress for {wait} while the host is under pressure ({mode})"
            cuts.append(Cut(p, int(cut_after * patience * 1000), why))
            over.append(f"held a session without progress for {wait} under pressure")
            times = state.cuts_in_wave(p, wave_since) + 1 if wave else 0
            if times >= policy.cut_block_after:
                # Throttling a source that stalls the MTA's slots only slows its return: once it came back and
                # stalled again in the same wave (or at once, with block_after 1), it is blocked.
                offences = prior_offences(state, p, policy, now) + 1
                why = f"cut {times} times in this wave; {'; '.join(over)}"
                until = now + block_duration(offences, policy)
                actions.append(Action(ActionKind.BLOCK, p, why, until=until, offences=offences))
                continue
        if wave and over_any and policy.wave_top_n:
            ranked.append((s, p, over))
            continue
        actions.extend(_ladder(p, over, state, policy, now, tight=wave))
    if ranked:
        ranked.sort(key=lambda r: prolific(r[0]), reverse=True)
        for i, (_s, p, over) in enumerate(ranked):
            if i < policy.wave_top_n:
                offences = prior_offences(state, p, policy, now) + 1
                why = f"wave: among the {policy.wave_top_n} most prolific sources; {'; '.join(over)}"
                actions.append(
                    Action(ActionKind.BLOCK, p, why, until=now + block_duration(offences, policy), offences=offences)
                )
            else:
                actions.extend(_ladder(p, over, state, policy, now, tight=True))
    holders = None
    if wave and new_mode is not None and (state.mode.mode is not Mode.WAVE or state.mode.since != new_mode.since):
        holders = frozenset(p for p, _s in strangers_holding(snap, policy))
    if wave and policy.slot_budget:
        acted_on = {c.prefix for c in cuts} | {a.prefix for a in actions}
        cuts.extend(shed(snap, state, policy, acted_on, state.holders if holders is None else holders))
    actions = [a for a in actions if a.kind not in PUNISH or guarded(a.prefix, policy) is None]
    cuts = [c for c in cuts if this_host(c.prefix, policy.own) is None]
    if policy.aggregate:
        actions = aggregate(actions, state, policy, now)  # it makes no prefix the guard refuses
    return Plan(tuple(actions), mode=new_mode, cuts=tuple(cuts), holders=holders)


def _to_judge(
    sources: Mapping[Prefix, SourceStats], conn: int, new: int, cut_ms: float
) -> Iterable[tuple[Prefix, SourceStats]]:
    """The sources that may fail decide's first test (under every limit and near none). The rows of a Sources'
    columns hold no sockets (held, idle and the longest wait are 0): for them that test is `conn >= 0 and cut_ms > 0`
    and their attempts in the last minute, so only the rows over `new` are made into records."""
    if not isinstance(sources, Sources):
        return sources.items()
    if conn >= 0 and cut_ms > 0:
        return chain(sources.records.items(), sources.over(new))
    return sources.items()


# The actions that punish a source: every one passes govern.core.guard.
PUNISH = frozenset({ActionKind.BLOCK, ActionKind.EXTEND, ActionKind.THROTTLE, ActionKind.TARPIT})


def guarded(p: Prefix, policy: Policy) -> str | None:
    """Why `p` may not be punished (govern.core.guard), or None."""
    return refusal(p, policy.widest, policy.own)


def sessions_to_end(plan: Plan, policy: Policy) -> list[Prefix]:
    """The sources whose open sessions end with this plan: the newly blocked, when `block.end_sessions` says so (a
    block alone only stops new connections)."""
    if not policy.end_sessions:
        return []
    return [a.prefix for a in plan.actions if a.kind is ActionKind.BLOCK]


def prolific(s: SourceStats) -> tuple[int, int]:
    """How prolific a source is, for ranking: the sessions it holds, then its new connections in the last minute."""
    return s.held, s.new_per_minute


def most_prolific(sources: Mapping[Prefix, SourceStats], n: int) -> list[tuple[Prefix, SourceStats]]:
    """The `n` most prolific sources, most first (the wave blocks them; `govern status` shows them)."""
    # The columns of a Sources hold no sockets: of them only the `n` with the most attempts can rank.
    every = chain(sources.records.items(), sources.top(n)) if isinstance(sources, Sources) else sources.items()
    return heapq.nlargest(n, every, key=lambda kv: prolific(kv[1]))


@dataclass(frozen=True, slots=True)
class Limits:
    """The per-source limits in force: the mode's, and softer ones for sources that delivered mail recently."""

    max_connections: int
    max_new_per_minute: int
    factor: int = 1
    soft: Limits | None = None

    @property
    def trusted(self) -> Limits:
        return self.soft or self

    def patience(self, mode: Mode) -> int:
        """How many times the mode's cut threshold a session of these limits may go without progress. In a wave a
        trusted source gets at most WAVE_PATIENCE times, whatever `trust.factor` softens its connection limits by:
        its trust may have been bought a second before the wave with a spam bot's dialogue (the lab's `provers`),
        and at 4 x 3 s its silent sessions outlived Postfix's own stress timeout (10 s), so govern never cut them
        and they came back past the budget for the whole flood."""
        return min(self.factor, WAVE_PATIENCE) if mode is Mode.WAVE else self.factor

    @staticmethod
    def of(policy: Policy, mode: Mode) -> Limits:
        if mode is Mode.WAVE:
            conn, new = policy.wave_max_connections, policy.wave_max_new_per_minute
        else:
            conn, new = policy.max_connections, policy.max_new_per_minute
        f = policy.trust_factor
        soft = Limits(conn * f, new * f, f) if f > 1 else None
        return Limits(conn, new, 1, soft)


# A trusted source's silence in a wave: twice the wave's cut threshold (6 s on the defaults), under Postfix's stress
# timeout of 10 s so that govern's cut comes first, and still four times a slow MTA's pause between commands and
# three times Postfix's idle time for a cached connection (smtp_connection_cache_time_limit, 2 s).
WAVE_PATIENCE = 2


def _ladder(p: Prefix, over: list[str], state: State, policy: Policy, now: float, *, tight: bool) -> list[Action]:
    """A source over a limit: throttled first; blocked if still over `escalate_after` later."""
    throttle = state.throttles.get(p)
    if throttle is None:
        return [Action(ActionKind.THROTTLE, p, "; ".join(over), until=now + policy.throttle_duration, tight=tight)]
    if now - throttle.since < policy.escalate_after:
        return []
    offences = prior_offences(state, p, policy, now) + 1
    dur = block_duration(offences, policy)
    why = f"{'; '.join(over)}; still over after throttling"
    if offences > 1:
        why += f" (offence {offences}: {format_duration(dur)})"
    return [Action(ActionKind.BLOCK, p, why, until=now + dur, offences=offences)]


def _may_tarpit(
    p: Prefix, state: State, policy: Policy, trusted: frozenset[Prefix], block_lengths: list[tuple[int, int]]
) -> bool:
    """Not allowlisted, not trusted, and not already slowed, throttled or blocked."""
    if p in trusted or p in state.tarpits or p in state.throttles or policy.allow.intersects(p):
        return False
    return _covering(state.blocks, block_lengths, p) is None


def nearing(s: SourceStats, lim: Limits) -> bool:
    """Holding half its connection limit or more, some of them silent: the tarpit's sources.

    Not the rate: a busy relay opens connection after connection and each carries mail; a source that piles up
    sessions and says nothing on some of them is hoarding the MTA's slots.
    """
    return s.held * 2 >= lim.max_connections and s.idle > 0


def over_limits(s: SourceStats, policy: Policy | Limits) -> list[str]:
    """The limits a source is over, each as the sentence an operator reads."""
    out = []
    if s.held > policy.max_connections:
        idle = f", {s.idle} idle" if s.idle else ""
        out.append(f"holds {s.held} connections{idle} (limit {policy.max_connections})")
    if s.new_per_minute > policy.max_new_per_minute:
        out.append(f"opened {s.new_per_minute} connections in the last minute (limit {policy.max_new_per_minute})")
    return out


def prior_offences(state: State, p: Prefix, policy: Policy, now: float) -> int:
    rec = state.offenders.get(p)
    if rec is None or now - rec.last > policy.forget_after:
        return 0
    return rec.offences


def block_duration(offences: int, policy: Policy) -> float:
    """`duration` for a first offence, doubled for each repeat, capped at `max_duration`."""
    doubling = min(max(offences - 1, 0), 40)  # 2**40 times any duration is past any cap
    return float(min(policy.block_duration * (2**doubling), policy.max_block_duration))


def _extension(b: Block, p: Prefix, s: SourceStats, policy: Policy, now: float) -> Action | None:
    if b.prefix != p or b.manual or s.new_per_minute <= policy.max_new_per_minute:
        return None
    dur = block_duration(max(b.offences, 1), policy)
    if b.until - now >= dur / 2:
        return None
    why = f"still hammering while blocked: {s.new_per_minute} attempts in the last minute"
    return Action(ActionKind.EXTEND, p, why, until=now + dur, offences=b.offences)


def _lengths(blocks: dict[Prefix, Block]) -> list[tuple[int, int]]:
    return sorted({(p.version, p.length) for p in blocks})


def _covering(blocks: dict[Prefix, Block], lengths: Iterable[tuple[int, int]], p: Prefix) -> Block | None:
    """The active block that contains `p` (the same prefix or a wider one), if any."""
    hit = blocks.get(p)
    if hit is not None:
        return hit
    for version, length in lengths:
        if version == p.version and length < p.length:
            shift = p.bits - length
            wider = blocks.get(Prefix(version, (p.value >> shift) << shift, length))
            if wider is not None:
                return wider
    return None


def _allow_reason(p: Prefix, policy: Policy) -> str | None:
    for m in policy.allow:
        if m.overlaps(p):
            return f"{p} is allowlisted (allowlist entry {m}); govern never blocks an allowlisted address"
    return None


def manual_block(prefix: Prefix, state: State, policy: Policy, now: float, duration: float, reason: str) -> Plan:
    """The plan for `govern block`: refused for allowlisted addresses and for prefixes already inside a block.

    A prefix wider than existing blocks replaces them in the same transaction, so the kernel never holds
    overlapping intervals.
    """
    why = _allow_reason(prefix, policy) or guarded(prefix, policy)
    if why:
        raise RefusedError(why)
    wider = _covering(state.blocks, _lengths(state.blocks), prefix)
    if wider is not None and wider.prefix != prefix:
        raise RefusedError(f"{prefix} is already blocked as part of {wider.prefix}; unblock that first")
    actions = [
        Action(ActionKind.UNBLOCK, b, f"replaced by manual block of {prefix}")
        for b in state.blocks
        if b != prefix and prefix.contains(b)
    ]
    actions += [
        Action(ActionKind.UNTHROTTLE, t, f"blocked as part of {prefix}")
        for t in state.throttles
        if t != prefix and prefix.contains(t)
    ]
    old = state.blocks.get(prefix)
    offences = old.offences if old else prior_offences(state, prefix, policy, now)
    actions.append(
        Action(ActionKind.BLOCK, prefix, f"manual: {reason}", until=now + duration, offences=offences, manual=True)
    )
    return Plan(tuple(actions))


def manual_unblock(prefix: Prefix, state: State) -> Plan:
    """The plan for `govern unblock`: lifts the block and any throttle on exactly this prefix."""
    actions = []
    if prefix in state.blocks:
        actions.append(Action(ActionKind.UNBLOCK, prefix, "manual unblock", manual=True))
    if prefix in state.throttles:
        actions.append(Action(ActionKind.UNTHROTTLE, prefix, "manual unblock", manual=True))
    if actions:
        return Plan(tuple(actions))
    wider = _covering(state.blocks, _lengths(state.blocks), prefix)
    if wider is not None:
        raise RefusedError(f"{prefix} is blocked as part of {wider.prefix}; unblock {wider.prefix} instead")
    raise RefusedError(f"{prefix} is not blocked or throttled")


def reconcile(found: Plan, unblocked_last: set[Prefix]) -> tuple[Plan, Plan]:
    """What the kernel held at start-up that the state did not know (`found`, from the backend's set-up): adopted
    (a crash between the kernel's commit and the store's), except blocks the store last recorded as unblocked (a
    crash between an unblock's two commits), which are lifted again, so an operator's unblock is never undone.
    Returns (to adopt, to lift); the lift goes by what the backend holds, though the state never knew it."""
    adopt = Plan(tuple(a for a in found.actions if a.prefix not in unblocked_last))
    lift = tuple(
        Action(ActionKind.UNBLOCK, a.prefix, "unblocked before a crash")
        for a in found.actions
        if a.prefix in unblocked_last and a.kind is ActionKind.BLOCK
    )
    return adopt, Plan(lift)


def forget_offenders(state: State, policy: Policy, now: float) -> Plan:
    """The offence records older than `forget_after`: a source that offends again after them starts afresh."""
    cutoff = now - policy.forget_after
    return Plan(forget=tuple(p for p, o in state.offenders.items() if o.last < cutoff))


def release_allowlisted(state: State, policy: Policy) -> Plan:
    """After the allowlist grows, or the state comes back from the store: lift every block, throttle and tarpit
    that touches an allowlisted address, or that the guard forbids (govern.core.guard: this host, or wider than
    `[guard]` allows; a block made before the guard, or before a reload narrowed it).

    Run when the allowlist or the config changes (start-up, reload, `govern allow`), not every tick: it looks at
    every block.
    """
    actions = []
    for kind, entries in (
        (ActionKind.UNBLOCK, state.blocks),
        (ActionKind.UNTHROTTLE, state.throttles),
        (ActionKind.UNTARPIT, state.tarpits),
    ):
        # Asked of the whole set at once: these are the only ones to look at again, for their reason.
        suspects = refused(entries.keys(), policy.widest, policy.own, policy.allow)
        for p in entries:
            if p in suspects:
                why = "allowlisted" if policy.allow.intersects(p) else guarded(p, policy)
                if why:
                    actions.append(Action(kind, p, why))
    return Plan(tuple(actions))
