"""The Prometheus endpoint's figures (govern.metrics) from a Governor with fake edges: what a scrape reads matches
what the daemon did; every reason sentence the core writes falls in a bounded class; docs/metrics.md and the Grafana
dashboard name exactly the metrics the collector yields; the feed counts its requests; an address the endpoint
cannot have is a warning and a line in `govern status`, never the end of the daemon."""

from __future__ import annotations

import json
import re
import socket
import threading
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from govern import config, metrics, reports
from govern.addr import Prefix
from govern.core import reasons
from govern.core.aggregate import aggregate
from govern.core.decide import _extension, _ladder, decide, manual_block
from govern.core.modes import measure, next_mode, wave_off, wave_on
from govern.core.policy import Policy
from govern.daemon import Governor
from govern.dryrun import DryRunSysctls
from govern.errors import ConfigError
from govern.export.feed import FeedServer
from govern.fakes import FakeEnforcer, FakeSysctls
from govern.model import (
    Action,
    ActionKind,
    Block,
    ListenerStats,
    Mode,
    ModeState,
    Snapshot,
    SourceStats,
    State,
    Throttle,
)
from govern.sysctl.journal import Journal
from govern.sysctl.manager import SysctlManager
from govern.sysctl.planner import Expectations
from tests.unit.test_governor import BOT, TRUSTED, hog, make, run_ticks

