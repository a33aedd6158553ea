"""What the daemon tells its operator: `govern status`, `govern list`, the mode's report, the evidence `govern why`
judges by (govern.why explains it), and the view an exporter applies its guardrails to. Each reads a Governor and
changes nothing."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from govern import protocol, why
from govern.addr import Prefix
from govern.allow.entries import by_prefix
from govern.core.decide import most_prolific
from govern.errors import GovernError
from govern.model import SessionInfo, State

if TYPE_CHECKING:
    from govern.daemon import Governor

WHY_EVENTS = 20  # the latest events `govern why` shows of a source


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
    slots = gov.budget.slots if nft and gov.budget is not None else 0
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
    if source in gov.trusted():
        return why.Standing(why.TRUSTED, trusted_until=gov.trust.until(source) if gov.trust is not None else None)
    return why.Standing(why.STRANGER)


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
        "sources": len(sources),
        "sockets": sum(s.held for s in sources.values()),
        "top": [{"source": str(p), **s._asdict(), "standing": standing(p)} for p, s in ranked],
        "blocks": len(gov.state.blocks),
        "throttles": len(gov.state.throttles),
        "tarpits": len(gov.state.tarpits),
        "budget": gov.budget.to_dict() if gov.budget else {},
        "postscreen": gov.postscreen,
        "tarpit": gov.tarpit_unsupported or f"ready ({gov.tarpit.name if gov.tarpit else '-'})",
        "allowlist": len(gov.policy.allow),
        "allowlist_sources": gov.allow.status() if gov.allow is not None else [],
        "trust": gov.trust.status() if gov.trust is not None else {},
        "ended_sessions": gov.ended_sessions,
        "cut_sessions": gov.cut_sessions,
        "conntrack_forgotten": gov.forgotten_conntrack,
        "listeners": [
            {**ls._asdict(), "fill": round(ls.queued / ls.backlog, 3) if ls.backlog else 0.0}
            for ls in (snap.listeners if snap else ())
        ],
        "counters_last_tick": dict(snap.counters) if snap else {},
        "counters_since_start": dict(gov.totals),
        "sysctl_profiles": gov.sysctl.profiles() if gov.sysctl else [],
        "failures": dict(gov.health.failures),
        "last_errors": dict(gov.health.last_error),
        "store": _store_report(gov),
        "metrics": dict(gov.metrics),
        "recent": _recent(gov),
    }


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
