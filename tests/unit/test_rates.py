"""Turning the kernel's cumulative per-source counters into per-tick and per-minute counts."""

from __future__ import annotations

from govern.addr import Prefix
from govern.observe.netstat import deltas, parse
from govern.observe.rates import RateWindow

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
