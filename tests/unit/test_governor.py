"""The daemon's wiring with fake edges: ticks escalate to blocks through store and kernel, restarts restore,
CLI requests are validated and refused with reasons, and a refused kernel commit changes nothing."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

from govern import config, reports
from govern.addr import Prefix
from govern.daemon import Governor
from govern.dryrun import DryRun, DryRunSockets, DryRunStore
from govern.edges import Enforcer, SocketSource, StateStore
from govern.errors import GovernError
from govern.fakes import FakeClock, FakeCounters, FakeEnforcer, FakeSockets
from govern.model import ListenerStats, Mode, Snapshot, SockCounts
from govern.store import Store

BOT = Prefix.parse("198.18.0.7")
TRUSTED = Prefix.parse("192.0.2.10")


def make(tmp_path: Path, **over: object) -> tuple[Governor, FakeSockets, FakeEnforcer, FakeClock]:
    # Automatic modes off unless a test asks: these tests follow the normal-mode ladder tick by tick.
    data = {
        "allow": {"cidrs": ["192.0.2.0/24"]},
        "daemon": {"state_dir": str(tmp_path / "state")},
        "modes": {"auto": False},
    }
    for k, v in over.items():
        section, key = k.split("__")
        data.setdefault(section, {})[key] = v  # type: ignore[index]
    cfg = config.from_mapping(data)
    socks, enf, clock = FakeSockets(), FakeEnforcer(), FakeClock()
    store: StateStore = Store(cfg["daemon"]["state_dir"])
    edge: Enforcer = enf
    diag: SocketSource = socks
    if cfg["daemon"]["dry_run"]:  # as govern.wiring does
        store, edge, diag = DryRunStore(store), DryRun(enf), DryRunSockets(socks)
    gov = Governor(cfg, store, diag, edge, FakeCounters(), clock=clock)
    gov.start()
    return gov, socks, enf, clock


def hog(n: int) -> SockCounts:
    return SockCounts(held=n, established=n, syn_recv=0, idle=n, max_idle_ms=30_000)


def run_ticks(gov: Governor, clock: FakeClock, n: int) -> None:
    for _ in range(n):
        gov.tick()
        clock.advance(1.0)


def test_slot_hog_is_throttled_then_blocked_and_its_sessions_ended(tmp_path: Path) -> None:
    gov, socks, enf, clock = make(tmp_path)
    socks.sources = {BOT: hog(30), TRUSTED: hog(50)}
    gov.tick()
    assert BOT in enf.throttles and BOT not in enf.blocks
    run_ticks(gov, clock, 6)
    assert BOT in enf.blocks and BOT not in enf.throttles
    assert socks.destroyed == [BOT] and BOT not in socks.sources
    assert TRUSTED not in enf.blocks and TRUSTED not in enf.throttles
    assert gov.ended_sessions == 30
    st = reports.status(gov)
    assert st["blocks"] == 1 and st["recent"][0]["kind"] == "block"


def test_rate_abuser_counted_in_kernel_is_blocked(tmp_path: Path) -> None:
    gov, _socks, enf, clock = make(tmp_path)
    total = 0
    for _ in range(15):
        total += 10  # 600 connection attempts a minute, none of them held
        enf.syn[BOT] = total
        gov.tick()
        clock.advance(1.0)
    assert BOT in enf.blocks
    assert "connections in the last minute" in gov.state.blocks[BOT].reason


def test_restart_restores_blocks_from_the_store(tmp_path: Path) -> None:
    gov, socks, _enf, clock = make(tmp_path)
    socks.sources = {BOT: hog(30)}
    run_ticks(gov, clock, 7)
    until = gov.state.blocks[BOT].until
    gov.store.close()
    cfg = gov.config
    enf2 = FakeEnforcer()
    gov2 = Governor(cfg, Store(cfg["daemon"]["state_dir"]), FakeSockets(), enf2, FakeCounters(), clock=clock)
    gov2.start()
    assert enf2.blocks == {BOT: until}


def test_refused_kernel_commit_changes_nothing_and_is_reported(tmp_path: Path) -> None:
    gov, socks, enf, clock = make(tmp_path)
    socks.sources = {BOT: hog(30)}
    enf.fail_next = True
    gov.tick()
    assert not gov.state.throttles and not gov.store.load().throttles
    assert reports.status(gov)["failures"] == {"act": 1}
    clock.advance(1)
    gov.tick()
    assert BOT in gov.state.throttles  # the next tick tries again


def test_manual_block_unblock_and_refusals(tmp_path: Path) -> None:
    gov, _socks, enf, _clock = make(tmp_path)
    r = gov.handle({"cmd": "block", "prefix": "198.18.0.0/24", "duration": "1h", "reason": "swarm"})
    assert r["ok"], r
    assert Prefix.parse("198.18.0.0/24") in enf.blocks
    assert gov.state.blocks[Prefix.parse("198.18.0.0/24")].manual
    r = gov.handle({"cmd": "block", "prefix": "192.0.2.10"})
    assert not r["ok"] and r["refused"] and "allowlisted" in r["error"]
    r = gov.handle({"cmd": "block", "prefix": "not-an-ip"})
    assert not r["ok"] and "not an IPv4/IPv6" in r["error"]
    r = gov.handle({"cmd": "unblock", "prefix": "198.18.0.0/24"})
    assert r["ok"] and not enf.blocks
    r = gov.handle({"cmd": "unblock", "prefix": "198.18.0.0/24"})
    assert not r["ok"] and "not blocked" in r["error"]


def test_allow_lifts_blocks_and_persists(tmp_path: Path) -> None:
    gov, _socks, enf, _clock = make(tmp_path)
    gov.handle({"cmd": "block", "prefix": "198.18.0.7"})
    r = gov.handle({"cmd": "allow", "prefix": "198.18.0.0/24", "note": "new partner"})
    assert r["ok"] and "lifted 1" in r["message"]
    assert not enf.blocks and Prefix.parse("198.18.0.0/24") in enf.allow
    assert gov.store.allowed() == (Prefix.parse("198.18.0.0/24"),)
    r = gov.handle({"cmd": "block", "prefix": "198.18.0.7"})
    assert not r["ok"] and "allowlisted" in r["error"]
    r = gov.handle({"cmd": "allow", "prefix": "192.0.2.0/24", "remove": True})
    assert not r["ok"] and "config file" in r["error"]


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    gov, socks, enf, clock = make(tmp_path, daemon__dry_run=True)
    socks.sources = {BOT: hog(30)}
    run_ticks(gov, clock, 8)
    assert not enf.blocks and not enf.throttles and not socks.destroyed and enf.commits == 0
    # The would-be ladder is simulated in memory and logged, and nothing reaches the durable store.
    assert BOT in gov.state.blocks
    assert isinstance(gov.enforcer, DryRun)
    assert [line.split(" 198")[0] for line in gov.enforcer.logged] == [
        "dry run: would throttle",
        "dry run: would block",
    ]
    durable = Store(str(tmp_path / "state"))
    assert not durable.load().blocks and not durable.events()
    r = gov.handle({"cmd": "block", "prefix": "198.18.0.9"})
    assert r["ok"] and r["message"].startswith("dry run") and not enf.blocks
    # The allowlist's durable additions are neither made nor taken away by a dry run.
    durable.allow(Prefix.parse("198.51.100.0/24"), clock.now, "partner")
    for body in (
        {"cmd": "allow", "prefix": "198.51.100.9"},
        {"cmd": "allow", "prefix": "198.51.100.0/24", "remove": True},
    ):
        r = gov.handle(body)
        assert r["refused"] and r["error"].startswith("dry run: the allowlist is not changed"), r
    assert durable.allowed() == (Prefix.parse("198.51.100.0/24"),)


def test_reload_switches_policy_and_releases_newly_allowed(tmp_path: Path) -> None:
    gov, socks, enf, clock = make(tmp_path)
    socks.sources = {BOT: hog(30)}
    run_ticks(gov, clock, 7)
    assert BOT in enf.blocks
    new = config.from_mapping(
        {"allow": {"cidrs": ["192.0.2.0/24", "198.18.0.0/24"]}, "daemon": {"state_dir": str(tmp_path / "state")}}
    )
    gov.reload(new)
    assert BOT not in enf.blocks and not gov.state.blocks


def test_kernel_objects_changed_by_someone_else_are_made_again_with_the_blocks_within_the_tick(tmp_path: Path) -> None:
    gov, socks, enf, clock = make(tmp_path)
    socks.sources = {BOT: hog(30)}
    run_ticks(gov, clock, 7)
    assert BOT in enf.blocks
    setups = enf.setups
    # `nft flush ruleset`: the objects and every element in them are gone.
    enf.blocks.clear()
    enf.allow.clear()
    enf.tampered = "table inet govern is gone"
    gov.tick()
    assert enf.setups == setups + 1 and BOT in enf.blocks and Prefix.parse("192.0.2.0/24") in enf.allow
    st = reports.status(gov)
    assert st["failures"]["kernel-changed"] == 1 and "gone by someone else" in st["last_errors"]["kernel-changed"]
    gov.tick()
    assert enf.setups == setups + 1  # nothing changed since: no setup again


def test_a_tick_says_where_its_time_went(tmp_path: Path) -> None:
    from govern import reports
    from govern.phases import PHASES

    gov, *_ = make(tmp_path)
    gov.tick()
    gov.tick()
    assert list(gov.phases.last) == list(PHASES)  # every phase, in the order the tick ran them
    assert all(s >= 0 for s in gov.phases.last.values())
    assert sum(gov.phases.last.values()) * 1000 <= gov.last_tick_ms + 0.01
    assert gov.phases.total["scan"] >= gov.phases.last["scan"]
    assert set(reports.status(gov)["last_tick_phases_ms"]) == set(PHASES)


def test_calm_ticks_reuse_the_last_walk_of_the_sockets_and_pressure_walks_every_tick(tmp_path: Path) -> None:
    gov, socks, enf, clock = make(tmp_path, modes__auto=True)
    assert gov.config["daemon"]["calm_scan_every"] == 3
    socks.sources = {TRUSTED: SockCounts(2, 2, 0, 0, 0)}
    run_ticks(gov, clock, 7)
    assert gov.observer.scans == 3  # ticks 1, 4 and 7 walk the sockets while calm
    # A source that opens more than the limit between walks is seen at the next walk, two ticks later at most.
    socks.sources[BOT] = SockCounts(30, 30, 0, 0, 0)
    run_ticks(gov, clock, 2)
    assert gov.snapshot is not None and BOT not in gov.snapshot.sources and BOT not in enf.throttles
    run_ticks(gov, clock, 1)
    assert BOT in enf.throttles and gov.observer.scans == 4
    # The tick after one that acted walks them again: the throttle's sessions as they are now.
    run_ticks(gov, clock, 1)
    assert gov.observer.scans == 5
    # Between ticks, accept queues that call for a higher mode: the tick they call for walks the sockets.
    before = gov.observer.scans
    socks.listening = (ListenerStats("0.0.0.0", 25, 100, 100),)
    assert gov.pressing()
    run_ticks(gov, clock, 1)
    assert gov.observer.scans == before + 1 and gov.state.mode.mode is not Mode.NORMAL
    # Under pressure, every tick.
    run_ticks(gov, clock, 3)
    assert gov.observer.scans == before + 4


def test_ticks_skip_the_syn_counters_while_the_kernels_count_stands_still(tmp_path: Path) -> None:
    """A tick reads the per-source SYN counters only when the backend's counter of new connections moved since
    the last read, or a count read may have timed out since; whether it walks the sockets or not."""
    gov, _socks, enf, clock = make(tmp_path, modes__auto=True)
    enf.attempted = 0
    run_ticks(gov, clock, 3)  # a walk, then two calm ticks with nothing new
    assert gov.observer.scans == 1 and enf.syn_reads == 1 == gov.observer.syn_reads
    # A new connection between ticks: the next calm tick reads, and counts it.
    enf.attempted, enf.syn[BOT] = 1, 1
    run_ticks(gov, clock, 1)  # the walk (the fourth tick)
    enf.attempted, enf.syn[BOT] = 2, 2
    run_ticks(gov, clock, 1)
    assert gov.observer.scans == 2 and enf.syn_reads == 3
    assert gov.snapshot is not None and gov.snapshot.sources.get(BOT) is not None
    assert gov.snapshot.sources[BOT].new == 1
    run_ticks(gov, clock, 1)  # still: nothing new, the source still counted in the last minute
    assert enf.syn_reads == 3 and gov.snapshot.sources[BOT].new == 0
    assert gov.snapshot.sources[BOT].new_per_minute == 2
    run_ticks(gov, clock, 1)  # a walk: the counts stand still all the same
    assert gov.observer.scans == 3 and enf.syn_reads == 3
    assert gov.snapshot.sources[BOT].new_per_minute == 2
    # The backend: a count read may have timed out since; it did, and the read finds it gone.
    enf.counts_expire, enf.syn = True, {}
    run_ticks(gov, clock, 1)
    assert gov.observer.scans == 3 and enf.syn_reads == 4
    enf.counts_expire = False
    run_ticks(gov, clock, 1)
    assert enf.syn_reads == 4
    enf.attempted, enf.syn[BOT] = 3, 1  # a new connection
    run_ticks(gov, clock, 1)
    assert enf.syn_reads == 5


def test_a_settled_tick_defers_a_dear_read_of_the_syn_counts_and_pressure_reads_at_once(tmp_path: Path) -> None:
    """In normal mode with nothing pressing, a read of the SYN counts that cost C seconds of CPU waits until
    C / 1% of a core has passed (CALM_READS, at most 10 s), though the counts move; its new connections then count
    over the whole time since the last read. A call between ticks reads at once, and a mode above normal reads
    every tick while a read costs under a tenth of the time since the last (PRESSED_READS)."""
    gov, socks, enf, clock = make(tmp_path, modes__auto=True)
    spent = [0.0]
    gov.observer.cpu = lambda: spent[0]
    read = gov.observer.syn_counts

    def dear() -> Any:
        spent[0] += 0.04  # each read costs 40 ms: 4 s of reads at 1% of a core
        return read()

    gov.observer.syn_counts = dear
    enf.attempted = 0
    run_ticks(gov, clock, 1)
    assert enf.syn_reads == 1
    for t in range(1, 4):  # the counts move every second; the reads wait
        enf.attempted, enf.syn[BOT] = t, t
        run_ticks(gov, clock, 1)
        assert enf.syn_reads == 1, t
        assert gov.snapshot is not None and gov.snapshot.totals is not None
        assert gov.snapshot.totals.foreign_new == 0 and gov.snapshot.counted_over == 0
    assert reports.status(gov)["counts_read_ago"] == 4.0  # the clock is at the next tick
    enf.attempted, enf.syn[BOT] = 4, 4
    run_ticks(gov, clock, 1)  # 4 s after the last read
    assert enf.syn_reads == 2
    snap = gov.snapshot
    assert snap is not None and snap.totals is not None and snap.totals.foreign_new == 4
    assert snap.counted_over == 4.0 and snap.interval == 1.0  # 1 a second, not 4 a second
    assert gov.policy is not None and snap.sources[BOT].new == 4
    # A flood begins between ticks: the tick it calls for reads, and so does every tick of the mode it calls.
    socks.listening = (ListenerStats("0.0.0.0", 25, 100, 100),)
    assert gov.pressing()
    enf.attempted, enf.syn[BOT] = 5, 5
    run_ticks(gov, clock, 1)
    assert enf.syn_reads == 3 and gov.state.mode.mode is not Mode.NORMAL
    for t in range(6, 9):
        enf.attempted, enf.syn[BOT] = t, t
        run_ticks(gov, clock, 1)
    assert enf.syn_reads == 6


def test_under_pressure_a_dear_read_waits_for_a_tenth_of_a_core_and_at_most_two_seconds(tmp_path: Path) -> None:
    """A botnet's worth of counted sources must not make the daemon the next thing to fall over: above normal mode a
    read that cost C waits C / 10% of a core (PRESSED_READS), at most 2 s, whatever the counts do."""
    gov, _socks, enf, clock = make(tmp_path, modes__auto=True)
    assert gov.handle({"cmd": "wave", "action": "on"})["ok"]
    spent = [0.0]
    gov.observer.cpu = lambda: spent[0]
    read = gov.observer.syn_counts
    costs = iter([0.05] * 3 + [0.6] * 20)  # 0.5 s at a tenth of a core: every tick; then 6 s: capped at 2

    def dear() -> Any:
        spent[0] += next(costs)
        return read()

    gov.observer.syn_counts = dear
    read_at: list[float] = []
    for t in range(12):
        enf.attempted, enf.syn[BOT] = t, t  # the counts move every tick
        before = enf.syn_reads
        run_ticks(gov, clock, 1)
        assert gov.state.mode.mode is Mode.WAVE
        if enf.syn_reads > before:
            read_at.append(gov.observer.counted_at or 0.0)
    gaps = [round(b - a, 1) for a, b in pairwise(read_at)]
    assert gaps[:3] == [1.0, 1.0, 1.0] and set(gaps[3:]) == {2.0} and len(gaps) >= 6, gaps


def test_a_read_defers_the_next_by_its_cost_and_never_beyond_the_cap(tmp_path: Path) -> None:
    gov, _socks, enf, clock = make(tmp_path, modes__auto=True)
    spent = [0.0]
    gov.observer.cpu = lambda: spent[0]
    read = gov.observer.syn_counts

    def dearest() -> Any:
        spent[0] += 5.0  # a read that cost 5 s of CPU would wait 500 s
        return read()

    gov.observer.syn_counts = dearest
    enf.attempted = 0
    run_ticks(gov, clock, 1)
    reads = []
    for t in range(1, 25):
        enf.attempted = t
        run_ticks(gov, clock, 1)
        reads.append(enf.syn_reads)
    assert reads[8] == 1 and reads[9] == 2  # MAX_DEFER: 10 s after the first read
    assert reads[18] == 2 and reads[19] == 3


def test_a_backend_that_cannot_tell_is_read_every_tick(tmp_path: Path) -> None:
    gov, _socks, enf, clock = make(tmp_path)
    assert enf.attempted is None  # no counter of new connections (the iptables backend's case)
    run_ticks(gov, clock, 5)
    assert gov.observer.scans == 2 and enf.syn_reads == 5


def test_status_says_how_old_the_walk_of_the_sockets_is(tmp_path: Path) -> None:
    """Calm ticks count sessions as of the last walk: status says when that was, so the operator knows the counts
    may be a few seconds old."""
    gov, socks, _enf, clock = make(tmp_path)
    assert reports.status(gov)["sockets_walked_ago"] is None  # no tick yet
    socks.sources = {TRUSTED: SockCounts(2, 2, 0, 0, 0)}
    run_ticks(gov, clock, 1)  # walks, then a second passes
    assert reports.status(gov)["sockets_walked_ago"] == 1.0
    run_ticks(gov, clock, 2)  # two calm ticks reuse that walk
    st = reports.status(gov)
    assert st["sockets_walked_ago"] == 3.0 and st["calm_scan_every"] == 3 and st["sockets"] == 2
    run_ticks(gov, clock, 1)
    assert reports.status(gov)["sockets_walked_ago"] == 1.0


def test_every_tick_walks_the_sockets_with_calm_scan_every_1(tmp_path: Path) -> None:
    gov, _socks, _enf, clock = make(tmp_path, daemon__calm_scan_every=1)
    run_ticks(gov, clock, 5)
    assert gov.observer.scans == 5


def last(gov: Governor) -> Snapshot | None:
    """The daemon's snapshot, read afresh (a tick changes it)."""
    return gov.snapshot


