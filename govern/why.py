"""`govern why ADDR`: what govern saw of one source and why it acted, in words the operator can read out to the
sender whose mail is refused.

Pure, like the decision core: the daemon gathers the evidence (the source's standing, the limits in force, the last
snapshot's figures, its sessions as sock_diag shows them now, the state's entries touching it, its events) and
`explain` turns it into facts, actions and advice. No I/O and no clock: the time arrives as `Evidence.now`.

Each line of advice carries the name of the rule that produced it (docs/why.md lists them):

- allowlisted: the only advice for an allowlisted source: govern never acts on it, so the cause is elsewhere;
- manual-block, blocked, throttled, tarpitted: what govern does to it now, and the reason recorded then;
- silent-after-greeting, talked-first, silent-mid-dialogue, dripping: what its sessions show now (tcp_info);
- too-many-sessions, too-many-new: the last snapshot's figures over the limits in force;
- no-progress: the snapshot counted sessions making no progress that its live sessions no longer explain;
- cut, before: what govern did to it earlier (the event log), when nothing above explains it;
- shed: during a wave, connections of its that waited in the accept queue were ended for the slot budget;
- wave-gate: a stranger during a wave shares the gate's rate with every other stranger;
- wave-budget: a stranger during a wave shares the slot budget with every other stranger;
- nothing-wrong: none of the above.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from govern.addr import Prefix, group_key
from govern.core.decide import Limits
from govern.core.fleet import from_fleet
from govern.core.policy import Policy
from govern.core.proof import UNPROVEN_LOOP_REASON
from govern.durations import format_duration
from govern.errors import UsageError
from govern.model import Event, Mode, Offender, SessionInfo, SourceStats, State
from govern.observe.sockdiag import waits_on_client

ALLOWLISTED, TRUSTED, STRANGER = "allowlisted", "trusted", "stranger"
# A client's data segments averaging fewer bytes than this, with at least two more of them than our replies, are a
# command dripped a few bytes at a time: the shortest whole SMTP command line ("QUIT\r\n") is 6 bytes, EHLO with a
# name, MAIL and RCPT lines are well over 16, and with pipelining several travel in one segment.
DRIP_BYTES = 16
# SMTPS (RFC 8314): the client speaks first (its TLS ClientHello), so "it talked before our greeting" means nothing.
IMPLICIT_TLS_PORTS = frozenset({465})
SESSIONS_SHOWN = 200  # the sessions a reply lists, those waiting longest first (a /64 may hold thousands)
MAX_ADDR_LEN = 64  # longer than any address or prefix written out
# Every rule that tells the sender something is wrong, or that govern acts against it.
PUNITIVE_RULES = frozenset(
    {
        "manual-block",
        "blocked",
        "throttled",
        "tarpitted",
        "silent-after-greeting",
        "talked-first",
        "silent-mid-dialogue",
        "dripping",
        "too-many-sessions",
        "too-many-new",
        "no-progress",
        "cut",
        "shed",
        "unproven",
        "before",
        "wave-gate",
        "wave-budget",
    }
)
_MAPPED = Prefix(6, 0xFFFF << 32, 96)  # ::ffff:0:0/96, IPv4-mapped IPv6

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Standing:
    """Who the source is to govern: allowlisted (by which entries), trusted (learned: it delivered mail
    recently, or the kernel saw it do so), or a stranger."""

    kind: str  # ALLOWLISTED, TRUSTED or STRANGER
    allow: tuple[tuple[Prefix, tuple[str, ...]], ...] = ()  # allowlist entries touching it, each with its sources
    trusted_until: float | None = None  # when learned trust lapses, if known
    # Its proof on probation (govern.proving): until when (infinity: until the pressure is over).
    probation: float | None = None


@dataclass(frozen=True, slots=True)
class InForce:
    """What govern holds the source to now: the mode's limits (decide.Limits), softer if it is trusted."""

    mode: Mode
    max_connections: int
    max_new_per_minute: int
    trust_factor: int  # the limits are this many times the mode's (1: not softened)
    silent_after: float  # seconds: a session waiting this long on its client counts as idle in the snapshot
    cut_after: float | None  # seconds: such sessions are cut after this long in this mode (None: not cut)
    gate_per_second: int  # during a wave: the rate a stranger's new connections share with every other (0: none)
    forget_after: float  # seconds an offence counts toward a longer block
    budget_slots: int = 0  # the MTA slots a stranger's sessions share with every other, a wave or not (0: none)
    greet_floor: float = 0.0  # seconds: no session is judged sooner while it has had only the first greeting line
    pregreet_cut: bool = False  # ... but one whose client talked meanwhile (postscreen enforces its pregreet test)


