"""What the daemon tells its operator: `govern status` (also what `govern top` draws), `govern list`, the allowlist
with where each entry comes from, the mode's report, the evidence `govern why` judges by (govern.why explains it),
and the view an exporter applies its guardrails to. Each reads a Governor and changes nothing."""

from __future__ import annotations

import os
from collections import Counter
from typing import TYPE_CHECKING, Any

from govern import protocol, why
from govern.addr import Prefix, PrefixSet, group_key
from govern.allow.entries import AllowEntry, by_prefix
from govern.core.decide import most_prolific
from govern.core.fleet import from_fleet
from govern.core.shedding import strangers_holding
from govern.errors import GovernError
from govern.model import Block, SessionInfo, State, holding

if TYPE_CHECKING:
    from govern.daemon import Governor

WHY_EVENTS = 20  # the latest events `govern why` shows of a source
# What a block's reason says it is for, by the words govern.core writes it with (decide, aggregate); the first that
# matches names it. The reasons themselves carry the source's figures, so they do not group as they are.
_BLOCK_REASONS = (
    ("wave: among the", "wave: most prolific"),
    ("cut ", "cut again in a wave"),
    (" sources of ", "aggregated prefix"),
    ("still hammering", "extended: still hammering"),
    ("still over after throttling", "over limits after throttling"),
)


def mode_report(gov: Governor) -> dict[str, Any]:
    m = gov.state.mode
    now = gov.clock()
    return {
        "mode": m.mode.value,
        "since": m.since,
        "until": m.until,
        "ends_in": round(m.until - now, 1) if m.until else None,
        "reason": m.reason,
        "manual": m.manual,
        "auto": gov.policy.modes.auto,
        "no_auto_wave_until": m.quiet_until if m.quiet_until > now else None,
    }


def why_evidence(gov: Governor, asked: Prefix, source: Prefix) -> why.Evidence:
    """Gather what `govern why` judges by: the kernel's sessions now (one sock_diag dump), the last snapshot,
    the state's entries and the store's events."""
    now = gov.clock()
    sessions: tuple[SessionInfo, ...] = ()
    error = ""
    try:
        sessions = tuple(gov.sockets.sessions(source, gov.policy.ports))
    except GovernError as exc:
        error = str(exc)
    standing = why_standing(gov, source)
    cfg = gov.config
    nft = not gov.dry_run and cfg["backend"]["firewall"] == "nftables"
    gate = cfg["wave"]["gate_rate_per_second"] if nft else 0
    slots = gov.mta.budget.slots if nft and gov.mta.budget is not None else 0
    return why.Evidence(
        asked=asked,
        source=source,
        now=now,
        standing=standing,
        limits=why.in_force(gov.policy, gov.state.mode.mode, standing, gate, slots),
        stats=gov.snapshot.sources.get(source) if gov.snapshot is not None else None,
        sessions=sessions,
        sessions_error=error,
        state=gov.state,
        events=tuple(gov.store.events_about(why.covering(asked), WHY_EVENTS)),
        dry_run=gov.dry_run,
    )


def why_standing(gov: Governor, source: Prefix) -> why.Standing:
    """Allowlisted (by which entries, from where), trusted (learned, through the trust edge), or a stranger."""
    if gov.policy.allow.intersects(source):
        # Where each entry comes from (files, hostnames, SPF, the config); `govern allow` keeps its own.
        named = by_prefix(gov.allow.entries()) if gov.allow is not None else {}
        added = ("govern allow",)
        entries = tuple(
            (m, named.get(m, ()) + (added if m in gov.extra_allow else ()))
            for m in gov.policy.allow
            if m.overlaps(source)
        )
        return why.Standing(why.ALLOWLISTED, entries)
    probation = gov.proving.probation(source)
    if source in gov.trusted():
        until = gov.trust.until(source) if gov.trust is not None else None
        return why.Standing(why.TRUSTED, trusted_until=until, probation=probation)
    return why.Standing(why.STRANGER, probation=probation)


def block_reason(b: Block) -> str:
    """The kind of reason a block has, for counting blocks by reason."""
    if b.manual:
        return "operator"
    if from_fleet(b.reason):
        return "fleet"
    return next((kind for words, kind in _BLOCK_REASONS if words in b.reason), "other")


