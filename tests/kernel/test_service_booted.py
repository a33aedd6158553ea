"""The README's run command on a host that systemd runs: this host's Debian booted under systemd in a container
(tests/kernel/booted.py), where `.ci/install-service` (what `bash .ci/setup run` ends with) installs the package
built from the tree and starts govern.service. Under systemd's own sandbox for the unit: the daemon runs with
exactly the unit's capabilities and no new privileges; with the XDP fast path and the tarpit asked for, both run
(and XDP that cannot start is a warning, a line in `govern status` and a metric, while the firewall protects);
ExecReload refuses a bad config and the daemon keeps its own; the journal carries the priorities (issue 14)."""

from __future__ import annotations

import configparser
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.booted import Booted

REPO = Path(__file__).parents[2]
UNIT = REPO / "govern" / "govern.service"
CAPS = {  # capability numbers, linux/capability.h
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_NET_ADMIN": 12,
    "CAP_SYS_ADMIN": 21,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
}
XDP_CONFIG = '[backend]\nxdp = true\nxdp_interfaces = ["gvx0"]\n[metrics]\nlisten = "127.0.0.1:9742"\n'


@pytest.fixture
def booted(tmp_path: Path, deb: str) -> Iterator[Booted]:
    box = Booted(tmp_path / "box", binds=[(str(REPO), "/srv/govern"), (str(Path(deb).parent), "/srv/deb")])
    try:
        yield box.boot()
    finally:
        box.shutdown()


def unit_caps() -> int:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read(UNIT)
    names = parser["Service"]["CapabilityBoundingSet"].split()
    assert set(names) == set(CAPS), "the unit's capabilities changed: update CAPS"
    return sum(1 << CAPS[n] for n in names)


def metric(box: Booted, name: str) -> str:
    py = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9742/metrics', timeout=5).read().decode())"
    text = box.run("/usr/lib/govern/venv/bin/python", "-c", py).stdout
    return "\n".join(line for line in text.splitlines() if line.startswith(name))


def test_the_readme_run_command_starts_a_sandboxed_service_with_xdp_and_the_tarpit(booted: Booted, deb: str) -> None:
    box = booted
    # An interface to protect besides loopback: the tarpit shapes it, XDP attaches to it.
    box.run("ip", "link", "add", "gvx0", "type", "veth", "peer", "name", "gvx1")
    box.run("ip", "addr", "add", "192.0.2.1/24", "dev", "gvx0")
    box.run("ip", "link", "set", "gvx0", "up")
    box.run("ip", "link", "set", "gvx1", "up")

    r = box.run("bash", "/srv/govern/.ci/install-service", f"/srv/deb/{Path(deb).name}")
    assert "govern runs as govern.service" in r.stdout, r.stdout
    assert "mode: normal" in r.stdout and "backend: nftables" in r.stdout, r.stdout
    assert box.run("systemctl", "is-enabled", "govern").stdout.strip() == "enabled"
    assert box.run("systemctl", "is-active", "govern").stdout.strip() == "active"
    st = box.run("govern", "status").stdout
    assert "tarpit: off" not in st
    # The installed package carries the socket iterator and the unit's capabilities load it.
    assert "(read by BPF iterator;" in st, st  # and how long ago the sockets were walked
    pid = box.run("systemctl", "show", "-P", "MainPID", "govern").stdout.strip()
    status = box.run("cat", f"/proc/{pid}/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert int(fields["CapBnd"], 16) == unit_caps(), fields["CapBnd"]  # systemd applied the unit's bounding set
    assert fields["NoNewPrivs"].strip() == "1"

    # XDP asked for where it cannot start: no bpf filesystem at /sys/fs/bpf (systemd mounts one on a real host; the
    # container's /sys is read-only). The daemon runs on, protecting with nftables, and says so everywhere.
    box.write("/etc/govern/govern.toml", XDP_CONFIG)
    box.run("systemctl", "restart", "govern")
    st = box.run("govern", "status").stdout
    assert "backend: nftables" in st and "xdp: off (cannot make /sys/fs/bpf/govern" in st, st
    assert 'govern_feature_up{feature="xdp"} 0.0' in metric(box, "govern_feature_up"), metric(box, "govern_feature")
    assert 'govern_feature_up{feature="tarpit"} 1.0' in metric(box, "govern_feature_up")
    warnings = box.run("journalctl", "-u", "govern", "-p", "warning", "-o", "cat", "--no-pager").stdout
    assert "xdp off: cannot make /sys/fs/bpf/govern" in warnings, warnings

    # With a bpf filesystem mounted, a reload brings XDP up: the program is attached, the metric says 1.
    # (As systemd does at boot on a real host; the container's /sys is a read-only tmpfs without the directory.)
    box.run("sh", "-c", "mount -o remount,rw /sys && mkdir -p /sys/fs/bpf && mount -o remount,ro /sys")
    box.run("mount", "-t", "bpf", "bpf", "/sys/fs/bpf")
    box.run("systemctl", "reload", "govern")
    st = box.run("govern", "status").stdout
    assert "backend: xdp+nftables" in st and "xdp: off" not in st, st
    assert "xdp" in box.run("ip", "-d", "link", "show", "gvx0").stdout
    assert 'govern_feature_up{feature="xdp"} 1.0' in metric(box, "govern_feature_up")
    assert box.run("govern", "block", "198.18.9.0/24").returncode == 0
    assert "198.18.9.0/24" in box.run("nft", "list", "set", "inet", "govern", "block4").stdout

    # A bad config: ExecReload's check refuses it, systemctl says so, and the daemon keeps the config it runs.
    box.write("/etc/govern/govern.toml", XDP_CONFIG + '[block]\nduration = "forever"\n')
    bad = box.run("systemctl", "reload", "govern", check=False)
    assert bad.returncode != 0
    assert box.run("systemctl", "is-active", "govern").stdout.strip() == "active"
    assert 'backend="xdp+nftables"' in metric(box, "govern_info")  # (the CLI reads the bad file too, and says so)
    log = box.run("journalctl", "-u", "govern", "-o", "cat", "--no-pager").stdout
    assert "block.duration" in log, log[-2000:]

    box.run("systemctl", "stop", "govern")
    assert box.run("systemctl", "is-active", "govern", check=False).stdout.strip() == "inactive"
