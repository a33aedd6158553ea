"""The adversary matrix without a lab: scenarios as data (every bot's arguments parse and stay in the bot ranges),
the figures of a cell (stays-at-90%, bot-held sessions, legitimate addresses in punitive sets, patient senders'
delivery) and the table."""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import replace
from typing import Any

import pytest

from govern import config
from govern_lab import matrix as mx
from govern_lab import report
from govern_lab.addresses import BOT_RANGES
from govern_lab.postfix import POSTSCREEN, POSTSCREEN_MASTER_CF, POSTSCREEN_TUNED
from govern_lab.traffic import bots, command, sources


def test_the_matrix_has_the_scenarios_asked_for() -> None:
    assert list(mx.SCENARIOS) == [
        "silent", "lone", "drip", "babble", "slowtalk", "loopers", "lone-loopers", "unlogged-loopers", "slow-loopers",
        "tls-loopers",
        "provers", "lone-provers", "rcpt-provers", "deliverers", "quitters", "pretalk",
        "reconnect", "ipv6", "synflood", "mixed", "postscreen",
    ]  # fmt: skip
    assert mx.PEERS == ("none", "fail2ban", "postscreen", "govern")
    assert mx.SCENARIOS["postscreen"].postscreen and mx.SCENARIOS["postscreen"].bots == mx.SCENARIOS["mixed"].bots
    mixed_roles = {b.role for b in mx.SCENARIOS["mixed"].bots}
    assert mixed_roles == {"hogs", "drip", "babble", "slowtalk", "pretalk", "reconnect", "synflood"}
    # A swarm whose sources each open one connection, as a sender does: no crowd for the first contacts' lane.
    assert "--per-source" in (lone := mx.SCENARIOS["lone"].bots[0].args) and lone[lone.index("--per-source") + 1] == "1"
    assert mx.SCENARIOS["synflood"].unanswered == ("198.18.128.0/17",)
    assert all(s.about for s in mx.MATRIX)
    assert {b.role for b in mx.SCENARIOS["provers"].bots} == {"prove"}
    # A setting of govern's, not another flood: the lone-loopers against a govern that follows no MTA log, so the
    # kernel's count of replies proves sources; govern's config takes it, and no other scenario sets anything.
    unlogged = mx.SCENARIOS["unlogged-loopers"]
    assert unlogged.bots == mx.SCENARIOS["lone-loopers"].bots
    assert tomllib.loads(unlogged.govern) == {"trust": {"postfix_log": ""}}
    assert config.from_mapping(tomllib.loads(unlogged.govern))["trust"]["postfix_log"] == ""
    assert [s.name for s in mx.MATRIX if s.govern] == ["unlogged-loopers"]


@pytest.mark.parametrize("scn", mx.MATRIX, ids=lambda s: s.name)
def test_every_bot_of_every_scenario_parses_and_stays_in_the_bot_ranges(scn: mx.Scenario) -> None:
    for b in scn.bots:
        ns = command._parser().parse_args([b.role, "--dst", "203.0.113.25", "--dst", "2001:db8:25::25",
                                           "--duration", "30", *b.args])  # fmt: skip
        opts = command.options(ns)
        nets = sources.resolve_sources(b.role, opts, BOT_RANGES)
        assert nets
        if b.role != "synflood":
            pairs, _ = bots.bot_setup(b.role, opts)  # the addresses can be picked (enough hosts or /64s)
            assert pairs
    for r in scn.unanswered:
        assert ipaddress.IPv4Network(r).subnet_of(ipaddress.IPv4Network("198.18.0.0/15"))


def test_the_floods_are_sized_to_hurt() -> None:
    def sessions(scn: mx.Scenario) -> int:
        total = 0
        for b in scn.bots:
            args = dict(zip(b.args[::2], b.args[1::2], strict=False))
            if b.role in ("hogs", "drip", "babble", "slowtalk", "prove", "pretalk"):
                total += int(args["--count"]) * int(args.get("--per-source", "2"))
        return total

    for name in ("silent", "drip", "ipv6"):
        assert sessions(mx.SCENARIOS[name]) == 4000  # 2,000 sources x 2
    assert all(sessions(s) >= 1000 for s in mx.MATRIX if s.name not in ("reconnect",))


