"""This host's own Debian, booted under systemd in a container, for tests of what only systemd does: the unit's
sandbox as systemd applies it, Type=notify, ExecStartPre and ExecReload, the journal.

The container's root is an overlay of the host's / with its writes in a tmpfs (the host's files are never
changed), with a network namespace of its own that holds only loopback (nothing it does reaches the host's
firewall or links) and systemd-nspawn's other sandboxing. It boots to basic.target only, so none of the host's own
services (Postfix, BIRD, fail2ban, ...) start in it. Commands run inside it through nsenter into its PID 1.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO


class Booted:
    def __init__(self, base: Path, binds: Sequence[tuple[str, str]] = ()) -> None:
        self.base = base
        self.root = base / "root"
        self.binds = tuple(binds)
        self.name = f"gv-boot-{secrets.token_hex(3)}"
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 -- lives as long as the container, closed by shutdown()

    def boot(self, timeout: float = 120) -> Booted:
        self.base.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(self.base)], check=True)
        for d in ("upper", "work", "root"):
            (self.base / d).mkdir()
        opts = f"lowerdir=/,upperdir={self.base / 'upper'},workdir={self.base / 'work'}"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(self.root)], check=True)
        # A machine of its own (journald refuses to share the host's id), and none of govern's files from the host.
        (self.root / "etc" / "machine-id").write_text(secrets.token_hex(16) + "\n")
        for leftover in ("etc/govern", "var/lib/govern", "run/govern", "usr/local/sbin/govern"):
            subprocess.run(["rm", "-rf", str(self.root / leftover)], check=True)
        cmd = ["systemd-nspawn", "--quiet", "--directory", str(self.root), "--machine", self.name]
        # No machined or host systemd to register with (this host runs without systemd as PID 1).
        cmd += ["--register=no", "--keep-unit", "--private-network", "--capability=all", "--console=passive"]
        # nspawn filters system calls for the whole container (not for what nsenter starts in it); bpf() is not in
        # its list, and a real host has no such filter in front of its services.
        cmd += ["--system-call-filter=bpf"]
        cmd += [f"--bind-ro={src}:{dst}" for src, dst in self.binds]
        cmd += ["--boot", "--", "--unit=basic.target"]
        # nspawn's messages go to a file, not a pipe nobody reads until it ends (a full pipe would stall it).
        self.nspawn = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + timeout
        state = "(no init found)"
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise RuntimeError(f"systemd-nspawn ended: {self.messages()}")
            self.pid = self.pid if self.pid and Path(f"/proc/{self.pid}").exists() else self.container_init()
            if self.pid:
                res = self.run("systemctl", "is-system-running", check=False, timeout=30)
                state = f"{res.stdout.strip()} {res.stderr.strip()}"
                if res.stdout.strip() in ("running", "degraded"):
                    return self
            time.sleep(0.3)
        jobs = self.run("systemctl", "list-jobs", "--no-pager", check=False, timeout=30) if self.pid else None
        raise TimeoutError(
            f"the container {self.name} did not finish booting in {timeout} s: the state was {state!r}; "
            f"its jobs: {jobs.stdout if jobs else '-'}; nspawn said: {self.messages()}"
        )

    def messages(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def container_init(self) -> int:
        """The container's PID 1, known by being pid 1 in its own namespace, not merely nspawn's first child: a
        process entered by mistake would leave every later command failing until the boot times out."""
        assert self.nspawn is not None
        kids = subprocess.run(["pgrep", "-P", str(self.nspawn.pid)], capture_output=True, text=True).stdout.split()
        for kid in kids:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{kid}/status").read_text().splitlines():
                    nspids = line.split()[1:] if line.startswith("NSpid:") else []
                    if len(nspids) > 1 and nspids[-1] == "1":
                        return int(kid)
        return 0

    def run(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-a", *args], capture_output=True, text=True, input=input, timeout=timeout
        )
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(args)} in {self.name}: {res.returncode}\n{res.stdout}\n{res.stderr}")
        return res

    def write(self, path: str, text: str) -> None:
        self.run("sh", "-c", f"mkdir -p \"$(dirname '{path}')\" && cat > '{path}'", input=text)

    def shutdown(self) -> None:
        if self.nspawn is not None:
            if self.pid and self.nspawn.poll() is None:
                with contextlib.suppress(subprocess.SubprocessError, AssertionError):
                    self.run("systemctl", "poweroff", check=False, timeout=10)
            try:
                self.nspawn.wait(30)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait(10)
            self.log.close()
        subprocess.run(["umount", "-R", str(self.base)], check=False)