def in_force(policy: Policy, mode: Mode, standing: Standing, gate_per_second: int, budget_slots: int = 0) -> InForce:
    """The limits for this standing in this mode, as decide applies them."""
    lim = Limits.of(policy, mode)
    if standing.kind == TRUSTED:
        lim = lim.trusted
    cuts = policy.cut_idle_after or ()
    cut = cuts[mode.level - 1] * lim.patience(mode) if cuts and mode.level else None
    return InForce(
        mode=mode,
        max_connections=lim.max_connections,
        max_new_per_minute=lim.max_new_per_minute,
        trust_factor=lim.factor,
        # The observer counts idle sessions from the shortest wait anything judges by.
        silent_after=min((policy.idle_after, *cuts)),
        cut_after=cut,
        gate_per_second=gate_per_second if mode is Mode.WAVE and standing.kind == STRANGER else 0,
        forget_after=policy.forget_after,
        # The budget caps strangers before a wave too (govern.nft.ruleset, chain calm).
        budget_slots=budget_slots if standing.kind == STRANGER or standing.probation is not None else 0,
        greet_floor=policy.greet_floor,
        pregreet_cut=policy.pregreet_cut,
    )


def subject(text: object, v4_len: int, v6_len: int) -> tuple[Prefix, Prefix]:
    """(what the operator asked about, the source group it counts in) from a request's `addr`.

    An address, or a prefix no wider than one source; an IPv4-mapped IPv6 address is its IPv4 address. Raises
    UsageError naming the problem.
    """
    if text is None:
        raise UsageError("why: no address given (the request's 'addr')")
    if not isinstance(text, str):
        raise UsageError(f"why: 'addr' must be an address as text, got {type(text).__name__}")
    if not text.strip():
        raise UsageError("why: give an address, e.g. 198.51.100.7 or 2001:db8:51::7")
    if len(text) > MAX_ADDR_LEN:
        raise UsageError(f"why: {text[:MAX_ADDR_LEN]!r}... is too long to be an address or prefix")
    asked = Prefix.parse(text)
    if _MAPPED.contains(asked):
        asked = Prefix(4, asked.value & 0xFFFFFFFF, asked.length - 96)
    plen = v4_len if asked.version == 4 else v6_len
    if asked.length < plen:
        raise UsageError(
            f"{asked} is wider than one source (IPv{asked.version} sources are /{plen} groups): ask about an "
            "address inside it"
        )
    return asked, group_key(asked, v4_len, v6_len)


def covering(p: Prefix) -> list[Prefix]:
    """`p` and every prefix that contains it, longest first."""
    return [group_key(p, n, n) for n in range(p.length, -1, -1)]


def touching(entries: Mapping[Prefix, T], source: Prefix) -> list[tuple[Prefix, T]]:
    """The entries on `source`: on it or a prefix containing it (a dict lookup per length), or inside it (a scan,
    only for sources wider than a host)."""
    out = [(p, entries[p]) for p in covering(source) if p in entries]
    if not source.is_host:
        out += [(p, v) for p, v in entries.items() if p.length > source.length and source.contains(p)]
    return out


def waiting(s: SessionInfo) -> bool:
    """The server waits on the client: it has spoken, and the client has said nothing since (the observer's rule)."""
    if not (s.state == "ESTABLISHED" and s.info and s.segs_out > 0):
        return False
    return waits_on_client(s.server_sent_ms, s.client_sent_ms, s.segs_in, s.segs_out)