def test_postscreen_settings_per_column() -> None:
    plain, mixed = mx.SCENARIOS["silent"], mx.SCENARIOS["postscreen"]
    assert mx._postscreen_settings(plain, "none") is None and mx._postscreen_settings(plain, "govern") is None
    assert mx._postscreen_settings(plain, "postscreen") is POSTSCREEN_TUNED
    assert mx._postscreen_settings(mixed, "govern") is POSTSCREEN
    assert mx._postscreen_settings(mixed, "postscreen") is POSTSCREEN_TUNED
    assert POSTSCREEN["postscreen_greet_action"] == "enforce"
    assert "192.0.2.0/24" in POSTSCREEN_TUNED["postscreen_access_list"] or "cidr:" in POSTSCREEN_TUNED[
        "postscreen_access_list"]  # fmt: skip
    assert "1 postscreen" in POSTSCREEN_MASTER_CF and "smtpd      pass" in POSTSCREEN_MASTER_CF


def test_classify_legitimate_addresses_in_sets() -> None:
    got = mx.classify(["192.0.2.10", "198.51.100.3", "198.51.100.200", "2001:db8:51:100::7", "198.51.100.20",
                       "198.18.1.1", "198.51.100.0/24"])  # fmt: skip
    assert got["trusted"] == ["192.0.2.10"]
    assert got["known"] == ["198.51.100.0/24", "198.51.100.3"]  # an aggregate over them counts
    assert got["strangers"] == ["198.51.100.0/24", "198.51.100.200", "2001:db8:51:100::7"]
    assert got["slowlegit"] == ["198.51.100.0/24", "198.51.100.20"]
    assert mx.classify([]) == {"trusted": [], "known": [], "strangers": [], "slowlegit": []}


def test_stays_ok_after() -> None:
    roll = [(9.0, 1.0), (11.0, 0.5), (13.0, 0.95), (15.0, 0.8), (17.0, 0.92), (19.0, 1.0), (45.0, 0.1)]
    assert mx.stays_ok_after(roll, 10.0, 40.0) == 7.0  # from 17 s on it stays up (45 s is after the flood)
    assert mx.stays_ok_after([(11.0, 1.0), (20.0, 0.95)], 10.0, 40.0) == 0.0
    assert mx.stays_ok_after([(11.0, 1.0), (20.0, 0.5)], 10.0, 40.0) is None
    assert mx.stays_ok_after([], 10.0, 40.0) is None


def sample(t: float, bots: int) -> report.Sample:
    return report.Sample(t=t, sessions=bots + 5, queued=0, blocked=0, throttled=0, bot_sessions=bots)


def test_bot_figures_peak_and_settled_median() -> None:
    samples = [sample(t, b) for t, b in [(9, 0), (10, 40), (11, 120), (12, 90), (13, 20), (14, 10), (15, 30),
                                         (16, 10), (40, 60), (41, 99)]]  # fmt: skip
    peak, median = mx.bot_figures(samples, 10.0, 40.0)
    assert peak == 120 and median == 15  # from 13 s to 40 s (excluded): 20, 10, 30, 10
    assert mx.bot_figures([], 10.0, 40.0) == (0, None)


def ev(t: float, ok: bool, cut: bool = False) -> dict[str, Any]:
    return {"t_start": t, "ok": ok, "cut": cut, "latency": 1.0, "stage": None if ok else "banner", "reason": "x"}


def test_patient_senders_still_waiting_count_as_not_delivered() -> None:
    events = [ev(11, True), ev(12, False), ev(13, False, cut=True), ev(50, False, cut=True)]
    s = mx.summarise_patient(events, 10, 40)
    assert s["attempted"] == 3 and s["delivered"] == 1 and s["still_waiting"] == 1 and s["success"] == 0.3333


