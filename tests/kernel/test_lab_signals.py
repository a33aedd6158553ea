"""A lab run stopped by a signal (`kill`, a `timeout` around it, its terminal closed) leaves nothing behind: its
namespaces, its Postfix, its govern and its traffic go, as they do when it ends or is stopped with Ctrl-C. SIGTERM's
default action had ended the run at once and left all of them running."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from govern_lab.topology import NETNS_DIR


def namespaces() -> set[str]:
    p = Path(NETNS_DIR)
    return {n.name for n in p.iterdir()} if p.is_dir() else set()


def pids_in(namespaces: set[str]) -> set[int]:
    out: set[int] = set()
    for ns in namespaces:
        res = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)
        out |= {int(x) for x in res.stdout.split()}
    return out


def alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signalled_lab_run_removes_its_namespaces_and_processes(tmp_path: Path, sig: signal.Signals) -> None:
    before = namespaces()
    out, err = tmp_path / "demo", tmp_path / "stderr"
    with err.open("wb") as fh:
        run = subprocess.Popen(
            [sys.executable, "-m", "govern", "lab", "demo", "--out", str(out)], stdout=subprocess.DEVNULL, stderr=fh
        )
    try:
        # Mid-flood: the run's govern is up (its socket) and its bots are at work.
        deadline = time.monotonic() + 90
        while not ((out / "govern.sock").exists() and _flooding(out)):
            assert run.poll() is None, err.read_text()[-2000:]
            assert time.monotonic() < deadline, "the demo never reached its flood"
            time.sleep(0.5)
        ours = namespaces() - before
        held = pids_in(ours)
        assert ours and len(held) >= 4, (ours, held)  # Postfix, govern, the senders and the bots at least
        run.send_signal(sig)
        run.wait(90)
    finally:
        if run.poll() is None:  # the test failed before its signal: Ctrl-C's way, which has always cleaned up
            run.send_signal(signal.SIGINT)
            try:
                run.wait(90)
            except subprocess.TimeoutExpired:
                run.kill()
                run.wait()
    assert run.returncode != 0
    assert namespaces() - before == set()
    assert [p for p in held if alive(p)] == []


def _flooding(out: Path) -> bool:
    """The bots' process is running: a traffic process's command line names its report file under `out`."""
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if any(str(out / "bot-") in a for a in cmd):
            return True
    return False
