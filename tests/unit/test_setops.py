"""The one translation of a plan into set operations that the nftables and iptables backends share."""

from __future__ import annotations

from govern.addr import Prefix
from govern.model import Action, ActionKind, Plan
from govern.setops import SetOp, set_changes

NOW = 1_000.0
A, B, C = Prefix.parse("198.18.0.1"), Prefix.parse("2001:db8:bad::/64"), Prefix.parse("198.18.0.0/24")


def name(kind: str, p: Prefix) -> str:
    return f"{kind}{p.version}"


def empty() -> dict[str, set[Prefix]]:
    return {name(k, p): set() for k in ("block", "throttle", "tight") for p in (A, B)}


def test_a_block_lifts_the_sources_throttles_and_releases_come_first() -> None:
    held = empty()
    held["throttle4"].add(A)
    held["block4"].add(A)  # covered by the /24 that replaces it
    plan = Plan(
        (
            Action(ActionKind.BLOCK, C, "aggregate", until=NOW + 600),
            Action(ActionKind.UNBLOCK, A, "covered"),
            Action(ActionKind.BLOCK, A, "again", until=NOW + 60),
            Action(ActionKind.THROTTLE, B, "busy", until=NOW + 30, tight=True),
        )
    )
    ch = set_changes(plan, NOW, held, name)
    assert ch.ops == [
        SetOp(False, "block4", A),
        SetOp(False, "throttle4", A),
        SetOp(True, "block4", C, 600.0),
        SetOp(True, "block4", A, 60.0),
        SetOp(True, "tight6", B, 30.0),
    ]
    assert held["block4"] == {A}  # nothing is merged before the kernel has it
    ch.merge_into(held)
    assert held["block4"] == {A, C} and not held["throttle4"] and held["tight6"] == {B}


def test_only_what_a_set_holds_is_removed_and_a_tight_throttle_replaces_the_plain_one() -> None:
    held = empty()
    held["throttle6"].add(B)
    plan = Plan(
        (
            Action(ActionKind.UNBLOCK, A, "expired"),  # not held: nothing to remove
            Action(ActionKind.THROTTLE, B, "wave", until=NOW + 30, tight=True),
            Action(ActionKind.UNTHROTTLE, B, "the wave is over"),
        )
    )
    ch = set_changes(plan, NOW, held, name)
    assert ch.drops == [SetOp(False, "throttle6", B), SetOp(False, "tight6", B)]
    assert ch.adds == [SetOp(True, "tight6", B, 30.0)]
    ch.merge_into(held)
    assert not held["throttle6"] and not held["tight6"]
