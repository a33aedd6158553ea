"""What a host makes of the blocks, unblocks and learned trust other hosts of its fleet decided (docs/fleet.md): for
blocks, the same rules as every block of its own (govern.core.guard, the allowlist), then blocks that never overlap
what the kernel already holds; for an operator's unblock, the blocks of that prefix decided before it; for trust, only
source groups as this host counts them.

Pure: the daemon hands in the verified decisions, the state, the policy and the time."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from govern.addr import Prefix
from govern.core.decide import _allow_reason, _covering, _lengths, guarded, prior_offences
from govern.core.policy import Policy
from govern.model import Action, ActionKind, Block, Plan, State

FLEET_PREFIX = "fleet:"  # a block applied from the fleet: "fleet:ORIGIN: REASON"


class Remote(NamedTuple):
    """A block (or learned trust) another host decided, as the core sees it."""

    prefix: Prefix
    reason: str
    until: float
    offences: int
    origin: str
    at: float = 0.0  # when the deciding host published it (its clock)


class Refusal(NamedTuple):
    decision: Remote
    why: str


def fleet_reason(origin: str, reason: str) -> str:
    return f"{FLEET_PREFIX}{origin}: {reason}"


def from_fleet(reason: str) -> str | None:
    """The host a block's reason says it came from, or None for a block of this host's own."""
    if not reason.startswith(FLEET_PREFIX):
        return None
    origin, sep, _ = reason[len(FLEET_PREFIX) :].partition(": ")
    return origin if sep else None


def fleet_blocks(
    remote: Iterable[Remote], state: State, policy: Policy, now: float
) -> tuple[Plan, tuple[Refusal, ...]]:
    """The plan that applies other hosts' blocks here, and the ones refused with why.

    Refused: a prefix covering an allowlisted address, this host or loopback, or wider than `[guard]` allows (the
    host's own rules always win). Nothing to do: a block already held as long here, or lapsed. A prefix wider than
    blocks held here replaces them in the same transaction (lasting as long as the longest), as `govern block` does;
    one inside a wider block held here is left to it."""
    blocks = dict(state.blocks)
    actions: list[Action] = []
    refused: list[Refusal] = []
    # Widest first: a narrower block of the same batch then finds the wider one and is left to it.
    for r in sorted(remote, key=lambda r: (r.prefix.version, r.prefix.length, r.prefix.value)):
        if r.until <= now:
            continue
        why = _allow_reason(r.prefix, policy) or guarded(r.prefix, policy)
        if why:
            refused.append(Refusal(r, why))
            continue
        cover = _covering(blocks, _lengths(blocks), r.prefix)
        if cover is not None and (cover.prefix != r.prefix or cover.until >= r.until):
            continue
        inside = [p for p in blocks if p != r.prefix and r.prefix.contains(p)]
        until = max([r.until] + [blocks[p].until for p in inside])
        reason = fleet_reason(r.origin, r.reason)
        for p in inside:
            actions.append(Action(ActionKind.UNBLOCK, p, f"replaced by the fleet's block of {r.prefix}"))
            del blocks[p]
        actions += [
            Action(ActionKind.UNTHROTTLE, t, f"blocked as part of {r.prefix}")
            for t in state.throttles
            if t != r.prefix and r.prefix.contains(t)
        ]
        offences = max(r.offences, prior_offences(state, r.prefix, policy, now))
        kind = ActionKind.EXTEND if cover is not None else ActionKind.BLOCK
        actions.append(Action(kind, r.prefix, reason, until=until, offences=offences))
        blocks[r.prefix] = Block(r.prefix, reason, now, until, offences)
    return Plan(tuple(actions)), tuple(refused)


def fleet_trust(remote: Iterable[Remote], policy: Policy, now: float) -> tuple[tuple[Remote, ...], tuple[Refusal, ...]]:
    """Of other hosts' learned trust, what this host takes in, and what it refuses with why: trust is learned per
    source group (`protect.ipv4_prefix` / `ipv6_prefix`), so anything wider or narrower is refused (a wide "trust"
    would soften the limits of a whole network); this host's own addresses and loopback are never sources."""
    taken: list[Remote] = []
    refused: list[Refusal] = []
    for r in remote:
        if r.until <= now:
            continue
        group = policy.v4_len if r.prefix.version == 4 else policy.v6_len
        why = guarded(r.prefix, policy)
        if r.prefix.length != group:
            why = f"{r.prefix} is not a source group (/{group}): trust is learned per source group"
        if why:
            refused.append(Refusal(r, why))
        else:
            taken.append(r)
    return tuple(taken), tuple(refused)


def superseded(blocks: Iterable[Remote], unblocks: Iterable[Remote]) -> list[Remote]:
    """Of one batch's blocks, those no unblock of the same prefix published later in the batch lifts: a host that
    comes back reads both at once, and only the last word on a prefix counts."""
    last_unblock: dict[Prefix, float] = {}
    for u in unblocks:
        last_unblock[u.prefix] = max(u.at, last_unblock.get(u.prefix, u.at))
    return [b for b in blocks if b.at > last_unblock.get(b.prefix, -1.0)]


def fleet_unblocks(unblocks: Iterable[Remote], state: State) -> Plan:
    """The plan that carries out other hosts' operator unblocks here: the block and throttle of exactly that prefix
    go if they began before the unblock was published (this host's own or the fleet's alike: the operator's word on a
    source is the fleet's); one decided after it is a new judgement, and stays."""
    actions: list[Action] = []
    done: set[tuple[ActionKind, Prefix]] = set()
    for u in unblocks:
        reason = fleet_reason(u.origin, u.reason)
        block = state.blocks.get(u.prefix)
        if block is not None and block.since <= u.at and (ActionKind.UNBLOCK, u.prefix) not in done:
            actions.append(Action(ActionKind.UNBLOCK, u.prefix, reason))
            done.add((ActionKind.UNBLOCK, u.prefix))
        throttle = state.throttles.get(u.prefix)
        if throttle is not None and throttle.since <= u.at and (ActionKind.UNTHROTTLE, u.prefix) not in done:
            actions.append(Action(ActionKind.UNTHROTTLE, u.prefix, reason))
            done.add((ActionKind.UNTHROTTLE, u.prefix))
    return Plan(tuple(actions))
