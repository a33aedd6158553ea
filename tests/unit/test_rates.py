"""Turning the kernel's cumulative per-source counters into per-tick and per-minute counts."""

from __future__ import annotations

from collections.abc import Mapping
from unittest.mock import patch

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from govern.addr import Prefix
from govern.keys import keys_of
from govern.observe import rates
from govern.observe.netstat import deltas, parse
from govern.observe.rates import WINDOW, RateWindow

A = Prefix.parse("198.18.0.1")
B = Prefix.parse("198.18.0.2")


def test_deltas_and_minute_rate() -> None:
    w = RateWindow()
    assert w.update({A: 5}, 0.0)[A] == (5, 5)
    assert w.update({A: 8}, 1.0)[A] == (3, 8)
    out = w.update({A: 8, B: 2}, 2.0)
    assert out[A] == (0, 8) and out[B] == (2, 2)


def test_counter_reset_counts_all_as_new() -> None:
    w = RateWindow()
    w.update({A: 50}, 0.0)
    assert w.update({A: 4}, 1.0)[A] == (4, 54)


def test_a_source_missing_from_one_dump_is_not_counted_again_when_it_is_back() -> None:
    # A dump of a set being filled by a flood can miss an element for a tick: its total is not new when it is back.
    w = RateWindow()
    assert w.update({A: 4}, 0.0)[A] == (4, 4)
    assert w.update({}, 1.0)[A] == (0, 4)
    assert w.update({A: 4}, 2.0)[A] == (0, 4)
    for t in range(3, 60, 2):  # flickering for a minute, no new SYN
        w.update({}, float(t))
        w.update({A: 4}, float(t + 1))
    assert w.update({A: 5}, 61.0)[A][0] == 1
    assert w.update({}, 62.0)[A] == (0, w.update({A: 5}, 63.0)[A][1])


def test_steady_attacker_is_never_undercounted() -> None:
    w = RateWindow()
    total = 0
    for t in range(0, 300):
        total += 2  # 120 per minute
        per_min = w.update({A: total}, float(t))[A][1]
        if t >= 60:
            assert 118 <= per_min <= 122, (t, per_min)


def test_quiet_sources_age_out() -> None:
    w = RateWindow()
    w.update({A: 10}, 0.0)
    assert w.update({}, 30.0)[A] == (0, 10)
    w.update({}, 100.0)
    assert A not in w.update({}, 130.0)
    assert len(w) == 0


NETSTAT = """TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops TCPReqQFullDrop
TcpExt: 3 0 10 12 1
IpExt: InNoRoutes InTruncatedPkts
IpExt: 0 0
"""


def test_netstat_parse_and_deltas() -> None:
    before = parse(NETSTAT)
    assert before["ListenOverflows"] == 10 and before["SyncookiesSent"] == 3
    after = dict(before, ListenOverflows=25, ListenDrops=30)
    d = deltas(before, after)
    assert d["ListenOverflows"] == 15 and d["ListenDrops"] == 18 and d["SyncookiesSent"] == 0


class ReferenceWindow:
    """The rate window as it was before its columns (dicts of Prefix objects, a 3-item list per source): the model
    the compact RateWindow must match exactly."""

    def __init__(self) -> None:
        self._last: dict[Prefix, int] = {}
        self._buckets: dict[Prefix, list[float]] = {}

    def update(self, cumulative: Mapping[Prefix, int], now: float) -> dict[Prefix, tuple[int, int]]:
        last = self._last
        out: dict[Prefix, tuple[int, int]] = {}
        for p, total in cumulative.items():
            before = last.get(p) if p in self._buckets else None
            delta = total if before is None or total < before else total - before
            b = self._buckets.get(p)
            if b is None:
                b = self._buckets[p] = [now, 0.0, 0.0]
            self._roll(b, now)
            b[1] += delta
            out[p] = (delta, self._estimate(b, now))
        last.update(cumulative)
        for p, b in list(self._buckets.items()):
            if p in out:
                continue
            self._roll(b, now)
            if b[1] == 0 and b[2] == 0:
                del self._buckets[p]
                last.pop(p, None)
            else:
                out[p] = (0, self._estimate(b, now))
        return out

    @staticmethod
    def _roll(b: list[float], now: float) -> None:
        elapsed = now - b[0]
        if elapsed >= 2 * WINDOW:
            b[0], b[1], b[2] = now, 0.0, 0.0
        elif elapsed >= WINDOW:
            b[0], b[2], b[1] = b[0] + WINDOW, b[1], 0.0

    @staticmethod
    def _estimate(b: list[float], now: float) -> int:
        into = min(max(now - b[0], 0.0), WINDOW)
        return round(b[1] + b[2] * (WINDOW - into) / WINDOW)

    def __len__(self) -> int:
        return len(self._buckets)


