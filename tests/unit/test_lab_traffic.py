"""The pure parts of the lab's traffic generators: summaries the runner reads, address picking, the lab's address
plan as a safety check, per-second counters, SYN crafting (scapy is the oracle) and the command line."""

from __future__ import annotations

import ipaddress
import random
from typing import Any

import pytest

from govern_lab.addresses import BOT_RANGES
from govern_lab.traffic import analysis, command, counters, options, sources, syn


def ev(
    t: float, ok: bool, latency: float = 0.1, *, stage: str = "banner", reason: str = "timeout", cut: bool = False
) -> dict[str, Any]:
    return {
        "t_start": t,
        "ok": ok,
        "latency": latency,
        "stage": None if ok else stage,
        "reason": None if ok else reason,
        "cut": cut,
    }


def test_summarise_rates_latency_and_reasons() -> None:
    events = [ev(0, True, 0.1), ev(1, True, 0.2), ev(2, True, 0.3), ev(3, True, 0.4), ev(4, True, 0.5)]
    events += [ev(5, False), ev(6, False), ev(7, False, stage="rcpt", reason="reply 450"), ev(8, False, cut=True)]
    s = analysis.summarise(events)
    assert s["transactions"] == 8 and s["ok"] == 5 and s["failed"] == 3 and s["cut"] == 1
    assert s["success_rate"] == 0.625
    assert s["latency_p50"] == 0.3 and s["latency_p95"] == pytest.approx(0.48)
    assert s["failures"] == {"banner: timeout": 2, "rcpt: reply 450": 1}


def test_summarise_empty_and_all_failed() -> None:
    assert analysis.summarise([])["success_rate"] is None
    s = analysis.summarise([ev(0, False), ev(1, False, cut=True)])
    assert s["success_rate"] == 0.0 and s["latency_p50"] is None and s["cut"] == 1


def test_rolling_success_counts_transactions_started_in_the_trailing_window() -> None:
    events = [ev(t, t < 10 or t >= 14) for t in range(20)]  # one a second; those started 10..13 fail
    roll = dict(analysis.rolling_success(events, window=5.0))
    assert roll[9] == 1.0
    assert roll[10] == 0.8  # (5, 10]: 6..10, one failed
    assert roll[13] == 0.2 and roll[14] == 0.2  # (9, 14]: 10..14
    assert roll[16] == 0.6 and roll[17] == 0.8 and roll[18] == 1.0  # (13, 18]: 14..18
    assert list(roll) == sorted(roll)


def test_rolling_success_ties_unsorted_input_and_cut() -> None:
    events = [ev(2.0, False), ev(1.0, True), ev(2.0, True), ev(2.5, True, cut=True), ev(2.5, False, cut=True)]
    assert analysis.rolling_success(events, window=5.0) == [(1.0, 1.0), (2.0, 2 / 3)]
    assert analysis.rolling_success([]) == []
    with pytest.raises(ValueError):
        analysis.rolling_success(events, window=0)


def test_rolling_success_feeds_time_to_mitigate() -> None:
    from govern_lab.report import time_to_mitigate

    events = [ev(t / 2, not 20 <= t < 30) for t in range(60)]  # failures for transactions started at 10..14.5 s
    assert time_to_mitigate(analysis.rolling_success(events), 10.0) == pytest.approx(
        9.0
    )  # (14, 19]: one failure in ten


def net(text: str) -> sources.Network:
    return ipaddress.ip_network(text)


def test_host_span() -> None:
    assert sources.host_span(net("198.51.100.0/29")) == (int(ipaddress.ip_address("198.51.100.1")), 6)
    assert sources.host_span(net("192.0.2.10/32"))[1] == 1
    assert sources.host_span(net("198.18.0.0/31"))[1] == 2
    assert sources.host_span(net("2001:db8:51::/125"))[1] == 7
    assert sources.host_span(net("2001:db8:2::25/128"))[1] == 1
    assert sources.host_span(net("2001:db8:bad::/48"))[1] == 2**80 - 1


def test_pick_sources_every_host_of_a_small_prefix_in_order() -> None:
    rng = random.Random(0)
    assert sources.pick_sources([net("198.51.100.0/29")], None, rng) == [f"198.51.100.{i}" for i in range(1, 7)]
    assert sources.pick_sources([net("192.0.2.10/32")], None, rng) == ["192.0.2.10"]


