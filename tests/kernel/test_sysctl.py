"""The sysctl planner on the real kernel, in network namespaces this module creates: plan, apply, verify, the wave
and restore through the CLI; `kill -9` during and after apply, then recovery from the journal.

Only the per-namespace keys are written for real. Every command that writes runs through `in_ns`, which refuses
to run unless the target is a network namespace other than the host's; the host's values are compared before and
after each test. The host-wide keys are covered over a temporary tree (tests/unit/test_sysctl_manager.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from govern.sysctl.planner import (
    ABORT_OVERFLOW,
    FIN_TIMEOUT,
    NETDEV_BACKLOG,
    SOMAXCONN,
    SYN_BACKLOG,
    SYNACK_RETRIES,
    SYNCOOKIES,
)
from tests.kernel.daemon_harness import Daemon, govern, write_config
from tests.netns import Netns, new_name, sh

PER_NS = (SOMAXCONN, SYN_BACKLOG, SYNCOOKIES, SYNACK_RETRIES, FIN_TIMEOUT, ABORT_OVERFLOW)
# Values a fresh namespace is given first, so every key has somewhere to go (and back).
START = {
    SOMAXCONN: "1024",
    SYN_BACKLOG: "256",
    SYNCOOKIES: "0",
    SYNACK_RETRIES: "5",
    FIN_TIMEOUT: "60",
    ABORT_OVERFLOW: "0",
}
# expected_sessions = 10000: somaxconn 16384, syn backlog 32768; wave: 2 retries, 15 s, resets on overflow.
APPLIED = {**START, SOMAXCONN: "16384", SYN_BACKLOG: "32768", SYNCOOKIES: "1"}
WAVE = {**APPLIED, SYNACK_RETRIES: "2", FIN_TIMEOUT: "15", ABORT_OVERFLOW: "1"}


def host_values() -> dict[str, str]:
    return {k: Path("/proc/sys", *k.split(".")).read_text().strip() for k in PER_NS}


def in_ns(ns: Netns, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI inside `ns`, after checking that `ns` really is not the host's network namespace."""
    assert_not_host(ns)
    return govern(ns, *args)


def assert_not_host(ns: Netns) -> None:
    """The test process runs in the host's namespace (and so, where readable, does PID 1)."""
    inside = ns.sh("readlink", "/proc/self/ns/net").strip()
    host = {os.readlink("/proc/self/ns/net")}
    with contextlib.suppress(OSError):
        host.add(os.readlink("/proc/1/ns/net"))
    assert inside and inside not in host, "refusing to touch the host's sysctls"


def values(ns: Netns) -> dict[str, str]:
    return {k: ns.sh("cat", "/proc/sys/" + k.replace(".", "/")).strip() for k in PER_NS}


@pytest.fixture
def ns() -> Iterator[Netns]:
    before = host_values()
    n = Netns(new_name("sc"))
    sh("ip", "netns", "add", n.name)
    try:
        n.sh("sysctl", "-qw", *(f"{k}={v}" for k, v in START.items()))
        assert values(n) == START
        yield n
    finally:
        sh("ip", "netns", "del", n.name, check=False)
        assert host_values() == before, "the host's sysctls changed"


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write_config(tmp_path, "[sysctl]\nexpected_sessions = 10000\n")