# A small pool of sources, so that they come, go and come back: IPv4 hosts and prefixes, IPv6 /64s and /128s whose
# values use both 64-bit halves, and two sources whose values differ only in a half or in the length.
POOL = [
    Prefix.parse("198.18.0.1"),
    Prefix.parse("198.18.0.2"),
    Prefix.parse("198.18.0.0/24"),
    Prefix.parse("198.18.0.0/23"),
    Prefix.parse("0.0.0.0/0"),
    Prefix.parse("255.255.255.255"),
    Prefix.parse("2001:db8:bad::/64"),
    Prefix.parse("2001:db8:bad:0:ffff:ffff:ffff:ffff"),
    Prefix.parse("2001:db8:bad::1"),
    Prefix.parse("::1"),
    Prefix.parse("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
    Prefix(6, 0xC6120001, 128),  # ::198.18.0.1: the IPv4 host's value under another version
]

ticks = st.lists(
    st.tuples(
        # time steps: mostly under a window, some across one or two, sometimes backwards
        st.one_of(st.floats(0.0, 30.0), st.sampled_from([0.0, 59.999, 60.0, 60.5, 119.0, 120.0, 200.0, -5.0])),
        st.dictionaries(st.sampled_from(POOL), st.integers(0, 2**40), max_size=len(POOL)),
    ),
    max_size=40,
)


@settings(max_examples=400, deadline=None)
@given(ticks, st.floats(0.0, 2e9))
def test_compact_window_matches_the_reference(seq: list[tuple[float, dict[Prefix, int]]], t0: float) -> None:
    new, ref = RateWindow(), ReferenceWindow()
    now = t0
    for step, counts in seq:
        now += step
        assert new.update(counts, now) == ref.update(counts, now)
        assert len(new) == len(ref)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 3000), st.integers(1, 130)), min_size=1, max_size=12))
def test_compact_window_matches_the_reference_through_growth_and_compaction(
    seq: list[tuple[int, int, int]],
) -> None:
    """Thousands of sources coming and going: the table grows, and rows no longer tracked are dropped (renumbered;
    from 16 of them here, so that it happens often)."""
    new, ref = RateWindow(), ReferenceWindow()
    now = 1_700_000_000.0
    with patch.object(rates, "_COMPACT_MIN", 16):
        for lo, span, step in seq:
            now += step
            counts = {Prefix(4, 0xC6120000 + i, 32): (i * 7 + int(now)) % 50 for i in range(lo, lo + span)}
            assert new.update(counts, now) == ref.update(counts, now)
            assert len(new) == len(ref)


@settings(max_examples=200, deadline=None)
@given(ticks, st.floats(0.0, 2e9), st.integers(1, 5))
def test_the_window_in_slices_matches_the_reference(
    seq: list[tuple[float, dict[Prefix, int]]], t0: float, batch: int
) -> None:
    """advance takes its rows a slice at a time (64k in the daemon): slices of a few rows, so that every pass ends
    mid-tick, at every boundary, give what the reference gives."""
    new, ref = RateWindow(), ReferenceWindow()
    now = t0
    with patch.object(rates, "_BATCH", batch):
        for step, counts in seq:
            now += step
            assert new.update(counts, now) == ref.update(counts, now)
            assert len(new) == len(ref)


@settings(max_examples=20, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 3000), st.integers(1, 130)), min_size=1, max_size=8),
    st.integers(1, 700),
)
def test_the_window_in_slices_matches_the_reference_through_growth_and_compaction(
    seq: list[tuple[int, int, int]], batch: int
) -> None:
    new, ref = RateWindow(), ReferenceWindow()
    now = 1_700_000_000.0
    with patch.object(rates, "_COMPACT_MIN", 16), patch.object(rates, "_BATCH", batch):
        for lo, span, step in seq:
            now += step
            counts = {Prefix(4, 0xC6120000 + i, 32): (i * 7 + int(now)) % 50 for i in range(lo, lo + span)}
            assert new.update(counts, now) == ref.update(counts, now)
            assert len(new) == len(ref)


