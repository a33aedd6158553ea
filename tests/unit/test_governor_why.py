"""The daemon's `why` request with fake edges: it gathers the standing (allowlist entries with their sources, learned
trust), the snapshot, the sessions and the state's and store's records of a source; every malformed request gets an
error reply, and a failure while explaining never reaches the loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from govern import config, why
from govern.addr import Prefix
from govern.allow.learning import TrustSources
from govern.allow.sources import AllowSources
from govern.daemon import Governor
from govern.errors import KernelError
from govern.fakes import FakeClock, FakeCounters, FakeEnforcer, FakeResolver, FakeSockets, InlineExecutor
from govern.model import SessionInfo, SockCounts
from govern.store import Store

BOT = Prefix.parse("198.18.7.1")


def make(tmp_path: Path, **daemon: object) -> tuple[Governor, FakeSockets, FakeEnforcer, FakeClock]:
    cfg = config.from_mapping(
        {
            "allow": {"cidrs": ["192.0.2.0/24"]},
            "daemon": {"state_dir": str(tmp_path / "state"), **daemon},
            "modes": {"auto": False},
        }
    )
    socks, enf, clock = FakeSockets(), FakeEnforcer(), FakeClock()
    gov = Governor(
        cfg,
        Store(cfg["daemon"]["state_dir"]),
        socks,
        enf,
        FakeCounters(),
        clock=clock,
        allow=AllowSources(cfg.allow_section(), FakeResolver(), InlineExecutor()),
        trust=TrustSources(cfg.trust_section()),
    )
    gov.start()
    return gov, socks, enf, clock


def silent(remote: str, wait_ms: int, port: int = 40000) -> SessionInfo:
    return SessionInfo(remote, port, 25, "ESTABLISHED", True, wait_ms, wait_ms, 0, 1, 0, 19)


def ask(gov: Governor, addr: object, **extra: object) -> dict[str, Any]:
    reply = gov.handle({"cmd": "why", "addr": addr, **extra})
    assert reply["ok"], reply
    doc: dict[str, Any] = reply["why"]
    return doc


def rules(doc: dict[str, Any]) -> list[str]:
    return [a["rule"] for a in doc["advice"]]


def test_a_silent_hog_its_sessions_figures_throttle_and_advice(tmp_path: Path) -> None:
    gov, socks, _enf, clock = make(tmp_path)
    socks.sources = {BOT: SockCounts(held=25, established=25, syn_recv=0, idle=25, max_idle_ms=41_000)}
    socks.live = [silent("198.18.7.1", 41_000, 40000 + i) for i in range(25)] + [silent("198.18.7.2", 41_000)]
    gov.tick()
    clock.advance(2)
    doc = ask(gov, "198.18.7.1")
    assert doc["source"] == "198.18.7.1" and doc["standing"]["kind"] == "stranger" and doc["mode"] == "normal"
    assert doc["snapshot"]["held"] == 25 and doc["sessions_total"] == 25
    assert all(s["waiting"] and s["remote"] == "198.18.7.1" for s in doc["sessions"])
    assert doc["enforcement"][0]["kind"] == "throttle" and doc["enforcement"][0]["since"] == clock.now - 2
    assert rules(doc) == ["throttled", "silent-after-greeting", "too-many-sessions"]
    assert doc["history"] == ["2s ago: throttle 198.18.7.1: holds 25 connections, 25 idle (limit 20)"]
    assert "25 sessions like this" in doc["advice"][1]["text"]


def test_a_manual_block_with_its_reason(tmp_path: Path) -> None:
    gov, _socks, _enf, clock = make(tmp_path)
    r = gov.handle({"cmd": "block", "prefix": "198.18.9.9", "reason": "customer complaint #4711", "duration": "1h"})
    assert r["ok"], r
    clock.advance(60)
    doc = ask(gov, "198.18.9.9")
    assert doc["enforcement"] == [
        {
            "kind": "block",
            "prefix": "198.18.9.9",
            "reason": "manual: customer complaint #4711",
            "since": clock.now - 60,
            "until": clock.now + 3540,
            "manual": True,
            "offences": 0,
        }
    ]
    assert doc["advice"] == [
        {"rule": "manual-block", "text": "an operator blocked you by hand: customer complaint #4711 (for another 59m)"}
    ]


def test_allowlisted_with_where_each_entry_comes_from(tmp_path: Path) -> None:
    gov, _socks, _enf, _clock = make(tmp_path)
    assert gov.handle({"cmd": "allow", "prefix": "198.51.100.0/24", "note": "partner"})["ok"]
    doc = ask(gov, "192.0.2.10")
    assert doc["standing"]["allowlist"] == [{"prefix": "192.0.2.0/24", "sources": ["allow.cidrs"]}]
    assert rules(doc) == ["allowlisted"]
    doc = ask(gov, "198.51.100.7")
    assert doc["standing"]["allowlist"] == [{"prefix": "198.51.100.0/24", "sources": ["govern allow"]}]


def test_trusted_through_the_trust_edge_with_softer_limits(tmp_path: Path) -> None:
    gov, socks, enf, clock = make(tmp_path)
    relay = Prefix.parse("198.51.100.7")
    enf.delivering = {relay}  # the kernel saw it deliver; the daemon learns it on its next look
    gov.tick()
    socks.sources = {relay: SockCounts(held=25, established=25, syn_recv=0, idle=0, max_idle_ms=0)}
    gov.tick()
    doc = ask(gov, "198.51.100.7")
    assert doc["standing"]["kind"] == "trusted"
    assert doc["standing"]["trusted_until"] == clock.now + gov.config["trust"]["learn_for"]
    assert doc["limits"]["max_connections"] == 80 and doc["limits"]["trust_factor"] == 4
    assert rules(doc) == ["nothing-wrong"]


def test_a_cut_shows_after_its_sessions_are_gone(tmp_path: Path) -> None:
    gov, socks, _enf, clock = make(tmp_path)
    gov.handle({"cmd": "wave", "action": "on", "duration": "10m"})
    socks.sources = {BOT: SockCounts(held=1, established=1, syn_recv=0, idle=1, max_idle_ms=8_000)}
    gov.tick()
    assert gov.cut_sessions == 1
    doc = ask(gov, "198.18.7.1")
    assert doc["mode"] == "wave" and doc["limits"]["gate_per_second"] == 0
    assert gov.mta.budget is not None and doc["limits"]["budget_slots"] == gov.mta.budget.slots > 0
    assert rules(doc) == ["throttled", "no-progress", "wave-budget"]
    assert doc["events"][0]["kind"] == "cut" and "for 8s while the host is under pressure" in doc["events"][0]["reason"]
    # The wave ends and takes its throttle along: what is left to tell is the history.
    gov.handle({"cmd": "wave", "action": "off"})
    clock.advance(30)
    gov.tick()
    doc = ask(gov, "198.18.7.1")
    assert not doc["enforcement"] and rules(doc) == ["cut", "before"]
    assert doc["advice"][0]["text"].startswith("we ended sessions of yours that made no progress 1 time, the last 30s")


def test_the_kernel_refusing_the_dump_still_explains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gov, socks, _enf, _clock = make(tmp_path)

    def refused(prefix: Prefix, ports: frozenset[int]) -> list[SessionInfo]:
        raise KernelError("sock_diag dump failed: EPERM (1)")

    monkeypatch.setattr(socks, "sessions", refused)
    doc = ask(gov, "198.18.7.1")
    assert doc["sessions_error"] == "sock_diag dump failed: EPERM (1)"
    assert "sessions now: unknown (sock_diag dump failed: EPERM (1))" in doc["facts"]


def test_a_failure_while_explaining_is_an_error_reply_and_the_loop_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gov, _socks, _enf, _clock = make(tmp_path)

    def broken(ev: why.Evidence) -> why.Explanation:
        raise KeyError("a bug")

    monkeypatch.setattr(why, "explain", broken)
    reply = gov.handle({"cmd": "why", "addr": "198.18.7.1"})
    assert reply == {"ok": False, "error": "could not explain 198.18.7.1: 'a bug'"}
    assert gov.health.failures["why"] == 1
    gov.tick()


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"cmd": "why"}, "why: missing field(s) 'addr'"),
        ({"cmd": "why", "addr": None}, "why: missing field(s) 'addr'"),
        ({"cmd": "why", "addr": 198}, "why: addr must be a str, got int"),
        ({"cmd": "why", "addr": {"a": 1}}, "got dict"),
        ({"cmd": "why", "addr": "mx.example"}, "'mx.example' is not an IPv4/IPv6 address or prefix"),
        ({"cmd": "why", "addr": "198.18.0.0/16"}, "198.18.0.0/16 is wider than one source"),
        ({"cmd": "why", "addr": "x" * 10_000}, "too long to be an address"),
        ({"cmd": "why", "addr": "198.18.7.1", "top": 5}, "unexpected field(s) 'top'"),
    ],
)
def test_malformed_requests_get_a_reason(tmp_path: Path, body: dict[str, Any], problem: str) -> None:
    gov, _socks, _enf, _clock = make(tmp_path)
    reply = gov.handle(body)
    assert reply["ok"] is False and reply["refused"] is True and problem in reply["error"], reply
    assert not gov.health.failures


def test_a_dry_run_says_so_and_closes_no_gate(tmp_path: Path) -> None:
    gov, _socks, _enf, _clock = make(tmp_path, dry_run=True)
    gov.handle({"cmd": "wave", "action": "on", "duration": "10m"})
    doc = ask(gov, "198.18.7.1")
    assert doc["dry_run"] is True and doc["limits"]["gate_per_second"] == 0
    assert doc["facts"][0].startswith("dry run: govern enforces nothing")
