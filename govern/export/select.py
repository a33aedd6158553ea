"""The guardrails of the export: which blocks may leave the host for the ISP, and why the others may not. Pure.

An ISP drops what it is handed for every customer behind it, so a mistake here costs more than a mistake in the
local firewall: a partner's address, our own, or a /8 must never go out, whatever the blocks hold. Blocks that
lapsed, or that are too young and too rare to be more than a one-off, stay local. Adjacent prefixes are merged
into their common prefix (never wider than the cap), and the set is capped, the worst offenders first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from govern.addr import Prefix, PrefixSet
from govern.core.aggregate import split_around
from govern.durations import format_duration
from govern.model import Block


@dataclass(frozen=True, slots=True)
class ExportPolicy:
    """The `[export]` guardrails in the units the selection computes with."""

    max_entries: int = 1000
    min_len: Mapping[int, int] | None = None  # version -> the shortest prefix length exported
    min_age: float = 300.0
    min_offences: int = 2
    aggregate: bool = True
    local: tuple[Prefix, ...] = ()  # configured local prefixes (the kernel's own addresses are added by callers)

    def shortest(self, version: int) -> int:
        return (self.min_len or {4: 16, 6: 32})[version]

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> ExportPolicy:
        return cls(
            max_entries=section["max_entries"],
            min_len={4: section["min_ipv4_prefix"], 6: section["min_ipv6_prefix"]},
            min_age=section["min_age"],
            min_offences=section["min_offences"],
            aggregate=section["aggregate"],
            local=tuple(section["local_prefixes"]),
        )


@dataclass(frozen=True, slots=True)
class Entry:
    """One exported prefix and what it stands for (the blocks it covers)."""

    prefix: Prefix
    since: float  # the earliest of its blocks
    until: float  # the first of its blocks to lapse: an aggregate is recomputed from its parts then
    offences: int
    reason: str
    blocks: int = 1


@dataclass(frozen=True, slots=True)
class Omitted:
    prefix: Prefix
    why: str


@dataclass(frozen=True, slots=True)
class Selection:
    entries: tuple[Entry, ...] = ()
    omitted: tuple[Omitted, ...] = ()


def select(
    blocks: Iterable[Block], allow: PrefixSet, local: Sequence[Prefix], policy: ExportPolicy, now: float
) -> Selection:
    """The entries to export and, for each block left out (or cut down), the reason."""
    protected = PrefixSet((*allow.members(), *local, *policy.local))
    omitted: list[Omitted] = []
    chosen: dict[Prefix, Entry] = {}
    for b in sorted(blocks, key=lambda b: (b.prefix.version, b.prefix.length, b.prefix.value)):
        p = b.prefix
        if b.until <= now:
            omitted.append(Omitted(p, "expired"))
            continue
        if now - b.since < policy.min_age and b.offences < policy.min_offences:
            omitted.append(
                Omitted(
                    p,
                    f"blocked {format_duration(max(now - b.since, 0))} ago with {b.offences} offence(s): "
                    f"below min_age {format_duration(policy.min_age)} and min_offences {policy.min_offences}",
                )
            )
            continue
        if p.length < policy.shortest(p.version):
            omitted.append(Omitted(p, f"wider than /{policy.shortest(p.version)} (min_ipv{p.version}_prefix)"))
            continue
        pieces = [p]
        if protected.intersects(p):
            pieces = split_around(p, _inside(protected, p))
            omitted.append(
                Omitted(p, f"covers allowlisted or local addresses; split into {len(pieces)} prefix(es)")
                if pieces
                else Omitted(p, "allowlisted or local address")
            )
        for piece in pieces:
            entry = Entry(piece, b.since, b.until, b.offences, b.reason)
            old = chosen.get(piece)
            chosen[piece] = entry if old is None else _merge(piece, old, entry)
    entries = _without_nested(chosen)
    if policy.aggregate:
        entries = _aggregate(entries, policy)
    ranked = sorted(entries.values(), key=lambda e: (-e.offences, e.prefix.length, e.since, e.prefix))
    for e in ranked[policy.max_entries :]:
        omitted.append(Omitted(e.prefix, f"over max_entries ({policy.max_entries})"))
    kept = sorted(ranked[: policy.max_entries], key=lambda e: e.prefix)
    return Selection(tuple(kept), tuple(omitted))


def _inside(protected: PrefixSet, p: Prefix) -> tuple[Prefix, ...]:
    return tuple(m for m in protected.members() if m.overlaps(p))


def _merge(prefix: Prefix, a: Entry, b: Entry) -> Entry:
    reason = a.reason if a.reason == b.reason else f"{a.blocks + b.blocks} blocks"
    return Entry(
        prefix, min(a.since, b.since), min(a.until, b.until), max(a.offences, b.offences), reason, a.blocks + b.blocks
    )


def _without_nested(chosen: dict[Prefix, Entry]) -> dict[Prefix, Entry]:
    """A prefix inside another exported prefix adds nothing upstream; its block is counted in the outer one."""
    outers = PrefixSet(chosen)
    out: dict[Prefix, Entry] = {}
    for p in sorted(chosen, key=lambda p: p.length):
        if any(o.contains(p) for o in _outer_members(outers, p)):
            continue
        out[p] = chosen[p]
    return out


def _outer_members(outers: PrefixSet, p: Prefix) -> list[Prefix]:
    # The strict super-prefixes of p that are members, found by masking p at each shorter length.
    found = []
    for length in range(p.length - 1, -1, -1):
        shift = p.bits - length
        cand = Prefix(p.version, (p.value >> shift) << shift, length)
        if cand in outers:
            found.append(cand)
    return found


def _aggregate(entries: dict[Prefix, Entry], policy: ExportPolicy) -> dict[Prefix, Entry]:
    """Merge sibling pairs into their parent, repeatedly, never past the cap on width. Both halves are clean, so
    the parent (exactly their union) covers nothing the halves did not."""
    out = dict(entries)
    changed = True
    while changed:
        changed = False
        for p in sorted(out, key=lambda p: -p.length):
            if p not in out or p.length == 0 or p.length - 1 < policy.shortest(p.version):
                continue
            sibling = Prefix(p.version, p.value ^ (1 << (p.bits - p.length)), p.length)
            if sibling not in out:
                continue
            parent = Prefix(p.version, p.value & ~(1 << (p.bits - p.length)), p.length - 1)
            a, b = out.pop(p), out.pop(sibling)
            out[parent] = _merge(parent, a, b)
            changed = True
    return out
