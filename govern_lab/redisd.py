"""The fleet scenario's Redis: Debian's redis-server, installed the way the lab installs Postfix (no service started,
nothing removed), run by the lab on a unix socket in a run's work directory (the lab's namespaces share the
filesystem, so every MX's govern reaches it) with no TCP port and no persistence, and stopped by its PID; and the
fleet's shared key, a root-owned 0600 file of random bytes beside it (docs/fleet.md)."""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

from govern_lab.postfix import apt_install
from govern_lab.topology import Lab, LabError

REDIS_SERVER = "/usr/bin/redis-server"


def install() -> None:
    """Install Debian's redis-server unless it is there; its service is never started (the lab runs its own)."""
    if not os.access(REDIS_SERVER, os.X_OK):
        apt_install("redis-server")


def server_command(socket: str, directory: Path) -> list[str]:
    """Debian's redis-server on a unix socket only (no TCP port), root's alone, in `directory`, without
    persistence, in the foreground: the lab's and the tests' Redis (tests/redis_server.py)."""
    return [
        shutil.which("redis-server") or REDIS_SERVER,
        "--port", "0",
        "--unixsocket", socket,
        "--unixsocketperm", "600",
        "--dir", str(directory),
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
    ]  # fmt: skip


def write_key(path: Path) -> Path:
    """A fresh fleet key at `path` (32 random bytes, base64), mode 0600 from its creation, as govern requires."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    return path


class Redis:
    """One redis-server for a run, its socket and log under `workdir`, its process in the lab's router namespace
    (it opens no port: only the unix socket, which every namespace reaches), so the lab's `down()` ends it too."""

    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.dir = workdir
        self.socket = str(workdir / "redis.sock")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 10.0) -> Redis:
        self.dir.mkdir(parents=True, exist_ok=True)
        Path(self.socket).unlink(missing_ok=True)
        with open(self.dir / "redis.log", "ab") as log:
            self.proc = self.lab.popen(
                "router", *server_command(self.socket, self.dir), stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while not Path(self.socket).exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise LabError(f"redis-server did not open {self.socket}: {self._tail()}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        Path(self.socket).unlink(missing_ok=True)

    def _tail(self) -> str:
        try:
            return " | ".join((self.dir / "redis.log").read_text(errors="replace").splitlines()[-5:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> Redis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
