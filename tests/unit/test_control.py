"""The control channel: requests reach the main loop, non-root peers are refused, a missing daemon is reported;
and sd_notify reaches systemd's socket."""

from __future__ import annotations

import os
import queue
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from govern.control import ControlServer, Request, call, ping
from govern.errors import DaemonUnavailable, GovernError
from govern.systemd import notify


def echo(body: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "echo": body}


def serve(
    path: str, answer: Callable[[dict[str, Any]], dict[str, Any]] = echo, timeout: float = 30.0
) -> tuple[ControlServer, threading.Event]:
    """A control server and a loop answering its requests with `answer`, as the daemon's main loop does."""
    q: queue.Queue[Request | None] = queue.Queue()
    srv = ControlServer(path, q, timeout)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                req = q.get(timeout=0.1)
            except queue.Empty:
                continue
            if req is not None:
                req.reply = answer(req.body)
                req.done.set()

    threading.Thread(target=loop, daemon=True).start()
    return srv, stop


def test_request_reaches_the_loop_and_socket_is_private(tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "g.sock")
    srv, stop = serve(path)
    try:
        assert call(path, {"cmd": "x", "n": 1}) == {"ok": True, "echo": {"cmd": "x", "n": 1}}
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
        with pytest.raises(GovernError, match="already answering"):
            ControlServer(path, queue.Queue())
    finally:
        stop.set()
        srv.close()
    assert not os.path.exists(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_non_root_peer_is_refused() -> None:
    # pytest's tmp_path is root-only; the unprivileged child must be able to reach the socket to be refused by the
    # uid check itself rather than by file permissions.
    top = tempfile.mkdtemp(prefix="govern-ctl-")
    os.chmod(top, 0o755)
    path = os.path.join(top, "run", "g.sock")
    srv, stop = serve(path)
    os.chmod(os.path.dirname(path), 0o755)
    os.chmod(path, 0o666)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become nobody and ask
        os.close(r)
        try:
            os.setgid(65534)
            os.setuid(65534)
            reply = call(path, {"cmd": "ping"})
            os.write(w, str(reply).encode())
        except Exception as exc:
            os.write(w, f"exception: {exc}".encode())
        finally:
            os._exit(0)
    os.close(w)
    got = os.read(r, 4096).decode()
    os.waitpid(pid, 0)
    stop.set()
    srv.close()
    shutil.rmtree(top)
    assert "permission denied: the govern control socket is root's" in got, got


def test_a_request_nested_past_the_parser_is_refused_and_the_server_goes_on(tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "g.sock")
    srv, stop = serve(path)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
            s.sendall(b"[" * 100_000 + b"\n")
            assert b"nested too deep" in s.recv(4096)
        assert call(path, {"cmd": "ping"}) == {"ok": True, "echo": {"cmd": "ping"}}
    finally:
        stop.set()
        srv.close()


def test_a_burst_of_callers_all_get_answers(tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "g.sock")
    srv, stop = serve(path)
    replies: list[dict[str, object]] = []
    try:
        # More at once than the listen queue holds: the callers past it wait for room instead of failing.
        callers = [threading.Thread(target=lambda: replies.append(call(path, {"cmd": "ping"}))) for _ in range(400)]
        for t in callers:
            t.start()
        for t in callers:
            t.join()
        assert len(replies) == 400 and all(r["ok"] for r in replies)
    finally:
        stop.set()
        srv.close()


def test_absent_daemon_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DaemonUnavailable, match="not running"):
        call(str(tmp_path / "none.sock"), {"cmd": "ping"})
    assert not ping(str(tmp_path / "none.sock"))


def test_sd_notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert notify("READY=1")
        assert s.recv(64) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not notify("READY=1")