def test_budget_from_status() -> None:
    assert mx.budget_slots({"budget": {"slots": 24}}) == 24
    assert mx.budget_slots({"mode": {}}) is None and mx.budget_slots(None) is None


def cell(scenario: str, peer: str, known: float, strangers: float, **kw: Any) -> mx.Cell:
    res = report.Result(scenario, 60, None, None, {}, {}, None, False, [], 0, 0, {}, None, None)
    base: dict[str, Any] = {
        "known": {"success": known, "latency_p95": 0.5, "delivered": 9, "attempted": 10},
        "strangers": {"success": strangers, "delivered": 5, "attempted": 10},
        "slowlegit": {"delivered": 3, "attempted": 3},
        "trusted": {"success": 1.0},
        "stays_ok_after": 4.0,
        "bot_sessions_peak": 80,
        "bot_sessions_median": 12.0,
        "in_punitive_sets": mx.classify([]),
        "blocked_peak": 7,
        "budget_slots": None,
        "govern_status": None,
        "result": res,
    }
    base.update(kw)
    return mx.Cell(scenario=scenario, peer=peer, **base)


def test_table_rows_and_percent_of_baseline() -> None:
    base = cell("baseline", "none", 1.0, 0.98, stays_ok_after=None, bot_sessions_median=None)
    rows = [
        cell("silent", "none", 0.25, 0.49, stays_ok_after=None),
        cell("silent", "govern", 0.99, 0.98, in_punitive_sets=mx.classify(["198.51.100.200"])),
    ]
    text = mx.table(rows, base)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["scenario", "peer", "known", "%base"]
    none = lines[2].split()
    assert none[:6] == ["silent", "none", "25.0%", "25%", "49.0%", "50%"] and "never" in none
    gov = lines[3].split()
    assert gov[:3] == ["silent", "govern", "99.0%"] and "strangers:1" in gov and "4s" in gov
    assert lines[1].split()[:2] == ["baseline", "none"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--scenario", "nope"], "unknown scenario or peer 'nope'"),
        (["--scenario", "drip", "--peer", "sendmail"], "unknown scenario or peer 'sendmail'"),
        (["--matrix", "--scenario", "drip"], "--matrix runs every scenario"),
        (["--peer", "govern"], "--peer needs --matrix or --scenario"),
        (["--matrix", "flood"], "not positional scenarios"),
    ],
)
def test_lab_run_matrix_usage_errors_before_anything_runs(argv: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from govern.cli import app

    res = CliRunner().invoke(app, ["lab", "run", *argv])
    assert res.exit_code == 2 and message in res.output, res.output


def test_in_budget_after_is_when_bot_sessions_stay_within_the_budget() -> None:
    def at(t: float, bots: int) -> report.Sample:
        return report.Sample(t=t, sessions=bots, queued=0, blocked=0, throttled=0, bot_sessions=bots)

    samples = [at(9, 0), at(10, 80), at(11, 98), at(14, 40), at(15, 30), at(16, 12), at(30, 20)]
    assert mx.in_budget_after(samples, 10, 40, 30) == 5.0
    assert mx.in_budget_after([at(10, 5), at(20, 30)], 10, 40, 30) == 0.0
    assert mx.in_budget_after([at(10, 5), at(20, 31)], 10, 40, 30) is None
    assert mx.in_budget_after([], 10, 40, 30) is None
    # With govern's proven sets read, only the sessions of unproven bot-range sources count against the budget:
    # the quitters, each proven by a message the MTA logged, hold sessions the budget does not cap.
    proven = [replace(at(10, 80), unproven_bot_sessions=25), replace(at(12, 90), unproven_bot_sessions=31)]
    assert mx.in_budget_after([*proven, replace(at(13, 60), unproven_bot_sessions=20)], 10, 40, 30) == 3.0
    assert mx.in_budget_after([replace(at(10, 80), unproven_bot_sessions=30)], 10, 40, 30) == 0.0
