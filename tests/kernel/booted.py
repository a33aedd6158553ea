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
import time
from collections.abc import Sequence
from pathlib import Path


class Booted:
    def __init__(self, base: Path, binds: Sequence[tuple[str, str]] = ()) -> None:
        self.base = base
        self.root = base / "root"
        self.binds = tuple(binds)
        self.name = f"gv-boot-{secrets.token_hex(3)}"
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.pid = 0

    def boot(self, timeout: float = 60) -> Booted:
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
        self.nspawn = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                err = self.nspawn.stderr.read().decode() if self.nspawn.stderr else ""
                raise RuntimeError(f"systemd-nspawn ended: {err}")
            if not self.pid:
                kids = subprocess.run(["pgrep", "-P", str(self.nspawn.pid)], capture_output=True, text=True).stdout
                self.pid = int(kids.split()[0]) if kids.split() else 0
            if self.pid:
                state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return self
            time.sleep(0.3)
        raise TimeoutError(f"the container {self.name} did not finish booting in {timeout} s")

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
            if self.nspawn.stderr is not None:
                self.nspawn.stderr.close()
        subprocess.run(["umount", "-R", str(self.base)], check=False)
