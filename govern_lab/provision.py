"""Giving a real machine (a Vagrant VM of vagrant/Vagrantfile) its lab role, with the same addresses, routes and
sending ranges as the namespace lab (govern_lab.topology). The commands are computed by a pure function, so a
test can check that they only ever name lab addresses; `apply` runs them on the machine it runs on."""

from __future__ import annotations

import subprocess

from govern.errors import UsageError
from govern_lab.addresses import LINKS, MX4, MX6, MX_RANGES, RANGES, ROUTER4, ROUTER6, link_addrs
from govern_lab.topology import CLIENT_SYSCTLS, NO_DAD, ROLES

# What the mx reaches through the router: every client range and every client link.
_CLIENT_NETS4 = [RANGES[r][0] for r in LINKS] + [LINKS[r][0] for r in LINKS]
_CLIENT_NETS6 = [RANGES[r][1] for r in LINKS] + [LINKS[r][1] for r in LINKS]


def dev_of(address: str) -> str:
    """The interface Vagrant gave `address` (it sets the IPv4 side of each private network)."""
    out = subprocess.run(["ip", "-o", "-4", "addr", "show", "to", address], capture_output=True, text=True).stdout
    if not out.split():
        raise UsageError(f"no interface holds {address}: is this the lab VM for that role?")
    return out.split()[1]


def commands(role: str, dev: dict[str, str]) -> list[list[str]]:
    """The commands that give this machine `role`. `dev` maps each of the role's IPv4 link addresses to its NIC."""
    if role not in ROLES:
        raise UsageError(f"unknown lab role {role!r} (choose from {', '.join(ROLES)})")
    cmds: list[list[str]] = [["sysctl", "-qw", *NO_DAD]]
    if role == "mx":
        cmds.append(["ip", "-6", "addr", "replace", f"{MX6}/64", "dev", dev[MX4], "nodad"])
        cmds += [["ip", "route", "replace", n, "via", ROUTER4] for n in _CLIENT_NETS4]
        cmds += [["ip", "-6", "route", "replace", n, "via", ROUTER6] for n in _CLIENT_NETS6]
    elif role == "router":
        cmds.append(["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])
        cmds.append(["ip", "-6", "addr", "replace", f"{ROUTER6}/64", "dev", dev[ROUTER4], "nodad"])
        for client in LINKS:
            r4, c4, r6, c6 = link_addrs(client)
            cmds.append(["ip", "-6", "addr", "replace", f"{r6}/64", "dev", dev[r4], "nodad"])
            cmds.append(["ip", "route", "replace", RANGES[client][0], "via", c4])
            cmds.append(["ip", "-6", "route", "replace", RANGES[client][1], "via", c6])
    else:
        r4, c4, r6, c6 = link_addrs(role)
        cmds.append(["sysctl", "-qw", *CLIENT_SYSCTLS])
        cmds.append(["ip", "-6", "addr", "replace", f"{c6}/64", "dev", dev[c4], "nodad"])
        for rng in RANGES[role]:
            fam = ["-6"] if ":" in rng else []
            cmds.append(["ip", *fam, "route", "replace", "local", rng, "dev", "lo"])
        # Only the lab's nets go to the router: the VM keeps its own default route (Vagrant's management NIC).
        cmds.append(["ip", "route", "replace", MX_RANGES[0], "via", r4])
        cmds.append(["ip", "-6", "route", "replace", MX_RANGES[1], "via", r6])
    return cmds


def link_addresses(role: str) -> list[str]:
    if role == "mx":
        return [MX4]
    if role == "router":
        return [ROUTER4] + [link_addrs(c)[0] for c in LINKS]
    return [link_addrs(role)[1]]


def apply(role: str) -> list[str]:
    """Run the role's commands on this machine; returns them as text, for the provisioning log."""
    dev = {a: dev_of(a) for a in link_addresses(role)}
    done = []
    for cmd in commands(role, dev):
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise UsageError(f"{' '.join(cmd)} failed: {res.stderr.strip()}")
        done.append(" ".join(cmd))
    return done