def test_rows_no_longer_tracked_are_dropped() -> None:
    w = RateWindow()
    c = Prefix.parse("198.51.100.7")
    many = {Prefix(4, 0xC6130000 + i, 32): 1 for i in range(10_000)}
    w.update(many, 0.0)
    w.update({c: 1}, 1.0)
    assert w.keys().size == 10_001
    w.update({c: 1}, 200.0)  # the 10,000 ran out of their window: their rows go, c's is renumbered
    assert len(w) == 1 and w.keys().prefixes() == [c]
    assert w.update({c: 3}, 201.0) == {c: (2, 2)}


def test_advance_gives_columns_by_row() -> None:
    w = RateWindow()
    w.update({A: 5, B: 1}, 0.0)
    r = w.advance({A: 8}, 1.0)
    rows = w.find(keys_of([A, B]))
    assert r.tracked[rows].tolist() == [True, True]
    assert r.new[rows].tolist() == [3, 0] and r.per_minute[rows].tolist() == [8, 1]
    assert w.keys().prefixes(rows.tolist()) == [A, B]


@settings(max_examples=40, deadline=None)
@given(ticks, st.floats(0.0, 2e9), st.sampled_from(["=u8", ">u8"]))
def test_the_kernels_counts_as_columns_count_as_a_mapping_does(
    seq: list[tuple[float, dict[Prefix, int]]], t0: float, order: str
) -> None:
    """The nft backend hands the window govern.keys.Counted (columns, no Prefix per source; the totals the kernel's
    big-endian words as read, or this machine's order once joined); the window counts them exactly as it counts the
    same counts as a dict."""
    from govern.keys import Counted

    columns, mapping = RateWindow(), RateWindow()
    now = t0
    for step, counts in seq:
        now += step
        as_columns = Counted(keys_of(list(counts)), np.fromiter(counts.values(), order, len(counts)))
        assert columns.update(as_columns, now) == mapping.update(counts, now)
        assert len(as_columns) == 0  # taken: the window let each column go once done with it


def _as_update(w: RateWindow, r: rates.Rates) -> dict[Prefix, tuple[int, int]]:
    rows = np.flatnonzero(r.tracked)
    pairs = zip(r.new[rows].tolist(), r.per_minute[rows].tolist(), strict=True)
    return dict(zip(w.keys().prefixes(rows.tolist()), pairs, strict=True))


@settings(max_examples=300, deadline=None)
@given(ticks, st.lists(st.booleans(), min_size=40, max_size=40), st.floats(0.0, 2e9), st.integers(1, 5))
def test_a_still_tick_counts_as_the_same_counts_read_again(
    seq: list[tuple[float, dict[Prefix, int]]], still: list[bool], t0: float, batch: int
) -> None:
    """A calm tick whose counters the kernel did not move skips the read (RateWindow.still): the window gives what
    it would have given had the last counts been read again, and goes on exactly as the reference does after."""
    new, ref = RateWindow(), ReferenceWindow()
    now, last = t0, None
    with patch.object(rates, "_BATCH", batch):
        for (step, counts), quiet in zip(seq, still, strict=False):
            now += step
            if quiet and last is not None:
                assert _as_update(new, new.still(now)) == ref.update(last, now)
            else:
                assert new.update(counts, now) == ref.update(counts, now)
                last = counts
            assert len(new) == len(ref)


def test_still_ticks_let_quiet_sources_age_out() -> None:
    w = RateWindow()
    w.update({A: 3}, 0.0)
    assert _as_update(w, w.still(30.0)) == {A: (0, 3)}
    assert _as_update(w, w.still(90.0)) == {A: (0, 2)}  # the previous minute's share of its 3
    # Its element is still in the last read, so the source stays tracked (as a read of the same counts keeps it).
    assert _as_update(w, w.still(200.0)) == {A: (0, 0)}
    # The next read no longer has it: gone.
    assert w.update({}, 201.0) == {} and len(w) == 0