class Enforcement(NamedTuple):
    """A block, throttle or tarpit in force on the source (or on a prefix containing it)."""

    kind: str  # "block", "throttle" or "tarpit"
    prefix: Prefix
    reason: str
    since: float
    until: float
    manual: bool = False
    offences: int = 0


@dataclass(frozen=True, slots=True)
class Advice:
    rule: str  # which rule said it (module docstring)
    text: str


@dataclass(frozen=True)
class Evidence:
    """Everything `explain` judges by, gathered by the daemon."""

    asked: Prefix
    source: Prefix  # the source group `asked` counts in
    now: float
    standing: Standing
    limits: InForce
    stats: SourceStats | None = None  # the last snapshot's figures (None: not in it)
    sessions: Sequence[SessionInfo] = ()  # as sock_diag shows them now
    sessions_error: str = ""  # why the kernel could not show them ("" when it did)
    state: State = field(default_factory=State)
    events: Sequence[Event] = ()  # about the source and the prefixes containing it, newest first
    dry_run: bool = False  # nothing is enforced: the state is what govern would have done


@dataclass(frozen=True)
class Explanation:
    evidence: Evidence
    sessions: tuple[SessionInfo, ...]  # those shown, waiting longest first
    enforcement: tuple[Enforcement, ...]
    offences: tuple[tuple[Prefix, Offender], ...]
    facts: tuple[str, ...]
    actions: tuple[str, ...]  # in force now
    history: tuple[str, ...]  # the events, newest first
    advice: tuple[Advice, ...]

    def to_dict(self) -> dict[str, Any]:
        """The JSON reply (docs/why.md documents every key)."""
        ev, lim = self.evidence, self.evidence.limits
        return {
            "asked": str(ev.asked),
            "source": str(ev.source),
            "now": ev.now,
            "mode": lim.mode.value,
            "dry_run": ev.dry_run,
            "standing": {
                "kind": ev.standing.kind,
                "allowlist": [{"prefix": str(p), "sources": list(s)} for p, s in ev.standing.allow],
                "trusted_until": ev.standing.trusted_until,
                "probation": _probation_json(ev.standing.probation),
            },
            "limits": {
                "max_connections": lim.max_connections,
                "max_new_per_minute": lim.max_new_per_minute,
                "trust_factor": lim.trust_factor,
                "silent_after": lim.silent_after,
                "cut_after": lim.cut_after,
                "gate_per_second": lim.gate_per_second,
                "budget_slots": lim.budget_slots,
                "greet_floor": lim.greet_floor,
                "pregreet_cut": lim.pregreet_cut,
            },
            "snapshot": ev.stats._asdict() if ev.stats is not None else None,
            "sessions": [{**s._asdict(), "waiting": waiting(s)} for s in self.sessions],
            "sessions_total": len(ev.sessions),
            "sessions_error": ev.sessions_error,
            "enforcement": [{**e._asdict(), "prefix": str(e.prefix)} for e in self.enforcement],
            "offences": [{"prefix": str(p), "offences": o.offences, "last": o.last} for p, o in self.offences],
            "events": [
                {"at": e.at, "kind": e.kind, "prefix": e.prefix, "reason": e.reason, "until": e.until}
                for e in ev.events
            ],
            "facts": list(self.facts),
            "actions": list(self.actions),
            "history": list(self.history),
            "advice": [{"rule": a.rule, "text": a.text} for a in self.advice],
        }