def entries(state: State) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for b in sorted(state.blocks.values(), key=lambda b: b.since):
        out.append(
            {
                "kind": "block",
                "prefix": str(b.prefix),
                "reason": b.reason,
                "since": b.since,
                "until": b.until,
                "offences": b.offences,
                "manual": b.manual,
                "from": from_fleet(b.reason) or "",  # the fleet host that decided it; "" for this host's own
            }
        )
    for t in sorted(state.throttles.values(), key=lambda t: t.since):
        out.append(
            {"kind": "throttle", "prefix": str(t.prefix), "reason": t.reason, "since": t.since, "until": t.until}
        )
    return out


def export_view(gov: Governor) -> dict[str, Any]:
    """The blocks, allowlist and own addresses an exporter applies its guardrails to (govern.export.view)."""
    from govern.export import local, view

    try:
        every, public = local.host_addresses()
    except GovernError as exc:
        return protocol.failed(str(exc))
    return view.reply(gov.state.blocks.values(), gov.policy.allow, every, public, gov.clock())


def status(gov: Governor, top: int = 10) -> dict[str, Any]:
    snap = gov.snapshot
    sources = snap.sources if snap else {}
    ranked = most_prolific(sources, top)
    traffic = _bytes(gov, [p for p, _ in ranked])

    def standing(p: Prefix) -> str:
        if gov.policy.allow.intersects(p):
            return "allowlisted"
        if p in gov.state.blocks:
            return "blocked"
        return "throttled" if p in gov.state.throttles else ""

    return {
        "mode": gov.state.mode.mode.value,
        "mode_detail": mode_report(gov),
        "pid": os.getpid(),
        "dry_run": gov.dry_run,
        "backend": gov.enforcer.name,
        "config": gov.config.path or "embedded defaults",
        "uptime": round(gov.clock() - gov.started, 1),
        "ticks": gov.ticks,
        "last_tick_ms": round(gov.last_tick_ms, 2),
        "last_tick_phases_ms": {k: round(v * 1000, 2) for k, v in gov.phases.last.items()},
        "sources": len(sources),
        "sockets": sum(s.held for s in holding(sources).values()),
        "top": [
            {"source": str(p), **s._asdict(), **traffic.get(p, _NO_BYTES), "standing": standing(p)} for p, s in ranked
        ],
        "blocks": len(gov.state.blocks),
        "blocks_by_reason": dict(Counter(block_reason(b) for b in gov.state.blocks.values())),
        "throttles": len(gov.state.throttles),
        "tarpits": len(gov.state.tarpits),
        "budget": gov.mta.budget.to_dict() if gov.mta.budget else {},
        "slots": _slots(gov),
        "postscreen": gov.mta.postscreen,
        "postscreen_greet_action": gov.mta.greet_action,
        "pregreet_cut": gov.policy.pregreet_cut,
        "tarpit": gov.tarpit_unsupported or f"ready ({gov.tarpit.name if gov.tarpit else '-'})",
        "scanner": gov.sockets.scanner,
        # Calm ticks reuse the last walk of the sessions (`daemon.calm_scan_every`): how old the counts above are.
        "sockets_walked_ago": _walked_ago(gov),
        "counts_read_ago": _ago(gov, gov.observer.counted_at),
        "calm_scan_every": gov.config["daemon"]["calm_scan_every"],
        "unavailable": dict(gov.enforcer.unavailable()),
        "allowlist": len(gov.policy.allow),
        "allowlist_sources": gov.allow.status() if gov.allow is not None else [],
        "trust": (
            {
                **gov.trust.status(),
                "postfix_log_basis": gov.mta.log_basis,
                "from_sessions": gov.config["trust"]["from_sessions"],
                "withheld": gov.proving.withheld,
            }
            if gov.trust is not None
            else {}
        ),
        "ended_sessions": gov.ended_sessions,
        "cut_sessions": gov.cut_sessions,
        "proof_revoked": gov.proving.revoked,
        "conntrack_forgotten": gov.forgotten_conntrack,
        # Not the inode: the tick's scan (the BPF iterator) does not read it, and it says nothing to an operator.
        "listeners": [
            {
                "address": ls.address,
                "port": ls.port,
                "queued": ls.queued,
                "backlog": ls.backlog,
                "fill": round(ls.queued / ls.backlog, 3) if ls.backlog else 0.0,
            }
            for ls in (snap.listeners if snap else ())
        ],
        "counters_last_tick": dict(snap.counters) if snap else {},
        "counters_since_start": dict(gov.totals),
        "sysctl_profiles": gov.sysctl.profiles() if gov.sysctl else [],
        "failures": dict(gov.health.failures),
        "last_errors": dict(gov.health.last_error),
        "store": _store_report(gov),
        "metrics": dict(gov.metrics),
        "fleet": gov.fleet_status(),
        "recent": _recent(gov),
    }


