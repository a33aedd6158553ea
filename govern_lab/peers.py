"""The adversary matrix's peers beside govern: Debian's fail2ban, run inside the lab's mx namespace only.

fail2ban is installed from Debian the way the lab installs Postfix (never started in the root namespace: policy-rc.d
forbids service starts during the install), and each run starts its own fail2ban-server inside the mx namespace with
a config directory, socket, pid file, database and log of its own under the run's work directory. The config is
Debian's (/etc/fail2ban, copied), with only the stock `postfix` jail enabled in `mode = aggressive`, reading the lab
Postfix's log file (through pyinotify, which Debian's package recommends), banning with nftables (Debian's
nftables-multiport action, table `inet f2b-table`) in the mx namespace, and ignoring the lab's trusted relay ranges as
govern's allowlist does. Everything else is fail2ban's stock setting: maxretry 5 within findtime 10 minutes, bantime
10 minutes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

from govern_lab.addresses import TRUSTED_RANGES
from govern_lab.postfix import _apt, _processes, no_service_starts
from govern_lab.topology import Lab, LabError

FAIL2BAN_SERVER = "/usr/bin/fail2ban-server"
FAIL2BAN_CLIENT = "/usr/bin/fail2ban-client"
SYSTEM_CONFIG = "/etc/fail2ban"
TABLE = ("inet", "f2b-table")
SETS = ("addr-set-postfix", "addr6-set-postfix")
# pyinotify is what Debian's fail2ban recommends: with it the jail reads the log as it is written, not by polling.
PACKAGES = ("fail2ban", "python3-pyinotify")
IGNORE = ("127.0.0.1/8", "::1", *TRUSTED_RANGES)


def fail2ban_installed() -> bool:
    res = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}\n", *PACKAGES], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    ok = res.stdout.split("\n")[: len(PACKAGES)] == ["install ok installed"] * len(PACKAGES)
    return res.returncode == 0 and ok and os.path.exists(FAIL2BAN_SERVER)


def root_fail2bans() -> set[int]:
    """fail2ban servers running in the root network namespace (PID 1's), whoever started them."""
    try:
        root = os.stat("/proc/1/ns/net").st_ino
    except OSError:
        return set()
    out = set()
    for pid, _exe, _cwd in _processes():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            same = os.stat(f"/proc/{pid}/ns/net").st_ino == root
        except OSError:
            continue
        if same and any(part.endswith(b"fail2ban-server") for part in cmd[:2]):
            out.add(pid)
    return out


def install_fail2ban() -> None:
    """Install Debian's fail2ban unless it is there; never start it in the root namespace."""
    if fail2ban_installed():
        return
    before = root_fail2bans()
    plan = _apt("install", "-s", "--no-install-recommends", *PACKAGES, check=False)
    if plan.returncode != 0:
        _apt("update", "-q")
        plan = _apt("install", "-s", "--no-install-recommends", *PACKAGES)
    removed = [line.split()[1] for line in plan.stdout.splitlines() if line.startswith("Remv ")]
    if removed:
        raise LabError(f"installing fail2ban would remove {', '.join(removed)}; not doing that to the host")
    with no_service_starts():
        _apt("install", "-y", "-q", "--no-install-recommends", *PACKAGES)
    started = root_fail2bans() - before
    if started:
        raise LabError(f"a fail2ban server appeared in the root network namespace during install: pids {started}")


FAIL2BAN_LOCAL = """\
# Written by govern_lab.peers for the flood lab: this server's own files, under the run's work directory.
[Definition]
loglevel = INFO
logtarget = {log}
socket = {socket}
pidfile = {pidfile}
dbfile = {db}
"""

JAIL_LOCAL = """\
# Written by govern_lab.peers for the flood lab: the stock postfix jail, aggressive, on the lab Postfix's log.
[DEFAULT]
banaction = nftables-multiport
banaction_allports = nftables-allports
ignoreip = {ignore}

[postfix]
enabled = true
mode = aggressive
logpath = {maillog}
backend = auto
"""


class Fail2ban:
    """A fail2ban server inside the lab's mx namespace, with every file under `workdir`."""

    def __init__(self, lab: Lab, workdir: str | Path, maillog: str) -> None:
        self.lab = lab
        self.workdir = Path(workdir).absolute()
        self.config_dir = self.workdir / "etc"
        self.socket = self.workdir / "fail2ban.sock"
        self.pidfile = self.workdir / "fail2ban.pid"
        self.log = self.workdir / "fail2ban.log"
        self.maillog = maillog
        self.proc: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> None:
        if self.config_dir.exists():
            shutil.rmtree(self.config_dir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(SYSTEM_CONFIG, self.config_dir)
        # Debian enables the sshd jail by default; the lab measures the postfix jail alone.
        for f in (self.config_dir / "jail.d").glob("*"):
            f.unlink()
        (self.config_dir / "fail2ban.local").write_text(
            FAIL2BAN_LOCAL.format(
                log=self.log, socket=self.socket, pidfile=self.pidfile, db=self.workdir / "fail2ban.sqlite3"
            )
        )
        (self.config_dir / "jail.local").write_text(JAIL_LOCAL.format(ignore=" ".join(IGNORE), maillog=self.maillog))
        Path(self.maillog).touch()

    def client(self, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.lab.ns("mx"), FAIL2BAN_CLIENT, "-c", str(self.config_dir), "-s",
             str(self.socket), *args],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def start(self, timeout: float = 30.0) -> None:
        self._write_config()
        out = open(self.workdir / "fail2ban-server.out", "wb")  # noqa: SIM115 - handed to the child
        self.proc = self.lab.popen(
            "mx", FAIL2BAN_SERVER, "-f", "-x", "-c", str(self.config_dir), "-s", str(self.socket),
            "-p", str(self.pidfile), stdout=out, stderr=out, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        out.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise LabError(f"fail2ban-server exited ({self.proc.returncode}): {self._tail()}")
            if self.socket.exists() and self.client("status", "postfix", timeout=10).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise LabError(f"fail2ban's postfix jail did not come up in {timeout:g} s: {self._tail()}")
            time.sleep(0.2)

    def banned(self) -> list[str]:
        """Addresses in fail2ban's ban sets in the mx namespace now (the action makes its table at the first ban)."""
        out: list[str] = []
        for name in SETS:
            raw = self.lab.run("mx", "nft", "-j", "list", "set", *TABLE, name, check=False)
            with contextlib.suppress(ValueError):
                for obj in json.loads(raw).get("nftables", []):
                    for e in obj.get("set", {}).get("elem", []):
                        v = e["elem"]["val"] if isinstance(e, dict) and "elem" in e else e
                        out.append(str(v) if not isinstance(v, dict) else json.dumps(v))
        return out

    def stop(self) -> None:
        """Stop the server (it removes its nftables table), by its pid if it does not go."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.client("stop", timeout=30)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        self.proc = None

    def _tail(self, lines: int = 15) -> str:
        texts: list[str] = []
        for path in (self.log, self.workdir / "fail2ban-server.out"):
            with contextlib.suppress(OSError):
                texts += path.read_text(errors="replace").splitlines()[-lines:]
        return " | ".join(texts) or "(no log)"

    def __enter__(self) -> Fail2ban:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


if __name__ == "__main__":  # `python -m govern_lab.peers`: what the setup script runs to install the lab's peers
    install_fail2ban()
