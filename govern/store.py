"""The durable state in `state_dir`: active blocks and throttles, offence records, operator allowlist additions,
and the event log, in one SQLite database.

Writes for a tick happen in one SQLite transaction that is committed only after the kernel accepted the same
plan (see `Store.pending`), so the store never claims enforcement the kernel refused, and a crash between the two
leaves the store behind the kernel, never ahead of it: start-up reconciliation then adopts what the kernel holds.
Every failure to read or write (a full disk, an I/O error) is a StoreError: the daemon keeps enforcing from memory
and writes its whole state again with `replace` when the store can be written (docs/safety.md).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from govern.addr import Prefix
from govern.errors import StoreError
from govern.heap import collector_held
from govern.model import (
    Action,
    ActionKind,
    Block,
    Event,
    Mode,
    ModeState,
    Offender,
    Plan,
    State,
    Tarpitted,
    Throttle,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    prefix TEXT PRIMARY KEY, reason TEXT NOT NULL, since REAL NOT NULL, until REAL NOT NULL,
    offences INTEGER NOT NULL, manual INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS throttles (
    prefix TEXT PRIMARY KEY, reason TEXT NOT NULL, since REAL NOT NULL, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS mode (
    id INTEGER PRIMARY KEY CHECK (id = 1), mode TEXT NOT NULL, since REAL NOT NULL, until REAL NOT NULL,
    reason TEXT NOT NULL, manual INTEGER NOT NULL, calm_since REAL NOT NULL, quiet_until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tarpits (
    prefix TEXT PRIMARY KEY, reason TEXT NOT NULL, since REAL NOT NULL, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS offenders (prefix TEXT PRIMARY KEY, offences INTEGER NOT NULL, last REAL NOT NULL);
CREATE TABLE IF NOT EXISTS allow (prefix TEXT PRIMARY KEY, since REAL NOT NULL, note TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, kind TEXT NOT NULL, prefix TEXT NOT NULL,
    reason TEXT NOT NULL, until REAL NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS events_at ON events(at);
CREATE INDEX IF NOT EXISTS events_prefix ON events(prefix);
"""