ROOT = Path(__file__).parents[2]
NOW = 1_700_000_000.0
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(gov: Governor, feed: FeedServer | None = None) -> tuple[Samples, dict[str, str]]:
    """The exposition as Prometheus reads it: every sample by (name, labels), and each family's type."""
    text = generate_latest(metrics.registry(gov, feed)).decode()
    samples: Samples = {}
    types: dict[str, str] = {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def get(url: str, token: str = "") -> tuple[int, bytes]:
    """One GET: its status and body, the connection closed either way."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read()


def test_a_scrape_reads_the_governors_figures(tmp_path: Path) -> None:
    gov, socks, _enf, clock = make(tmp_path)
    socks.sources = {BOT: hog(30), TRUSTED: hog(50)}
    run_ticks(gov, clock, 7)  # throttled, then blocked; its 30 sessions ended
    assert gov.handle({"cmd": "block", "prefix": "2001:db8:bad::/48", "reason": "spam"})["ok"]
    gov.health.fail("observe", RuntimeError("sock_diag said no"))
    s, _ = scrape(gov)
    assert value(s, "govern_mode", mode="normal") == 1 and value(s, "govern_mode", mode="wave") == 0
    assert value(s, "govern_mode_cause", cause="none") == 1
    assert value(s, "govern_blocks", reason="connections", family="ipv4") == 1
    assert value(s, "govern_blocks", reason="manual", family="ipv6") == 1
    assert value(s, "govern_blocks", reason="manual", family="ipv4") == 0  # zeros too: no gaps in a graph
    assert value(s, "govern_throttles", reason="connections", family="ipv4") == 0
    assert value(s, "govern_actions_total", action="throttle", reason="connections", family="ipv4") == 1
    assert value(s, "govern_actions_total", action="block", reason="connections", family="ipv4") == 1
    assert value(s, "govern_actions_total", action="block", reason="manual", family="ipv6") == 1
    assert value(s, "govern_sessions_ended_total") == 30
    assert value(s, "govern_tick_duration_seconds_count") == 7 == gov.ticks
    assert value(s, "govern_tick_duration_seconds_bucket", le="+Inf") == 7
    assert value(s, "govern_tick_duration_seconds_sum") > 0
    assert value(s, "govern_failures_total", component="observe") == 1
    assert value(s, "govern_store_behind") == 0
    assert value(s, "govern_sessions") == 50 and value(s, "govern_stranger_sessions") == 0  # TRUSTED is allowlisted
    assert value(s, "govern_slot_budget") == gov.mta.budget.slots if gov.mta.budget else 0
    assert value(s, "govern_info", version="0.1.0", backend="fake", dry_run="false") == 1
    # No label carries an address or a reason's free text.
    assert not any("198.18" in v or "2001:" in v for _, labels in s for _, v in labels)


def test_pressure_inputs_listeners_and_strangers_against_the_budget(tmp_path: Path) -> None:
    gov, _socks, _enf, _clock = make(tmp_path)
    stranger, other = Prefix.parse("198.18.0.1"), Prefix.parse("2001:db8:77::")
    gov.snapshot = Snapshot(
        taken_at=NOW,
        interval=0.5,
        sources={
            stranger: SourceStats(held=12, established=10, syn_recv=2, idle=4, new=30),
            other: SourceStats(held=3, established=3, new=10),
            TRUSTED: SourceStats(held=40, established=40),
        },
        listeners=(ListenerStats("0.0.0.0", 25, 90, 100), ListenerStats("::", 25, 5, 100)),
        counters={"ListenDrops": 50},
        slotted=9,
    )
    gov.totals = {"ListenDrops": 120, "SyncookiesSent": 3}
    s, _ = scrape(gov)
    assert value(s, "govern_accept_queue_fill", listener="0.0.0.0:25") == 0.9
    assert value(s, "govern_accept_queue_length", listener="[::]:25") == 5
    assert value(s, "govern_accept_queue_backlog", listener="[::]:25") == 100
    assert value(s, "govern_listen_drops_per_second") == 100  # 50 in half a second
    assert value(s, "govern_syn_recv") == 2
    assert value(s, "govern_connection_attempts_per_second") == 80  # (30 + 10) / 0.5, strangers only
    assert value(s, "govern_pressure_level") == measure(gov.snapshot, gov.policy).level == 2
    assert value(s, "govern_kernel_tcp_total", counter="ListenDrops") == 120
    assert value(s, "govern_sources") == 3 and value(s, "govern_sessions") == 53
    assert value(s, "govern_stranger_sessions") == 13
    assert value(s, "govern_slot_budget_taken") == 9  # the kernel's count: 4 of the 13 opened before the wave


def test_a_scrape_never_sees_half_a_tick_and_the_store_behind_is_one(tmp_path: Path) -> None:
    gov, _socks, _enf, _clock = make(tmp_path)
    gov.lock.acquire()  # a tick in progress
    done = threading.Event()
    out: list[Samples] = []

    def scraper() -> None:
        out.append(scrape(gov)[0])
        done.set()

    threading.Thread(target=scraper, daemon=True).start()
    assert not done.wait(0.3)  # it waits for the tick to end
    gov.keeper.behind = NOW
    gov.lock.release()
    assert done.wait(5)
    assert value(out[0], "govern_store_behind") == 1


def test_sysctl_drift_counts_keys_off_the_applied_profile(tmp_path: Path) -> None:
    gov, _socks, _enf, _clock = make(tmp_path)
    fs = FakeSysctls(
        {"net.ipv4.tcp_syncookies": "0", "net.core.somaxconn": "128", "net.ipv4.tcp_max_syn_backlog": "128"}
    )
    gov.sysctl = SysctlManager(fs, Journal(str(tmp_path / "s")), Expectations(2000, 8 << 30))
    s, _ = scrape(gov)
    assert value(s, "govern_sysctl_drift_keys") == 0  # nothing applied, nothing drifts from it
    gov.sysctl.apply()
    assert value(scrape(gov)[0], "govern_sysctl_drift_keys") == 0
    fs.values["net.core.somaxconn"] = "128"  # someone else's hand
    s, _ = scrape(gov)
    assert value(s, "govern_sysctl_drift_keys") == 1
    assert value(s, "govern_sysctl_drift", key="net.core.somaxconn") == 1


def test_the_feed_counts_its_requests_by_path_and_code(tmp_path: Path) -> None:
    gov, _socks, _enf, _clock = make(tmp_path)
    feed = FeedServer("127.0.0.1:0", b"a-token-of-16-characters")
    try:
        feed.publish({"plain": (b"198.18.0.7/32\n", "text/plain")})
        base = f"http://127.0.0.1:{feed.address[1]}"
        assert get(base + "/plain", "a-token-of-16-characters") == (200, b"198.18.0.7/32\n")
        assert get(base + "/plain")[0] == get(base + "/../etc/passwd")[0] == 401
        s, _ = scrape(gov, feed)
    finally:
        feed.close()
    assert value(s, "govern_export_feed_requests_total", path="/plain", code="200") == 1
    assert value(s, "govern_export_feed_requests_total", path="/plain", code="401") == 1
    assert value(s, "govern_export_feed_requests_total", path="other", code="401") == 1


def test_the_endpoint_serves_metrics_on_its_path_and_a_taken_port_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gov, _socks, _enf, _clock = make(tmp_path)
    assert metrics.start(gov) is None and reports.status(gov)["metrics"] == {"state": "off"}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gov.config = config.with_override(gov.config, "metrics", "listen", f"127.0.0.1:{port}")
    server = metrics.start(gov)
    assert server is not None
    try:
        code, body = get(f"http://127.0.0.1:{port}/metrics")
        assert code == 200 and b'govern_mode{mode="normal"} 1.0' in body and b"process_resident_memory_bytes" in body
        assert get(f"http://127.0.0.1:{port}/") == (404, b"govern serves its metrics on /metrics\n")
        assert reports.status(gov)["metrics"]["url"] == f"http://127.0.0.1:{port}/metrics"
        # A second daemon on the same address: it runs on, and says why there is no endpoint.
        other, *_ = make(tmp_path / "other")
        other.config = gov.config
        assert metrics.start(other) is None
    finally:
        server.close()
    st = reports.status(other)["metrics"]
    assert st["state"] == "failed" and f"cannot listen on 127.0.0.1:{port}" in st["error"]
    assert any(r.levelname == "WARNING" and f"127.0.0.1:{port}" in r.getMessage() for r in caplog.records)


def test_ipv6_loopback_is_served(tmp_path: Path) -> None:
    gov, _socks, _enf, _clock = make(tmp_path)
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
            port = probe.getsockname()[1]
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    gov.config = config.with_override(gov.config, "metrics", "listen", f"[::1]:{port}")
    server = metrics.start(gov)
    assert server is not None, gov.metrics
    try:
        assert b"govern_info" in get(f"http://[::1]:{port}/metrics")[1]
    finally:
        server.close()


def test_metrics_listen_is_checked_like_every_listen_address() -> None:
    assert config.from_mapping({"metrics": {"listen": "[::1]:9742"}})["metrics"]["listen"] == "[::1]:9742"
    assert config.from_mapping({})["metrics"]["listen"] == ""
    for bad in ("localhost:9742", "127.0.0.1", "127.0.0.1:0x10", "127.0.0.1:70000", 9742):
        with pytest.raises(ConfigError, match=r"metrics\.listen"):
            config.from_mapping({"metrics": {"listen": bad}})
    same = {"listen": "127.0.0.1:9742", "token_file": "/etc/govern/feed.token"}
    with pytest.raises(ConfigError, match="the export feed listens there already"):
        config.from_mapping({"metrics": {"listen": "127.0.0.1:9742"}, "export": same})


# -- reason classes: every sentence the core writes falls in one, and never in "other" -------------------------


def pol(**sections: dict[str, object]) -> Policy:
    return config.from_mapping({"allow": {"cidrs": ["192.0.2.0/24"]}, **sections}).policy()


def src(i: int) -> Prefix:
    return Prefix.parse(f"198.18.0.{i}")


def classes(actions: tuple[Action, ...] | list[Action]) -> set[tuple[ActionKind, str]]:
    return {(a.kind, reasons.reason_class(a.reason, a.manual)) for a in actions}


def test_every_reason_the_core_writes_has_its_class() -> None:
    p = pol(modes={"auto": False})
    snap = Snapshot(
        taken_at=NOW,
        interval=1.0,
        sources={
            src(1): SourceStats(held=30, established=30, idle=28),
            src(2): SourceStats(new_per_minute=600),
            src(3): SourceStats(held=30, new_per_minute=600),
        },
    )
    got = classes(decide(snap, State(), p, NOW).actions)
    assert got == {(ActionKind.THROTTLE, "connections"), (ActionKind.THROTTLE, "rate")}
    throttled = State(throttles={src(1): Throttle(src(1), "x", NOW - 60, NOW + 600)})
    assert classes(_ladder(src(1), ["holds 30 connections (limit 20)"], throttled, p, NOW, tight=False)) == {
        (ActionKind.BLOCK, "connections")
    }
    assert classes(manual_block(src(4), State(), p, NOW, 600, "spam").actions) == {(ActionKind.BLOCK, "manual")}
    ext = _extension(Block(src(5), "x", NOW - 590, NOW + 10, 1), src(5), SourceStats(new_per_minute=600), p, NOW)
    assert ext is not None and classes([ext]) == {(ActionKind.EXTEND, "hammering")}
    blocks = [Action(ActionKind.BLOCK, src(i), "x", until=NOW + 600, offences=1) for i in range(10, 20)]
    assert (ActionKind.BLOCK, "aggregate") in classes(aggregate(blocks, State(), p, NOW))
    wave = State(mode=ModeState(Mode.WAVE, NOW - 10, NOW + 1000, "flood"))
    over = {src(30 + i): SourceStats(held=15 + i, established=15 + i) for i in range(3)}
    tops = decide(replace(snap, sources=over), wave, pol(wave={"top_n": 1}), NOW).actions
    assert classes(tops) == {(ActionKind.BLOCK, "wave_top"), (ActionKind.THROTTLE, "connections")}
    stalling = {src(40): SourceStats(held=2, established=2, idle=2, max_idle_ms=3_500)}
    cut = decide(replace(snap, sources=stalling), wave, pol(cut={"block_after": 1}), NOW).actions
    assert classes(cut) == {(ActionKind.BLOCK, "stalling")}
    elevated = State(mode=ModeState(Mode.ELEVATED, NOW - 10, reason="queue"))
    near = {src(50): SourceStats(held=10, established=10, idle=2, max_idle_ms=12_000)}
    assert classes(decide(replace(snap, sources=near), elevated, p, NOW).actions) == {(ActionKind.TARPIT, "nearing")}
    enf = FakeEnforcer()
    enf.blocks[src(60)] = NOW + 600
    adopted = enf.setup(config.from_mapping({}).firewall(), (), State(), NOW).actions
    assert classes(adopted) == {(ActionKind.BLOCK, "adopted")}


def test_every_mode_change_has_its_cause() -> None:
    mp = pol().modes
    assert reasons.mode_cause(ModeState()) == "none"
    on = wave_on(ModeState(), mp, NOW, 600)
    assert reasons.mode_cause(on) == reasons.mode_cause(wave_off(on, mp, NOW)) == "operator"
    flood = Snapshot(
        taken_at=NOW, interval=1.0, sources={}, listeners=(ListenerStats("0.0.0.0", 25, 99, 100),), counters={}
    )
    up = next_mode(ModeState(), measure(flood, pol()), mp, NOW)
    assert up is not None and up.mode is Mode.WAVE and reasons.mode_cause(up) == "pressure"
    calm = measure(replace(flood, listeners=()), pol())
    ran_out = next_mode(replace(up, until=NOW + 1), calm, mp, NOW + 2)
    assert ran_out is not None and reasons.mode_cause(ran_out) == "timer"
    quiet = ModeState(Mode.ELEVATED, NOW, reason="x", calm_since=NOW)
    down = next_mode(quiet, calm, mp, NOW + mp.calm_for + 1)
    assert down is not None and reasons.mode_cause(down) == "calm"


# -- the docs and the dashboard name exactly what the collector yields ---------------------------------------------


def exposed(types: dict[str, str]) -> dict[str, str]:
    """Every series name a query may use, with the family it belongs to."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count", "")}
    return {name + sfx: name for name, t in types.items() for sfx in suffixes.get(t, ("",))}


