"""The Debian package built from the tree (.ci/build-deb) installs a govern that works as installed (its XDP
object included, no compiler needed), and purges without a trace (issue 14, item 1)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.kernel.daemon_harness import write_config
from tests.netns import Lab

INSTALLED = ("/usr/lib/govern", "/usr/sbin/govern", "/lib/systemd/system/govern.service", "/etc/govern/govern.toml")


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def test_the_package_installs_runs_and_purges(lab: Lab, pin_root: str, tmp_path: Path, deb: str) -> None:
    assert run("dpkg-query", "-W", "govern").returncode != 0, "a govern package is installed already"
    saved = None
    if Path("/etc/govern").exists():  # an operator's config on this host: kept aside, and put back
        saved = tmp_path / "etc-govern"
        shutil.copytree("/etc/govern", saved, symlinks=True)
        shutil.rmtree("/etc/govern")
    try:
        r = run("dpkg", "-i", deb)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "systemctl enable --now govern" in r.stdout
        for path in INSTALLED:
            assert Path(path).exists(), path
        assert run("/usr/sbin/govern", "config", "check").returncode == 0
        verify = run("systemd-analyze", "verify", "/lib/systemd/system/govern.service")
        assert verify.returncode == 0 and not (verify.stdout + verify.stderr).strip(), verify.stdout + verify.stderr
        # The installed daemon, in a namespace, with the XDP fast path on: its object came with the package.
        iface = f"v{lab.mx.name[-6:]}m"
        cfg = write_config(
            tmp_path, f'[backend]\nxdp = true\nxdp_interfaces = ["{iface}"]\nxdp_pin_root = "{pin_root}"\n'
        )
        log = tmp_path / "daemon.log"
        with open(log, "wb") as fh:
            daemon = subprocess.Popen(
                ["ip", "netns", "exec", lab.mx.name, "/usr/sbin/govern", "run", "--config", str(cfg)],
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        try:
            status = ""
            for _ in range(50):
                st = run("ip", "netns", "exec", lab.mx.name, "/usr/sbin/govern", "status", "--config", str(cfg))
                if st.returncode == 0:
                    status = st.stdout
                    break
                assert daemon.poll() is None, log.read_text()[-2000:]
                subprocess.run(["sleep", "0.2"], check=True)
            assert "backend: xdp+nftables" in status, status
        finally:
            daemon.terminate()
            daemon.wait(15)
            run("ip", "netns", "exec", lab.mx.name, "/usr/sbin/govern", "teardown", "--config", str(cfg))
    finally:
        purge = run("dpkg", "--purge", "govern")
        if saved is not None:
            shutil.rmtree("/etc/govern", ignore_errors=True)
            shutil.copytree(saved, "/etc/govern", symlinks=True)
    assert purge.returncode == 0, purge.stdout + purge.stderr
    left = [p for p in INSTALLED if Path(p).exists() and not (saved and p.startswith("/etc/govern"))]
    assert not left, left
    assert run("dpkg-query", "-W", "govern").returncode != 0
