"""Prefix aggregation: when many sources of one /24 (IPv6 /48) are blocked, block the prefix instead. Pure.

A botnet rented from one hosting range shows up as dozens of addresses of one /24; blocking them one by one lets
every new address of the range in until it too misbehaves. The aggregate never covers an allowlisted address:
the prefix is split around it into the largest prefixes that leave it out. An aggregate the guard refuses (this
host's, or wider than `[guard]` allows: govern.core.guard) is not made, and its members stay blocked one by one.
An aggregate replaces the blocks and throttles it covers in the same plan (the kernel's interval sets must never
hold overlapping elements). Prefixes holding an operator's manual block are left to the operator, and a prefix
already aggregated is not redone.
"""

from __future__ import annotations

from collections import defaultdict

from govern.addr import Prefix
from govern.core.guard import refusal
from govern.core.policy import Policy
from govern.durations import format_duration
from govern.model import Action, ActionKind, State


def aggregate(actions: list[Action], state: State, policy: Policy, now: float) -> list[Action]:
    """`actions` with the blocks of crowded prefixes replaced by blocks of the prefixes (split around allowlisted
    addresses)."""
    source_len = {4: policy.v4_len, 6: policy.v6_len}
    # The blocks once this plan is applied: the state's, minus releases, plus new blocks.
    blocks = {p: (b.until, b.offences, b.manual) for p, b in state.blocks.items()}
    for a in actions:
        if a.kind is ActionKind.UNBLOCK:
            blocks.pop(a.prefix, None)
        elif a.kind in (ActionKind.BLOCK, ActionKind.EXTEND):
            blocks[a.prefix] = (a.until, a.offences, a.manual)
    crowds: dict[Prefix, list[Prefix]] = defaultdict(list)
    done: set[Prefix] = set()  # aggregate prefixes that hold a manual block or an earlier aggregate
    for p, (_until, _off, manual) in blocks.items():
        rule = policy.aggregate.get(p.version)
        if rule is None or p.length <= rule[0]:
            continue
        outer = _outer(p, rule[0])
        if manual or p.length < source_len[p.version]:
            done.add(outer)
        else:
            crowds[outer].append(p)
    new = {a.prefix for a in actions if a.kind is ActionKind.BLOCK}
    out = list(actions)
    for outer, members in crowds.items():
        if outer in done or len(members) < policy.aggregate[outer.version][1] or not new.intersection(members):
            continue
        pieces = split_around(outer, policy.allow.members())
        if not pieces or any(refusal(piece, policy.widest, policy.own) for piece in pieces):
            continue
        covered = set(members)
        until = max(blocks[m][0] for m in members)
        offences = max(blocks[m][1] for m in members)
        why = f"{len(members)} sources of {outer} blocked" + (
            f" (split around allowlisted addresses into {len(pieces)} prefixes)" if pieces != [outer] else ""
        )
        out = [a for a in out if not (a.kind in (ActionKind.BLOCK, ActionKind.EXTEND) and a.prefix in covered)]
        out += [Action(ActionKind.UNBLOCK, m, f"aggregated into {outer}") for m in sorted(covered) if m in state.blocks]
        out += [
            Action(ActionKind.UNTHROTTLE, t, f"aggregated into {outer}")
            for t in sorted(state.throttles)
            if outer.contains(t) and t not in {a.prefix for a in out if a.kind is ActionKind.UNTHROTTLE}
        ]
        out += [
            Action(
                ActionKind.BLOCK, piece, f"{why}; for {format_duration(until - now)}", until=until, offences=offences
            )
            for piece in pieces
        ]
    return out


def split_around(outer: Prefix, allow: tuple[Prefix, ...]) -> list[Prefix]:
    """The largest prefixes that together cover `outer` minus every allowlisted address in it ([] if all are)."""
    pieces = [outer]
    for a in allow:
        if a.contains(outer):
            return []
        if not outer.contains(a):
            continue
        nxt: list[Prefix] = []
        for piece in pieces:
            if piece.contains(a):
                nxt.extend(_exclude(piece, a))
            elif not a.contains(piece):
                nxt.append(piece)
        pieces = nxt
    return sorted(pieces)


def _exclude(piece: Prefix, hole: Prefix) -> list[Prefix]:
    """`piece` minus `hole` (which lies inside it), as the halves down the path to `hole`."""
    out = []
    cur = piece
    while cur.length < hole.length:
        half = cur.length + 1
        shift = cur.bits - half
        left = Prefix(cur.version, cur.value, half)
        right = Prefix(cur.version, cur.value | (1 << shift), half)
        if left.contains(hole):
            out.append(right)
            cur = left
        else:
            out.append(left)
            cur = right
    return out


def _outer(p: Prefix, length: int) -> Prefix:
    shift = p.bits - length
    return Prefix(p.version, (p.value >> shift) << shift, length)
