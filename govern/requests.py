"""What the daemon does with each operator request from the control socket: checked whole (govern.protocol)
before anything acts, decided by the core (manual block and unblock, the wave's switch, the allowlist's release),
carried out through the Governor's execute, and answered with a reply of govern.protocol's shapes."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from govern import protocol, reports, why
from govern.config import too_wide_to_allow
from govern.core.decide import manual_block, manual_unblock, release_allowlisted
from govern.core.modes import wave_off, wave_on
from govern.core.shedding import strangers_holding
from govern.durations import format_duration
from govern.errors import RefusedError, StoreError, UsageError
from govern.model import Mode, Plan

if TYPE_CHECKING:
    from govern.daemon import Governor

log = logging.getLogger("govern")


def handle(gov: Governor, body: Mapping[str, Any]) -> dict[str, Any]:
    """One request from the control socket, as JSON: checked whole (govern.protocol) before anything acts."""
    try:
        req = protocol.parse(body)
        match req:
            case protocol.Ping():
                return protocol.ok(pid=os.getpid())
            case protocol.Status(top=top):
                return protocol.ok(status=reports.status(gov, top))
            case protocol.ListBlocks():
                return protocol.ok(entries=reports.entries(gov.state))
            case protocol.Block():
                return _block(gov, req)
            case protocol.Unblock():
                return _done(gov, manual_unblock(req.source, gov.state), f"unblocked {req.source}{_shared(gov)}")
            case protocol.Allow():
                return _allow(gov, req)
            case protocol.Wave():
                return _wave(gov, req)
            case protocol.Export():
                return reports.export_view(gov)
            case protocol.Allowlist():
                return protocol.ok(entries=reports.allowlist(gov))
            case protocol.Why(addr=addr):
                return _why(gov, addr)
            case protocol.Teardown():
                raise UsageError("teardown is the main loop's: it stops the daemon")
    except (UsageError, RefusedError) as exc:
        return protocol.refused(str(exc))
    except StoreError as exc:  # an operator's decision the store cannot record: nothing was changed
        return protocol.failed(str(exc))


def _block(gov: Governor, req: protocol.Block) -> dict[str, Any]:
    dur = req.seconds or gov.policy.block_duration
    reason = req.reason or "blocked by the operator"
    plan = manual_block(req.source, gov.state, gov.policy, gov.clock(), dur, reason)
    return _done(gov, plan, f"blocked {req.source} for {req.duration or 'the default duration'}{_shared(gov)}")


def _shared(gov: Governor) -> str:
    """What an operator's block or unblock tells of the fleet: the other hosts follow it."""
    if gov.fleet is None or gov.dry_run or "blocks" not in gov.config["fleet"]["share"]:
        return ""
    return f"; shared with the fleet as {gov.fleet.name}"


def _allow(gov: Governor, req: protocol.Allow) -> dict[str, Any]:
    p = req.source
    now = gov.clock()
    if req.remove:
        if not gov.store.disallow(p):
            if p in gov.config.allowlist():
                raise RefusedError(f"{p} is allowlisted by the config file; remove it there and reload")
            raise RefusedError(f"{p} is not on the allowlist added with 'govern allow'")
        message = f"{p} is no longer allowlisted"
    else:
        if p.length == 0:
            raise RefusedError(f"{p} would allow every address, --force or not")
        why = too_wide_to_allow(p, gov.config["guard"])
        if why and not req.force:
            raise RefusedError(f"{why}; add --force if you mean it")
        gov.store.allow(p, now, req.note)  # a dry run's store refuses, naming the config instead
        message = f"{p} is allowlisted"
    gov.extra_allow = gov.store.allowed()
    gov.policy = gov.make_policy()
    gov.enforcer.set_allow(gov.policy.allow.members())
    released = release_allowlisted(gov.state, gov.policy)
    if not gov.execute(released, now):
        return protocol.failed("the kernel refused to lift blocks: " + gov.last_act_error())
    if released:
        message += f"; lifted {len(released.actions)} block(s)/throttle(s)"
    return protocol.ok(message=message)


def _wave(gov: Governor, req: protocol.Wave) -> dict[str, Any]:
    now = gov.clock()
    action = req.action
    cur = gov.state.mode
    if action == "status":
        return protocol.ok(mode=reports.mode_report(gov))
    if action == "on":
        dur = req.seconds or gov.policy.modes.wave_duration
        new = wave_on(cur, gov.policy.modes, now, dur)
        message = f"wave on for {format_duration(dur)}"
    else:  # "off": the protocol admits no other action
        if cur.mode is Mode.NORMAL:
            raise RefusedError("no wave or elevated mode to switch off: the host is in normal mode")
        new = wave_off(cur, gov.policy.modes, now)
        message = f"wave off; no automatic wave for {format_duration(gov.policy.modes.calm_for)}"
    # A wave the operator starts names the strangers holding sessions now (of the last snapshot), as one that
    # starts on its own does: shedding takes theirs first while the kernel has not counted them (decide.shed).
    # Asked during a wave, the same wave goes on (wave_on), with the holders it had.
    holders = None
    if action == "on" and cur.mode is not Mode.WAVE and gov.snapshot is not None:
        holders = frozenset(p for p, _s in strangers_holding(gov.snapshot, gov.policy))
    if not gov.execute(Plan(mode=new, holders=holders), now, durable=True):
        return protocol.failed("could not record the mode: " + gov.last_act_error())
    if gov.dry_run:
        return protocol.ok(message=f"dry run: {message}")
    return protocol.ok(message=message, mode=reports.mode_report(gov))


def _done(gov: Governor, plan: Plan, message: str) -> dict[str, Any]:
    if not gov.execute(plan, gov.clock(), durable=True):
        return protocol.failed("the kernel refused: " + gov.last_act_error())
    if gov.dry_run:
        return protocol.ok(message=f"dry run: would have {message}")
    return protocol.ok(message=message, actions=[a.describe() for a in plan.actions])


def _why(gov: Governor, addr: str) -> dict[str, Any]:
    """What govern saw of one source and why it acted. A failure while explaining is an error reply, never the
    end of the daemon protecting the MX."""
    asked, source = why.subject(addr, gov.policy.v4_len, gov.policy.v6_len)
    try:
        return protocol.ok(why=why.explain(reports.why_evidence(gov, asked, source)).to_dict())
    except Exception as exc:
        log.exception("why %s failed", asked)
        gov.health.fail("why", exc)
        return protocol.failed(f"could not explain {asked}: {exc}")
