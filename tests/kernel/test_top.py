"""`govern top` as an operator runs it (issue 14, item 4): the real daemon in an MX namespace, `govern top` in a
detached tmux session inside that namespace, read with capture-pane; a resize redraws to the new size, a daemon that
stops leaves the last frame with the reason under it, q and Ctrl-C end it with the terminal handed back."""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.daemon_harness import govern, running, wait_for, write_config
from tests.netns import MX4, Lab, SmtpListener, connect

BLOCKED = [f"198.18.7.{i}" for i in range(1, 9)]


class Tmux:
    """A tmux server of this test's own (`-L`, no user config), killed whatever happens."""

    def __init__(self) -> None:
        self.name = f"gvtop-{secrets.token_hex(3)}"
        self.socket = ""

    def __call__(self, *args: str, check: bool = True) -> str:
        res = subprocess.run(
            ["tmux", "-L", self.name, "-f", "/dev/null", *args], capture_output=True, text=True, timeout=10
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)}: {res.stderr.strip()}")
        return res.stdout

    def screen(self) -> list[str]:
        return self("capture-pane", "-p", "-t", "top").rstrip("\n").split("\n")

    def pane(self, fmt: str) -> str:
        return self("display-message", "-p", "-t", "top", fmt).strip()

    def kill(self) -> None:
        self("kill-server", check=False)
        if self.socket:  # the server leaves its socket behind
            Path(self.socket).unlink(missing_ok=True)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    t = Tmux()
    try:
        yield t
    finally:
        t.kill()


def start_top(tmux: Tmux, lab: Lab, cfg: Path, status: Path) -> int:
    """`govern top` in the pane, under a shell that writes its exit status to `status` (tmux's own pane_dead_status
    is not always filled in); the shell survives a Ctrl-C by a trap (a handler: an ignored SIGINT would be
    inherited). Returns govern top's pid."""
    status.unlink(missing_ok=True)
    run = f"ip netns exec {lab.mx.name} {sys.executable} -m govern top --config {cfg}"
    tmux("new-session", "-d", "-s", "top", "-x", "120", "-y", "40", f"trap true INT; {run}; echo $? > {status}")
    # The pane stays after the command ends, so what govern top left on the screen can be read.
    tmux("set-option", "-t", "top", "remain-on-exit", "on")
    tmux.socket = tmux.socket or tmux.pane("#{socket_path}")
    shell = tmux.pane("#{pane_pid}")
    children = Path(f"/proc/{shell}/task/{shell}/children")
    assert wait_for(lambda: children.read_text().strip() != "", timeout=5)
    return int(children.read_text().split()[0])  # ip netns exec execs govern top: the same pid


def ended(status: Path, pid: int) -> str:
    """govern top's exit status once it has ended."""
    assert wait_for(status.exists, timeout=5)
    assert wait_for(lambda: status.read_text().endswith("\n"), timeout=2)
    assert not Path(f"/proc/{pid}").exists()
    return status.read_text().strip()


def section(lines: list[str], title: str) -> list[str]:
    """The rows of a table under `title` (after its heading), up to the next blank line or title; none if the
    title is not on the screen."""
    start = next((i for i, line in enumerate(lines) if line.startswith(title)), len(lines)) + 2
    rows = []
    for line in lines[start:]:
        if not line.strip() or line.startswith("recent actions"):
            break
        rows.append(line)
    return rows


def test_top_shows_the_daemon_redraws_on_resize_and_quits_clean(lab: Lab, tmp_path: Path, tmux: Tmux) -> None:
    srv = SmtpListener(lab.mx, 25)
    socks: list[socket.socket] = []
    cfg = write_config(tmp_path)
    try:
        with running(lab.mx, cfg) as d:
            for addr in BLOCKED:
                r = govern(lab.mx, "block", addr, "--for", "1h", "--reason", "seen in a flood", "--config", str(cfg))
                assert r.returncode == 0, r.stderr
            assert govern(lab.mx, "wave", "on", "--for", "10m", "--config", str(cfg)).returncode == 0
            with lab.net.entered():
                socks = [connect("198.51.100.7", MX4, 25) for _ in range(3)]
            budget = d.status()["budget"]["slots"]
            assert budget > 0

            rc = tmp_path / "top.status"
            pid = start_top(tmux, lab, cfg, rc)
            assert wait_for(lambda: "198.51.100.7" in "\n".join(tmux.screen()), timeout=10), tmux.screen()
            big = tmux.screen()
            text = "\n".join(big)
            assert "WAVE" in text and "by the operator" in text
            assert f"budget {budget}" in text and "3 established" in text
            assert "blocks    8 blocked" in text and "by reason operator 8" in text
            recent = section(big, "recent actions")
            assert len(recent) == 9 and all(  # 8 blocks and the wave
                "198.18.7." in r or "wave" in r for r in recent
            ), big
            assert any("block" in r and "198.18.7.8" in r and "seen in a flood" in r for r in recent), big

            tmux("resize-window", "-t", "top", "-x", "80", "-y", "24")

            def redrawn() -> bool:
                lines = tmux.screen()
                return len(lines) <= 24 and 0 < len(section(lines, "recent actions")) <= 5

            assert wait_for(redrawn, timeout=5), tmux.screen()
            small = tmux.screen()
            # Drawn for 80 columns (cut with an ellipsis by govern top, not by tmux), the summary whole.
            assert small[0].startswith("govern top") and small[0].endswith("…") and len(small[0]) <= 80, small
            assert all(len(line) <= 80 for line in small)
            text = "\n".join(small)
            assert "WAVE" in text and f"budget {budget}" in text and "198.51.100.7" in text

            tmux("send-keys", "-t", "top", "q")
            assert ended(rc, pid) == "0"
            # The alternate screen was left: the frame is gone from the terminal.
            assert "govern top" not in "\n".join(tmux.screen())
            tmux("kill-session", "-t", "top")

            # A daemon that goes away: the last frame stays, the reason under it; Ctrl-C ends it as cleanly as q.
            pid = start_top(tmux, lab, cfg, rc)
            assert wait_for(lambda: "WAVE" in "\n".join(tmux.screen()), timeout=10), tmux.screen()
            d.stop()
            assert wait_for(lambda: "daemon is not running" in "\n".join(tmux.screen()), timeout=5), tmux.screen()
            assert "WAVE" in "\n".join(tmux.screen())
            tmux("send-keys", "-t", "top", "C-c")
            assert ended(rc, pid) == "0"
            assert "govern top" not in "\n".join(tmux.screen())
    finally:
        for s in socks:
            s.close()
        srv.close()


def test_top_without_the_daemon_says_so_and_exits_3(lab: Lab, tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    t0 = time.monotonic()
    r = govern(lab.mx, "top", "--config", str(cfg))
    assert r.returncode == 3 and "daemon is not running" in r.stderr and r.stdout == ""
    assert time.monotonic() - t0 < 10