def explain(ev: Evidence) -> Explanation:
    st = ev.state
    enforcement = tuple(
        [
            Enforcement("block", p, b.reason, b.since, b.until, b.manual, b.offences)
            for p, b in touching(st.blocks, ev.source)
        ]
        + [Enforcement("throttle", p, t.reason, t.since, t.until) for p, t in touching(st.throttles, ev.source)]
        + [Enforcement("tarpit", p, t.reason, t.since, t.until) for p, t in touching(st.tarpits, ev.source)]
    )
    offences = tuple(touching(st.offenders, ev.source))
    shown = tuple(sorted(ev.sessions, key=lambda s: (not waiting(s), -s.server_sent_ms))[:SESSIONS_SHOWN])
    return Explanation(
        evidence=ev,
        sessions=shown,
        enforcement=enforcement,
        offences=offences,
        facts=tuple(_facts(ev)),
        actions=tuple(_actions(ev, enforcement, offences)),
        history=tuple(f"{_ago(ev, e.at)}: {e.kind} {e.prefix}: {e.reason}" for e in ev.events),
        advice=tuple(_advice(ev, enforcement)),
    )


# -- the lines ---------------------------------------------------------------------------------------------------


def _dur(seconds: float) -> str:
    return format_duration(max(seconds, 0.001))


def _ago(ev: Evidence, at: float) -> str:
    return f"{_dur(ev.now - at)} ago"


def _left(ev: Evidence, until: float) -> str:
    return f"for another {_dur(until - ev.now)}" if until > ev.now else "lapsing now"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _part(ev: Evidence, p: Prefix) -> str:
    return "" if p == ev.source else f" (as part of {p})"


def _probation_json(probation: float | None) -> dict[str, float | None] | None:
    if probation is None:
        return None
    return {"until": None if math.isinf(probation) else probation}


def _probation(ev: Evidence, ends: float) -> str:
    if math.isinf(ends):
        return (
            "its proof is on probation until this flood is over: it was first proven as the flood began or during "
            "it, and then seen holding several sessions at once, as a flood's bots that deliver once and then hold "
            "do; meanwhile its new connections count against the strangers' slot budget, whatever it delivers"
        )
    left = f"for another {_dur(ends - ev.now)}" if ends > ev.now else "its time served"
    return (
        f"its proof is on probation during this flood ({left}): it was first proven during it, as one of several "
        "connections opened at once; meanwhile its new connections count against the strangers' slot budget"
    )


def _facts(ev: Evidence) -> Iterable[str]:
    lim, std, src = ev.limits, ev.standing, ev.source
    if ev.dry_run:
        yield "dry run: govern enforces nothing; the actions below are what it would have done"
    if ev.asked != src:
        yield f"{ev.asked} counts as part of source {src}"
    if std.kind == ALLOWLISTED:
        entries = "; ".join(f"{p} ({', '.join(s) or 'allowlist'})" for p, s in std.allow)
        yield f"{src} is allowlisted: {entries}"
        yield "no limits apply: govern never limits, slows, blocks or cuts an allowlisted source"
    else:
        if std.kind == TRUSTED:
            until = f", {_left(ev, std.trusted_until)}" if std.trusted_until is not None else ""
            yield f"{src} is trusted: it delivered mail here recently (learned trust{until})"
        elif std.probation is not None:
            yield f"{src} delivered mail here, but counts as a stranger while its proof is on probation"
        else:
            yield f"{src} is a stranger: not allowlisted, and no delivery from it seen recently"
        if std.probation is not None:
            yield _probation(ev, std.probation)
        soft = f", {lim.trust_factor} times softer for trusted sources" if lim.trust_factor > 1 else ""
        cut = (
            f"silent sessions are cut after {_dur(lim.cut_after)}"
            if lim.cut_after is not None
            else f"silent sessions are not cut in {lim.mode} mode"
        )
        gate = (
            f"; during this wave strangers' new connections share {lim.gate_per_second}/s"
            if lim.gate_per_second
            else ""
        )
        if lim.budget_slots:
            during = "during this wave " if lim.mode is Mode.WAVE else ""
            gate += f"; {during}strangers' sessions share {lim.budget_slots} of the MTA's slots"
        yield (
            f"limits in force ({lim.mode} mode{soft}): {lim.max_connections} sessions at once, "
            f"{lim.max_new_per_minute} new connections a minute; a session waiting {_dur(lim.silent_after)} on its "
            f"client counts as idle; {cut}{gate}"
        )
    s = ev.stats
    if s is None:
        yield "not in the last snapshot: no session and no connection attempt counted lately"
    else:
        limited = std.kind != ALLOWLISTED
        held_lim = f" (limit {lim.max_connections})" if limited else ""
        new_lim = f" (limit {lim.max_new_per_minute})" if limited else ""
        longest = f" (the longest {_dur(s.max_idle_ms / 1000)})" if s.idle else ""
        yield (
            f"last snapshot: {_n(s.held, 'session')} held{held_lim}, {s.established} established, {s.syn_recv} "
            f"SYN_RECV, {s.idle} idle{longest}; {_n(s.new_per_minute, 'new connection')} in the last minute{new_lim}"
        )
    if ev.sessions_error:
        yield f"sessions now: unknown ({ev.sessions_error})"
    elif not ev.sessions:
        yield "no session open now"
    else:
        more = f" (the {SESSIONS_SHOWN} waiting longest are listed)" if len(ev.sessions) > SESSIONS_SHOWN else ""
        w = sum(map(waiting, ev.sessions))
        yield f"{_n(len(ev.sessions), 'session')} open now, {w} waiting on the client{more}"


