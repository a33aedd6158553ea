"""The lab's network: five namespaces (mx, router and three client roles) wired by veth pairs, with addresses from
the documentation and benchmarking ranges only, and a way to run commands or this thread inside any of them.

    trusted (192.0.2.0/24, 2001:db8:2::/48)        203.0.113.66/29  2001:db8:25:2::2/64  --+
    legit   (198.51.100.0/24, 2001:db8:51::/48)    203.0.113.74/29  2001:db8:25:51::2/64 --+-- router --- mx
    bots    (198.18.0.0/15, 2001:db8:bad::/48)     203.0.113.82/29  2001:db8:25:bad::2/64 -+

    mx 203.0.113.25/24, 2001:db8:25::25/64; the router is .1 / ::1 on that link and .65/.73/.81, <link>::1 on the
    client links. Each client owns its ranges with a `local` route on lo (it can bind any source inside them) and
    sends from the first address of its ranges when a socket does not choose; the router routes each range back.

A lab made with `mx2=True` (the fleet scenario) has a second MX namespace on a link of its own behind the same
router: mx2 203.0.113.90/29, 2001:db8:25:25::2/64 (the router .89 / 2001:db8:25:25::1).

Every veth is created directly inside its namespaces (nothing ever appears in the caller's namespace), so deleting
the namespaces removes everything. The mx namespace keeps the kernel's defaults for everything TCP: the lab must
show an unprotected host suffering, not a tuned one.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from govern.errors import GovernError
from govern_lab.addresses import MX4, MX6, MX_ADDRS, RANGES, ROUTER4, ROUTER6, link_addrs

log = logging.getLogger(__name__)

ROLES = ("mx", "router", "trusted", "legit", "bots")
# The fleet scenario's second MX; only a lab made with mx2=True has it, but every lab removes one its tag left behind.
MX2 = "mx2"


class LabError(GovernError, RuntimeError):
    """The lab could not be built, or its MTA could not be installed, started or stopped."""


# Interface names are per namespace, so labs with different tags never collide on them.
UPLINK = "uplink"

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
_libc = ctypes.CDLL(None, use_errno=True)
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")

# The sysctls a client needs to open thousands of connections from thousands of addresses: bind to any address of
# its ranges (IPv6 checks addresses, not routes, without this), every ephemeral port, and reuse of TIME_WAIT ports.
CLIENT_SYSCTLS = (
    "net.ipv4.ip_nonlocal_bind=1",
    "net.ipv6.ip_nonlocal_bind=1",
    "net.ipv4.ip_local_port_range=1024 65535",
    "net.ipv4.tcp_tw_reuse=1",
)
# Duplicate address detection keeps a fresh address (link-local included) tentative for ~2 s, during which IPv6
# does not work; the lab's addresses are unique by construction. Not a TCP setting, so mx keeps it too.
NO_DAD = ("net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")


def first_addrs(role: str) -> tuple[str, str]:
    """The address a client role sends from when a socket does not bind one (the first of each of its ranges)."""
    return tuple(str(ipaddress.ip_network(r)[1]) for r in RANGES[role])  # type: ignore[return-value]


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class Lab:
    """The lab's namespaces, named f"{tag}-{role}"; labs with different tags coexist."""

    def __init__(self, tag: str = "gvlab", *, mx2: bool = False) -> None:
        """`mx2`: also a second MX namespace behind the router (the fleet scenario, govern_lab.fleet)."""
        if not _TAG.fullmatch(tag):
            raise ValueError(f"lab tag {tag!r}: letters, digits, '_', '.', '-' only, at most 40")
        self.tag = tag
        self.roles = (*ROLES, MX2) if mx2 else ROLES
        self._procs: list[subprocess.Popen[bytes]] = []

    def ns(self, role: str) -> str:
        if role not in self.roles:
            raise ValueError(f"unknown lab role {role!r} (one of {', '.join(self.roles)})")
        return f"{self.tag}-{role}"

    def run(self, role: str, *cmd: str, check: bool = True, timeout: float = 60) -> str:
        """Run a command inside a role's namespace; its stdout."""
        argv = ["ip", "netns", "exec", self.ns(role), *cmd]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and res.returncode != 0:
            raise LabError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
        return res.stdout

    def popen(self, role: str, *cmd: str, **kw: Any) -> subprocess.Popen[bytes]:
        """Start a process inside a role's namespace; `down()` ends it if it still runs then."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(["ip", "netns", "exec", self.ns(role), *cmd], **kw)
        self._procs.append(proc)
        return proc

    @contextlib.contextmanager
    def entered(self, role: str) -> Iterator[None]:
        """Run the block with this thread in a role's namespace; sockets made inside stay there afterwards."""
        target = os.open(f"{NETNS_DIR}/{self.ns(role)}", os.O_RDONLY)
        try:
            home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        except BaseException:
            os.close(target)
            raise
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(home)
            os.close(target)

    # -- building and removing

    def up(self) -> Lab:
        """Build the lab, after removing whatever an earlier lab of the same tag (or this one) left behind."""
        self.down()
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """End the processes `popen` started, then delete the namespaces (which deletes their veths)."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        self._remove_namespaces()

    def _remove_namespaces(self) -> None:
        for role in (*ROLES, MX2):
            name = f"{self.tag}-{role}"
            if not os.path.exists(f"{NETNS_DIR}/{name}"):
                continue
            # A process still inside keeps the namespace (and its veths) alive after its name is gone, and it is
            # not ours to end: say so rather than leave it silently.
            pids = _ip("netns", "pids", name, check=False).split()
            if pids:
                log.warning("lab namespace %s still has processes %s; it lives on until they exit", name, pids)
            _ip("netns", "del", name, check=False)

    def _build(self) -> None:
        for role in self.roles:
            _ip("netns", "add", self.ns(role))
            self.run(role, "sysctl", "-qw", *NO_DAD)
        router = self.ns("router")
        mxs = [r for r in self.roles if r in MX_ADDRS]
        # Created straight inside the two namespaces: no name is ever taken in the caller's namespace.
        for role in (*mxs, *RANGES):
            _ip("link", "add", UPLINK, "netns", self.ns(role), "type", "veth", "peer", "name", role, "netns", router)

        batch = [
            "link set lo up",
            *(f"link set {role} up" for role in (*mxs, *RANGES)),
            f"addr add {ROUTER4}/24 dev mx",
            f"addr add {ROUTER6}/64 dev mx nodad",
        ]
        if MX2 in self.roles:
            r4, _, r6, _ = link_addrs(MX2)
            batch += [f"addr add {r4}/29 dev {MX2}", f"addr add {r6}/64 dev {MX2} nodad"]
        for role in RANGES:
            r4, c4, r6, c6 = link_addrs(role)
            batch += [f"addr add {r4}/29 dev {role}", f"addr add {r6}/64 dev {role} nodad"]
            batch += [f"route add {rng} via {c4 if ':' not in rng else c6}" for rng in RANGES[role]]
        _batch(router, batch)
        # Proxy ARP: mx holds the whole 203.0.113.0/24 on its link, the client links included, so the router answers
        # for their addresses.
        self.run("router", "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        self.run("router", "sysctl", "-qw", "net.ipv4.conf.mx.proxy_arp=1")

        _batch(
            self.ns("mx"),
            [
                "link set lo up",
                f"link set {UPLINK} up",
                f"addr add {MX4}/24 dev {UPLINK}",
                f"addr add {MX6}/64 dev {UPLINK} nodad",
                f"route add default via {ROUTER4}",
                f"route add default via {ROUTER6}",
            ],
        )
        if MX2 in self.roles:
            r4, _, r6, _ = link_addrs(MX2)
            mx2_4, mx2_6 = MX_ADDRS[MX2]
            _batch(
                self.ns(MX2),
                [
                    "link set lo up",
                    f"link set {UPLINK} up",
                    f"addr add {mx2_4}/29 dev {UPLINK}",
                    f"addr add {mx2_6}/64 dev {UPLINK} nodad",
                    f"route add default via {r4}",
                    f"route add default via {r6}",
                ],
            )
        for role, (rng4, rng6) in RANGES.items():
            r4, c4, r6, c6 = link_addrs(role)
            src4, src6 = first_addrs(role)
            self.run(role, "sysctl", "-qw", *CLIENT_SYSCTLS)
            _batch(
                self.ns(role),
                [
                    "link set lo up",
                    f"link set {UPLINK} up",
                    f"addr add {c4}/29 dev {UPLINK}",
                    f"addr add {c6}/64 dev {UPLINK} nodad",
                    f"route add local {rng4} dev lo",
                    f"route add local {rng6} dev lo",
                    # A route's preferred source must be an address (IPv6 ignores local routes for that).
                    f"addr add {src4}/32 dev lo",
                    f"addr add {src6}/128 dev lo nodad",
                    f"route add default via {r4} src {src4}",
                    f"route add default via {r6} src {src6}",
                ],
            )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 10.0) -> None:
        """Until every veth is up with carrier and no IPv6 address is tentative."""

        def ready(role: str) -> bool:
            links = [line.split() for line in _ip("-n", self.ns(role), "-br", "link").splitlines()]
            carrier = all(f[1] == "UP" for f in links if f and f[0] != "lo")
            return carrier and not _ip("-n", self.ns(role), "-6", "addr", "show", "tentative").strip()

        deadline = time.monotonic() + timeout
        while True:
            pending = [role for role in self.roles if not ready(role)]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise LabError(f"lab {self.tag}: namespaces {pending} did not come up in {timeout:g} s")
            time.sleep(0.02)

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.down()


def _ip(*args: str, check: bool = True) -> str:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    if check and res.returncode != 0:
        raise LabError(f"ip {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def _batch(ns: str, commands: list[str]) -> None:
    """Several `ip` commands in one process inside a namespace; `-force` would hide errors, so it is not used."""
    res = subprocess.run(
        ["ip", "-n", ns, "-batch", "-"], input="\n".join(commands) + "\n", capture_output=True, text=True, timeout=30
    )
    if res.returncode != 0:
        raise LabError(f"ip -n {ns} -batch failed ({res.returncode}): {res.stderr.strip()}")