def test_a_tick_lets_the_last_snapshot_go_before_it_observes(tmp_path: Path) -> None:
    """At a million sources the last snapshot's columns beside the next tick's are the peak's margin over the
    target: the tick drops it first. Nothing in the tick reads it meanwhile, and a failed observation leaves none."""
    gov, socks, enf, clock = make(tmp_path)
    socks.sources = {BOT: hog(3)}
    enf.syn[TRUSTED] = 5
    gov.tick()
    assert gov.snapshot is not None and BOT in gov.snapshot.sources
    observe = gov.observer.snapshot
    held: list[object] = []

    def watched(*args: Any, **kwargs: Any) -> Snapshot:
        held.append(gov.snapshot)
        return observe(*args, **kwargs)

    def failing(*_args: Any, **_kwargs: Any) -> Snapshot:
        raise GovernError("sock_diag: the dump failed")

    gov.observer.snapshot = watched  # type: ignore[method-assign]
    clock.advance(1.0)
    gov.tick()
    assert held == [None] and gov.snapshot is not None and TRUSTED in gov.snapshot.sources
    gov.observer.snapshot = failing  # type: ignore[method-assign]
    clock.advance(1.0)
    assert not gov.tick() and last(gov) is None and gov.health.failures["observe"] == 1
    assert reports.status(gov)["blocks"] == 0  # status reads a daemon without a snapshot as before its first tick
    gov.observer.snapshot = observe  # type: ignore[method-assign]
    clock.advance(1.0)
    gov.tick()
    assert gov.snapshot is not None and BOT in gov.snapshot.sources