def test_pick_sources_spreads_over_prefixes_distinct_inside_and_seeded() -> None:
    nets = [net("198.18.0.0/16"), net("2001:db8:bad::/48")]
    a = sources.pick_sources(nets, 3000, random.Random(7))
    assert a == sources.pick_sources(nets, 3000, random.Random(7))
    assert a != sources.pick_sources(nets, 3000, random.Random(8))
    assert len(set(a)) == 3000
    v4 = [x for x in a if ":" not in x]
    assert len(v4) == 1500
    assert all(ipaddress.ip_address(x) in nets[0] for x in v4)
    assert all(ipaddress.ip_address(x) in nets[1] for x in a if ":" in x)
    assert "198.18.0.0" not in a and "198.18.255.255" not in a
    # without --count a big prefix gives the role's default
    assert len(sources.pick_sources(nets, None, random.Random(0), default=10)) == 10


def test_pick_sources_uneven_and_impossible() -> None:
    got = sources.pick_sources([net("198.18.1.0/30"), net("198.18.2.0/24")], 10, random.Random(0))
    assert sorted(got)[:2] == ["198.18.1.1", "198.18.1.2"] and len(set(got)) == 10
    with pytest.raises(options.TrafficError, match="more than the 6"):
        sources.pick_sources([net("198.51.100.0/29")], 7, random.Random(0))
    with pytest.raises(options.TrafficError):
        sources.pick_sources([net("198.51.100.0/29")], 0, random.Random(0))


def test_pair_sources_by_family() -> None:
    pairs = sources.pair_sources(["198.18.0.1", "2001:db8:bad::1", "198.18.0.2"], ["203.0.113.25", "2001:db8:25::25"])
    assert pairs == [
        ("198.18.0.1", "203.0.113.25"),
        ("2001:db8:bad::1", "2001:db8:25::25"),
        ("198.18.0.2", "203.0.113.25"),
    ]
    with pytest.raises(options.TrafficError, match="no --dst"):
        sources.pair_sources(["2001:db8:bad::1"], ["203.0.113.25"])


@pytest.mark.parametrize("dst", ["8.8.8.8", "192.0.2.1", "203.0.114.25", "2001:db8:26::25", "::1", "mx.lab.test"])
def test_only_the_lab_mx_range_is_a_destination(dst: str) -> None:
    with pytest.raises(options.TrafficError):
        sources.check_dst([dst])


def test_sources_stay_in_the_plan_and_spoofing_in_the_bot_range() -> None:
    assert sources.check_dst(["203.0.113.25", "2001:db8:25:0::25"]) == ("203.0.113.25", "2001:db8:25::25")
    with pytest.raises(options.TrafficError, match="outside"):
        sources.check_sources(["10.0.0.0/8"])
    with pytest.raises(options.TrafficError, match="outside"):
        sources.check_sources(["198.18.0.0/14"])  # wider than the bot range
    sources.check_sources(["198.19.0.0/16", "192.0.2.10/32", "2001:db8:51::/64"])
    opts = options.FloodOptions(dst=("203.0.113.25",), duration=1, sources=("198.51.100.0/24",))
    with pytest.raises(options.TrafficError, match="outside"):
        sources.resolve_sources("synflood", opts, BOT_RANGES)


def test_default_sources_follow_the_destinations_families() -> None:
    v4 = options.HoldOptions(dst=("203.0.113.25",), duration=1)
    assert [str(n) for n in sources.resolve_sources("hogs", v4)] == ["198.18.0.0/16"]
    both = options.TxnOptions(dst=("203.0.113.25", "2001:db8:25::25"), duration=1)
    assert [str(n) for n in sources.resolve_sources("legit", both)] == ["198.51.100.0/29", "2001:db8:51::/125"]
    explicit_v6 = options.HoldOptions(dst=("203.0.113.25",), duration=1, sources=("2001:db8:bad::/64",))
    with pytest.raises(options.TrafficError, match="no --dst"):
        sources.resolve_sources("hogs", explicit_v6)


