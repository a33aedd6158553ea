"""The sysctl manager over fakes and over a temporary sysctl tree: journal before write, restore gives back the
originals (also after a crash), the wave layers on the base and leaves it intact, nothing is written twice."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from govern.errors import RefusedError
from govern.fakes import FakeSysctls
from govern.sysctl.journal import Journal, JournalError
from govern.sysctl.manager import SysctlManager
from govern.sysctl.planner import (
    CONNTRACK_BUCKETS,
    CONNTRACK_MAX,
    FIN_TIMEOUT,
    KEYS,
    MAX_ORPHANS,
    NETDEV_BACKLOG,
    SOMAXCONN,
    SYN_BACKLOG,
    SYNACK_RETRIES,
    SYNCOOKIES,
    Expectations,
    Status,
)
from govern.sysctl.procsys import HASHSIZE, ProcSys

GIB = 1 << 30
STOCK = {
    SOMAXCONN: "128",
    SYN_BACKLOG: "512",
    SYNCOOKIES: "0",
    NETDEV_BACKLOG: "1000",
    CONNTRACK_MAX: "65536",
    CONNTRACK_BUCKETS: "16384",
    SYNACK_RETRIES: "5",
    FIN_TIMEOUT: "60",
    MAX_ORPHANS: "4096",
}
EXPECT = Expectations(2000, 8 * GIB)


def manager(fs: FakeSysctls, state_dir: str, expect: Expectations = EXPECT) -> SysctlManager:
    return SysctlManager(fs, Journal(state_dir), expect)


def test_apply_journals_originals_then_restore_puts_them_back(tmp_path: Path) -> None:
    fs = FakeSysctls(dict(STOCK))
    m = manager(fs, str(tmp_path))
    rep = m.apply()
    assert not rep.failed
    assert fs.values[SOMAXCONN] == "4096" and fs.values[SYNCOOKIES] == "1" and fs.values[SYNACK_RETRIES] == "5"
    journal = json.loads((tmp_path / "sysctl-journal.json").read_text())
    assert journal["keys"][SOMAXCONN]["original"] == "128"
    assert journal["profiles"] == ["base"]
    assert m.verify() == ()
    again = m.apply()
    assert again.outcomes == () and len(fs.writes) == len(rep.written)  # nothing written twice
    m.restore()
    assert fs.values == STOCK
    assert not (tmp_path / "sysctl-journal.json").exists()


def test_verify_names_the_drift(tmp_path: Path) -> None:
    fs = FakeSysctls(dict(STOCK))
    m = manager(fs, str(tmp_path))
    m.apply()
    fs.values[SOMAXCONN] = "1024"  # someone lowered it behind govern's back
    fs.values[SYN_BACKLOG] = "999999"  # raising is the operator's right: not drift
    drift = m.verify()
    assert [(d.key, d.live, d.expected) for d in drift] == [(SOMAXCONN, 1024, 4096)]


def test_wave_layers_on_the_base_and_leaving_it_restores_the_base_targets(tmp_path: Path) -> None:
    fs = FakeSysctls(dict(STOCK))
    m = manager(fs, str(tmp_path))
    m.apply()
    after_base = dict(fs.values)
    m.enter_wave()
    assert fs.values[SYNACK_RETRIES] == "2" and fs.values[FIN_TIMEOUT] == "15" and fs.values[SYNCOOKIES] == "1"
    assert m.profiles() == ["base", "wave"]
    assert m.verify() == ()
    m.leave_wave()
    assert fs.values == after_base
    assert m.profiles() == ["base"]
    m.restore()
    assert fs.values == STOCK


def test_wave_without_base_reverts_to_the_originals(tmp_path: Path) -> None:
    fs = FakeSysctls(dict(STOCK))
    m = manager(fs, str(tmp_path))
    m.enter_wave()
    assert {k for k, _ in fs.writes} == {SYNCOOKIES, SYNACK_RETRIES, FIN_TIMEOUT}
    m.leave_wave()
    assert fs.values == STOCK
    assert not (tmp_path / "sysctl-journal.json").exists()


def test_a_refused_key_is_reported_and_forgotten_the_rest_applies(tmp_path: Path) -> None:
    fs = FakeSysctls(dict(STOCK), refuse={NETDEV_BACKLOG})
    m = manager(fs, str(tmp_path))
    rep = m.apply()
    assert [o.key for o in rep.failed] == [NETDEV_BACKLOG]
    assert fs.values[SOMAXCONN] == "4096"
    assert NETDEV_BACKLOG not in json.loads((tmp_path / "sysctl-journal.json").read_text())["keys"]


class Crash(BaseException):
    """kill -9 in the middle of a run of writes."""


class CrashingSysctls(FakeSysctls):
    def __init__(self, values: dict[str, str], after: int) -> None:
        super().__init__(values)
        self.after = after

    def write(self, key: str, value: str) -> None:
        if len(self.writes) >= self.after:
            raise Crash
        super().write(key, value)


ops_st = st.lists(st.sampled_from(["apply", "enter_wave", "leave_wave", "restore"]), max_size=6)
values_st = st.fixed_dictionaries({k: st.integers(0, 300_000).map(str) for k in KEYS})


@settings(max_examples=60, deadline=None)
@given(values_st, ops_st, st.integers(0, 12), st.integers(1, 100_000))
def test_restore_after_any_sequence_and_a_crash_gives_back_the_originals(
    originals: dict[str, str], ops: list[str], crash_after: int, sessions: int
) -> None:
    with tempfile.TemporaryDirectory() as d:
        expect = Expectations(sessions, 4 * GIB)
        fs = CrashingSysctls(dict(originals), crash_after)
        m = manager(fs, d, expect)
        try:
            for op in ops:
                getattr(m, op)()
        except Crash:
            pass
        # The next process: a fresh manager on the same journal and kernel.
        survivor = FakeSysctls(fs.values)
        manager(survivor, d, expect).recover()
        assert survivor.values == originals
        assert not os.path.exists(os.path.join(d, "sysctl-journal.json"))


@settings(max_examples=40, deadline=None)
@given(values_st, st.integers(1, 100_000))
def test_leaving_the_wave_is_the_identity_on_the_base(originals: dict[str, str], sessions: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        fs = FakeSysctls(dict(originals))
        m = manager(fs, d, Expectations(sessions, 4 * GIB))
        m.apply()
        base = dict(fs.values)
        m.enter_wave()
        m.leave_wave()
        assert fs.values == base
        for k in KEYS:
            assert int(base[k]) >= int(originals[k]) or k in (SYNACK_RETRIES, FIN_TIMEOUT)


def test_a_journal_from_another_namespace_is_refused_and_one_from_an_earlier_boot_dropped(tmp_path: Path) -> None:
    fs = FakeSysctls(dict(STOCK))
    manager(fs, str(tmp_path)).apply()
    elsewhere = FakeSysctls(dict(STOCK), netns="net:[2]")
    with pytest.raises(RefusedError, match="belongs to network namespace net:\\[1\\]"):
        manager(elsewhere, str(tmp_path)).restore()
    assert elsewhere.writes == []
    rebooted = FakeSysctls(dict(STOCK), boot="boot-2")
    assert manager(rebooted, str(tmp_path)).restore().outcomes == ()
    assert rebooted.writes == [] and not (tmp_path / "sysctl-journal.json").exists()


def test_a_corrupt_journal_is_reported_not_guessed(tmp_path: Path) -> None:
    (tmp_path / "sysctl-journal.json").write_text("{not json")
    fs = FakeSysctls(dict(STOCK))
    with pytest.raises(JournalError, match="unreadable"):
        manager(fs, str(tmp_path)).restore()
    assert fs.writes == []


# -- the real reader/writer over a temporary tree: the host-wide keys tests must never write for real -----------


def tree(tmp: Path) -> tuple[Path, Path]:
    root, modules = tmp / "sys", tmp / "module"
    for key, value in STOCK.items():
        p = root.joinpath(*key.split("."))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(value + "\n")
    root.joinpath(*CONNTRACK_BUCKETS.split(".")).chmod(0o444)  # as in kernels before 5.x, or a non-init namespace
    param = modules / HASHSIZE
    param.parent.mkdir(parents=True)
    param.write_text("16384\n")
    param.chmod(0o600)
    return root, modules


def test_host_wide_keys_through_a_temporary_tree(tmp_path: Path) -> None:
    root, modules = tree(tmp_path)
    state = tmp_path / "state"
    fs = ProcSys(str(root), str(modules), initial_namespace=True)
    m = SysctlManager(fs, Journal(str(state)), EXPECT)
    plan = {i.key: i for i in m.plan()}
    assert plan[CONNTRACK_BUCKETS].status is Status.CHANGE  # settable through the module parameter
    m.apply()

    def value(key: str) -> str:
        return root.joinpath(*key.split(".")).read_text().strip()

    assert value(NETDEV_BACKLOG) == "8192"
    assert value(MAX_ORPHANS) == "16384"
    assert value(CONNTRACK_MAX) == "131072"
    assert (modules / HASHSIZE).read_text().strip() == "131072"
    assert value(CONNTRACK_BUCKETS) == "16384"  # the read-only sysctl itself was not written
    m.restore()
    assert all(value(k) == v for k, v in STOCK.items())
    assert (modules / HASHSIZE).read_text().strip() == "16384"


def test_outside_the_initial_namespace_the_module_parameter_is_left_alone(tmp_path: Path) -> None:
    root, modules = tree(tmp_path)
    fs = ProcSys(str(root), str(modules), initial_namespace=False)
    m = SysctlManager(fs, Journal(str(tmp_path / "state")), EXPECT)
    item = next(i for i in m.plan() if i.key == CONNTRACK_BUCKETS)
    assert item.status is Status.READ_ONLY and "initial network namespace" in item.reason
    m.apply()
    assert (modules / HASHSIZE).read_text().strip() == "16384"


def test_a_key_missing_from_the_tree_is_reported_never_a_crash(tmp_path: Path) -> None:
    root, modules = tree(tmp_path)
    root.joinpath(*MAX_ORPHANS.split(".")).unlink()
    fs = ProcSys(str(root), str(modules), initial_namespace=True)
    m = SysctlManager(fs, Journal(str(tmp_path / "state")), EXPECT)
    assert next(i for i in m.plan() if i.key == MAX_ORPHANS).status is Status.ABSENT
    assert not m.apply().failed
