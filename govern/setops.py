"""Which set elements a plan's actions add and remove: the one rule every firewall backend applies (nftables and
iptables+ipset name their sets differently and speak to the kernel differently, but block, throttle and their
releases change the same sets the same way).

A block (or an extension) adds the source to its family's block set and lifts any throttle of it; a throttle adds
it to the throttle set, or the wave's tighter one, and lifts the other; an unblock or unthrottle removes it. Adding
an element the kernel holds replaces its timeout, so a block and an extension are both one add.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from govern.addr import Prefix
from govern.model import ActionKind, Plan


@dataclass(frozen=True, slots=True)
class SetOp:
    add: bool
    set: str  # the backend's name for the set, from `name(kind, prefix)`
    prefix: Prefix
    seconds: float = 0.0  # the element's timeout (adds only)


@dataclass(slots=True)
class SetChanges:
    """One plan's element operations, releases first (a prefix replacing the blocks it covers must never overlap
    them, even for a moment within the transaction), and what each touched set holds afterwards, to be merged
    into the backend's view only once the kernel accepted the transaction."""

    drops: list[SetOp] = field(default_factory=list)
    adds: list[SetOp] = field(default_factory=list)
    changed: dict[tuple[str, Prefix], bool] = field(default_factory=dict)

    @property
    def ops(self) -> list[SetOp]:
        return self.drops + self.adds

    def merge_into(self, held: Mapping[str, set[Prefix]]) -> None:
        for (name, p), present in self.changed.items():
            (held[name].add if present else held[name].discard)(p)


def set_changes(
    plan: Plan, now: float, held: Mapping[str, Collection[Prefix]], name: Callable[[str, Prefix], str]
) -> SetChanges:
    """The element operations `plan` asks for. `held` is what the backend's sets hold now (a removal is only
    asked for what one holds); `name(kind, prefix)` names the set of a kind ("block", "throttle", "tight") for
    the prefix's family."""
    out = SetChanges()
    changed = out.changed

    def holds(set_: str, p: Prefix) -> bool:
        return changed.get((set_, p), p in held[set_])

    def drop(set_: str, p: Prefix) -> None:
        if holds(set_, p):
            out.drops.append(SetOp(False, set_, p))
            changed[set_, p] = False

    for a in plan.actions:
        p = a.prefix
        block, throttles = name("block", p), (name("throttle", p), name("tight", p))
        if a.kind in (ActionKind.BLOCK, ActionKind.EXTEND):
            out.adds.append(SetOp(True, block, p, a.until - now))
            changed[block, p] = True
            for t in throttles:
                drop(t, p)
        elif a.kind is ActionKind.THROTTLE:
            set_, other = throttles[::-1] if a.tight else throttles
            out.adds.append(SetOp(True, set_, p, a.until - now))
            changed[set_, p] = True
            drop(other, p)
        elif a.kind is ActionKind.UNBLOCK:
            drop(block, p)
        elif a.kind is ActionKind.UNTHROTTLE:
            for t in throttles:
                drop(t, p)
    return out