def test_docs_and_dashboard_name_exactly_the_metrics_the_collector_yields(tmp_path: Path) -> None:
    gov, *_ = make(tmp_path)
    _, types = scrape(gov)
    series = exposed(types)
    ours = {n for n in types if n.startswith("govern_")}
    documented = set(re.findall(r"^\| `(govern_\w+)` \|", (ROOT / "docs" / "metrics.md").read_text(), re.M))
    as_exposed = {n + "_total" if types[n] == "counter" else n for n in ours}
    assert documented == as_exposed
    dash = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\b((?:govern|process)_\w+)", e)}
    assert used <= set(series), used - set(series)
    assert {series[m] for m in used if m.startswith("govern_")} == ours


def test_a_dry_run_says_so_and_never_reports_drift(tmp_path: Path) -> None:
    gov, *_ = make(tmp_path, daemon__dry_run=True)
    fs = FakeSysctls({"net.core.somaxconn": "128"})
    gov.sysctl = DryRunSysctls(SysctlManager(fs, Journal(str(tmp_path / "s")), Expectations(2000, 8 << 30)))
    s, _ = scrape(gov)
    assert value(s, "govern_info", version="0.1.0", backend="dry-run (fake)", dry_run="true") == 1
    assert value(s, "govern_sysctl_drift_keys") == 0