def _actions(
    ev: Evidence, enforcement: Sequence[Enforcement], offences: Sequence[tuple[Prefix, Offender]]
) -> Iterable[str]:
    verbs = {"block": "blocked", "throttle": "throttled", "tarpit": "tarpitted"}
    for e in enforcement:
        origin = from_fleet(e.reason)
        by = " by hand" if e.manual else f" on the word of fleet host {origin}" if origin else ""
        yield f"{verbs[e.kind]}{by}{_part(ev, e.prefix)} since {_ago(ev, e.since)}, {_left(ev, e.until)}: {e.reason}"
    for p, o in offences:
        yield (
            f"offence record{_part(ev, p)}: {_n(o.offences, 'block')}, the last {_ago(ev, o.last)}; another within "
            f"{_dur(ev.limits.forget_after)} of the last blocks longer"
        )
    if ev.limits.gate_per_second:
        gate = ev.limits.gate_per_second
        yield f"wave gate: its new connections share {gate}/s with every sender not yet known to deliver"
    if ev.limits.budget_slots:
        yield (
            f"slot budget: its sessions share {ev.limits.budget_slots} of the MTA's slots with every sender not yet "
            "known to deliver here"
        )


def _advice(ev: Evidence, enforcement: Sequence[Enforcement]) -> list[Advice]:
    std = ev.standing
    if std.kind == ALLOWLISTED:
        entries = ", ".join(str(p) for p, _s in std.allow)
        return [
            Advice(
                ALLOWLISTED,
                f"nothing to fix on govern's side: {ev.source} is allowlisted ({entries}), and govern never limits, "
                "slows, blocks or cuts it; if its mail is refused, the MTA's log says why",
            )
        ]
    out: list[Advice] = []
    out += _now(ev, enforcement)
    seen = _sessions(ev)
    out += seen
    out += _figures(ev, behaviour=bool(seen))
    if not enforcement:
        out += _history(ev, behaviour=any(a.rule in _BEHAVIOUR for a in out))
    out += _proof_lost(ev)
    out += _on_probation(ev)
    gate = []
    if ev.limits.gate_per_second:
        gate.append(
            Advice(
                "wave-gate",
                f"the host is riding a flood: during this wave, new connections from senders not yet known to deliver "
                f"here share {ev.limits.gate_per_second}/s, so some of yours may be refused until it ends; retrying "
                "works",
            )
        )
    if ev.limits.budget_slots and ev.limits.mode is Mode.WAVE:
        # A proof revoked in this wave holds the source off for an hour, and one on probation until the flood or
        # its probation is over: a delivery meanwhile frees it of nothing.
        if ev.standing.probation is not None:
            freed = "once the flood is over" if math.isinf(ev.standing.probation) else "once the probation above ends"
        elif any(e.kind == "unproven" for e in ev.events):
            freed = "after the hour above, once a message of yours is accepted"
        else:
            freed = "once a message of yours is accepted"
        gate.append(
            Advice(
                "wave-budget",
                f"the host is riding a flood: during this wave, senders not yet known to deliver here share "
                f"{ev.limits.budget_slots} of its MTA's slots, so a connection of yours may be refused while they "
                f"are taken; retrying works, and {freed} your address is no longer held to it",
            )
        )
    if not out:
        out.append(Advice("nothing-wrong", "nothing wrong seen"))
    return out + gate