def test_plan_apply_verify_wave_and_restore_in_a_namespace(ns: Netns, cfg: Path) -> None:
    res = in_ns(ns, "sysctl", "plan", "--json", "-c", str(cfg))
    assert res.returncode == 0, res.stderr
    plan = {i["key"]: i for i in json.loads(res.stdout)["keys"]}
    assert plan[SOMAXCONN]["status"] == "change" and plan[SOMAXCONN]["target"] == 16384
    assert plan[NETDEV_BACKLOG]["status"] == "not-in-namespace"  # host-wide: absent inside a namespace
    assert plan[SYNACK_RETRIES]["status"] == "keep"  # lowered only in the wave

    res = in_ns(ns, "sysctl", "verify", "-c", str(cfg))
    assert res.returncode == 1 and "drift: net.core.somaxconn: live 1024, planned 16384" in res.stdout

    res = in_ns(ns, "sysctl", "apply", "-c", str(cfg))
    assert res.returncode == 0, res.stderr
    assert "sysctl net.core.somaxconn: 1024 -> 16384" in res.stdout
    assert values(ns) == APPLIED
    assert in_ns(ns, "sysctl", "verify", "-c", str(cfg)).returncode == 0

    assert in_ns(ns, "sysctl", "apply", "--wave", "-c", str(cfg)).returncode == 0
    assert values(ns) == WAVE
    res = in_ns(ns, "sysctl", "verify", "-c", str(cfg))
    assert res.returncode == 0, res.stdout  # verified against the wave while it is in force
    assert in_ns(ns, "sysctl", "restore", "--wave", "-c", str(cfg)).returncode == 0
    assert values(ns) == APPLIED

    res = in_ns(ns, "sysctl", "restore", "-c", str(cfg))
    assert res.returncode == 0, res.stderr
    assert values(ns) == START
    assert not (cfg.parent / "state" / "sysctl-journal.json").exists()


KILL_DURING_APPLY = """
import os, signal, sys
from govern import config
from govern.wiring import sysctl_manager
m = sysctl_manager(config.load(sys.argv[1]))
real, done = m.fs.write, []
def write(key, value):
    if len(done) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    real(key, value)
    done.append(key)
m.fs.write = write
m.apply()
"""


def test_kill_9_in_the_middle_of_apply_then_restore_from_the_journal(ns: Netns, cfg: Path) -> None:
    assert_not_host(ns)
    res = subprocess.run(
        ["ip", "netns", "exec", ns.name, sys.executable, "-c", KILL_DURING_APPLY, str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == -signal.SIGKILL, res.stderr
    half = values(ns)
    assert half != START and half != APPLIED  # killed with some keys written and some not
    res = in_ns(ns, "sysctl", "restore", "-c", str(cfg))
    assert res.returncode == 0, res.stderr
    assert values(ns) == START


def test_kill_9_after_apply_then_restore_from_the_journal(ns: Netns, cfg: Path) -> None:
    d = Daemon(ns, cfg).start()
    try:
        assert values(ns) == APPLIED  # applied at start
        assert in_ns(ns, "sysctl", "apply", "--wave", "-c", str(cfg)).returncode == 0
        assert values(ns) == WAVE
    finally:
        assert d.stop(signal.SIGKILL) == -signal.SIGKILL
    assert values(ns) == WAVE  # nothing ran at the kill: only the journal knows the originals
    res = in_ns(ns, "sysctl", "restore", "-c", str(cfg))
    assert res.returncode == 0, res.stderr
    assert values(ns) == START


def test_restart_after_kill_9_recovers_then_teardown_restores_everything(ns: Netns, cfg: Path) -> None:
    d = Daemon(ns, cfg).start()
    in_ns(ns, "sysctl", "apply", "--wave", "-c", str(cfg))
    d.stop(signal.SIGKILL)
    d = Daemon(ns, cfg).start()
    try:
        # The crashed run's wave ended with it: originals put back, then the base applied again.
        assert values(ns) == APPLIED
        assert "put back" in d.log.read_text()
        res = in_ns(ns, "teardown", "-c", str(cfg))
        assert res.returncode == 0, res.stderr
        assert d.proc is not None and d.proc.wait(15) == 0
    finally:
        d.stop()
    assert values(ns) == START


def test_a_clean_stop_ends_the_wave_and_keeps_the_base(ns: Netns, cfg: Path) -> None:
    d = Daemon(ns, cfg).start()
    try:
        in_ns(ns, "sysctl", "apply", "--wave", "-c", str(cfg))
        assert values(ns) == WAVE
    finally:
        assert d.stop() == 0
    assert values(ns) == APPLIED
    res = in_ns(ns, "teardown", "-c", str(cfg))  # without a daemon: restored from the journal directly
    assert res.returncode == 0, res.stderr
    assert values(ns) == START
