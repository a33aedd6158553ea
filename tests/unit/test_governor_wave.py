"""The daemon's modes with fake edges: `govern wave on --for` ends by itself, a wave survives a restart, idle
sessions are cut during a wave, and a dry run cuts nothing."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from govern import config, reports
from govern.addr import Prefix
from govern.daemon import Governor
from govern.dryrun import DryRun, DryRunSockets, DryRunStore
from govern.edges import Enforcer, SocketSource, StateStore
from govern.errors import KernelError
from govern.fakes import FakeClock, FakeCounters, FakeEnforcer, FakeSockets
from govern.model import CutRecord, Mode, SockCounts
from govern.store import Store

PARTNER = Prefix.parse("192.0.2.10")


def make(
    tmp_path: Path, clock: FakeClock | None = None, **daemon: object
) -> tuple[Governor, FakeSockets, FakeEnforcer]:
    cfg = config.from_mapping(
        {"allow": {"cidrs": ["192.0.2.0/24"]}, "daemon": {"state_dir": str(tmp_path / "state"), **daemon}}
    )
    socks, enf = FakeSockets(), FakeEnforcer()
    store: StateStore = Store(cfg["daemon"]["state_dir"])
    edge: Enforcer = enf
    diag: SocketSource = socks
    if cfg["daemon"]["dry_run"]:  # as govern.wiring does
        store, edge, diag = DryRunStore(store), DryRun(enf), DryRunSockets(socks)
    gov = Governor(cfg, store, diag, edge, FakeCounters(), clock=clock or FakeClock())
    gov.start()
    return gov, socks, enf


def swarm(n: int) -> dict[Prefix, SockCounts]:
    silent = SockCounts(held=1, established=1, syn_recv=0, idle=1, max_idle_ms=6_000)
    return {Prefix.parse(f"198.18.{i // 200}.{i % 200 + 1}"): silent for i in range(n)}


def test_wave_on_for_a_while_ends_by_itself(tmp_path: Path) -> None:
    clock = FakeClock()
    gov, _socks, _enf = make(tmp_path, clock)
    r = gov.handle({"cmd": "wave", "action": "on", "duration": "2m"})
    assert r["ok"] and r["message"] == "wave on for 2m"
    assert reports.status(gov)["mode"] == "wave" and reports.mode_report(gov)["manual"]
    clock.advance(119)
    gov.tick()
    before = gov.state.mode
    clock.advance(1)
    gov.tick()
    after = gov.state.mode
    assert before.mode is Mode.WAVE
    assert after.mode is Mode.NORMAL and "timer ran out" in after.reason
    kinds = [e.kind for e in gov.store.events(5)]
    assert kinds[:2] == ["mode normal", "mode wave"]


def test_a_wave_the_operator_starts_names_the_strangers_holding_sessions_then(tmp_path: Path) -> None:
    # As a wave that starts on its own does (decide.shed takes their sessions first while the kernel has not
    # counted them): the strangers of the last snapshot, not the allowlisted partner.
    clock = FakeClock()
    gov, socks, _enf = make(tmp_path, clock)
    early = swarm(3)
    socks.sources = {**early, PARTNER: SockCounts(held=2, established=2, syn_recv=0, idle=0, max_idle_ms=0)}
    gov.tick()
    assert gov.state.holders == frozenset()
    assert gov.handle({"cmd": "wave", "action": "on", "duration": "2m"})["ok"]
    assert gov.state.holders == frozenset(early)
    # Asked again in the same wave: the wave goes on, and so do its holders and its cut counts.
    gov.state.cuts[PARTNER] = CutRecord(1, gov.state.mode.since, clock())
    socks.sources = swarm(5)
    clock.advance(1)
    gov.tick()
    assert gov.handle({"cmd": "wave", "action": "on", "duration": "5m"})["ok"]
    assert gov.state.holders == frozenset(early)
    assert gov.state.cuts_in_wave(PARTNER, gov.state.mode.since) == 1


def test_a_wave_survives_a_daemon_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    gov, _s, _e = make(tmp_path, clock)
    gov.handle({"cmd": "wave", "action": "on", "duration": "10m"})
    until = gov.state.mode.until
    gov.store.close()
    gov2, _s2, _e2 = make(tmp_path, clock)
    assert gov2.state.mode.mode is Mode.WAVE and gov2.state.mode.until == until and gov2.state.mode.manual


def test_wave_off_and_refusals(tmp_path: Path) -> None:
    gov, _s, _e = make(tmp_path)
    r = gov.handle({"cmd": "wave", "action": "off"})
    assert not r["ok"] and r["refused"] and "normal mode" in r["error"]
    r = gov.handle({"cmd": "wave", "action": "on", "duration": "soon"})
    assert not r["ok"] and r["refused"]
    gov.handle({"cmd": "wave", "action": "on"})
    assert gov.state.mode.until - gov.state.mode.since == gov.policy.modes.wave_duration
    r = gov.handle({"cmd": "wave", "action": "off"})
    assert r["ok"] and gov.state.mode.mode is Mode.NORMAL


def test_a_silent_swarm_starts_a_wave_and_its_sessions_are_cut_while_a_partner_keeps_its_own(tmp_path: Path) -> None:
    clock = FakeClock()
    gov, socks, enf = make(tmp_path, clock)
    socks.sources = swarm(60) | {PARTNER: SockCounts(held=5, established=5, syn_recv=0, idle=5, max_idle_ms=60_000)}
    gov.tick()
    assert gov.state.mode.mode is Mode.WAVE
    assert gov.cut_sessions == 60
    assert all(c.established == 0 for p, c in socks.sources.items() if p != PARTNER)
    assert socks.sources[PARTNER].established == 5
    assert len(enf.tight) == 60 and PARTNER not in enf.throttles


def test_each_cut_is_an_event_of_its_source_with_its_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    gov, socks, _enf = make(tmp_path, clock)
    gov.handle({"cmd": "wave", "action": "on", "duration": "10m"})
    three = Prefix.parse("198.18.9.9")
    socks.sources = swarm(2) | {three: SockCounts(held=3, established=3, syn_recv=0, idle=3, max_idle_ms=8_000)}
    plan = gov.tick()
    assert gov.cut_sessions == 5  # sessions, not sources or events
    cuts = {e.prefix: e for e in gov.store.events(20) if e.kind == "cut"}
    assert set(cuts) == {"198.18.0.1", "198.18.0.2", "198.18.9.9"}
    assert {p: e.reason for p, e in cuts.items()} == {str(c.prefix): c.reason for c in plan.cuts}
    assert cuts["198.18.9.9"].reason.endswith("for 8s while the host is under pressure (wave)")
    assert cuts["198.18.0.1"].at == clock.now and cuts["198.18.0.1"].until == 0
    # A cut the kernel refused is no event.
    socks.sources = {three: SockCounts(held=3, established=3, syn_recv=0, idle=3, max_idle_ms=9_000)}

    def refused(
        idle_ms: Mapping[Prefix, int],
        ports: frozenset[int],
        shed: object = None,
        greet: int = 0,
        pregreet_cut: bool = False,
    ) -> dict[Prefix, int]:
        raise KernelError("sock_diag destroy refused")

    monkeypatch.setattr(socks, "cut", refused)
    clock.advance(1)
    gov.tick()
    assert gov.health.failures["cut-sessions"] == 1
    assert sum(e.kind == "cut" for e in gov.store.events(20)) == 3


def test_a_dry_run_logs_cuts_and_cuts_nothing(tmp_path: Path) -> None:
    gov, socks, _enf = make(tmp_path, dry_run=True)
    socks.sources = swarm(60)
    gov.tick()
    assert gov.cut_sessions == 0 and not socks.cuts
    assert isinstance(gov.enforcer, DryRun)
    assert any("would cut the idle sessions" in line for line in gov.enforcer.logged)
    assert any(line.startswith("dry run: mode wave") for line in gov.enforcer.logged)


def test_tarpits_reach_the_tarpit_edge_and_an_unsupported_host_gets_none(tmp_path: Path) -> None:
    from govern.fakes import FakeTarpit

    clock = FakeClock()
    for tp, expect in ((FakeTarpit(), 1), (FakeTarpit(reason="no HTB on this kernel"), 0)):
        cfg = config.from_mapping({"daemon": {"state_dir": str(tmp_path / f"s{expect}")}})
        socks = FakeSockets()
        gov = Governor(cfg, Store(cfg["daemon"]["state_dir"]), socks, FakeEnforcer(), FakeCounters(), clock, tarpit=tp)
        gov.start()
        gov.handle({"cmd": "wave", "action": "on", "duration": "10m"})
        hoard = SockCounts(held=6, established=6, syn_recv=0, idle=2, max_idle_ms=1_000)  # 6 of 10, 2 silent
        socks.sources = {Prefix.parse("198.18.7.7"): hoard}
        gov.tick()
        assert len(tp.held) == expect and len(gov.state.tarpits) == expect
        if expect == 0:
            assert reports.status(gov)["tarpit"] == "no HTB on this kernel"


def test_sources_the_kernel_saw_delivering_are_trusted_and_get_softer_limits_in_a_wave(tmp_path: Path) -> None:
    from govern.allow.learning import TrustSources

    clock = FakeClock()
    cfg = config.from_mapping({"daemon": {"state_dir": str(tmp_path / "s")}})
    socks, enf = FakeSockets(), FakeEnforcer()
    relay, stranger = Prefix.parse("198.51.100.7"), Prefix.parse("198.51.100.8")
    gov = Governor(
        cfg,
        Store(cfg["daemon"]["state_dir"]),
        socks,
        enf,
        FakeCounters(),
        clock,
        trust=TrustSources(cfg.trust_section()),
    )
    gov.start()
    enf.delivering = {relay}  # known4, filled by the kernel's own rule
    gov.tick()  # the first tick reads what the kernel learned
    gov.handle({"cmd": "wave", "action": "on", "duration": "10m"})
    busy = SockCounts(held=14, established=14, syn_recv=0, idle=0, max_idle_ms=0)  # over the wave's 10
    socks.sources = {relay: busy, stranger: busy}
    clock.advance(1)
    gov.tick()
    assert gov.snapshot is not None and relay in gov.snapshot.trusted
    assert stranger in gov.state.blocks and relay not in gov.state.blocks and relay not in gov.state.throttles


def test_trust_from_the_kernel_runs_from_the_proof_not_from_the_read(tmp_path: Path) -> None:
    """The kernel's proven set keeps a source 7 days after its last proof and is read whole every 10 s: trust runs
    `learn_for` from when the kernel saw the proof (its element's age), so it lapses, and a read again extends
    nothing."""
    from govern.allow.learning import TrustSources

    clock = FakeClock()
    cfg = config.from_mapping({"daemon": {"state_dir": str(tmp_path / "s")}, "trust": {"learn_for": "1d"}})
    enf = FakeEnforcer()
    trust = TrustSources(cfg.trust_section())
    gov = Governor(cfg, Store(cfg["daemon"]["state_dir"]), FakeSockets(), enf, FakeCounters(), clock, trust=trust)
    gov.start()
    old, new = Prefix.parse("198.51.100.7"), Prefix.parse("198.51.100.8")
    enf.delivering = {old, new}
    enf.proved_ago = {old: 2 * 86400.0, new: 3600.0}  # both still in the kernel's 7-day set
    gov.tick()
    assert trust.until(new) == clock() - 3600 + 86400 and trust.until(old) is None
    clock.advance(60)
    enf.proved_ago = {old: 2 * 86400 + 60.0, new: 3660.0}  # nothing new proved since
    gov.tick()
    assert trust.until(new) == clock() - 3660 + 86400


@pytest.mark.parametrize("calm_scan_every", [3, 1])
def test_a_calm_tick_that_walks_the_sockets_leaves_the_proven_sets_to_the_next(
    tmp_path: Path, calm_scan_every: int
) -> None:
    """The read of the kernel's proven sets (every 10 s) and the walk of every socket (every 3rd calm tick) together
    made the slowest tick at 100k sessions: in normal mode a read due on a walking tick waits one tick. The first
    read, at start, waits for nothing; a wave's ticks all walk and read when due; so does every tick when every
    tick walks (calm_scan_every = 1)."""
    from govern.allow.learning import TrustSources

    clock = FakeClock()
    cfg = config.from_mapping(
        {"daemon": {"state_dir": str(tmp_path / "s"), "calm_scan_every": calm_scan_every}, "modes": {"auto": False}}
    )
    enf = FakeEnforcer()
    gov = Governor(
        cfg,
        Store(cfg["daemon"]["state_dir"]),
        FakeSockets(),
        enf,
        FakeCounters(),
        clock,
        trust=TrustSources(cfg.trust_section()),
    )
    gov.start()
    gov.tick()  # walks, and reads at once
    assert gov.observer.scans == 1 and enf.proven_reads == 1
    for _ in range(2):  # the calm ticks between walks
        clock.advance(1)
        gov.tick()
    clock.advance(8)  # the read is due on a tick that walks
    gov.tick()
    assert gov.observer.scans == (2 if calm_scan_every == 3 else 4)
    assert enf.proven_reads == (1 if calm_scan_every == 3 else 2)
    clock.advance(1)
    gov.tick()
    assert enf.proven_reads == 2
    gov.handle({"cmd": "wave", "action": "on", "duration": "10m"})
    clock.advance(10)  # WAVE_LEARN_EVERY is shorter
    gov.tick()
    assert enf.proven_reads == 3


def test_the_proven_sets_wait_for_a_calm_tick_one_interval_at_most() -> None:
    """After a tick that acts every tick walks: a run of such ticks delays the read by one interval, not for ever."""
    from govern.allow.learning import TrustSources
    from govern.health import Health
    from govern.model import ModeState
    from govern.proving import LEARN_EVERY, Proving

    cfg = config.from_mapping({})
    enf = FakeEnforcer()
    proving = Proving(TrustSources(cfg.trust_section()), enf, Health())
    normal = ModeState(Mode.NORMAL)
    reads = []
    for t in range(0, 31):
        proving.take_kernel(1000.0 + t, normal, True, walked=True)
        reads.append(enf.proven_reads)
    assert reads[0] == 1  # at start
    assert reads[int(LEARN_EVERY)] == 1  # due on a walking tick: waits
    assert reads[int(2 * LEARN_EVERY)] == 2  # an interval late: read all the same
    assert reads[30] == 2


def test_the_wave_switches_the_sysctl_wave_profile_on_and_back_off(tmp_path: Path) -> None:
    from govern.fakes import FakeSysctls
    from govern.sysctl.journal import Journal
    from govern.sysctl.manager import SysctlManager
    from govern.sysctl.planner import FIN_TIMEOUT, SYNACK_RETRIES, SYNCOOKIES, Expectations

    stock = {SYNCOOKIES: "0", SYNACK_RETRIES: "5", FIN_TIMEOUT: "60"}
    fs = FakeSysctls(dict(stock))
    clock = FakeClock()
    cfg = config.from_mapping({"daemon": {"state_dir": str(tmp_path / "s")}, "sysctl": {"apply_at_start": False}})
    mgr = SysctlManager(fs, Journal(str(tmp_path / "s")), Expectations(2000, 8 << 30))
    gov = Governor(cfg, Store(cfg["daemon"]["state_dir"]), FakeSockets(), FakeEnforcer(), FakeCounters(), clock, mgr)
    gov.start()
    assert fs.values == stock
    gov.handle({"cmd": "wave", "action": "on", "duration": "1m"})
    assert mgr.profiles() == ["wave"]
    assert fs.values[SYNCOOKIES] == "1" and int(fs.values[SYNACK_RETRIES]) < 5 and int(fs.values[FIN_TIMEOUT]) < 60
    clock.advance(60)
    gov.tick()  # the wave's timer ran out
    assert mgr.profiles() == [] and fs.values == stock


def test_a_wave_sheds_the_queue_the_flood_filled_before_it_switches_abort_on_overflow_on(tmp_path: Path) -> None:
    # tcp_abort_on_overflow resets any handshake that meets a full accept queue, an allowlisted relay's too: the
    # wave's first cuts, which empty the queue, come before it.
    from govern.fakes import FakeSysctls
    from govern.sysctl.journal import Journal
    from govern.sysctl.manager import SysctlManager
    from govern.sysctl.planner import ABORT_OVERFLOW, Expectations

    fs = FakeSysctls({ABORT_OVERFLOW: "0"})
    socks = FakeSockets()
    order: list[str] = []
    write, cut = fs.write, socks.cut

    def writing(key: str, value: str) -> None:
        order.append(f"{key}={value}")
        write(key, value)

    def cutting(*a: Any, **kw: Any) -> dict[Prefix, int]:
        order.append("cut")
        return cut(*a, **kw)

    fs.write = writing  # type: ignore[method-assign]
    socks.cut = cutting  # type: ignore[method-assign]
    cfg = config.from_mapping(
        {
            "allow": {"cidrs": ["192.0.2.0/24"]},
            "daemon": {"state_dir": str(tmp_path / "s")},
            "sysctl": {"apply_at_start": False},
        }
    )
    mgr = SysctlManager(fs, Journal(str(tmp_path / "s")), Expectations(2000, 8 << 30))
    gov = Governor(cfg, Store(cfg["daemon"]["state_dir"]), socks, FakeEnforcer(), FakeCounters(), FakeClock(), mgr)
    gov.start()
    socks.sources = swarm(60)
    gov.tick()
    assert gov.state.mode.mode is Mode.WAVE
    assert f"{ABORT_OVERFLOW}=1" in order and "cut" in order
    assert order.index("cut") < order.index(f"{ABORT_OVERFLOW}=1"), order


def test_a_full_slot_budget_read_between_ticks_calls_a_tick_that_starts_the_wave(tmp_path: Path) -> None:
    clock = FakeClock()
    gov, _socks, enf = make(tmp_path, clock)
    budget = gov.policy.slot_budget
    assert budget > 0
    enf.slots = budget - 1  # the cap holds strangers back before the wave: no queue fills
    gov.tick()
    assert gov.state.mode.mode.value == "elevated"
    clock.advance(0.25)
    assert not gov.pressing()
    enf.slots = budget
    assert gov.pressing()
    clock.advance(0.25)
    gov.tick()
    assert gov.state.mode.mode is Mode.WAVE and "of their slot budget" in gov.state.mode.reason


def test_a_wave_ticks_faster_and_the_calm_at_the_normal_pace(tmp_path: Path) -> None:
    gov, _socks, _enf = make(tmp_path, tick="2s", wave_tick="250ms")
    assert gov.interval == 2.0
    gov.handle({"cmd": "wave", "action": "on", "duration": "2m"})
    assert gov.interval == 0.25
    gov.handle({"cmd": "wave", "action": "off"})
    assert gov.interval == 2.0


def test_connections_counted_between_ticks_call_a_tick_and_start_the_wave_at_their_own_rate(tmp_path: Path) -> None:
    clock = FakeClock()
    gov, _socks, enf = make(tmp_path, clock)
    enf.attempted = 1_000
    gov.tick()
    assert not gov.pressing()  # the first read only sets where counting starts
    clock.advance(0.25)
    enf.attempted += 100  # 400 a second: elevated's rate, not the wave's
    assert gov.pressing()
    clock.advance(0.25)
    enf.attempted += 500  # 2,000 a second
    assert gov.pressing()
    clock.advance(0.25)
    enf.attempted = 10  # the table was made again: no rate from that, but the call stands until the next tick
    assert gov.pressing()
    clock.advance(0.25)
    gov.tick()  # the tick's own sources counted nothing: the poll's highest rate is what starts the wave
    assert gov.snapshot is not None and gov.snapshot.attempts_peak == 2_000.0
    assert gov.state.mode.mode is Mode.WAVE and "2000 new connections/s" in gov.state.mode.reason
    # Read into one snapshot only.
    gov.handle({"cmd": "wave", "action": "off"})
    clock.advance(1)
    gov.tick()
    assert gov.snapshot is not None and gov.snapshot.attempts_peak == 0.0