_BEHAVIOUR = frozenset({"silent-after-greeting", "talked-first", "silent-mid-dialogue", "dripping", "no-progress"})


def _now(ev: Evidence, enforcement: Sequence[Enforcement]) -> Iterable[Advice]:
    for e in enforcement:
        part = _part(ev, e.prefix)
        if e.kind == "block" and e.manual:
            reason = e.reason.removeprefix("manual: ")
            yield Advice("manual-block", f"an operator blocked you by hand{part}: {reason} ({_left(ev, e.until)})")
        elif e.kind == "block":
            text = f"you are blocked {_left(ev, e.until)}{part}, then it lapses by itself"
            yield Advice("blocked", f"{text}; govern's reason: {e.reason}")
        elif e.kind == "throttle":
            text = f"your new connections are rate-limited {_left(ev, e.until)}{part}"
            yield Advice("throttled", f"{text}; govern's reason: {e.reason}")
        else:
            text = f"our replies to you are slowed down {_left(ev, e.until)}{part}"
            yield Advice("tarpitted", f"{text}; govern's reason: {e.reason}")


def _sessions(ev: Evidence) -> list[Advice]:
    """What the sessions open now show, one line per kind of fault, worst case first."""
    after_ms = ev.limits.silent_after * 1000
    greet_ms = ev.limits.greet_floor * 1000
    greet, first, early, mid, drip = [], [], [], [], []
    for s in ev.sessions:
        if s.state != "ESTABLISHED" or not s.info or s.server_sent_ms < after_ms:
            continue
        if s.segs_out == 1 and s.server_sent_ms < greet_ms and not (ev.limits.pregreet_cut and s.segs_in):
            continue  # waiting out postscreen's pregreet test, as it was told
        if waiting(s) and not s.segs_in:
            greet.append(s)
        elif waiting(s) and s.segs_out == 1 and s.local_port not in IMPLICIT_TLS_PORTS:
            first.append(s)  # it spoke, but only before our one segment: the greeting
        elif s.segs_out == 1 and s.segs_in and s.local_port not in IMPLICIT_TLS_PORTS and not waiting(s):
            early.append(s)  # it spoke after our first line, and not one command of its was answered
        elif waiting(s):
            mid.append(s)
        elif s.segs_in >= s.segs_out + 2 and s.bytes_in < DRIP_BYTES * s.segs_in:
            drip.append(s)
    out = []

    def more(found: list[SessionInfo]) -> str:
        return f" ({len(found)} sessions like this)" if len(found) > 1 else ""

    if greet:
        wait = _dur(max(s.server_sent_ms for s in greet) / 1000)
        out.append(
            Advice(
                "silent-after-greeting",
                f"your client waits {wait} after our greeting before it says EHLO{more(greet)}: it should send EHLO as "
                "soon as it reads our 220 banner",
            )
        )
    if first:
        wait = _dur(max(s.server_sent_ms for s in first) / 1000)
        out.append(
            Advice(
                "talked-first",
                f"your client talks before our greeting and then says nothing for {wait}{more(first)}: it must wait "
                "for our 220 banner, then send EHLO",
            )
        )
    if early and not first:
        worst = max(early, key=lambda s: s.bytes_in)
        out.append(
            Advice(
                "talked-first",
                f"your client talks before our greeting is complete ({worst.bytes_in} bytes after its first line, "
                f'no command answered){more(early)}: it must wait for the last line of our 220 banner ("220" and a '
                "space), then send EHLO and a line end",
            )
        )
    if mid:
        wait = _dur(max(s.server_sent_ms for s in mid) / 1000)
        out.append(
            Advice(
                "silent-mid-dialogue",
                f"your client stops talking for {wait} in the middle of the SMTP dialogue, after our reply to its "
                f"last command{more(mid)}: it should send its next command, or QUIT, at once",
            )
        )
    if drip:
        worst = min(drip, key=lambda s: s.bytes_in / s.segs_in)
        out.append(
            Advice(
                "dripping",
                f"your client sends its commands a few bytes at a time ({worst.bytes_in} bytes in "
                f"{worst.segs_in} packets){more(drip)}: it should send each command line whole",
            )
        )
    return out


