"""Per-source connection-attempt rates over the last minute, from the kernel's cumulative counters.

Memory matters here (a flood can bring a million sources), so each source holds three numbers, not a history:
the sliding-window estimate of Cloudflare's rate limiter, current minute plus the overlapping share of the
previous one. Its error is bounded by the change of rate across one window and it never under-counts a steady
attacker.

The window holds no Python object per source: each is a row of numpy columns (govern.keys: its address; here the
kernel's last count and the window's three numbers), ~65 bytes a source with the table that finds it, against ~575
as dicts of Prefix objects. A tick is a few vectorised passes over the rows; only the unpacking of the kernel's
counters into columns steps through them in Python.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from govern.addr import Prefix
from govern.keys import Counted, Keys, KeyTable, keys_of

WINDOW = 60.0
# Rows no longer tracked are dropped from the columns (which renumbers the rows) once they are this share of the
# tracked ones: the columns stay within 25% of what is tracked, and each row dropped costs at most a few copies.
_COMPACT_SHARE = 4
_COMPACT_MIN = 4096
_BATCH = 1 << 16  # rows a pass over the columns takes at a time (see advance)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]


class Rates(NamedTuple):
    """One tick's counts, one entry per row of RateWindow.keys(); rows not tracked after the tick hold zeros."""

    tracked: Bools
    new: I64  # attempts since the previous tick
    per_minute: I64  # attempts over the last minute (the window's estimate)


