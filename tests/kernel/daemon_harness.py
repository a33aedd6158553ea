"""Running the real daemon inside a lab's MX namespace, and reading what the kernel holds from the outside."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from govern.control import call
from govern.errors import DaemonUnavailable
from govern.nft.ruleset import KINDS, NET6_LEN, parts, seen_sets
from tests.netns import Netns

ALLOW = ["192.0.2.0/24", "2001:db8:2::/48"]


def write_config(tmp: Path, extra: str = "", allow: list[str] | None = None) -> Path:
    cfg = tmp / "govern.toml"
    cidrs = ", ".join(f'"{c}"' for c in (ALLOW if allow is None else allow))
    cfg.write_text(
        f"[allow]\ncidrs = [{cidrs}]\n"
        f'[daemon]\nstate_dir = "{tmp}/state"\nsocket = "{tmp}/run/govern.sock"\nlog_level = "debug"\n' + extra
    )
    return cfg


def govern(ns: Netns, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """The CLI as an operator runs it, inside the MX namespace."""
    return subprocess.run(
        ["ip", "netns", "exec", ns.name, sys.executable, "-m", "govern", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Daemon:
    """`govern run` in the MX namespace, stopped by PID (never by name)."""

    def __init__(self, ns: Netns, config: Path, extra: tuple[str, ...] = (), wrap: tuple[str, ...] = ()) -> None:
        # `wrap`: a command the daemon runs under inside the namespace (setpriv with a unit's capabilities, say).
        self.ns, self.config, self.extra, self.wrap = ns, config, extra, wrap
        self.socket = str(config.parent / "run" / "govern.sock")
        self.log = config.parent / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: float = 20.0) -> Daemon:
        fh = open(self.log, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.ns.name,
                *self.wrap,
                sys.executable,
                "-m",
                "govern",
                "run",
                "--config",
                str(self.config),
                *self.extra,
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
        fh.close()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(DaemonUnavailable):
                if call(self.socket, {"cmd": "ping"}, timeout=1).get("ok"):
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"daemon did not answer within {wait}s:\n{self.log.read_text()[-3000:]}")

    def ask(self, **body: Any) -> dict[str, Any]:
        return call(self.socket, body)

    def status(self) -> dict[str, Any]:
        st: dict[str, Any] = self.ask(cmd="status")["status"]
        return st

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        # ip netns exec execs the command, so this PID is govern itself.
        os.kill(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


@contextlib.contextmanager
def running(ns: Netns, config: Path) -> Iterator[Daemon]:
    d = Daemon(ns, config).start()
    try:
        yield d
    finally:
        d.stop()


def nft_set(ns: Netns, name: str) -> set[str]:
    """Elements of a govern set as the nft CLI sees them: a second view of the kernel, independent of govern.

    A kind's set of one family (`block4`, `throttle6`, `tight4`, ...) is read with all its parts (hosts, IPv6
    /64s, other prefixes: govern.nft.ruleset.parts), the /64s written as prefixes; the counting set of one family
    (`seen4`, `seen6`) with all its shards."""
    kind, version = name[:-1], name[-1:]
    if kind in KINDS and version in ("4", "6"):
        return set().union(*(nft_set_part(ns, n) for n in parts(kind, int(version))))
    if kind == "seen" and version in ("4", "6"):
        return set().union(*(nft_set_part(ns, n) for n in seen_sets(int(version))))
    return nft_set_part(ns, name)


def nft_set_part(ns: Netns, name: str) -> set[str]:
    """Elements of one nftables set of table inet govern, as the nft CLI lists them."""
    out = ns.sh("nft", "-j", "list", "set", "inet", "govern", name)
    return next((_elements(name, o["set"]) for o in json.loads(out)["nftables"] if "set" in o), set())


def nft_kinds(ns: Netns, names: tuple[str, ...]) -> dict[str, set[str]]:
    """`nft_set` of each of `names` (kinds of one family: `block4`, `tight6`, ...), read with one `nft` run: the
    whole table as it stood at one moment, and quicker than a run per set."""
    out = ns.sh("nft", "-j", "list", "table", "inet", "govern")
    sets = {o["set"]["name"]: o["set"] for o in json.loads(out)["nftables"] if "set" in o}
    return {
        name: set().union(*(_elements(n, sets[n]) for n in parts(name[:-1], int(name[-1:])) if n in sets))
        for name in names
    }


def _elements(name: str, body: dict[str, Any]) -> set[str]:
    items: set[str] = set()
    for e in body.get("elem", []):
        v = e["elem"]["val"] if isinstance(e, dict) and "elem" in e else e
        if isinstance(v, dict) and "prefix" in v:
            items.add(f"{v['prefix']['addr']}/{v['prefix']['len']}")
        elif isinstance(v, dict) and "range" in v:
            items.add(f"{v['range'][0]}-{v['range'][1]}")
        elif name.endswith("6n"):
            items.add(f"{v}/{NET6_LEN}")
        else:
            items.add(str(v))
    return items


def tables(ns: Netns) -> str:
    return ns.sh("nft", "list", "tables")


def wait_for(cond: Callable[[], bool], timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def established(ns: Netns, prefix: str, port: int = 25) -> int:
    """ESTABLISHED sockets on `port` in `ns` whose source group starts with `prefix`, as sock_diag shows them."""
    from govern.model import ScanOptions
    from govern.observe.sockdiag import SockDiag

    with ns.entered():
        diag = SockDiag()
    try:
        scan = diag.scan(ScanOptions(frozenset({port}), idle_after_ms=60_000))
    finally:
        diag.close()
    return sum(c.established for p, c in scan.sources.items() if str(p).startswith(prefix))