def _figures(ev: Evidence, *, behaviour: bool) -> Iterable[Advice]:
    """The last snapshot's figures against the limits in force, as decide compares them."""
    s, lim = ev.stats, ev.limits
    if s is None:
        return
    if s.held > lim.max_connections:
        yield Advice(
            "too-many-sessions",
            f"you held {s.held} sessions at once (limit {lim.max_connections}): open fewer sessions to us in parallel",
        )
    if s.new_per_minute > lim.max_new_per_minute:
        yield Advice(
            "too-many-new",
            f"you opened {s.new_per_minute} connections in the last minute (limit {lim.max_new_per_minute}): reuse "
            "connections (connection caching) or send fewer in parallel",
        )
    if s.idle and not behaviour:
        yield Advice(
            "no-progress",
            f"{_n(s.idle, 'session')} of yours made no progress for up to {_dur(s.max_idle_ms / 1000)}: your client "
            "should answer each of our replies at once, send whole command lines, and QUIT when done",
        )


def _proof_lost(ev: Evidence) -> Iterable[Advice]:
    """A proof revoked in a wave: said whatever else is in force (the cut that revoked it throttles the source)."""
    unproven = [e for e in ev.events if e.kind == "unproven"]
    if not unproven:
        return
    last = unproven[0]
    if last.reason == UNPROVEN_LOOP_REASON:
        yield Advice(
            "unproven",
            f"during a flood we accepted your commands and then your session kept us answering more of them with no "
            f"message until we ended it ({_ago(ev, last.at)}): your address lost, for an hour, the standing our "
            "answers gave it, so its connections wait with every sender we do not know; send your message within a "
            "few commands (pipeline MAIL, RCPT and DATA) and QUIT when done",
        )
        return
    yield Advice(
        "unproven",
        f"during a flood a message of yours was accepted and then your session was held open without a word "
        f"until we ended it ({_ago(ev, last.at)}): your address lost, for an hour, the standing a "
        "delivery gives, so its connections wait with every sender we do not know; QUIT when done, or send the "
        "next message at once",
    )


def _on_probation(ev: Evidence) -> Iterable[Advice]:
    """A proof on probation in a flood (govern.proving): what set it off is the sender's concurrency."""
    ends = ev.standing.probation
    if ends is None:
        return
    if math.isinf(ends):
        yield Advice(
            "probation",
            "while this host rides a flood, your server holds several sessions with it at once, as the flood's bots "
            "do once one of their messages is accepted: until the flood is over your connections wait with every "
            "sender we do not know, whatever you deliver meanwhile; deliver over one connection at a time while a "
            "destination is slow to answer (Postfix: smtp_destination_concurrency_limit; Exim: "
            "remote_max_parallel), or ask us to allowlist your address",
        )
        return
    yield Advice(
        "probation",
        "during a flood your server opened several connections to us at once, as the flood's bots do: the "
        f"standing your delivery gave your address waits ({_left(ev, ends)}) before it counts; open one connection "
        "at a time while a destination is slow to answer",
    )


