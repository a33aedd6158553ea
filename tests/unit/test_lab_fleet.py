"""The fleet scenario's pure parts: mx2's addresses in the plan, the plan's flood windows, the flood's sources, the
figures over an MX's own flood (what was blocked on arrival and by whom), the table, the picture, the time until
rolling success stays up, and `govern lab run --fleet`'s refusals."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from typer.testing import CliRunner

from govern.addr import Prefix
from govern_lab import fleet, fleet_report
from govern_lab.addresses import BOT_RANGES, LINKS, MX2_LINK, MX4, MX_ADDRS, MX_RANGES, link_addrs, overlaps
from govern_lab.report import Sample, time_to_stay


def test_mx2_has_its_own_link_inside_the_mx_ranges_apart_from_every_other_link() -> None:
    for net, outer in zip(MX2_LINK, MX_RANGES, strict=True):
        assert ipaddress.ip_network(net).subnet_of(ipaddress.ip_network(outer))  # type: ignore[arg-type]
    for role, nets in LINKS.items():
        for mine, theirs in zip(MX2_LINK, nets, strict=True):
            assert not ipaddress.ip_network(mine).overlaps(ipaddress.ip_network(theirs)), role
    # The mx link's /64 and mx's own addresses are not on it.
    assert not ipaddress.ip_network(MX2_LINK[1]).overlaps(ipaddress.ip_network("2001:db8:25::/64"))
    assert ipaddress.ip_address(MX4) not in ipaddress.ip_network(MX2_LINK[0])
    # mx2 is its link's second host, the router its first, as on the client links.
    r4, c4, r6, c6 = link_addrs("mx2")
    assert (c4, c6) == MX_ADDRS["mx2"] and (r4, r6) == ("203.0.113.89", "2001:db8:25:25::1")


def test_time_to_stay_counts_from_the_last_dip() -> None:
    rolling = [(0.0, 1.0), (10.0, 0.5), (12.0, 0.95), (14.0, 0.4), (17.0, 0.92), (20.0, 1.0), (40.0, 0.1)]
    assert time_to_stay(rolling, 10.0, 30.0) == 7.0  # back at 12 s, down again at 14 s, up for good from 17 s
    assert time_to_stay([(10.0, 1.0), (11.0, 0.9)], 10.0, 30.0) == 0.0
    assert time_to_stay([(10.0, 1.0), (29.0, 0.5)], 10.0, 30.0) is None
    # Dips outside the window do not count.
    assert time_to_stay([(5.0, 0.1), (11.0, 1.0), (31.0, 0.1)], 10.0, 30.0) == 0.0


def test_the_flood_moves_to_mx2_after_mx1_and_the_run_outlasts_its_transactions() -> None:
    for plan in (fleet.FleetPlan(), fleet.FleetPlan.short()):
        (s1, e1), (s2, e2) = plan.floods["mx"], plan.floods["mx2"]
        assert s1 == plan.warmup and e1 - s1 == e2 - s2 == plan.flood_length
        assert s2 == e1 + plan.move_after > e1
        assert plan.duration >= e2 + plan.client_timeout
    short = fleet.FleetPlan.short()
    assert short.duration <= 60  # the CI test's budget: about 70 s with the lab's set-up


def test_the_flood_sends_from_the_same_bot_sources_every_time() -> None:
    plan = fleet.FleetPlan.short()
    sources = fleet.bot_sources(plan)
    assert sources == fleet.bot_sources(plan)
    # 30 IPv4 hogs and 10 IPv6 hogs, all inside the bot ranges.
    assert len(sources) == len(set(sources)) == 40
    assert all(overlaps(s, BOT_RANGES) for s in sources)
    assert {b.role for b in plan.flood} == {"hogs"}


def test_covered_and_origins() -> None:
    sources = ["198.18.10.1", "198.18.10.2", "198.18.30.1", "2001:db8:bad:10::7", "2001:db8:bad:11::7"]
    blocks = ["198.18.10.0/24", "198.18.30.1", "2001:db8:bad:10::/64"]
    hit = fleet_report.covered(sources, blocks)
    assert hit == ["198.18.10.1", "198.18.10.2", "198.18.30.1", "2001:db8:bad:10::7"]
    entries = [
        {"kind": "block", "prefix": "198.18.10.0/24", "from": "mx1"},
        {"kind": "throttle", "prefix": "198.18.30.0/24"},
        {"kind": "block", "prefix": "198.18.30.1", "from": ""},
        {"kind": "block", "prefix": "2001:db8:bad:10::/64", "from": "mx1"},
    ]
    assert fleet_report.origins(hit, entries) == {"mx1": 3, "own": 1}


def _figures(mx: str, bots: list[int], applied: int | None) -> fleet_report.MxFigures:
    samples = [
        Sample(float(t), sessions=60, queued=10, blocked=3, throttled=0, bot_sessions=b) for t, b in enumerate(bots)
    ]
    legit = [{"t_start": float(t), "ok": t % 4 != 0, "latency": 0.1} for t in range(len(bots))]
    status = {"fleet": {"state": "connected", "applied": applied}, "blocks_by_reason": {"fleet": applied}}
    return fleet_report.figures(
        mx,
        (2.0, 6.0),
        legit,
        legit,
        [(float(t), 0.5 if t == 3 else 1.0) for t in range(len(bots))],
        samples,
        (["198.18.10.1"] * 40, {"mx1": 40}, 54),
        54,
        status if applied is not None else None,
    )


def test_figures_cover_only_the_mxs_own_flood() -> None:
    m = _figures("mx2", [0, 90, 10, 20, 30, 0, 99], 7)
    assert (m.bot_sessions_peak, m.bot_sessions_mean) == (30, 15.0)  # t = 2..5, not the 90 before nor 99 after
    assert (m.smtpd_busy_peak, m.smtpd_busy_mean) == (50, 50.0)
    assert m.legit["attempted"] == 4 and m.legit["delivered"] == 3
    assert m.time_to_stay == 2.0 and m.fleet_applied == 7
    assert _figures("mx2", [0] * 7, None).fleet_applied is None


def test_table_and_picture(tmp_path: Path) -> None:
    runs = [
        fleet_report.FleetResult(name, _figures("mx1", [5] * 7, a), _figures("mx2", [b] * 7, a))
        for name, a, b in (("alone", None, 40), ("sharing", 7, 0))
    ]
    text = fleet_report.table(runs)
    lines = text.splitlines()
    assert lines[0] == "| during its own flood | mx1 alone | mx2 alone | mx1 sharing | mx2 sharing |"
    row = next(line for line in lines if line.startswith("| bot sessions held"))
    assert row.split("|")[2:6] == [" 5 / 5.0 ", " 40 / 40.0 ", " 5 / 5.0 ", " 0 / 0.0 "]
    row = next(line for line in lines if line.startswith("| bot sources blocked on arrival"))
    assert "40 of 54 (40 from mx1)" in row
    row = next(line for line in lines if line.startswith("| blocks applied from the fleet"))
    assert row.split("|")[2:6] == [" - ", " - ", " 7 ", " 7 "]
    fleet_report.plot(runs, str(tmp_path / "mx2.png"))
    assert (tmp_path / "mx2.png").read_bytes().startswith(b"\x89PNG")
    assert fleet_report.FleetResult.__name__ in repr(runs[0])
    assert '"run": "sharing"' in runs[1].to_json()


@pytest.mark.parametrize(
    "args",
    [["--fleet", "flood"], ["--fleet", "--matrix"], ["--fleet", "--scenario", "silent"], ["--fleet", "--peer", "none"]],
)
def test_fleet_takes_only_short_and_out(args: list[str]) -> None:
    from govern_lab.cli import lab_app

    res = CliRunner().invoke(lab_app, ["run", *args])
    assert res.exit_code == 2 and "--fleet" in res.output, res.output


def test_fleet_is_in_the_help() -> None:
    from govern_lab.cli import lab_app

    res = CliRunner().invoke(lab_app, ["run", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "--fleet" in res.output and "redis-server" in res.output


def test_the_fleet_config_names_the_host_and_key() -> None:
    cfg = fleet.fleet_config("unix:///tmp/x/redis.sock", "mx2", Path("/tmp/x/fleet.key"))
    import tomllib

    assert tomllib.loads(cfg)["fleet"] == {
        "url": "unix:///tmp/x/redis.sock",
        "name": "mx2",
        "key_file": "/tmp/x/fleet.key",
    }
    assert Prefix.parse(MX_ADDRS["mx2"][0]).is_host
