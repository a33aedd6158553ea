"""The lab's network (govern_lab.topology): built and removed idempotently without a trace in the root namespace,
and every client range reaches the MX through the router with its own source addresses."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
from collections.abc import Iterator

import pytest

from govern_lab.addresses import MX4, MX6, RANGES
from govern_lab.topology import ROLES, Lab


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def root_links() -> str:
    return subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True).stdout


def sysctl(lab: Lab, role: str, key: str) -> str:
    return lab.run(role, "sysctl", "-n", key).strip()


@pytest.fixture(scope="module")
def lab(lab_module: Lab) -> Lab:
    """The whole lab (router, mx, clients), shared by this module's tests."""
    return lab_module


class Server:
    """A listener in mx on port 25 (IPv4 and IPv6) that reports the peer address of each connection."""

    def __init__(self, lab: Lab) -> None:
        with lab.entered("mx"):
            self.sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("::", 25))
        self.sock.listen(16)
        self.sock.settimeout(5)

    def peer(self) -> str:
        conn, addr = self.sock.accept()
        conn.close()
        peer: str = addr[0]
        return peer.removeprefix("::ffff:")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server(lab: Lab) -> Iterator[Server]:
    srv = Server(lab)
    try:
        yield srv
    finally:
        srv.close()


def connect_from(lab: Lab, role: str, src: str | None, dst: str) -> socket.socket:
    with lab.entered(role):
        s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(5)
        if src is not None:
            s.bind((src, 0))
        s.connect((dst, 25))
    except BaseException:
        s.close()
        raise
    return s


def test_up_and_down_are_idempotent_and_leave_nothing() -> None:
    tag = f"gvt-{secrets.token_hex(3)}"
    names = {f"{tag}-{role}" for role in ROLES}
    links_before = root_links()
    lab = Lab(tag)
    try:
        lab.up()
        assert names <= netns_names()
        lab.up()  # removes the first build and makes it again
        assert names <= netns_names()
        assert lab.run("mx", "ip", "-br", "addr", "show", "uplink").split()[2:4] == [f"{MX4}/24", f"{MX6}/64"]
        # Every veth was made inside the lab's namespaces: the root namespace never saw one.
        assert root_links() == links_before
    finally:
        lab.down()
    lab.down()
    assert not names & netns_names()
    assert root_links() == links_before
    assert tag not in root_links()


@pytest.mark.parametrize(
    ("role", "src", "dst"),
    [
        ("bots", "198.18.200.7", MX4),
        ("bots", "2001:db8:bad:9::7", MX6),
        ("bots", "198.19.255.254", MX4),
        ("legit", "198.51.100.77", MX4),
        ("legit", "2001:db8:51:3::9", MX6),
        ("trusted", "192.0.2.44", MX4),
        ("trusted", "2001:db8:2::44", MX6),
    ],
)
def test_clients_reach_mx_from_their_ranges(lab: Lab, server: Server, role: str, src: str, dst: str) -> None:
    before = forwarded(lab, role)
    with connect_from(lab, role, src, dst):
        assert server.peer() == src
    assert forwarded(lab, role) > before  # through the router, from the role's own link


def forwarded(lab: Lab, role: str) -> int:
    """Packets the router received on its link to `role`."""
    out = json.loads(lab.run("router", "ip", "-j", "-s", "link", "show", "dev", role))
    packets: int = out[0]["stats64"]["rx"]["packets"]
    return packets


@pytest.mark.parametrize(("role", "src4", "src6"), [(r, *RANGES[r]) for r in RANGES])
def test_unbound_sockets_send_from_their_own_range(lab: Lab, server: Server, role: str, src4: str, src6: str) -> None:
    """A client that does not bind shows up from its role's range, never from a link address in the MX range."""
    with connect_from(lab, role, None, MX4):
        assert server.peer() == src4.split("/")[0][:-1] + "1"
    with connect_from(lab, role, None, MX6):
        assert server.peer() == src6.split("/")[0] + "1"


def test_sysctls_mx_default_router_forwards_clients_tuned(lab: Lab) -> None:
    probe = f"{lab.tag}-probe"
    subprocess.run(["ip", "netns", "add", probe], check=True)
    try:
        for key in ("net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog", "net.ipv4.tcp_syncookies"):
            fresh = subprocess.run(["ip", "netns", "exec", probe, "sysctl", "-n", key], capture_output=True, text=True)
            assert sysctl(lab, "mx", key) == fresh.stdout.strip(), key
    finally:
        subprocess.run(["ip", "netns", "del", probe], check=False)
    assert sysctl(lab, "router", "net.ipv4.ip_forward") == "1"
    assert sysctl(lab, "router", "net.ipv6.conf.all.forwarding") == "1"
    for role in RANGES:
        assert sysctl(lab, role, "net.ipv4.ip_nonlocal_bind") == "1"
        assert sysctl(lab, role, "net.ipv6.ip_nonlocal_bind") == "1"
        assert sysctl(lab, role, "net.ipv4.ip_local_port_range").split() == ["1024", "65535"]


def test_entered_returns_the_thread_home(lab: Lab) -> None:
    home = os.stat("/proc/thread-self/ns/net").st_ino
    with lab.entered("bots"):
        assert os.stat("/proc/thread-self/ns/net").st_ino == os.stat(f"/run/netns/{lab.ns('bots')}").st_ino
    assert os.stat("/proc/thread-self/ns/net").st_ino == home
    with pytest.raises(ValueError, match="unknown lab role"):
        lab.ns("nobody")


def test_two_labs_coexist_and_down_ends_what_popen_started(lab: Lab, server: Server) -> None:
    other = Lab(f"gvt-{secrets.token_hex(3)}")
    try:
        other.up()
        sleeper = other.popen("bots", "sleep", "60")
        assert other.run("mx", "ip", "-br", "addr", "show", "uplink").split()[2] == f"{MX4}/24"
        with connect_from(lab, "legit", "198.51.100.5", MX4):  # the first lab is untouched
            assert server.peer() == "198.51.100.5"
    finally:
        other.down()
    assert sleeper.poll() is not None
    assert lab.ns("mx") in netns_names()
    assert other.ns("mx") not in netns_names()