def _history(ev: Evidence, *, behaviour: bool) -> Iterable[Advice]:
    """What govern did earlier, when nothing in force now explains the call."""
    cuts = [e for e in ev.events if e.kind == "cut"]
    if cuts and not behaviour:
        yield Advice(
            "cut",
            f"we ended sessions of yours that made no progress {_n(len(cuts), 'time')}, the last "
            f"{_ago(ev, cuts[0].at)} ({cuts[0].reason}): your client should answer each of our replies at once and "
            "QUIT when done rather than hold a session open",
        )
    shed = [e for e in ev.events if e.kind == "shed"]
    if shed:
        # The shedding's reason says which question the socket was asked (govern.core.decide.shed, looping).
        said = shed[0].reason
        if said.startswith("its session looping"):
            did = "that kept us answering commands, or waiting, with no message"
            need = "filled our MTA's budget: send your message within a few commands (pipeline MAIL, RCPT and DATA)"
            need += " and QUIT when done"
        else:
            did = "that had not got past our greeting"
            need = "held more than our MTA's budget: answer our greeting at once, and open one connection at a time"
            if "looping" in said:
                did += ", or that kept us answering commands with no message"
                need += ", and send your message within a few commands"
        yield Advice(
            "shed",
            f"during a flood we ended connections of yours {did} {_n(len(shed), 'time')}, the last "
            f"{_ago(ev, shed[0].at)} ({said}), while senders we did not know {need}",
        )
    verbs = {"block": "blocked", "extend": "blocked", "throttle": "rate-limited", "tarpit": "slowed down"}
    last = next((e for e in ev.events if e.kind in verbs), None)
    if last is None:
        return
    if last.reason.startswith("manual: "):
        text = f"an operator blocked you by hand {_ago(ev, last.at)}: {last.reason.removeprefix('manual: ')}"
    else:
        text = f"you were {verbs[last.kind]} {_ago(ev, last.at)}; govern's reason: {last.reason}"
    yield Advice("before", f"{text}; that has lapsed")


# -- text for the command line ------------------------------------------------------------------------------------


def render(doc: Mapping[str, Any]) -> str:
    """`govern why` as text, from the JSON reply."""
    head = doc["source"] if doc["asked"] == doc["source"] else f"{doc['asked']} (source {doc['source']})"
    lines = [f"why {head}: {doc['standing']['kind']}, host in {doc['mode']} mode"]
    lines += [f"  {f}" for f in doc["facts"]]
    if doc["sessions"]:
        lines += ["", "sessions now:", *_table(doc["sessions"])]
    lines += ["", "actions:"] + [f"  {a}" for a in doc["actions"] or ["none in force"]]
    lines += ["", "recent events:"] + [f"  {h}" for h in doc["history"] or ["none recorded"]]
    lines += ["", "what the sender must fix:"] + [f"  - {a['text']}" for a in doc["advice"]]
    return "\n".join(lines)


def _table(sessions: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = [("client", "port", "state", "we sent", "it sent", "segs in/out", "bytes in/out", "waiting on it")]
    for s in sessions:
        client = f"[{s['remote']}]:{s['remote_port']}" if ":" in s["remote"] else f"{s['remote']}:{s['remote_port']}"
        if s["info"]:
            ours = f"{_dur(s['server_sent_ms'] / 1000)} ago" if s["segs_out"] else "never"
            theirs = f"{_dur(s['client_sent_ms'] / 1000)} ago" if s["segs_in"] else "never"
            segs, nbytes = f"{s['segs_in']}/{s['segs_out']}", f"{s['bytes_in']}/{s['bytes_out']}"
        else:
            ours = theirs = segs = nbytes = "-"
        wait = "yes" if s["waiting"] else "no"
        rows.append((client, str(s["local_port"]), s["state"], ours, theirs, segs, nbytes, wait))
    widths = [max(map(len, column)) for column in zip(*rows, strict=True)]
    left = {0, 2, 7}  # text columns; figures are right-aligned

    def line(row: tuple[str, ...]) -> str:
        cells = (c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        return ("  " + "  ".join(cells)).rstrip()

    return [line(r) for r in rows]