_NO_BYTES = {"bytes_in": 0, "bytes_out": 0}


def _walked_ago(gov: Governor) -> float | None:
    return _ago(gov, gov.observer.scanned_at)


def _ago(gov: Governor, at: float | None) -> float | None:
    return None if at is None else round(max(gov.clock() - at, 0.0), 1)


def _bytes(gov: Governor, shown: list[Prefix]) -> dict[Prefix, dict[str, int]]:
    """What the shown sources sent and were sent over the sessions they hold now (tcp_info's bytes received and
    acked). The tick's scan does not sum bytes (it is the hot path); one dump for all shown sources at once does."""
    if not shown:
        return {}
    try:
        sessions = gov.sockets.sessions(PrefixSet(shown), gov.policy.ports)
    except GovernError:  # the figures are missing, not the status (the tick's own scan reports sock_diag's failures)
        return {}
    out: dict[Prefix, dict[str, int]] = {}
    for s in sessions:
        row = out.setdefault(group_key(Prefix.parse(s.remote), gov.policy.v4_len, gov.policy.v6_len), dict(_NO_BYTES))
        row["bytes_in"] += s.bytes_in
        row["bytes_out"] += s.bytes_out
    return out


def _slots(gov: Governor) -> dict[str, int]:
    """The MTA's slots as the slot budget counts them: established sessions, those held by strangers (neither
    allowlisted nor trusted), which the budget caps in a wave (`budget.slots`), and, where the budget is in force,
    the connections holding one of its slots (`in_budget`: the kernel's count, which leaves out what strangers
    opened before the wave)."""
    snap = gov.snapshot
    if snap is None:
        return {"established": 0, "strangers": 0}
    held = holding(snap.sources)
    strangers = sum(s.established for _p, s in strangers_holding(snap, gov.policy))
    out = {"established": sum(s.established for s in held.values()), "strangers": strangers}
    if snap.slotted is not None:
        out["in_budget"] = snap.slotted
    return out


def allowlist(gov: Governor) -> list[dict[str, Any]]:
    """Every allowlisted prefix with where it comes from: the config's `allow.cidrs`, its files (with the line),
    hostnames and SPF domains, and `govern allow` (the store's additions)."""
    if gov.allow is not None:
        named = by_prefix(gov.allow.entries())
    else:  # the config's allowlist as read at load
        cfg = gov.config
        named = by_prefix([AllowEntry(p, "allow.cidrs") for p in cfg["allow"]["cidrs"]])
        for p in cfg.allow_from_files:
            named[p] = (*named.get(p, ()), "allow.files")
    rows = {p: list(s) for p, s in named.items()}
    for p in gov.extra_allow:
        rows.setdefault(p, []).append("govern allow")
    return [{"kind": "allow", "prefix": str(p), "sources": rows[p]} for p in sorted(rows)]


def _store_report(gov: Governor) -> dict[str, Any]:
    """Whether the state store holds what govern enforces; while it cannot be written, since when and why."""
    if gov.store_behind is None:
        return {"state": "ok"}
    return {"state": "behind", "since": gov.store_behind, "error": gov.health.last_error.get("store", "")}


def _recent(gov: Governor) -> list[dict[str, Any]]:
    try:
        return [e.__dict__ for e in gov.store.events(10)]
    except GovernError as exc:  # a store that cannot be read must not take the status with it
        gov.health.fail("store", exc)
        return []