@contextlib.contextmanager
def _failing(doing: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(f"cannot {doing} in the state store: {exc}") from None


class Store:
    """The SQLite file `state.db` in `state_dir`."""

    def __init__(self, state_dir: str) -> None:
        try:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
            self.path = os.path.join(state_dir, "state.db")
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a power cut may lose the last transactions, never corrupt the file; the kernel
            # keeps enforcing meanwhile and start-up adopts what it holds.
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            columns = {r[1] for r in self.db.execute("PRAGMA table_info(throttles)")}
            if "tight" not in columns:  # a state directory from before the wave mode
                self.db.execute("ALTER TABLE throttles ADD COLUMN tight INTEGER NOT NULL DEFAULT 0")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open state store in {state_dir}: {exc}") from None

    def close(self) -> None:
        self.db.close()

    def load(self) -> State:
        with _failing("read the state"):
            return self._load()

    def _load(self) -> State:
        # Held off while the state is built: each of its new objects (~300,000 for 100k blocks) counts towards a
        # collection, and each collection walks all the objects built so far, none of which is garbage (0.4 s of
        # 1.4 s for 100k blocks, docs/benchmarks.md "Restart"). The daemon then freezes them (govern.process).
        with collector_held():
            return self._read_state()

    def _read_state(self) -> State:
        st = State()
        parse = Prefix.parse
        # One Prefix per text, shared by the tables that name it: a blocked source is an offender too.
        seen: dict[str, Prefix] = {}
        # One string per distinct reason, as State.record keeps them: a flood's reasons repeat.
        intern = sys.intern
        for p, reason, since, until, off, manual in self.db.execute("SELECT * FROM blocks"):
            pre = seen[p] = parse(p)
            st.blocks[pre] = Block(pre, intern(reason), since, until, off, bool(manual))
        for p, reason, since, until, tight in self.db.execute(
            "SELECT prefix, reason, since, until, tight FROM throttles"
        ):
            pre = Prefix.parse(p)
            st.throttles[pre] = Throttle(pre, intern(reason), since, until, bool(tight))
        for p, reason, since, until in self.db.execute("SELECT prefix, reason, since, until FROM tarpits"):
            pre = Prefix.parse(p)
            st.tarpits[pre] = Tarpitted(pre, intern(reason), since, until)
        row = self.db.execute("SELECT mode, since, until, reason, manual, calm_since, quiet_until FROM mode").fetchone()
        if row is not None:
            mode, since, until, reason, manual, calm, quiet = row
            st.mode = ModeState(Mode(mode), since, until, reason, bool(manual), calm, quiet)
        for p, off, last in self.db.execute("SELECT * FROM offenders"):
            known = seen.get(p)
            st.offenders[parse(p) if known is None else known] = Offender(off, last)
        return st

    @contextlib.contextmanager
    def pending(self, plan: Plan, now: float) -> Iterator[None]:
        """Write the plan inside a transaction that commits only if the block (the kernel commit) succeeds.

        A StoreError raised before the block runs means the block never ran; one raised after it (the commit
        failed) means it ran: `committing` tells which (the daemon then keeps what the kernel holds)."""
        with _failing("record the plan"):
            cur = self.db.cursor()
            cur.execute("BEGIN IMMEDIATE")
        try:
            with _failing("record the plan"):
                self._write(cur, plan.actions, now)
                cur.executemany("DELETE FROM offenders WHERE prefix=?", [(str(p),) for p in plan.forget])
                if plan.mode is not None:
                    self._write_mode(cur, plan.mode, now)
            yield
        except BaseException:
            self._rollback()
            raise
        try:
            cur.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"cannot commit the plan to {self.path}: {exc}", committing=True) from None

    def _rollback(self) -> None:
        # A failed COMMIT may have ended the transaction already; a failed ROLLBACK leaves nothing to undo.
        with contextlib.suppress(sqlite3.Error):
            self.db.execute("ROLLBACK")

    def save(self, plan: Plan, now: float) -> None:
        with self.pending(plan, now):
            pass

    def replace(self, state: State, now: float) -> None:
        """Write the whole of `state` in one transaction, in place of what the store held: how the store catches up
        with the kernel after writes failed (a full disk), or is put back after a kernel refused what it recorded."""
        with _failing("write the whole state"):
            cur = self.db.cursor()
            cur.execute("BEGIN IMMEDIATE")
        try:
            with _failing("write the whole state"):
                for table in ("blocks", "throttles", "tarpits", "offenders"):
                    cur.execute(f"DELETE FROM {table}")
                cur.executemany(
                    "INSERT INTO blocks VALUES (?,?,?,?,?,?)",
                    [(str(p), b.reason, b.since, b.until, b.offences, int(b.manual)) for p, b in state.blocks.items()],
                )
                cur.executemany(
                    "INSERT INTO throttles(prefix, reason, since, until, tight) VALUES (?,?,?,?,?)",
                    [(str(p), t.reason, t.since, t.until, int(t.tight)) for p, t in state.throttles.items()],
                )
                cur.executemany(
                    "INSERT INTO tarpits VALUES (?,?,?,?)",
                    [(str(p), t.reason, t.since, t.until) for p, t in state.tarpits.items()],
                )
                cur.executemany(
                    "INSERT INTO offenders VALUES (?,?,?)",
                    [(str(p), o.offences, o.last) for p, o in state.offenders.items()],
                )
                self._write_mode(cur, state.mode, now)
                cur.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def unblocked_last(self, prefixes: Iterable[Prefix]) -> set[Prefix]:
        """Of `prefixes`, those whose latest recorded event is an unblock: the store's last word on them is "not
        blocked", so one the kernel still holds is a leftover of a crash, never a block to adopt."""
        keys = {str(p): p for p in prefixes}
        if not keys:
            return set()
        with _failing("read the event log"):
            rows = self.db.execute(
                "SELECT e.prefix, e.kind FROM events e JOIN (SELECT prefix, MAX(id) AS id FROM events "
                "WHERE kind IN ('block', 'extend', 'unblock') GROUP BY prefix) m ON e.id = m.id"
            ).fetchall()
        return {keys[p] for p, kind in rows if kind == "unblock" and p in keys}

    def _write(self, cur: sqlite3.Cursor, actions: tuple[Action, ...], now: float) -> None:
        # Each kind's rows as the plan's last action on a prefix leaves them, as State.record does: a plan that
        # throttles a source and then blocks it keeps no throttle row. The deletes run before the inserts, so a row
        # inserted for an earlier action would outlive a later one's delete, and a restart would load the source
        # throttled and blocked at once, where the state before it had the block alone.
        blocks: dict[str, tuple[Any, ...]] = {}
        throttles: dict[str, tuple[Any, ...]] = {}
        tarpits: dict[str, tuple[Any, ...]] = {}
        unblocks: set[str] = set()
        unthrottles: set[str] = set()
        untarpits: set[str] = set()
        offenders, events = [], []
        for a in actions:
            p = str(a.prefix)
            events.append((now, a.kind.value, p, a.reason, a.until))
            if a.kind in (ActionKind.BLOCK, ActionKind.EXTEND):
                since = now
                if a.kind is ActionKind.EXTEND:
                    if p in blocks:
                        since = blocks[p][2]
                    else:
                        row = cur.execute("SELECT since FROM blocks WHERE prefix=?", (p,)).fetchone()
                        since = row[0] if row else now
                blocks[p] = (p, a.reason, since, a.until, a.offences, int(a.manual))
                unblocks.discard(p)
                throttles.pop(p, None)
                unthrottles.add(p)
                if a.offences:
                    offenders.append((p, a.offences, now))
            elif a.kind is ActionKind.THROTTLE:
                throttles[p] = (p, a.reason, now, a.until, int(a.tight))
                unthrottles.discard(p)
            elif a.kind is ActionKind.UNBLOCK:
                blocks.pop(p, None)
                unblocks.add(p)
            elif a.kind is ActionKind.UNTHROTTLE:
                throttles.pop(p, None)
                unthrottles.add(p)
            elif a.kind is ActionKind.TARPIT:
                tarpits[p] = (p, a.reason, now, a.until)
                untarpits.discard(p)
            elif a.kind is ActionKind.UNTARPIT:
                tarpits.pop(p, None)
                untarpits.add(p)
        cur.executemany("DELETE FROM blocks WHERE prefix=?", [(p,) for p in unblocks])
        cur.executemany("DELETE FROM throttles WHERE prefix=?", [(p,) for p in unthrottles])
        cur.executemany("INSERT OR REPLACE INTO blocks VALUES (?,?,?,?,?,?)", list(blocks.values()))
        cur.executemany(
            "INSERT OR REPLACE INTO throttles(prefix, reason, since, until, tight) VALUES (?,?,?,?,?)",
            list(throttles.values()),
        )
        cur.executemany("INSERT OR REPLACE INTO offenders VALUES (?,?,?)", offenders)
        cur.executemany("DELETE FROM tarpits WHERE prefix=?", [(p,) for p in untarpits])
        cur.executemany("INSERT OR REPLACE INTO tarpits VALUES (?,?,?,?)", list(tarpits.values()))
        cur.executemany("INSERT INTO events(at, kind, prefix, reason, until) VALUES (?,?,?,?,?)", events)

    def _write_mode(self, cur: sqlite3.Cursor, m: ModeState, now: float) -> None:
        old = cur.execute("SELECT mode FROM mode").fetchone()
        cur.execute(
            "INSERT OR REPLACE INTO mode VALUES (1,?,?,?,?,?,?,?)",
            (m.mode.value, m.since, m.until, m.reason, int(m.manual), m.calm_since, m.quiet_until),
        )
        if old is None or old[0] != m.mode.value:
            cur.execute(
                "INSERT INTO events(at, kind, prefix, reason, until) VALUES (?,?,?,?,?)",
                (now, f"mode {m.mode.value}", "", m.reason, m.until),
            )

    def trim_events(self, before: float) -> None:
        with _failing("trim the event log"):
            self.db.execute("DELETE FROM events WHERE at < ?", (before,))

    def events(self, limit: int = 50) -> list[Event]:
        with _failing("read the event log"):
            return self._events(limit)

    def _events(self, limit: int) -> list[Event]:
        rows = self.db.execute("SELECT at, kind, prefix, reason, until FROM events ORDER BY id DESC LIMIT ?", (limit,))
        return [Event(*r) for r in rows]

    def note(self, kind: str, entries: Iterable[tuple[Prefix, str]], now: float) -> None:
        """Events that change no enforcement (sessions cut, say): (prefix, reason) each, in one transaction."""
        rows = [(now, kind, str(p), reason, 0.0) for p, reason in entries]
        if not rows:
            return
        with _failing(f"record {kind} events"), self.db:  # autocommit mode: one explicit transaction for the lot
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO events(at, kind, prefix, reason, until) VALUES (?,?,?,?,?)", rows)

    def events_about(self, prefixes: Sequence[Prefix], limit: int = 20) -> list[Event]:
        """The latest events recorded for exactly these prefixes (a source and the prefixes covering it), newest
        first."""
        keys = [str(p) for p in prefixes]
        if not keys:
            return []
        marks = ",".join("?" * len(keys))
        with _failing("read the event log"):
            rows = self.db.execute(
                f"SELECT at, kind, prefix, reason, until FROM events WHERE prefix IN ({marks}) "
                "ORDER BY id DESC LIMIT ?",
                (*keys, limit),
            ).fetchall()
        return [Event(*r) for r in rows]

    def allowed(self) -> tuple[Prefix, ...]:
        with _failing("read the allowlist additions"):
            return tuple(Prefix.parse(r[0]) for r in self.db.execute("SELECT prefix FROM allow ORDER BY prefix"))

    def allow(self, prefix: Prefix, now: float, note: str = "") -> None:
        with _failing(f"record the allowlist entry {prefix}"):
            self.db.execute("INSERT OR REPLACE INTO allow VALUES (?,?,?)", (str(prefix), now, note))

    def disallow(self, prefix: Prefix) -> bool:
        with _failing(f"remove the allowlist entry {prefix}"):
            return self.db.execute("DELETE FROM allow WHERE prefix=?", (str(prefix),)).rowcount > 0