class RateWindow:
    """Turns cumulative per-source counters into per-tick deltas and per-minute rates."""

    __slots__ = ("_cur", "_last", "_live", "_marks", "_prev", "_seen", "_start", "_table")

    def __init__(self) -> None:
        self._table = KeyTable()
        self._last = np.zeros(0, np.uint64)  # the kernel's count at the previous tick
        self._seen = np.zeros(0, np.bool_)  # the source was in the previous tick's counters (`_last` holds)
        # The window: start of the current minute, count in it, count in the previous minute.
        self._start = np.zeros(0, np.float64)
        self._cur = np.zeros(0, np.float64)
        self._prev = np.zeros(0, np.float64)
        self._live = np.zeros(0, np.bool_)  # tracked; a row that is not waits to be dropped, or to come back
        self._marks = np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return int(np.count_nonzero(self._live[: len(self._table)]))

    def keys(self) -> Keys:
        """The address of each row: views that stay as they are (a later row goes after them, and dropping rows
        makes new columns), so a snapshot may keep them; the row numbers are those of the last advance."""
        return self._table.view()

    def find(self, keys: Keys) -> npt.NDArray[np.intp]:
        """The row of each key (tracked or not), or -1."""
        return self._table.find(keys)

    @property
    def marks(self) -> npt.NDArray[np.uint8]:
        """A byte per row for the window's owner (the observer keeps each source's allowlist standing in it): 0 for
        a new row, kept with the row while it is tracked, lost with it."""
        return self._marks[: len(self._table)]

    def clear_marks(self) -> None:
        self._marks[:] = 0

    def update(self, cumulative: Mapping[Prefix, int], now: float) -> dict[Prefix, tuple[int, int]]:
        """Feed this tick's cumulative counts; returns source -> (new since last tick, new over the last minute)."""
        r = self.advance(cumulative, now)
        rows = np.flatnonzero(r.tracked)
        pairs = zip(r.new[rows].tolist(), r.per_minute[rows].tolist(), strict=True)
        return dict(zip(self.keys().prefixes(rows.tolist()), pairs, strict=True))

    def advance(self, cumulative: Mapping[Prefix, int], now: float) -> Rates:
        """Feed this tick's cumulative counts; returns every row's counts (`update`'s, as columns). Counts given as
        columns (govern.keys.Counted) are taken: they are left empty."""
        if isinstance(cumulative, Counted):  # the kernel's counters as read: columns already
            # Taken, so that the addresses go once the table has them and the totals once counted: at a million
            # sources they are 18 and 8 MB of the tick's peak.
            keys, totals = cumulative.take()
        else:
            keys = keys_of(cumulative)
            totals = np.fromiter(cumulative.values(), np.uint64, len(cumulative))
        rows = self._table.find(keys)
        fresh = rows < 0
        if fresh.all():  # a flood's first tick: every key is new, so the table takes them as they are
            rows = self._table.add(keys)
        elif fresh.any():
            at = np.flatnonzero(fresh)
            rows[at] = self._table.add(keys.take(at))
            del at
        del fresh, keys
        self._fit(len(self._table))
        n = len(self._table)
        last, seen, live = self._last[:n], self._seen[:n], self._live[:n]
        start, cur, prev = self._start[:n], self._cur[:n], self._prev[:n]
        # Each pass goes _BATCH rows at a time, so that its temporaries are a slice's, not the tick's: a flood's
        # first tick meets a million sources, and each column-sized temporary was 8 MB of the tick's peak. A row
        # appears once in `rows`, so each slice reads and writes its own rows only, as a whole-column pass would.
        new = np.zeros(n, np.int64)
        for lo in range(0, rows.size, _BATCH):
            at, count = rows[lo : lo + _BATCH], totals[lo : lo + _BATCH]
            # The kernel's last count holds for as long as the source is tracked, not only when it was in the
            # previous tick's counters: a dump of a set the flood is filling at that moment can miss an element now
            # and then, and counting its whole total again each time it came back made a source of a few SYNs look
            # like tens a minute (seen in bench_daemon: sources of 1-4 SYNs blocked for 70-94 a minute). A tracked
            # source is one the kernel counted within the last one to two minutes, inside its elements' own
            # 2-minute timeout, so a known count is never one of an element since expired and made afresh, unless
            # the total is smaller.
            known = live[at]
            # A source not tracked starts a window now (a roll then leaves it as it is).
            back = at[~known]
            start[back], cur[back], prev[back], live[back] = now, 0.0, 0.0, True
            # A smaller total means the kernel's element expired and was created afresh: all of it is new.
            delta = last[at]
            grew = known & (count >= delta)
            np.subtract(count, delta, out=delta)
            np.copyto(delta, count, where=~grew)
            new[at] = delta  # the unsigned delta's bits, as delta.astype(np.int64)
        self._roll(n, now)
        seen[:] = False
        for lo in range(0, rows.size, _BATCH):
            at = rows[lo : lo + _BATCH]
            added = cur[at]
            np.add(added, new[at].view(np.uint64), out=added)  # the unsigned delta, as delta.astype(np.float64)
            cur[at] = added
            seen[at], last[at] = True, totals[lo : lo + _BATCH]
        del rows, totals
        return self._rates(new, now)

    def still(self, now: float) -> Rates:
        """A tick whose cumulative counts are known to be those of the last `advance` (the kernel counted no new
        attempt since): nothing new anywhere, and the window moves on in time as `advance` with the same counts
        would move it, without reading or looking up a count."""
        n = len(self._table)
        self._roll(n, now)
        return self._rates(np.zeros(n, np.int64), now)

    def _roll(self, n: int, now: float) -> None:
        """Each tracked row's window into the minute `now` falls in."""
        live, start, cur, prev = self._live[:n], self._start[:n], self._cur[:n], self._prev[:n]
        for lo in range(0, n, _BATCH):
            part = slice(lo, lo + _BATCH)
            alive, since = live[part], start[part]
            elapsed = now - since
            reset = alive & (elapsed >= 2 * WINDOW)
            roll = alive & (elapsed >= WINDOW) & ~reset
            was, now_in = prev[part], cur[part]
            since[reset], now_in[reset], was[reset] = now, 0.0, 0.0
            since[roll] += WINDOW
            was[roll] = now_in[roll]
            now_in[roll] = 0.0

    def _rates(self, new: I64, now: float) -> Rates:
        """The tick's Rates from its new attempts per row (the window already rolled and counted them): the rows
        no longer tracked let go, and dropped from the columns once they are many."""
        n = new.size
        seen, start, cur, prev, live = self._seen[:n], self._start[:n], self._cur[:n], self._prev[:n], self._live[:n]
        live &= seen | (cur != 0) | (prev != 0)
        dropped = n - int(np.count_nonzero(live))
        if dropped > _COMPACT_MIN and dropped * _COMPACT_SHARE > n - dropped:
            kept = np.flatnonzero(live)
            new = new[kept]
            self._compact(kept)
            n = len(kept)
            start, cur, prev, live = self._start[:n], self._cur[:n], self._prev[:n], self._live[:n]
        # As the scalar form round(cur + prev * (WINDOW - into) / WINDOW), with into = min(max(now - start, 0),
        # WINDOW), a slice at a time in one buffer: numpy rounds halves to even like round(), and each step is the
        # same operation on the same operands as the expression's.
        minute = np.empty(n, np.int64)
        for lo in range(0, n, _BATCH):
            part = slice(lo, lo + _BATCH)
            t = np.subtract(now, start[part])
            np.maximum(t, 0.0, out=t)
            np.minimum(t, WINDOW, out=t)
            np.subtract(WINDOW, t, out=t)
            np.multiply(prev[part], t, out=t)
            np.divide(t, WINDOW, out=t)
            np.add(cur[part], t, out=t)
            np.rint(t, out=t)
            minute[part] = t  # as t.astype(np.int64)
        minute[~live] = 0
        return Rates(live.copy(), new, minute)

    def _fit(self, n: int) -> None:
        cap = self._live.shape[0]
        if n <= cap:
            return
        cap = max(n, cap * 3 // 2)
        for name in self.__slots__:
            if name == "_table":
                continue
            old = getattr(self, name)
            grown = np.zeros(cap, old.dtype)
            grown[: old.shape[0]] = old
            setattr(self, name, grown)

    def _compact(self, kept: npt.NDArray[np.intp]) -> None:
        """Keep only the rows `kept` (in their order), renumbered from 0."""
        self._table = KeyTable(self._table.view().take(kept))
        for name in self.__slots__:
            if name != "_table":
                setattr(self, name, getattr(self, name)[kept])
