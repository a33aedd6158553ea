"""The shipped systemd unit's sandbox, without systemd: the daemon started with exactly the unit's capability
bounding set and no new privileges (setpriv, as systemd would apply them) runs every feature: the nftables backend,
the tarpit and the XDP fast path (issue 14, item 2)."""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import socket
import subprocess
from pathlib import Path

from govern.wiring import DEFAULT_OBJECT
from tests.kernel.daemon_harness import Daemon, govern, nft_set, write_config
from tests.netns import Lab

UNIT = Path(__file__).parents[2] / "govern" / "govern.service"


def unit() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser["Service"]


def sandbox() -> tuple[str, ...]:
    """setpriv's options for the unit's CapabilityBoundingSet and NoNewPrivileges."""
    caps = unit()["CapabilityBoundingSet"].split()
    wanted = ",".join(f"+{c.removeprefix('CAP_').lower()}" for c in caps)
    opts = ["setpriv", f"--bounding-set=-all,{wanted}"]
    if unit().get("NoNewPrivileges") == "true":
        opts.append("--no-new-privs")
    return (*opts, "--")


def test_under_the_units_capabilities_the_tarpit_and_xdp_work(lab: Lab, pin_root: str, tmp_path: Path) -> None:
    assert DEFAULT_OBJECT.is_file()
    iface = f"v{lab.mx.name[-6:]}m"
    extra = f'[backend]\nxdp = true\nxdp_interfaces = ["{iface}"]\nxdp_pin_root = "{pin_root}"\n'
    cfg = write_config(tmp_path, extra)
    d = Daemon(lab.mx, cfg, wrap=sandbox()).start()
    try:
        bounded = lab.mx.sh("grep", "CapBnd", f"/proc/{d.proc.pid if d.proc else 0}/status")
        assert int(bounded.split()[1], 16) != (1 << 41) - 1, "the daemon did not run under the unit's bounding set"
        st = d.status()
        assert st["backend"] == "xdp+nftables", st["backend"]
        assert str(st["tarpit"]).startswith("ready"), st["tarpit"]
        assert not st["failures"], st["last_errors"]
        r = govern(lab.mx, "block", "198.18.9.0/24", "--config", str(cfg))
        assert r.returncode == 0, r.stderr
        assert "198.18.9.0/24" in nft_set(lab.mx, "block4")
        xdp_info = json.loads(lab.mx.sh("ip", "-j", "-d", "link", "show", "dev", iface))
        assert xdp_info[0].get("xdp"), "no XDP program attached"
    finally:
        d.stop()
        govern(lab.mx, "teardown", "--config", str(cfg))


def test_the_unit_is_valid_and_checks_the_config_before_start_and_reload(tmp_path: Path) -> None:
    service = unit()
    assert service["Type"] == "notify" and service["WatchdogSec"]
    text = UNIT.read_text()
    assert "ExecStartPre=/usr/local/sbin/govern config check" in text
    reloads = [line for line in text.splitlines() if line.startswith("ExecReload=")]
    assert reloads[0].endswith("govern config check") and "kill -HUP" in reloads[-1]
    # systemd's own reading of the unit (with stand-ins for the commands, which this host has elsewhere).
    copy = tmp_path / "govern.service"
    copy.write_text(text.replace("/usr/local/sbin/govern", "/bin/true"))
    res = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True)
    assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr


def test_systemd_hears_ready_watchdog_pings_and_stopping(lab: Lab, tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    cfg = write_config(tmp_path)
    old = os.environ.get("NOTIFY_SOCKET")
    os.environ["NOTIFY_SOCKET"] = str(path)
    try:
        d = Daemon(lab.mx, cfg).start()
    finally:
        if old is None:
            os.environ.pop("NOTIFY_SOCKET")
        else:
            os.environ["NOTIFY_SOCKET"] = old
    heard: list[str] = []
    try:
        while sum("WATCHDOG=1" in m for m in heard) < 3:
            heard.append(sock.recv(4096).decode())
        assert "READY=1" in heard[0]
    finally:
        assert d.stop() == 0
    sock.settimeout(2)
    with contextlib.suppress(TimeoutError):
        while True:
            heard.append(sock.recv(4096).decode())
    sock.close()
    assert any("STOPPING=1" in m for m in heard), heard
