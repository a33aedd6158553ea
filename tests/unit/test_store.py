"""The durable store: what a plan records survives a reopen, and a refused kernel commit records nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from govern.addr import Prefix
from govern.model import Action, ActionKind, Plan
from govern.store import Store

NOW = 1_700_000_000.0
A = Prefix.parse("198.18.0.1")
B = Prefix.parse("2001:db8:bad:1::/64")


def test_plan_survives_reopen(tmp_path: Path) -> None:
    s = Store(str(tmp_path))
    s.save(
        Plan(
            (
                Action(ActionKind.BLOCK, A, "holds 30 connections", until=NOW + 600, offences=2),
                Action(ActionKind.THROTTLE, B, "opened 90", until=NOW + 600),
            )
        ),
        NOW,
    )
    s.close()
    st = Store(str(tmp_path)).load()
    assert st.blocks[A].reason == "holds 30 connections" and st.blocks[A].until == NOW + 600
    assert st.blocks[A].offences == 2 and st.offenders[A].offences == 2
    assert st.throttles[B].since == NOW


def test_a_plan_that_forgets_an_offender_removes_its_record_for_good(tmp_path: Path) -> None:
    s = Store(str(tmp_path))
    s.save(Plan((Action(ActionKind.BLOCK, A, "b", until=NOW + 600, offences=3),)), NOW)
    s.save(Plan(forget=(A,)), NOW + 8 * 86400)
    s.close()
    st = Store(str(tmp_path)).load()
    assert A not in st.offenders and A in st.blocks  # the block's own row is not the offence record


def test_extend_keeps_since_and_block_clears_throttle(tmp_path: Path) -> None:
    s = Store(str(tmp_path))
    s.save(Plan((Action(ActionKind.THROTTLE, A, "t", until=NOW + 60),)), NOW)
    s.save(Plan((Action(ActionKind.BLOCK, A, "b", until=NOW + 600, offences=1),)), NOW + 5)
    s.save(Plan((Action(ActionKind.EXTEND, A, "e", until=NOW + 1200, offences=1),)), NOW + 500)
    st = s.load()
    assert A not in st.throttles
    assert st.blocks[A].since == NOW + 5 and st.blocks[A].until == NOW + 1200
    assert [e.kind for e in s.events()] == ["extend", "block", "throttle"]


def test_failed_kernel_commit_leaves_the_store_untouched(tmp_path: Path) -> None:
    s = Store(str(tmp_path))
    plan = Plan((Action(ActionKind.BLOCK, A, "b", until=NOW + 600, offences=1),))
    with pytest.raises(RuntimeError), s.pending(plan, NOW):
        raise RuntimeError("kernel said no")
    assert not s.load().blocks and not s.events()


def test_allowlist_additions_persist(tmp_path: Path) -> None:
    s = Store(str(tmp_path))
    s.allow(Prefix.parse("192.0.2.10"), NOW, "partner")
    assert Store(str(tmp_path)).allowed() == (Prefix.parse("192.0.2.10"),)
    assert s.disallow(Prefix.parse("192.0.2.10")) and not s.disallow(Prefix.parse("192.0.2.10"))


def test_notes_and_the_events_of_a_source_and_its_covering_prefixes(tmp_path: Path) -> None:
    s = Store(str(tmp_path))
    wide = Prefix.parse("198.18.0.0/24")
    s.save(Plan((Action(ActionKind.BLOCK, wide, "8 sources of 198.18.0.0/24 blocked", until=NOW + 600),)), NOW)
    s.note("cut", [(A, "2 sessions: silent for 6s"), (B, "1 session: silent for 9s")], NOW + 1)
    s.note("cut", [], NOW + 2)
    s.save(Plan((Action(ActionKind.THROTTLE, Prefix.parse("198.18.0.2"), "opened 90", until=NOW + 60),)), NOW + 3)
    got = s.events_about([A, wide, Prefix.parse("198.18.0.0/16")])
    assert [(e.kind, e.prefix, e.reason) for e in got] == [
        ("cut", "198.18.0.1", "2 sessions: silent for 6s"),
        ("block", "198.18.0.0/24", "8 sources of 198.18.0.0/24 blocked"),
    ]
    assert got[0].at == NOW + 1 and got[0].until == 0
    assert [e.kind for e in s.events_about([A, wide], limit=1)] == ["cut"]
    assert s.events_about([]) == []
    s.close()
    assert [e.prefix for e in Store(str(tmp_path)).events_about([B])] == ["2001:db8:bad:1::/64"]
