"""Provisioning the lab's VMs: every command names only the lab's documentation ranges, and the Vagrantfile is
one Vagrant accepts (and rejects when broken, so the check means something)."""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from govern_lab.provision import commands, link_addresses
from govern_lab.topology import ROLES

LAB = [ipaddress.ip_network(n) for n in ("203.0.113.0/24", "192.0.2.0/24", "198.51.100.0/24", "198.18.0.0/15",
                                          "2001:db8::/32")]  # fmt: skip
VAGRANT = Path(__file__).parents[2] / "vagrant"


def test_provisioning_names_only_lab_addresses() -> None:
    for role in ROLES:
        cmds = commands(role, {a: "eth1" for a in link_addresses(role)})
        assert cmds, role
        for cmd in cmds:
            for word in cmd:
                token = word.split("/")[0]
                if re.fullmatch(r"[0-9.]+|[0-9a-f:]+:[0-9a-f:]*", token) and token.count(".") in (0, 3):
                    addr = ipaddress.ip_address(token)
                    assert any(addr in n for n in LAB), (role, cmd)


def test_clients_own_their_ranges_and_keep_their_default_route() -> None:
    cmds = [" ".join(c) for c in commands("bots", {"203.0.113.82": "eth1"})]
    assert "ip route replace local 198.18.0.0/15 dev lo" in cmds
    assert "ip -6 route replace local 2001:db8:bad::/48 dev lo" in cmds
    assert not any(" route " in f" {c} " and "default" in c.split() for c in cmds)


needs_vagrant = pytest.mark.skipif(shutil.which("vagrant") is None, reason="Debian's vagrant is not installed")


def validate(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["vagrant", "validate", "--ignore-provider"], cwd=folder, capture_output=True, text=True, timeout=120
    )


@needs_vagrant
def test_vagrantfile_validates_and_defines_every_role(tmp_path: Path) -> None:
    res = validate(VAGRANT)
    assert res.returncode == 0, res.stdout + res.stderr
    for role in ROLES:
        assert f"==> {role}:" in res.stdout
    # The same file without its provisioning script is refused: validate really reads the configuration.
    shutil.copy(VAGRANT / "Vagrantfile", tmp_path / "Vagrantfile")
    res = validate(tmp_path)
    assert res.returncode != 0 and "provision.sh" in res.stdout + res.stderr
