"""The dry-run edges observe through the real ones and change nothing: no session ended, no tarpit built, no sysctl
written, nothing stored."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from govern.addr import Prefix
from govern.dryrun import DryRunSockets, DryRunStore, DryRunSysctls, DryRunTarpit
from govern.errors import RefusedError
from govern.fakes import FakeSockets, FakeSysctls
from govern.model import Action, ActionKind, Plan, ScanOptions, SockCounts
from govern.store import Store
from tests.unit.test_sysctl_manager import STOCK, manager

BOT = Prefix.parse("198.18.0.1")


def test_the_store_is_read_and_never_written(tmp_path: Path) -> None:
    real = Store(str(tmp_path))
    real.allow(Prefix.parse("192.0.2.0/24"), 1.0, "partner")
    real.save(Plan((Action(ActionKind.BLOCK, BOT, "before", until=9e9),)), 1.0)
    dry = DryRunStore(real)
    assert not dry.load().blocks  # a clean slate: a dry run neither acts on nor alters what a real run left
    with dry.pending(Plan((Action(ActionKind.BLOCK, Prefix.parse("198.18.0.2"), "x", until=9e9),)), 2.0):
        pass
    dry.save(Plan((Action(ActionKind.UNBLOCK, BOT, "x"),)), 2.0)
    dry.note("cut", [(BOT, "idle")], 2.0)
    assert set(real.load().blocks) == {BOT} and [e.kind for e in real.events()] == ["block"]
    assert dry.allowed() == real.allowed() and dry.events() == real.events()
    with pytest.raises(RefusedError, match="dry run"):
        dry.allow(BOT, 2.0)
    with pytest.raises(RefusedError, match="dry run"):
        dry.disallow(Prefix.parse("192.0.2.0/24"))


def test_sessions_are_read_and_never_ended() -> None:
    socks = FakeSockets()
    socks.sources = {BOT: SockCounts(held=2, established=2, syn_recv=0, idle=2, max_idle_ms=60_000)}
    dry = DryRunSockets(socks)
    assert dry.scan(ScanOptions(frozenset({25}), v4_len=32, v6_len=64, idle_after_ms=1000)).sources == socks.sources
    assert dry.destroy([BOT], frozenset({25})) == 0 and dry.cut({BOT: 1000}, frozenset({25})) == {}
    assert not socks.destroyed and not socks.cuts and socks.sources[BOT].established == 2


class RecordingTarpit:
    name = "recording"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def supported(self) -> str | None:
        return None

    def setup(self, ports: frozenset[int], ifaces: object = ()) -> None:
        self.calls.append("setup")

    def apply(self, add: object, remove: object) -> None:
        self.calls.append("apply")

    def tarpitted(self) -> frozenset[Prefix]:
        return frozenset()

    def teardown(self) -> bool:
        self.calls.append("teardown")
        return True

    def close(self) -> None:
        self.calls.append("close")


def test_the_tarpit_is_never_built_and_teardown_still_removes_what_a_real_run_left() -> None:
    inner = RecordingTarpit()
    dry = DryRunTarpit(inner)
    assert dry.supported() is None and dry.name == "dry-run (recording)"
    dry.setup(frozenset({25}))
    dry.apply({BOT: 60.0}, [])
    assert inner.calls == []
    assert dry.teardown() and inner.calls == ["teardown"]


def test_sysctls_are_planned_and_logged_never_written(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fs = FakeSysctls(dict(STOCK))
    real = manager(fs, str(tmp_path))
    dry = DryRunSysctls(real)
    with caplog.at_level(logging.INFO, logger="govern.dryrun"):
        for report in (dry.recover(), dry.apply(), dry.enter_wave(), dry.leave_wave(), dry.restore()):
            assert not report.outcomes
    assert fs.values == STOCK and not fs.writes
    planned = [i for i in real.plan() if i.current != i.target]
    assert planned and all(f"dry run: sysctl {i.key} " in caplog.text for i in planned)
