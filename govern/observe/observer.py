"""The Observer: one Snapshot per tick from sock_diag (sessions and listeners), the backend's kernel-side SYN
counters (new connections, so a connection that opens and closes within a tick still counts) and TcpExt.

A calm tick may reuse the last scan's sockets (`rescan=False`: the daemon asks for a scan every few ticks in normal
mode, every tick under pressure): the walk of every socket is most of a tick's cost, and in normal mode nothing is
judged by a socket's state to the second. Its accept queues are read anew all the same. Any tick reads the SYN
counters unless the backend can tell that none has moved or timed out since the last read
(Enforcer.syn_counts_unchanged), or the last read was dear for the tick's pace (ReadPace: CALM_READS in normal mode,
PRESSED_READS under pressure; none on a tick a call between ticks asked for): then the read waits until reads have
cost at most the pace's share of a core, for at most its seconds, and its new connections count over the whole time
since the last one (Snapshot.counted_over).

The sources that hold sockets (a few per socket) become SourceStats records; those seen only by their connection
attempts, up to a million in a flood, stay numpy columns (model.Sources), so a tick costs a few vectorised passes
over them and the snapshot ~17 bytes a source (the addresses are the rate window's own columns)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import NamedTuple

import numpy as np

from govern.addr import Prefix, PrefixSet
from govern.core.modes import totals
from govern.core.policy import Policy
from govern.edges import Counters, SocketSource
from govern.heap import give_back
from govern.keys import keys_of
from govern.model import Attempts, Scan, ScanOptions, Snapshot, Sources, SourceStats
from govern.observe.netstat import deltas
from govern.observe.rates import RateWindow
from govern.phases import PhaseClock


class ReadPace(NamedTuple):
    """How dear a tick's reads of the SYN counts may be: the next read waits until the reads have cost at most
    `share` of a core since the last one, and at most `most` seconds."""

    share: float
    most: float


# Settled (normal mode, nothing pressing between ticks): a few connections a second among a flood's worth of sources
# held for their two minutes, or a busy host's, change no judgement of normal mode within seconds (its limits are per
# minute). Reading 100,000 held sources costs ~0.25 s of CPU (docs/benchmarks.md).
CALM_READS = ReadPace(0.01, 10.0)
# Under pressure the wave's judgements by rate are per minute too, and a call for a higher mode between ticks still
# reads at once; but what the daemon spends must not grow with a botnet's size: 250,000 sources read 0.6 s.
PRESSED_READS = ReadPace(0.10, 2.0)
_STANDINGS_STALE = 1 << 16  # sources gone since they were last seen that the standing cache may keep
# A rate window row's mark: its source's allowlist standing (0: not asked yet under the current allowlist).
_STRANGER, _ALLOWLISTED = 1, 2
_ASK_AT_ONCE = 1 << 14
_LOOK_AT_ONCE = 1 << 18  # rows _foreign_new looks over at a time


class Observer:
    def __init__(
        self,
        sockets: SocketSource,
        syn_counts: Callable[[], Mapping[Prefix, int]],
        counters: Counters,
        phases: PhaseClock | None = None,
        slotted: Callable[[], int | None] = lambda: None,
        syn_unchanged: Callable[[], bool] = lambda: False,
        cpu: Callable[[], float] = time.process_time,
    ) -> None:
        self.sockets = sockets
        self.phases = phases or PhaseClock()  # the Governor's, so a tick's laps run through the snapshot
        self.syn_counts = syn_counts
        self.syn_unchanged = syn_unchanged
        self.syn_reads = 0  # how many ticks read the SYN counters (tests)
        self.cpu = cpu
        self.counted_at: float | None = None  # when they were last read (`govern status`)
        self._read_cost = 0.0  # CPU seconds the last read of the SYN counts took
        self.slotted = slotted
        self.counters = counters
        self.rates = RateWindow()
        self._netstat = counters.read()
        self._last: float | None = None
        self._scan: Scan | None = None  # the last scan of the sockets, for the calm ticks that reuse it
        self.scans = 0  # how many there were (tests)
        self.scanned_at: float | None = None  # when the last one was (`govern status`: how old its counts are)
        # Each source's allowlist standing, kept from tick to tick (most sources outlive a tick; asking the
        # allowlist costs ~1 us a source, a dict lookup ~50 ns): for those holding sockets in this dict, for the
        # others in the rate window's marks.
        self._allow: PrefixSet | None = None
        self._allowlisted: dict[Prefix, bool] = {}

    def _standing(self, p: Prefix) -> bool:
        hit = self._allowlisted.get(p)
        if hit is None:
            assert self._allow is not None
            hit = self._allowlisted[p] = self._allow.intersects(p)
        return hit

    def snapshot(
        self,
        policy: Policy,
        now: float,
        trusted: frozenset[Prefix] = frozenset(),
        *,
        rescan: bool = True,
        pace: ReadPace | None = None,
    ) -> Snapshot:
        """This tick's view; with `rescan` False, of the sockets as the last scan counted them; with a `pace`, perhaps
        of the SYN counts of a few seconds ago (see above); without one, of the counts now."""
        snap = self._snapshot(policy, now, trusted, rescan, pace)
        give_back()  # after the tick's temporaries are freed, so that their pages go back too
        self.phases.lap("sources")
        return snap

    def _snapshot(
        self, policy: Policy, now: float, trusted: frozenset[Prefix], rescan: bool, pace: ReadPace | None
    ) -> Snapshot:
        if rescan or self._scan is None:
            # Idle is counted from the shortest wait anything judges by: the status display's, or an idle cut's.
            idle_after = min((policy.idle_after, *(policy.cut_idle_after or ())))
            scan = self._scan = self.sockets.scan(
                ScanOptions(
                    policy.ports,
                    v4_len=policy.v4_len,
                    v6_len=policy.v6_len,
                    idle_after_ms=int(idle_after * 1000),
                    greet_ms=int(policy.greet_floor * 1000),
                    pregreet_cut=policy.pregreet_cut,
                )
            )
            self.scans += 1
            self.scanned_at = now
        else:
            # The accept queues as they are now: a dump of the listeners alone, which the kernel answers without
            # walking the sessions.
            scan = replace(self._scan, listeners=tuple(self.sockets.listeners(policy.ports)))
        self.phases.lap("scan")
        window = self.rates
        waited = None if self.counted_at is None else now - self.counted_at
        dear = pace is not None and waited is not None and waited < min(self._read_cost / pace.share, pace.most)
        if self._scan is not None and (dear or self.syn_unchanged()):
            # Either the last read was dear for the tick's pace (asked first: it costs nothing): the counts move, but
            # read again once the reads have cost at most the pace's share of a core since (docs/benchmarks.md,
            # "Whole daemon"). Or the kernel counted no new connection since the last read and none of the counts
            # it read can have timed out: every count is as that read found it. Either way the window only moves on
            # in time, and what a tick costs follows what changed, not how many sources are held.
            rates = window.still(now)
            counted_over = 0.0
        else:
            began = self.cpu()
            counts = self.syn_counts()
            self.syn_reads += 1
            # The read's buffers are freed by now: their pages go back before the window's step allocates, which
            # would otherwise find them in holes it cannot use (at a million sources ~30 MB of the tick's peak RSS).
            give_back()
            rates = window.advance(counts, now)  # takes the columns: each goes once the window is done with it
            self._read_cost = max(self.cpu() - began, 0.0)
            # A deferred read's new connections came over the whole time since the last one: a rate of them
            # counts over that time, not over this tick's.
            counted_over = 0.0 if self.counted_at is None else now - self.counted_at
            self.counted_at = now
        slotted = self.slotted()
        self.phases.lap("counts")
        # The rates of the sources holding sockets, by their rows in the window (-1: not counted lately).
        socketed = scan.sources
        rows = window.find(keys_of(socketed))
        counted = rows >= 0
        counted[counted] = rates.tracked[rows[counted]]
        at = rows[counted]
        new = np.zeros(len(rows), np.int64)
        minute = np.zeros(len(rows), np.int64)
        new[counted], minute[counted] = rates.new[at], rates.per_minute[at]
        # One record per source holding sockets every tick: built as plain tuple concatenations (SockCounts'
        # fields followed by the two rate fields), which costs a third of calling the NamedTuple constructor.
        make = tuple.__new__
        records: dict[Prefix, SourceStats] = {
            p: make(SourceStats, (*c, n, m))
            for (p, c), n, m in zip(socketed.items(), new.tolist(), minute.tolist(), strict=True)
        }
        only = rates.tracked.copy()
        only[at] = False
        attempts = Attempts(window.keys(), only, rates.new, rates.per_minute)
        if policy.allow is not self._allow:  # a new allowlist: every source's standing is asked again
            self._allow, self._allowlisted = policy.allow, {}
            window.clear_marks()
        elif len(self._allowlisted) > 2 * len(records) + _STANDINGS_STALE:
            self._allowlisted = {}
        sums = totals(records, self._standing)
        sums = sums._replace(foreign_new=sums.foreign_new + self._foreign_new(attempts))
        self.phases.lap("sources")
        netstat = self.counters.read()
        self.phases.lap("netstat")
        snap = Snapshot(
            taken_at=now,
            interval=0.0 if self._last is None else now - self._last,
            sources=Sources(records, attempts),
            listeners=scan.listeners,
            counters=deltas(self._netstat, netstat),
            trusted=trusted,
            totals=sums,
            slotted=slotted,
            counted_over=counted_over,
        )
        self._netstat, self._last = netstat, now
        return snap

    def _foreign_new(self, attempts: Attempts) -> int:
        """The attempts of the column sources that are not allowlisted (Totals.foreign_new). The allowlist is
        asked once per source and allowlist, and only about sources that made attempts."""
        marks = self.rates.marks
        active = attempts.listed & (attempts.new > 0)
        # The rows are looked over a stretch at a time and the allowlist asked in slices: a flood's first tick asks
        # about every source, and its million row numbers at once were 8 MB of the tick's peak, a million Prefix
        # objects ~150 MB; 16,384 at a time keep a slice's objects to a few MB.
        for lo in range(0, marks.size, _LOOK_AT_ONCE):
            unknown = np.flatnonzero(active[lo : lo + _LOOK_AT_ONCE] & (marks[lo : lo + _LOOK_AT_ONCE] == 0)) + lo
            if not unknown.size:
                continue
            assert self._allow is not None
            ask = self._allow.intersects
            for at in range(0, unknown.size, _ASK_AT_ONCE):
                part = unknown[at : at + _ASK_AT_ONCE]
                marks[part] = [_ALLOWLISTED if ask(p) else _STRANGER for p in attempts.keys.prefixes(part.tolist())]
        return int(attempts.new.sum(where=active & (marks == _STRANGER)))
