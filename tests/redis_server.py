"""A real redis-server (Debian's package) for the fleet's tests: on a unix socket in a directory of the test's
own, no TCP port, no persistence; started and stopped by PID, never left running."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from govern_lab.redisd import server_command

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def need_redis() -> None:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("Debian's redis-server is not installed (bash .ci/setup test installs it)")


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = str(self.dir / "redis.sock")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> RedisServer:
        need_redis()
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 - the child keeps it
        # The same socket path each time: a restart is the same server, as the hosts see it.
        self.proc = subprocess.Popen(server_command(self.socket, self.dir), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.dir / 'redis.log').read_text()[-2000:]}")
            if Path(self.socket).exists():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not open its socket within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
        Path(self.socket).unlink(missing_ok=True)

    def client(self) -> Any:
        import redis

        return redis.Redis(unix_socket_path=self.socket)
