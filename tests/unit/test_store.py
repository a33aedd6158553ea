"""The durable store: what a plan records survives a reopen, and a refused kernel commit records nothing."""

from __future__ import annotations

import gc
import re
import sqlite3
from pathlib import Path

import pytest

from govern.addr import Prefix, parse_full
from govern.errors import AddressError
from govern.model import Action, ActionKind, Block, Plan, State, Throttle
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


def test_within_one_plan_the_last_action_on_a_prefix_is_what_a_reload_finds_as_in_memory(tmp_path: Path) -> None:
    """A plan that throttles a source and then blocks it (or blocks then unblocks, tarpits then lifts) leaves the
    store as State.record leaves the state. Before, the deletes ran before the inserts, and a restart loaded such a
    source throttled and blocked at once, where the state before it held the block alone."""
    C, D = Prefix.parse("198.18.0.3"), Prefix.parse("198.18.0.4")
    plan = Plan(
        (
            Action(ActionKind.THROTTLE, A, "t", until=NOW + 60),
            Action(ActionKind.BLOCK, A, "b", until=NOW + 600, offences=1),
            Action(ActionKind.BLOCK, B, "b", until=NOW + 600, offences=1),
            Action(ActionKind.UNBLOCK, B, "lifted"),
            Action(ActionKind.UNTHROTTLE, C, "u"),
            Action(ActionKind.THROTTLE, C, "t again", until=NOW + 60),
            Action(ActionKind.TARPIT, D, "slow", until=NOW + 60),
            Action(ActionKind.UNTARPIT, D, "lifted"),
        )
    )
    s = Store(str(tmp_path))
    s.save(plan, NOW)
    s.close()
    loaded = Store(str(tmp_path)).load()
    state = State()
    state.record(plan, NOW)
    assert loaded.blocks.keys() == state.blocks.keys() == {A}
    assert loaded.throttles.keys() == state.throttles.keys() == {C}
    assert loaded.tarpits.keys() == state.tarpits.keys() == set()


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


def test_a_block_and_its_offence_record_share_one_prefix_after_a_load(tmp_path: Path) -> None:
    s = Store(str(tmp_path))
    s.save(Plan((Action(ActionKind.BLOCK, A, "b", until=NOW + 600, offences=2),)), NOW)
    st = s.load()
    (key,) = st.offenders
    assert key == A and key is st.blocks[A].prefix  # one object, parsed once, not two equal ones


def test_rows_written_in_other_spellings_load_as_the_full_parser_reads_them(tmp_path: Path) -> None:
    # Text govern never writes, as an older version or a hand-edited database may hold it: read exactly as before
    # the fast path for canonical text, which only govern's own spelling takes.
    s = Store(str(tmp_path))
    texts = ["198.18.0.7/32", "2001:DB8:BAD:2::/64", "::ffff:198.18.0.8", "198.18.1.9/24", " 198.18.2.0/24"]
    s.db.executemany("INSERT INTO blocks VALUES (?, 'r', ?, ?, 1, 0)", [(t, NOW, NOW + 600) for t in texts])
    s.db.executemany("INSERT INTO offenders VALUES (?, 1, ?)", [(t, NOW) for t in texts])
    st = s.load()
    want = {parse_full(t) for t in texts}
    assert set(st.blocks) == want == set(st.offenders)
    assert Prefix(4, Prefix.parse("198.18.0.8").value, 32) in st.blocks  # the IPv4-mapped row is IPv4
    s.db.execute("INSERT INTO offenders VALUES ('198.18.0.300', 1, ?)", (NOW,))
    with pytest.raises(AddressError, match=re.escape("'198.18.0.300' is not an IPv4/IPv6 address")):
        s.load()


def test_a_database_from_before_the_tight_column_loads_and_is_migrated_in_place(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / "state.db")
    old.executescript(
        "CREATE TABLE throttles (prefix TEXT PRIMARY KEY, reason TEXT NOT NULL, since REAL NOT NULL, "
        "until REAL NOT NULL);"
        "CREATE TABLE blocks (prefix TEXT PRIMARY KEY, reason TEXT NOT NULL, since REAL NOT NULL, "
        "until REAL NOT NULL, offences INTEGER NOT NULL, manual INTEGER NOT NULL DEFAULT 0);"
        f"INSERT INTO throttles VALUES ('2001:db8:bad:1::/64', 'opened 90', {NOW}, {NOW + 60});"
        f"INSERT INTO blocks VALUES ('198.18.0.1', 'holds 30', {NOW}, {NOW + 600}, 2, 1);"
    )
    old.commit()
    old.close()
    st = Store(str(tmp_path)).load()
    assert st.throttles[B] == Throttle(B, "opened 90", NOW, NOW + 60, tight=False)
    assert st.blocks[A] == Block(A, "holds 30", NOW, NOW + 600, 2, manual=True)
    again = Store(str(tmp_path))
    assert "tight" in {r[1] for r in again.db.execute("PRAGMA table_info(throttles)")}
    assert again.load() == st


@pytest.mark.parametrize("enabled", [True, False])
def test_a_load_leaves_the_cyclic_collector_as_it_found_it(tmp_path: Path, enabled: bool) -> None:
    s = Store(str(tmp_path))
    s.save(Plan((Action(ActionKind.BLOCK, A, "b", until=NOW + 600, offences=1),)), NOW)
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        s.load()
        assert gc.isenabled() is enabled
        s.db.execute("INSERT INTO blocks VALUES ('not an address', 'r', 0, 0, 1, 0)")
        with pytest.raises(AddressError):
            s.load()
        assert gc.isenabled() is enabled  # also when the load fails
    finally:
        (gc.enable if was else gc.disable)()


def test_blocks_loaded_with_the_same_reason_share_one_string(tmp_path: Path) -> None:
    s = Store(str(tmp_path))
    why = "holds 30 connections, 3 idle (limit 20)"
    s.save(Plan(tuple(Action(ActionKind.BLOCK, p, why, until=NOW + 600, offences=1) for p in (A, B))), NOW)
    st = s.load()
    assert st.blocks[A].reason == why and st.blocks[A].reason is st.blocks[B].reason
