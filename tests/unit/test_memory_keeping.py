"""What keeps a million blocks cheap: equal reasons held once, and long-lived objects out of the cyclic GC."""

from __future__ import annotations

import gc

from govern import heap
from govern.addr import Prefix
from govern.model import Action, ActionKind, Plan, State


def test_blocks_with_equal_reasons_hold_one_string() -> None:
    st = State()
    n = 75
    # Equal, distinct objects, as decide makes them.
    reasons = [f"opened {n} connections in the last minute (limit 60); still over after throttling" for _ in "abc"]
    assert reasons[0] is not reasons[1]
    acts = tuple(
        Action(kind, Prefix(4, 0xC6120000 + i, 32), r, until=100.0, offences=1)
        for i, (kind, r) in enumerate(
            zip((ActionKind.BLOCK, ActionKind.BLOCK, ActionKind.THROTTLE), reasons, strict=True)
        )
    )
    st.record(Plan(acts), 0.0)
    kept = [b.reason for b in st.blocks.values()] + [t.reason for t in st.throttles.values()]
    assert kept == reasons and kept[0] is kept[1] is kept[2]


def test_settle_freezes_what_is_alive_and_collects_first() -> None:
    class Cycle:
        me: object

    try:
        garbage = Cycle()
        garbage.me = garbage
        del garbage
        alive = [object()]
        heap.settle()
        frozen = gc.get_freeze_count()
        assert frozen > 0
        # What was alive is frozen; the cycle that was garbage was collected, not frozen with it.
        assert not any(isinstance(o, Cycle) for o in gc.get_objects())
        heap.settle()  # again: unfreezes, collects, freezes; nothing is frozen twice
        assert gc.get_freeze_count() <= frozen + 100
        assert alive
    finally:
        gc.unfreeze()
