"""Network namespaces for kernel tests: creation with unique names, entering from a thread, and removal.

Topology made by `Lab` (addresses from docs/testing.md only):

    mx  (203.0.113.25/24, 2001:db8:25::25/64) --veth-- net (203.0.113.1/24, 2001:db8:25::1/64)

`net` plays the router and every client at once: it owns the trusted (192.0.2.0/24, 2001:db8:2::/48),
legitimate (198.51.100.0/24, 2001:db8:51::/48) and bot (198.18.0.0/16, 2001:db8:bad::/48) ranges on its loopback,
so one test process can connect from thousands of source addresses. `mx` routes those ranges back via `net`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_enter_lock = threading.Lock()

MX4 = "203.0.113.25"
MX6 = "2001:db8:25::25"
LOCAL_RANGES4 = ("192.0.2.0/24", "198.51.100.0/24", "198.18.0.0/16")
LOCAL_RANGES6 = ("2001:db8:2::/48", "2001:db8:51::/48", "2001:db8:bad::/48")


def sh(*args: str, check: bool = True, ns: str | None = None, timeout: float = 60) -> str:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the block with this thread in namespace `name`; sockets made inside stay there afterwards."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(f"/var/run/netns/{name}")
        try:
            yield
        finally:
            if _libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "cannot return to the original network namespace")
    finally:
        os.close(home)


@dataclass
class Netns:
    name: str

    def sh(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        return sh(*args, check=check, ns=self.name, timeout=timeout)

    def entered(self) -> contextlib.AbstractContextManager[None]:
        return entered(self.name)


def new_name(role: str) -> str:
    return f"gv-{role}-{secrets.token_hex(3)}"


@dataclass
class Lab:
    """An MX namespace and a client/router namespace joined by a veth pair."""

    mx: Netns = field(default_factory=lambda: Netns(new_name("mx")))
    net: Netns = field(default_factory=lambda: Netns(new_name("net")))

    def up(self) -> Lab:
        self.create()
        for ns in (self.mx, self.net):
            ns.sh("ip", "link", "set", "lo", "up")
            # No duplicate address detection: a tentative link-local address makes IPv6 unreachable for ~2 s.
            ns.sh("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        veth_mx, veth_net = f"v{self.mx.name[-6:]}m", f"v{self.net.name[-6:]}n"
        sh(
            "ip",
            "link",
            "add",
            veth_mx,
            "netns",
            self.mx.name,
            "type",
            "veth",
            "peer",
            "name",
            veth_net,
            "netns",
            self.net.name,
        )
        for ns, dev, a4, a6 in ((self.mx, veth_mx, MX4, MX6), (self.net, veth_net, "203.0.113.1", "2001:db8:25::1")):
            ns.sh("ip", "addr", "add", f"{a4}/24", "dev", dev)
            ns.sh("ip", "-6", "addr", "add", f"{a6}/64", "dev", dev, "nodad")
            ns.sh("ip", "link", "set", dev, "up")
        for r in LOCAL_RANGES4:
            self.net.sh("ip", "route", "add", "local", r, "dev", "lo")
            self.mx.sh("ip", "route", "add", r, "via", "203.0.113.1")
        for r in LOCAL_RANGES6:
            self.net.sh("ip", "-6", "route", "add", "local", r, "dev", "lo")
            self.mx.sh("ip", "-6", "route", "add", r, "via", "2001:db8:25::1")
        # Thousands of client sockets from one process: widen what a namespace allows by default.
        self.net.sh("sysctl", "-qw", "net.ipv4.ip_local_port_range=10000 65000")
        self.net.sh("sysctl", "-qw", "net.ipv6.ip_nonlocal_bind=1")
        self.net.sh("sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1")
        self._wait_ready()
        return self

    def create(self) -> None:
        """Make the two namespaces; a subclass may make them differently and keep the wiring."""
        for ns in (self.mx, self.net):
            sh("ip", "netns", "add", ns.name)

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = any(ns.sh("ip", "-6", "addr", "show", "tentative").strip() for ns in (self.mx, self.net))
            down = "state UP" not in self.mx.sh("ip", "link", "show", "up") or "state UP" not in self.net.sh(
                "ip", "link", "show", "up"
            )
            if not busy and not down:
                return
            time.sleep(0.05)
        raise RuntimeError("lab namespaces did not come up in time")

    def down(self) -> None:
        for ns in (self.mx, self.net):
            sh("ip", "netns", "del", ns.name, check=False)


def connect(src: str, dst: str, port: int, timeout: float = 5.0) -> socket.socket:
    """A TCP connection from a chosen source address (call inside the client namespace)."""
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.bind((src, 0))
        s.connect((dst, port))
    except BaseException:
        s.close()
        raise
    return s


class Listener:
    """A TCP server in a namespace that accepts and holds every connection (a stand-in MTA), with a banner."""

    def __init__(self, ns: Netns, port: int = 25, banner: bytes = b"220 mx.test ESMTP\r\n", backlog: int = 4096):
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        # Cleared, the server stops accepting: its accept queue fills, and the kernel drops the SYNs beyond it.
        self.accepting = threading.Event()
        self.accepting.set()
        self.accepted = 0
        with ns.entered():
            self.sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("::", port))
            self.sock.listen(backlog)
        self.sock.settimeout(0.2)
        self.banner = banner
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.accepting.wait(0.2):
                continue
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            self.held.append(conn)
            self._take(conn)

    def _take(self, conn: socket.socket) -> None:
        """Greet a new connection (and hold it: `held`)."""
        with contextlib.suppress(OSError):
            conn.sendall(self.banner)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for c in self.held:
            c.close()
        self.sock.close()


class SmtpListener(Listener):
    """A stand-in MTA that answers like one: 250 to each command line, 354 to DATA, 250 at the end of the message,
    502 to a line that is no command; nothing to a partial line. Enough for proof and progress to be real."""

    COMMANDS = (b"EHLO", b"HELO", b"MAIL", b"RCPT", b"NOOP", b"RSET", b"QUIT", b"DATA")

    def _take(self, conn: socket.socket) -> None:
        threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(self.banner)
            conn.settimeout(0.5)
            buf, in_data = b"", False
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(4096)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                buf += chunk
                while b"\r\n" in buf:
                    line, buf = buf.split(b"\r\n", 1)
                    if in_data:
                        if line == b".":
                            in_data = False
                            conn.sendall(b"250 2.0.0 Ok: queued\r\n")
                        continue
                    verb = line[:4].upper()
                    if verb == b"DATA":
                        in_data = True
                        conn.sendall(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    elif verb == b"QUIT":
                        conn.sendall(b"221 2.0.0 Bye\r\n")
                        return
                    elif verb in self.COMMANDS:
                        conn.sendall(b"250 2.0.0 Ok\r\n")
                    else:
                        conn.sendall(b"502 5.5.2 Error: command not recognized\r\n")


def converse(s: socket.socket, *lines: bytes, pause: float = 0.0) -> list[bytes]:
    """Send SMTP command lines one at a time, each after `pause`, and read each reply (the banner first)."""
    s.settimeout(10)
    replies = [s.recv(1000)]
    for line in lines:
        time.sleep(pause)
        s.sendall(line + b"\r\n")
        replies.append(s.recv(1000))
    return replies