@pytest.mark.parametrize("duration", [0, -1, options.MAX_DURATION + 1])
def test_duration_is_bounded(duration: float) -> None:
    with pytest.raises(options.TrafficError, match="duration"):
        sources.check_common(options.Common(dst=("203.0.113.25",), duration=duration))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_timeline_rows_gauge_totals_and_freeze() -> None:
    clock = Clock()
    tl = counters.Timeline(("attempted", "dropped", "errors"), 100.0, seconds=4, clock=clock)
    tl.add("attempted", 3)
    tl.hold(+3)
    clock.now = 102.5  # nothing happened in second 1: it still shows what was held
    tl.add("dropped")
    tl.hold(-1)
    tl.error(ConnectionRefusedError(111, "refused"))
    clock.now = 104.001  # past the end: counts in the last second
    tl.add("attempted")
    tl.freeze()
    tl.add("attempted", 50)  # shutdown noise after the stop is not traffic
    tl.hold(-2)
    rows, totals = tl.result()
    assert rows == [
        {"t": 0, "attempted": 3, "dropped": 0, "errors": 0, "held": 3},
        {"t": 1, "attempted": 0, "dropped": 0, "errors": 0, "held": 3},
        {"t": 2, "attempted": 0, "dropped": 1, "errors": 1, "held": 2},
        {"t": 3, "attempted": 1, "dropped": 0, "errors": 0, "held": 2},
    ]
    assert totals == {
        "attempted": 4,
        "dropped": 1,
        "errors": 1,
        "held_at_end": 2,
        "max_held": 3,
        "error_kinds": {"refused": 1},
    }


def test_timeline_without_gauge() -> None:
    clock = Clock()
    tl = counters.Timeline(counters.FLOOD_FIELDS, 100.0, seconds=2, gauge=False, clock=clock)
    tl.add("sent")
    tl.freeze()
    rows, totals = tl.result()
    assert rows == [{"t": 0, "sent": 1, "errors": 0, "bytes_sent": 0}]
    assert "held_at_end" not in totals


@pytest.mark.parametrize("dst,src", [("203.0.113.25", "198.18.200.7"), ("2001:db8:25::25", "2001:db8:bad:77::1")])
def test_patched_syns_equal_scapys_own(dst: str, src: str) -> None:
    crafter = syn.SynCrafter(dst, 25)
    rng = random.Random(3)
    for _ in range(50):
        sport, seq = rng.randrange(1024, 65536), rng.getrandbits(32)
        ident = rng.randrange(65536) if ":" not in dst else 0
        addr = ipaddress.ip_address(src) + rng.randrange(1 << 16)
        assert crafter.packet(int(addr), sport, seq, ident) == crafter.scapy_packet(str(addr), sport, seq, ident)


def test_command_line_builds_each_roles_options() -> None:
    p = command._parser()
    base = ["--dst", "203.0.113.25", "--duration", "5"]
    legit = command.options(p.parse_args(["legit", *base, "--rate", "4", "--sources", "198.51.100.0/29"]))
    assert isinstance(legit, options.TxnOptions) and legit.rate == 4.0 and legit.sources == ("198.51.100.0/29",)
    trusted = command.options(p.parse_args(["trusted", *base, "--parallel", "3"]))
    assert isinstance(trusted, options.TxnOptions) and trusted.parallel == 3 and trusted.rate == 0
    hogs = command.options(p.parse_args(["hogs", *base, "--per-source", "25", "--drip", "20"]))
    assert isinstance(hogs, options.HoldOptions) and hogs.per_source == 25 and hogs.drip == 20
    swarm = command.options(p.parse_args(["swarm", *base, "--count", "3000"]))
    assert isinstance(swarm, options.HoldOptions) and swarm.count == 3000 and swarm.ramp == 5.0
    rc = command.options(p.parse_args(["reconnect", *base, "--style", "rst", "--no-banner"]))
    assert isinstance(rc, options.ReconnectOptions) and rc.style == "rst" and not rc.banner
    flood = command.options(p.parse_args(["synflood", *base, "--pps", "2000", "--dst", "2001:db8:25::25"]))
    assert isinstance(flood, options.FloodOptions) and flood.pps == 2000 and len(flood.dst) == 2
    with pytest.raises(SystemExit):
        p.parse_args(["legit", "--dst", "203.0.113.25"])  # --duration is required: every run is bounded


def test_main_refuses_before_doing_anything(capsys: pytest.CaptureFixture[str]) -> None:
    assert command.main(["hogs", "--dst", "8.8.8.8", "--duration", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "outside the lab's MX range" in err


def test_summary_lines() -> None:
    doc: dict[str, Any] = {
        "role": "legit",
        "duration": 3.0,
        "stopped_by": "duration",
        "totals": analysis.summarise([ev(0, True, 0.01), ev(1, False)]),
    }
    assert command.summary_line(doc) == (
        "legit: 2 transactions, 1 ok (50.0%), 1 failed, 0 cut; p50 10 ms, p95 10 ms; 3.0 s (duration)"
    )
