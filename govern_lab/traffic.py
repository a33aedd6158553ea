"""The flood lab's traffic: legitimate senders, a trusted relay and six kinds of bot, one asyncio process per role.

This module owns the generators (`legit`, `trusted`, `hogs`, `reconnect`, `pretalk`, `swarm`, `synflood`; the
adversary matrix's `drip`, `babble`, `slowtalk`, `strangers` and `slowlegit` live in govern_lab.adversaries and are
started through this module's command line too), the JSON report each writes, and the pure helpers the scenario
runner reads transactions with (`summarise`, `rolling_success`). The runner starts one process per role inside a
client namespace:

    ip netns exec NS python -m govern_lab.traffic ROLE --dst 203.0.113.25 [--dst 2001:db8:25::25] \\
        --duration SECONDS [--sources CIDR ...] [--count N] [--seed N] [--json-out PATH] [role options]

Safety (shared/LAB.md): a generator refuses to run outside a namespace made with `ip netns add`, aims only at the
lab's MX range (203.0.113.0/24, 2001:db8:25::/48), sends only from the lab's client ranges (bots, spoofed SYNs
included, only from the bot range), and always stops by itself: `--duration` is capped, enforced by the event
loop, and backed by SIGALRM in case the loop itself is stuck.

The report (JSON, one line): {"role", "args", "started" (wall clock), "duration" (seconds run), "stopped_by"
("duration", "finished", "SIGTERM", "SIGINT", "stopped"), "events", "totals"}.
- legit, trusted: one event per SMTP transaction: "n", "t_start" and "t_end" (seconds since the generator started),
  "wall" (wall clock at its start), "src", "dst", "ok" (250 after the message and 221 after QUIT), "stage" where it
  failed (connect, banner, ehlo, mail, rcpt, data, message, quit), "reason" (timeout, transaction timeout, refused,
  reset, closed, reply NNN, protocol, an errno name, cut), "detail" (the server's reply), "latency", "cut" (still
  running when the run ended: outcome unknown). "totals" is `summarise(events)`.
- bot roles: one event per second, {"t": second, *BOT_FIELDS (or FLOOD_FIELDS), "held"}; "totals" sums them and adds
  "held_at_end", "max_held", "error_kinds", "sources" (synflood: "pps_wanted", "pps_sent", "packet_limit").
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import errno
import ipaddress
import itertools
import json
import math
import os
import random
import resource
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any

from govern_lab.addresses import (
    BOT_RANGES,
    CLIENT_RANGES,
    MX_RANGES,
    SLOWLEGIT,
    STRANGERS,
    TRUSTED_RANGES,
)

ROLES = ("legit", "trusted", "hogs", "reconnect", "pretalk", "swarm", "synflood")
# The roles of the adversary matrix (govern_lab.adversaries): three more bots and two more kinds of legitimate sender.
MATRIX_ROLES = ("drip", "babble", "slowtalk", "strangers", "slowlegit")
ALL_ROLES = ROLES + MATRIX_ROLES
# Roles whose report is one event per SMTP transaction.
TXN_ROLES = ("legit", "trusted", "strangers", "slowlegit")


MAX_DURATION = 3600.0
MAX_PPS = 100_000
# When --count is not given, a role uses every host address of --sources if there are at most this many.
ALL_HOSTS_UP_TO = 256

DEFAULT_SOURCES: dict[str, tuple[str, ...]] = {
    "legit": ("198.51.100.0/29", "2001:db8:51::/125"),
    "trusted": ("192.0.2.25/32", "2001:db8:2::25/128"),
    "hogs": ("198.18.0.0/16", "2001:db8:bad::/48"),
    "reconnect": ("198.18.0.0/16", "2001:db8:bad::/48"),
    "pretalk": ("198.18.0.0/16", "2001:db8:bad::/48"),
    "swarm": ("198.18.0.0/16", "2001:db8:bad::/48"),
    "synflood": ("198.18.0.0/16", "2001:db8:bad::/48"),
    "drip": ("198.18.0.0/16", "2001:db8:bad::/48"),
    "babble": ("198.18.0.0/16", "2001:db8:bad::/48"),
    "slowtalk": ("198.18.0.0/16", "2001:db8:bad::/48"),
    # Never-seen senders: the upper half of the legitimate /24 and a /56 of its /48, away from the known relays.
    "strangers": STRANGERS,
    "slowlegit": SLOWLEGIT,
}
DEFAULT_COUNT = {
    "legit": 8,
    "trusted": 1,
    "hogs": 10,
    "reconnect": 10,
    "pretalk": 10,
    "swarm": 3000,
    "drip": 10,
    "babble": 10,
    "slowtalk": 10,
    "strangers": 300,
    "slowlegit": 1,
}
DEFAULT_PER_SOURCE = {"hogs": 10, "pretalk": 2, "swarm": 2, "drip": 2, "babble": 2, "slowtalk": 2}

# Counters of the bot roles, per second and in total; `held` is a gauge (connections open at the end of a second).
BOT_FIELDS = (
    "attempted",  # connect() calls
    "established",  # connect() succeeded (the kernel completed the handshake; the MTA may not have accepted yet)
    "refused",  # RST to the SYN
    "timeouts",  # no answer to the SYN, or (reconnect) no banner, within --timeout
    "dropped",  # the server closed or reset an established connection
    "reconnects",  # connections opened again after a drop or a failure
    "completed",  # (reconnect) cycles that ended the way the bot meant to
    "errors",  # anything else (kinds in totals["error_kinds"])
    "bytes_sent",
)
FLOOD_FIELDS = ("sent", "errors", "bytes_sent")

# Linux's IP_BIND_ADDRESS_NO_PORT (Python < 3.12 lacks the name): the port is chosen at connect() from the whole
# 4-tuple, so thousands of connections from one source address do not exhaust bind()'s per-address port space.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
# Recent kernels (6.18 here) give the initial network namespace this fixed inode (PROC_NET_INIT_INO); namespaces
# made later get inodes from 0xF0000000 up, so it never names a lab namespace.
_INIT_NET_INO = 0xEFFFFFF9
_NETNS_DIRS = ("/run/netns", "/var/run/netns")


class TrafficError(Exception):
    """A request the generator refuses (bad or unsafe arguments, wrong namespace): exit status 2."""


# --- options --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Common:
    """What every role takes. `sources` empty means the role's default; `count` None means the role's default."""

    dst: tuple[str, ...]
    duration: float
    port: int = 25
    sources: tuple[str, ...] = ()
    count: int | None = None
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class TxnOptions(Common):
    """legit (`rate` transactions a second, each on its own, default 2) and trusted (up to `parallel` at once,
    back to back, or at most `rate` a second in all when a rate is given)."""

    rate: float | None = None
    parallel: int = 30
    timeout: float = 30.0  # connect + banner
    cmd_timeout: float = 30.0  # each command's reply
    txn_timeout: float = 120.0  # the whole transaction
    retry_delay: float = 1.0  # trusted: a worker's pause after a failed transaction
    # Message body size in KiB, drawn uniformly from [min, max] per message; (0, 0): a one-line message.
    size_kb: tuple[float, float] = (0.0, 0.0)
    pause: float = 0.0  # a slow client's pause before each command it sends (EHLO ... QUIT)
    banner_timeout: float | None = None  # None: `timeout` covers connect and banner; else connect only


@dataclass(frozen=True, kw_only=True)
class HoldOptions(Common):
    """hogs, pretalk and swarm: connections that are opened and then held (swarm: 1..per_source per source)."""

    per_source: int | None = None
    drip: float = 0.0  # 0: silent; else one byte of "EHLO ..." about every `drip` seconds
    ramp: float = 1.0  # connection starts are spread over this many seconds
    timeout: float = 10.0  # connect
    retry_delay: float = 1.0  # after a failed connect
    spread: int | None = None  # each source from a subnet of this length of its own (e.g. 64: one per /64)


@dataclass(frozen=True, kw_only=True)
class ReconnectOptions(Common):
    """reconnect: per source, connect, (read the banner), then QUIT, close or reset, at most `rate` a second."""

    rate: float = 5.0  # per source; 0 means as fast as the server answers
    style: str = "quit"  # quit | close | rst
    banner: bool = True
    timeout: float = 10.0  # connect, and the banner
    retry_delay: float = 0.2  # after a failed connect


@dataclass(frozen=True, kw_only=True)
class FloodOptions(Common):
    """synflood: spoofed SYNs from random addresses of `sources` (bot ranges only) at `pps`."""

    pps: float = 1000.0


Options = TxnOptions | HoldOptions | ReconnectOptions | FloodOptions


# --- addresses (pure) -----------------------------------------------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _net(text: str) -> Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise TrafficError(f"not an address or prefix: {text!r}: {exc}") from None


def _inside(net: Network, ranges: Iterable[str]) -> bool:
    for r in ranges:
        outer = ipaddress.ip_network(r)
        if outer.version == net.version and net.subnet_of(outer):  # type: ignore[arg-type]
            return True
    return False


def check_dst(dsts: Sequence[str]) -> tuple[str, ...]:
    """The destinations, normalised; each must be one address inside the lab's MX range."""
    if not dsts:
        raise TrafficError("--dst is required")
    out = []
    for d in dsts:
        try:
            addr = ipaddress.ip_address(d)
        except ValueError:
            raise TrafficError(f"--dst must be an address, not {d!r}") from None
        if not _inside(ipaddress.ip_network(addr), MX_RANGES):
            raise TrafficError(f"--dst {d} is outside the lab's MX range ({', '.join(MX_RANGES)})")
        out.append(str(addr))
    return tuple(out)


def check_sources(sources: Sequence[str], allowed: Sequence[str] = CLIENT_RANGES) -> tuple[Network, ...]:
    """The source prefixes; each must lie inside one of `allowed` (the lab's client ranges)."""
    nets = tuple(_net(s) for s in sources)
    for n in nets:
        if not _inside(n, allowed):
            raise TrafficError(f"--sources {n} is outside the lab's ranges for this role ({', '.join(allowed)})")
    return nets


def host_span(net: Network) -> tuple[int, int]:
    """(first, how many) usable host addresses of `net`, as integers.

    IPv4 leaves out the network and broadcast addresses of prefixes up to /30, IPv6 the subnet-router anycast
    address of prefixes up to /126: a real host never sends from those.
    """
    base, size = int(net.network_address), net.num_addresses
    if net.version == 4 and net.prefixlen <= 30:
        return base + 1, size - 2
    if net.version == 6 and net.prefixlen <= 126:
        return base + 1, size - 1
    return base, size


def pick_sources(nets: Sequence[Network], count: int | None, rng: random.Random, default: int = 10) -> list[str]:
    """`count` distinct host addresses spread evenly over `nets`; all of them in order when that is every host.

    count None: every host if the prefixes hold at most ALL_HOSTS_UP_TO, else `default`.
    """
    if not nets:
        raise TrafficError("no source prefixes")
    spans = [host_span(n) for n in nets]
    total = sum(size for _, size in spans)
    if count is None:
        count = total if total <= ALL_HOSTS_UP_TO else default
    if count < 1:
        raise TrafficError("--count must be at least 1")
    if count > total:
        raise TrafficError(f"--count {count} is more than the {total} host addresses in --sources")
    share, extra = divmod(count, len(nets))
    alloc = [min(size, share + (1 if i < extra else 0)) for i, (_, size) in enumerate(spans)]
    short = count - sum(alloc)
    for i, (_, size) in enumerate(spans):  # what small prefixes cannot give comes from the others
        more = min(short, size - alloc[i])
        alloc[i] += more
        short -= more
    out: list[str] = []
    for net, (first, size), want in zip(nets, spans, alloc, strict=True):
        if want == size:
            picks: Iterable[int] = range(size)
        elif size < 2**62:
            picks = rng.sample(range(size), want)
        else:
            chosen: set[int] = set()
            while len(chosen) < want:
                chosen.add(rng.randrange(size))
            picks = sorted(chosen)
        cls = ipaddress.IPv4Address if net.version == 4 else ipaddress.IPv6Address
        out += [str(cls(first + k)) for k in picks]
    return out


def _family(addr: str) -> int:
    return 6 if ":" in addr else 4


def pair_sources(sources: Sequence[str], dsts: Sequence[str]) -> list[tuple[str, str]]:
    """Each source with a destination of its own family (several destinations of a family take turns)."""
    by_fam: dict[int, list[str]] = {}
    for d in dsts:
        by_fam.setdefault(_family(d), []).append(d)
    turn: Counter[int] = Counter()
    out = []
    for s in sources:
        fam = _family(s)
        if fam not in by_fam:
            raise TrafficError(f"source {s} is IPv{fam} but no --dst is")
        out.append((s, by_fam[fam][turn[fam] % len(by_fam[fam])]))
        turn[fam] += 1
    return out


def resolve_sources(role: str, opts: Common, allowed: Sequence[str] = CLIENT_RANGES) -> tuple[Network, ...]:
    """The role's source prefixes: as given (every family must have a --dst), or its defaults for the --dst families."""
    fams = {_family(d) for d in opts.dst}
    if opts.sources:
        nets = check_sources(opts.sources, allowed)
        for n in nets:
            if n.version not in fams:
                raise TrafficError(f"--sources {n} is IPv{n.version} but no --dst is")
        return nets
    return tuple(n for n in check_sources(DEFAULT_SOURCES[role], allowed) if n.version in fams)


def check_common(opts: Common) -> None:
    check_dst(opts.dst)
    if not 0 < opts.duration <= MAX_DURATION:
        raise TrafficError(f"--duration must be more than 0 and at most {MAX_DURATION:g} seconds")
    if not 0 < opts.port < 65536:
        raise TrafficError("--port must be 1..65535")


# --- where we run ---------------------------------------------------------------------------------------------


def check_namespace() -> str:
    """The name of the `ip netns` namespace this thread is in; refuses the initial namespace and any unnamed one.

    The lab's addresses are routed only inside the lab: from the host's own namespace, traffic to 203.0.113.25
    would follow the default route out of the machine.
    """
    me = os.stat("/proc/thread-self/ns/net")
    if me.st_ino == _INIT_NET_INO:
        raise TrafficError("refusing to run in the host's network namespace: run inside a lab namespace")
    with contextlib.suppress(OSError):
        init = os.stat("/proc/1/ns/net")
        if (init.st_dev, init.st_ino) == (me.st_dev, me.st_ino):
            raise TrafficError("refusing to run in PID 1's network namespace: run inside a lab namespace")
    for d in _NETNS_DIRS:
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(d)):
                with contextlib.suppress(OSError):
                    st = os.stat(os.path.join(d, name))
                    if (st.st_dev, st.st_ino) == (me.st_dev, me.st_ino):
                        return name
    raise TrafficError("refusing to run outside a namespace made with `ip netns add` (ip netns exec NS ...)")


def raise_nofile(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; refuse a plan that needs more descriptors than that."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise TrafficError(f"this needs about {needed} open sockets; the hard limit on open files is {hard}")
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def _client_socket(src: str, dst: str) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if _family(dst) == 6 else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setblocking(False)
        s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((src, 0))
    except BaseException:
        s.close()
        raise
    return s


def _reason(exc: BaseException) -> str:
    """A short, stable name for why a connection failed (the per-reason counts must aggregate)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(exc, asyncio.IncompleteReadError | EOFError):
        return "closed"
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, str(exc.errno)).lower()
    return type(exc).__name__


# --- counters -------------------------------------------------------------------------------------------------


class Timeline:
    """Per-second counters (and, with `gauge`, the `held` connections at the end of each second) from `t0` for
    `seconds`, plus totals. Frozen when the run stops, so the connections the generator's own shutdown closes do not
    show as traffic; what happens in the last moments past `seconds` counts in the last second."""

    def __init__(
        self,
        fields: Sequence[str],
        t0: float,
        seconds: float,
        gauge: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fields = tuple(fields)
        self.t0 = t0
        self.last = max(0, math.ceil(seconds) - 1)
        self.gauge = gauge
        self._clock = clock
        self.rows: list[dict[str, int]] = []
        self.totals: dict[str, int] = dict.fromkeys(self.fields, 0)
        self.error_kinds: Counter[str] = Counter()
        self.held = 0
        self.max_held = 0
        self.frozen = False

    def _row(self) -> dict[str, int]:
        i = min(self.last, max(0, int(self._clock() - self.t0)))
        while len(self.rows) <= i:
            row = {"t": len(self.rows), **dict.fromkeys(self.fields, 0)}
            if self.gauge:
                row["held"] = self.held
            self.rows.append(row)
        return self.rows[i]

    def add(self, field: str, n: int = 1) -> None:
        if self.frozen:
            return
        self._row()[field] += n
        self.totals[field] += n

    def error(self, exc: BaseException) -> None:
        if not self.frozen:
            self.add("errors")
            self.error_kinds[_reason(exc)] += 1

    def hold(self, delta: int) -> None:
        if self.frozen:
            return
        row = self._row()
        self.held += delta
        self.max_held = max(self.max_held, self.held)
        row["held"] = self.held

    def freeze(self) -> None:
        if not self.frozen:
            self._row()
            self.frozen = True

    def result(self) -> tuple[list[dict[str, int]], dict[str, Any]]:
        totals: dict[str, Any] = dict(self.totals)
        if self.gauge:
            totals.update(held_at_end=self.held, max_held=self.max_held)
        totals["error_kinds"] = dict(self.error_kinds)
        return self.rows, totals


# --- transactions (legit, trusted) ----------------------------------------------------------------------------


class _Failed(Exception):
    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


async def _reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    """One SMTP reply (multi-line ones whole): its code and its last line."""
    while True:
        try:
            line = await reader.readline()
        except ValueError:
            raise _Failed("protocol", "reply line too long") from None
        if not line.endswith(b"\n"):
            raise _Failed("closed")
        if len(line) < 4 or line[3:4] != b"-":
            break
    text = line.decode("utf-8", "replace").strip()
    if not text[:3].isdigit():
        raise _Failed("protocol", text[:120])
    return int(text[:3]), text[:200]


async def _expect(reader: asyncio.StreamReader, want: int) -> None:
    code, text = await _reply(reader)
    if code != want:
        raise _Failed(f"reply {code}", text)


def message_body(head: str, src: str, role: str, size: int, rng: random.Random) -> bytes:
    """A message of about `size` bytes (headers included), ending with the DATA terminator: a short text part and a
    base64 attachment of random bytes, as a real mail with a document attached looks on the wire (76-character
    lines, CRLF, no line starting with a dot)."""
    text = f"A message from govern's flood lab ({role} sender {src}).\r\n"
    mime = (
        'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="lab"\r\n\r\n'
        f"--lab\r\nContent-Type: text/plain\r\n\r\n{text}\r\n"
        "--lab\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        'Content-Disposition: attachment; filename="lab.bin"\r\n\r\n'
    )
    tail = "\r\n--lab--\r\n.\r\n"
    room = max(0, size - len(head) - len(mime) - len(tail))
    raw = rng.randbytes(room * 57 // 78)  # 57 raw bytes make one 76-character line plus CRLF
    attachment = base64.encodebytes(raw).replace(b"\n", b"\r\n")
    return (head + mime).encode() + attachment + tail.encode()


@dataclass
class _Txn:
    n: int
    src: str
    dst: str
    stage: str = "connect"


class Transactions:
    """The transactions of one legit or trusted run, and how to make one."""

    def __init__(self, role: str, opts: TxnOptions, t0: float) -> None:
        self.role = role
        self.opts = opts
        self.t0 = t0
        self.events: list[dict[str, Any]] = []
        self.domain = f"{role}.lab.test"

    def _message(self, t: _Txn) -> bytes:
        head = (
            f"From: <sender@{self.domain}>\r\nTo: <rcpt@lab.test>\r\nSubject: lab message {t.n}\r\n"
            f"Date: {formatdate()}\r\nMessage-ID: <{self.opts.seed}.{t.n}.{time.time_ns()}@{self.domain}>\r\n"
        )
        lo, hi = self.opts.size_kb
        if hi <= 0:
            return f"{head}\r\nA small message from govern's flood lab ({self.role} sender {t.src}).\r\n.\r\n".encode()
        rng = random.Random(self.opts.seed * 1_000_003 + t.n)
        return message_body(head, t.src, self.role, round(1024 * rng.uniform(lo, hi)), rng)

    async def _converse(self, t: _Txn) -> None:
        o = self.opts
        loop = asyncio.get_running_loop()
        sock = _client_socket(t.src, t.dst)
        writer: asyncio.StreamWriter | None = None
        try:
            if o.banner_timeout is None:
                async with asyncio.timeout(o.timeout):
                    await loop.sock_connect(sock, (t.dst, o.port))
                    t.stage = "banner"
                    reader, writer = await asyncio.open_connection(sock=sock)
                    await _expect(reader, 220)
            else:  # a real MTA: its connect timeout, then a long wait for the banner
                async with asyncio.timeout(o.timeout):
                    await loop.sock_connect(sock, (t.dst, o.port))
                t.stage = "banner"
                reader, writer = await asyncio.open_connection(sock=sock)
                async with asyncio.timeout(o.banner_timeout):
                    await _expect(reader, 220)
            steps = (
                ("ehlo", f"EHLO relay.{self.domain}\r\n".encode(), 250),
                ("mail", f"MAIL FROM:<sender@{self.domain}>\r\n".encode(), 250),
                ("rcpt", b"RCPT TO:<rcpt@lab.test>\r\n", 250),
                ("data", b"DATA\r\n", 354),
                ("message", self._message(t), 250),
                ("quit", b"QUIT\r\n", 221),
            )
            for stage, line, want in steps:
                t.stage = stage
                if o.pause > 0 and stage != "message":  # the message follows the 354 without a pause
                    await asyncio.sleep(o.pause)
                async with asyncio.timeout(o.cmd_timeout):
                    writer.write(line)
                    await writer.drain()
                    await _expect(reader, want)
        finally:
            if writer is not None:
                writer.close()
            else:
                sock.close()

    async def one(self, n: int, src: str, dst: str) -> dict[str, Any]:
        """Run transaction `n` from `src` to `dst` and record it; never raises except on cancellation."""
        t = _Txn(n, src, dst)
        start, wall = time.monotonic(), time.time()
        ok, cut, reason, detail = False, False, None, None
        whole = asyncio.timeout(self.opts.txn_timeout)
        try:
            async with whole:
                await self._converse(t)
            ok = True
        except TimeoutError:
            reason = "transaction timeout" if whole.expired() else "timeout"
        except _Failed as f:
            reason, detail = f.reason, f.detail
        except asyncio.CancelledError:
            cut, reason = True, "cut"
            raise
        except Exception as exc:  # a failed transaction is data, whatever the cause
            reason = _reason(exc)
        finally:
            end = time.monotonic()
            ev = {
                "n": n,
                "t_start": round(start - self.t0, 4),
                "t_end": round(end - self.t0, 4),
                "wall": round(wall, 3),
                "src": src,
                "dst": dst,
                "ok": ok,
                "stage": None if ok else t.stage,
                "reason": reason,
                "detail": detail,
                "latency": round(end - start, 4),
                "cut": cut,
            }
            self.events.append(ev)
        return ev


# --- pure helpers for the runner ------------------------------------------------------------------------------


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarise(events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Success rate, p50/p95 latency of the successful ones, and failures by "stage: reason".

    Transactions cut by the end of the run (`cut`) are counted apart and left out of the rate: their outcome is
    unknown, not a failure.
    """
    done = [e for e in events if not e.get("cut")]
    ok = [e for e in done if e["ok"]]
    lat = sorted(float(e["latency"]) for e in ok)
    failures = Counter(f"{e.get('stage')}: {e.get('reason')}" for e in done if not e["ok"])
    return {
        "transactions": len(done),
        "ok": len(ok),
        "failed": len(done) - len(ok),
        "cut": len(events) - len(done),
        "success_rate": round(len(ok) / len(done), 4) if done else None,
        "latency_p50": round(_percentile(lat, 0.5), 4) if lat else None,
        "latency_p95": round(_percentile(lat, 0.95), 4) if lat else None,
        "failures": dict(failures.most_common()),
    }


def rolling_success(events: Sequence[dict[str, Any]], window: float = 5.0) -> list[tuple[float, float]]:
    """(t, success ratio of the transactions that started in (t - window, t]) at every transaction's start.

    t is the start offset (`t_start`, seconds since the generator's start); one point per distinct start time.
    Cut transactions are left out.
    """
    if window <= 0:
        raise ValueError("window must be positive")
    done = sorted(
        ((float(e["t_start"]), bool(e["ok"])) for e in events if not e.get("cut")),
        key=lambda x: x[0],
    )
    out: list[tuple[float, float]] = []
    lo = 0
    ok_in = 0
    for hi, (t, ok) in enumerate(done):
        ok_in += ok
        while done[lo][0] <= t - window:
            ok_in -= done[lo][1]
            lo += 1
        if hi + 1 < len(done) and done[hi + 1][0] == t:
            continue  # report a start time once, after all transactions starting then
        out.append((t, ok_in / (hi + 1 - lo)))
    return out


# --- running a role -------------------------------------------------------------------------------------------


async def _drive(
    duration: float, stop: asyncio.Event | None, body: Awaitable[None], on_stop: Callable[[], None]
) -> tuple[str, float]:
    """Run `body` until it ends, `duration` passes or `stop` is set. Returns which of these it was ("finished",
    "duration", "stopped") and the monotonic time it stopped."""
    task = asyncio.ensure_future(body)
    stop = stop or asyncio.Event()
    waiter = asyncio.ensure_future(stop.wait())
    why = "stopped"
    try:
        done, _ = await asyncio.wait({task, waiter}, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
        why = "finished" if task in done else ("stopped" if stop.is_set() else "duration")
    finally:
        stopped_at = time.monotonic()
        waiter.cancel()
        on_stop()
        task.cancel()
        await asyncio.wait({task}, timeout=5.0)
        # Closed transports finish closing on the next loop iterations; let them, so nothing leaks.
        await asyncio.sleep(0.05)
    if task.done() and not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]
    return why, stopped_at


def _report(
    role: str,
    opts: Common,
    t0: float,
    wall: float,
    ending: tuple[str, float],
    events: list[Any],
    totals: dict[str, Any],
) -> dict[str, Any]:
    why, stopped_at = ending
    return {
        "role": role,
        "args": dataclasses.asdict(opts),
        "started": round(wall, 3),
        "duration": round(stopped_at - t0, 3),
        "stopped_by": why,
        "events": events,
        "totals": totals,
    }


def _txn_setup(role: str, opts: TxnOptions) -> list[tuple[str, str]]:
    check_common(opts)
    ranges = TRUSTED_RANGES if role == "trusted" else CLIENT_RANGES
    nets = resolve_sources(role, opts, ranges)
    rng = random.Random(opts.seed)
    pairs = pair_sources(pick_sources(nets, opts.count, rng, DEFAULT_COUNT[role]), opts.dst)
    for name, v in (("timeout", opts.timeout), ("cmd-timeout", opts.cmd_timeout), ("txn-timeout", opts.txn_timeout)):
        if v <= 0:
            raise TrafficError(f"--{name} must be positive")
    return pairs


async def legit(opts: TxnOptions, stop: asyncio.Event | None = None) -> dict[str, Any]:
    """Whole SMTP transactions, a new one every 1/rate s whatever the others are doing, from a few addresses."""
    check_namespace()
    pairs = _txn_setup("legit", opts)
    rate = 2.0 if opts.rate is None else opts.rate
    if not 0 < rate <= 1000:
        raise TrafficError("--rate must be more than 0 and at most 1000")
    # Every transaction may be pending at once when the server answers nothing: size for that.
    raise_nofile(math.ceil(rate * min(opts.duration, opts.txn_timeout)) + 64)
    t0, wall = time.monotonic(), time.time()
    txns = Transactions("legit", opts, t0)

    async def body() -> None:
        async with asyncio.TaskGroup() as tg:
            for k in itertools.count():
                at = t0 + k / rate
                if at - t0 >= opts.duration:
                    break
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                src, dst = pairs[k % len(pairs)]
                tg.create_task(txns.one(k, src, dst))

    ending = await _drive(opts.duration, stop, body(), lambda: None)
    return _report("legit", opts, t0, wall, ending, txns.events, summarise(txns.events))


async def trusted(opts: TxnOptions, stop: asyncio.Event | None = None) -> dict[str, Any]:
    """`parallel` workers, each sending one transaction after another from the trusted relay's address; with a
    rate, the workers share it (new transactions at most `rate` a second, up to `parallel` in flight)."""
    check_namespace()
    pairs = _txn_setup("trusted", opts)
    if not 1 <= opts.parallel <= 1000:
        raise TrafficError("--parallel must be 1..1000")
    rate = opts.rate or 0.0
    if not 0 <= rate <= 10_000:
        raise TrafficError("--rate must be 0..10000 (0: back to back)")
    raise_nofile(opts.parallel + 64)
    t0, wall = time.monotonic(), time.time()
    txns = Transactions("trusted", opts, t0)
    seq = itertools.count()
    next_at = t0

    async def paced() -> bool:
        """Wait for this worker's turn; False when that would be past the end of the run."""
        nonlocal next_at
        at = max(next_at, time.monotonic())
        if at - t0 >= opts.duration:
            return False
        if rate > 0:
            next_at = at + 1.0 / rate
            await asyncio.sleep(at - time.monotonic())
        return True

    async def worker(w: int) -> None:
        while await paced():
            n = next(seq)
            src, dst = pairs[(w + n) % len(pairs)]
            ev = await txns.one(n, src, dst)
            if not ev["ok"]:
                await asyncio.sleep(opts.retry_delay)

    async def body() -> None:
        async with asyncio.TaskGroup() as tg:
            for w in range(opts.parallel):
                tg.create_task(worker(w))

    ending = await _drive(opts.duration, stop, body(), lambda: None)
    return _report("trusted", opts, t0, wall, ending, txns.events, summarise(txns.events))


# --- bots -----------------------------------------------------------------------------------------------------

_DRIP = b"EHLO drip.bots.lab.test\r\n"
_PRETALK = b"EHLO pretalk.bots.lab.test\r\n"


async def _connect(sock: socket.socket, dst: str, port: int, timeout: float, tl: Timeline) -> bool:
    tl.add("attempted")
    try:
        async with asyncio.timeout(timeout):
            await asyncio.get_running_loop().sock_connect(sock, (dst, port))
    except TimeoutError:
        tl.add("timeouts")
        return False
    except ConnectionRefusedError:
        tl.add("refused")
        return False
    except OSError as exc:
        tl.error(exc)
        return False
    tl.add("established")
    return True


async def _linger(sock: socket.socket, drip: float, rng: random.Random, tl: Timeline) -> None:
    """Read and discard what the server sends (the banner, a timeout notice) until it closes the connection;
    with `drip`, send one byte about every `drip` seconds meanwhile."""
    loop = asyncio.get_running_loop()
    sent = 0
    while True:
        wait = drip * rng.uniform(0.8, 1.2) if drip > 0 else None
        try:
            async with asyncio.timeout(wait):
                data = await loop.sock_recv(sock, 4096)
        except TimeoutError:
            await loop.sock_sendall(sock, _DRIP[sent % len(_DRIP) : sent % len(_DRIP) + 1])
            sent += 1
            tl.add("bytes_sent")
            continue
        if not data:
            return


async def _holder(
    src: str, dst: str, opts: HoldOptions, tl: Timeline, delay: float, rng: random.Random, pretalk: bool
) -> None:
    """One connection slot of a hog, pretalker or swarm bot: open, hold until dropped, open again."""
    await asyncio.sleep(delay)
    loop = asyncio.get_running_loop()
    first = True
    while True:
        if not first:
            tl.add("reconnects")
        first = False
        sock = await _open(src, dst, opts.port, opts.timeout, opts.retry_delay, tl)
        if sock is None:
            continue
        since = time.monotonic()
        with _held(sock, tl):
            if pretalk:
                # Before the banner, as a bot that does not wait for the server does.
                await loop.sock_sendall(sock, _PRETALK)
                tl.add("bytes_sent", len(_PRETALK))
            await _linger(sock, opts.drip, rng, tl)
            tl.add("dropped")
        if time.monotonic() - since < opts.retry_delay:
            # Turned away at once (a per-client limit, a reset): a holder must not turn into a reconnect flood,
            # which is another role's job.
            await asyncio.sleep(opts.retry_delay)


@contextlib.contextmanager
def _held(sock: socket.socket, tl: Timeline) -> Iterator[None]:
    """A connected socket of a bot, counted as held while the block runs: a reset or broken pipe ends it as dropped,
    another socket error is counted as one; closed afterwards, whatever happened."""
    try:
        tl.hold(+1)
        try:
            yield
        except (ConnectionResetError, BrokenPipeError):
            tl.add("dropped")
        except OSError as exc:
            tl.error(exc)
        finally:
            tl.hold(-1)
    finally:
        sock.close()


async def _open(
    src: str, dst: str, port: int, timeout: float, retry_delay: float, tl: Timeline
) -> socket.socket | None:
    """A connected socket from `src`, or None (counted, after waiting `retry_delay`) when it could not connect."""
    try:
        sock = _client_socket(src, dst)
    except OSError as exc:
        tl.error(exc)
        await asyncio.sleep(retry_delay)
        return None
    if not await _connect(sock, dst, port, timeout, tl):
        sock.close()
        await asyncio.sleep(retry_delay)
        return None
    return sock


async def _reconnector(src: str, dst: str, opts: ReconnectOptions, tl: Timeline, delay: float) -> None:
    """One prolific source: connect, maybe read the banner, QUIT/close/reset, again, at most `rate` a second."""
    loop = asyncio.get_running_loop()
    interval = 1.0 / opts.rate if opts.rate > 0 else 0.0
    next_at = time.monotonic() + delay
    first = True
    while True:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        next_at = max(next_at + interval, time.monotonic())
        if not first:
            tl.add("reconnects")
        first = False
        sock = await _open(src, dst, opts.port, opts.timeout, opts.retry_delay, tl)
        if sock is None:
            continue
        with _held(sock, tl):
            if opts.banner and not await _read_line(sock, opts.timeout, tl):
                continue
            if opts.style == "quit":
                await loop.sock_sendall(sock, b"QUIT\r\n")
                tl.add("bytes_sent", 6)
                await _read_line(sock, opts.timeout, tl, dropped_is_failure=False)
            elif opts.style == "rst":
                # SO_LINGER 0: close() sends a reset and leaves no TIME_WAIT behind, as some bots do.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            tl.add("completed")


async def _read_line(sock: socket.socket, timeout: float, tl: Timeline, *, dropped_is_failure: bool = True) -> bool:
    """Read up to the end of a line (a banner, a reply); False, counted, when the server closed or went silent."""
    loop = asyncio.get_running_loop()
    buf = b""
    try:
        async with asyncio.timeout(timeout):
            while b"\n" not in buf:
                data = await loop.sock_recv(sock, 4096)
                if not data:
                    if dropped_is_failure:
                        tl.add("dropped")
                    return False
                buf += data
    except TimeoutError:
        tl.add("timeouts")
        return False
    return True


def _bot_setup(role: str, opts: Common) -> tuple[list[tuple[str, str]], random.Random]:
    check_common(opts)
    nets = resolve_sources(role, opts, BOT_RANGES)
    rng = random.Random(opts.seed)
    spread = getattr(opts, "spread", None)
    if spread:
        from govern_lab.adversaries import spread_sources

        picked = spread_sources(nets, opts.count or DEFAULT_COUNT[role], rng, spread)
    else:
        picked = pick_sources(nets, opts.count, rng, DEFAULT_COUNT[role])
    return pair_sources(picked, opts.dst), rng


async def _hold_role(role: str, opts: HoldOptions, stop: asyncio.Event | None, pretalk: bool) -> dict[str, Any]:
    check_namespace()
    pairs, rng = _bot_setup(role, opts)
    per = opts.per_source if opts.per_source is not None else DEFAULT_PER_SOURCE[role]
    if per < 1:
        raise TrafficError("--per-source must be at least 1")
    if opts.drip < 0 or opts.ramp < 0 or opts.timeout <= 0:
        raise TrafficError("--drip and --ramp must not be negative, --timeout must be positive")
    # swarm: each source holds 1..per, as a botnet keeps every member under any per-source limit.
    slots = [(s, d) for s, d in pairs for _ in range(rng.randint(1, per) if role == "swarm" else per)]
    raise_nofile(len(slots) + 64)
    t0, wall = time.monotonic(), time.time()
    tl = Timeline(BOT_FIELDS, t0, opts.duration)

    async def body() -> None:
        async with asyncio.TaskGroup() as tg:
            for i, (src, dst) in enumerate(slots):
                delay = opts.ramp * i / len(slots)
                tg.create_task(_holder(src, dst, opts, tl, delay, random.Random(rng.random()), pretalk))

    ending = await _drive(opts.duration, stop, body(), tl.freeze)
    events, totals = tl.result()
    totals.update(sources=len(pairs), connections_wanted=len(slots))
    return _report(role, opts, t0, wall, ending, events, totals)


async def hogs(opts: HoldOptions, stop: asyncio.Event | None = None) -> dict[str, Any]:
    """Slot hogs: per source `per_source` connections that read the banner and then say nothing (or drip)."""
    return await _hold_role("hogs", opts, stop, pretalk=False)


async def pretalk(opts: HoldOptions, stop: asyncio.Event | None = None) -> dict[str, Any]:
    """Clients that send EHLO right after connecting, before the banner, and then linger."""
    return await _hold_role("pretalk", opts, stop, pretalk=True)


async def swarm(opts: HoldOptions, stop: asyncio.Event | None = None) -> dict[str, Any]:
    """A wide swarm: `count` sources, each holding 1..`per_source` silent connections."""
    return await _hold_role("swarm", opts, stop, pretalk=False)


async def reconnect(opts: ReconnectOptions, stop: asyncio.Event | None = None) -> dict[str, Any]:
    """Prolific reconnectors: per source one connection at a time, opened again as fast as `rate` allows."""
    check_namespace()
    pairs, _rng = _bot_setup("reconnect", opts)
    if opts.style not in ("quit", "close", "rst"):
        raise TrafficError("--style must be quit, close or rst")
    if opts.rate < 0 or opts.rate > 10_000 or opts.timeout <= 0:
        raise TrafficError("--rate must be 0..10000 (0: as fast as possible), --timeout positive")
    raise_nofile(len(pairs) + 64)
    t0, wall = time.monotonic(), time.time()
    tl = Timeline(BOT_FIELDS, t0, opts.duration)
    spread = 1.0 / opts.rate if opts.rate > 0 else 0.0

    async def body() -> None:
        async with asyncio.TaskGroup() as tg:
            for i, (src, dst) in enumerate(pairs):
                tg.create_task(_reconnector(src, dst, opts, tl, spread * i / len(pairs)))

    ending = await _drive(opts.duration, stop, body(), tl.freeze)
    events, totals = tl.result()
    totals.update(sources=len(pairs))
    return _report("reconnect", opts, t0, wall, ending, events, totals)


# --- synflood -------------------------------------------------------------------------------------------------


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


class SynCrafter:
    """SYNs to one destination, crafted once by scapy and then re-addressed per packet.

    scapy takes ~250 µs to build a packet here, which caps a flood near 4,000 pps; patching the source, port,
    sequence number and checksums of scapy's template costs a few µs. `scapy_packet` builds the same packet the
    slow way, for the tests to compare byte for byte.
    """

    def __init__(self, dst: str, port: int) -> None:
        self.dst = dst
        self.port = port
        self.version = _family(dst)
        self.template = bytes(self.scapy_packet("0.0.0.0" if self.version == 4 else "::", 0, 0, 0))
        self.ip_len = 20 if self.version == 4 else 40
        self.dst_packed = socket.inet_pton(socket.AF_INET if self.version == 4 else socket.AF_INET6, dst)

    def scapy_packet(self, src: str, sport: int, seq: int, ident: int) -> bytes:
        from scapy.compat import raw
        from scapy.config import conf
        from scapy.layers.inet import IP, TCP
        from scapy.layers.inet6 import IPv6

        conf.verb = 0
        tcp = TCP(sport=sport, dport=self.port, flags="S", seq=seq, window=64240, options=[("MSS", 1460)])
        ip = IP(src=src, dst=self.dst, ttl=64, id=ident) if self.version == 4 else IPv6(src=src, dst=self.dst, hlim=64)
        return bytes(raw(ip / tcp))

    def packet(self, src: int, sport: int, seq: int, ident: int) -> bytes:
        p = bytearray(self.template)
        n = self.ip_len
        tcp_len = len(p) - n
        if self.version == 4:
            src_b = src.to_bytes(4, "big")
            p[4:6] = ident.to_bytes(2, "big")
            p[12:16] = src_b
            p[10:12] = b"\0\0"
            p[10:12] = _csum(bytes(p[:20])).to_bytes(2, "big")
            pseudo = src_b + self.dst_packed + struct.pack("!BBH", 0, socket.IPPROTO_TCP, tcp_len)
        else:
            src_b = src.to_bytes(16, "big")
            p[8:24] = src_b
            pseudo = src_b + self.dst_packed + struct.pack("!I3xB", tcp_len, socket.IPPROTO_TCP)
        p[n : n + 2] = sport.to_bytes(2, "big")
        p[n + 4 : n + 8] = seq.to_bytes(4, "big")
        p[n + 16 : n + 18] = b"\0\0"
        p[n + 16 : n + 18] = _csum(pseudo + bytes(p[n:])).to_bytes(2, "big")
        return bytes(p)


def _flood(
    targets: Sequence[tuple[SynCrafter, socket.socket, Sequence[tuple[int, int]]]],
    pps: float,
    t0: float,
    duration: float,
    limit: int,
    seed: int,
    stop: threading.Event,
    tl: Timeline,
) -> None:
    """Send SYNs at `pps` until `duration`, `limit` packets or `stop`; runs in a thread of its own."""
    rng = random.Random(seed)
    tries = 0
    while not stop.is_set():
        elapsed = time.monotonic() - t0
        if elapsed >= duration or tries >= limit:
            return
        due = min(limit, int(elapsed * pps) + 1)
        while tries < due:
            crafter, sock, spans = targets[rng.randrange(len(targets))]
            first, size = spans[rng.randrange(len(spans))]
            pkt = crafter.packet(first + rng.randrange(size), rng.randrange(1024, 65536), rng.getrandbits(32), 0)
            tries += 1
            try:
                sock.sendto(pkt, (crafter.dst, 0))
            except OSError as exc:
                tl.error(exc)
                continue
            tl.add("sent")
            tl.add("bytes_sent", len(pkt))
            if tries % 256 == 0 and (stop.is_set() or time.monotonic() - t0 >= duration):
                return
        time.sleep(min(0.005, max(0.0, (due + 1) / pps - (time.monotonic() - t0))))


async def synflood(opts: FloodOptions, stop: asyncio.Event | None = None) -> dict[str, Any]:
    """Spoofed SYNs from random addresses of `sources` (bot ranges only) to the MX at `pps`; no handshake."""
    check_namespace()
    check_common(opts)
    if not 0 < opts.pps <= MAX_PPS:
        raise TrafficError(f"--pps must be more than 0 and at most {MAX_PPS}")
    nets = resolve_sources("synflood", opts, BOT_RANGES)
    targets: list[tuple[SynCrafter, socket.socket, Sequence[tuple[int, int]]]] = []
    socks: list[socket.socket] = []
    try:
        for dst in dict.fromkeys(opts.dst):
            spans = [host_span(n) for n in nets if n.version == _family(dst)]
            if not spans:
                continue
            fam = socket.AF_INET if _family(dst) == 4 else socket.AF_INET6
            # IPPROTO_RAW: the packet goes out as written (IPv4 and IPv6 headers included), routed by the kernel.
            sock = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_RAW)
            socks.append(sock)
            targets.append((SynCrafter(dst, opts.port), sock, spans))
        limit = math.ceil(opts.pps * opts.duration)
        t0, wall = time.monotonic(), time.time()
        tl = Timeline(FLOOD_FIELDS, t0, opts.duration, gauge=False)
        halt = threading.Event()

        async def body() -> None:
            thread = threading.Thread(
                target=_flood, args=(targets, opts.pps, t0, opts.duration, limit, opts.seed, halt, tl), daemon=True
            )
            thread.start()
            try:
                while thread.is_alive():
                    await asyncio.sleep(0.05)
            finally:
                halt.set()
                thread.join(2.0)

        # The sending thread keeps to the duration itself; the loop's deadline is only the backstop.
        why, stopped_at = await _drive(opts.duration + 0.5, stop, body(), halt.set)
        tl.freeze()  # after the thread has stopped: every packet it sent is counted
        if why == "finished":
            why, stopped_at = "duration", min(stopped_at, t0 + opts.duration)
        events, totals = tl.result()
        totals.update(
            pps_wanted=opts.pps,
            pps_sent=round(totals["sent"] / max(1e-3, stopped_at - t0), 1),
            packet_limit=limit,
        )
        return _report("synflood", opts, t0, wall, (why, stopped_at), events, totals)
    finally:
        for s in socks:
            s.close()


# --- command line ---------------------------------------------------------------------------------------------


def _positive(text: str) -> float:
    v = float(text)
    if not v > 0 or math.isinf(v):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text}")
    return v


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m govern_lab.traffic",
        description="Traffic for the flood lab (run inside a lab namespace: ip netns exec NS ...).",
    )
    sub = ap.add_subparsers(dest="role", required=True)

    def role(name: str, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--dst", action="append", required=True, help="the MX address; give it twice for v4 and v6")
        p.add_argument("--port", type=int, default=25)
        p.add_argument("--duration", type=_positive, required=True, help="seconds; the generator stops by itself")
        p.add_argument(
            "--sources",
            action="append",
            default=[],
            metavar="CIDR",
            help=f"source prefixes (repeatable; default {' '.join(DEFAULT_SOURCES[name])})",
        )
        if name != "synflood":
            p.add_argument(
                "--count",
                type=int,
                help=f"source addresses to use (default every host if at most {ALL_HOSTS_UP_TO}, "
                f"else {DEFAULT_COUNT[name]})",
            )
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--json-out", metavar="PATH", help="where the JSON report goes")
        return p

    for name, text in (
        ("legit", "whole SMTP transactions at a steady rate from a few addresses"),
        ("trusted", "back-to-back SMTP transactions from the trusted relay, several at once"),
    ):
        p = role(name, text)
        if name == "legit":
            p.add_argument("--rate", type=_positive, default=2.0, help="new transactions per second")
            add_size(p, (2.0, 60.0))
        else:
            p.add_argument("--parallel", type=int, default=30, help="transactions in flight, at most")
            p.add_argument(
                "--rate", type=float, default=0.0, help="new transactions per second in all (0: back to back)"
            )
            p.add_argument("--retry-delay", type=float, default=1.0, help="pause after a failed transaction")
        p.add_argument("--timeout", type=_positive, default=30.0, help="connect + banner wait (s)")
        p.add_argument("--cmd-timeout", type=_positive, default=30.0, help="wait for each reply (s)")
        p.add_argument("--txn-timeout", type=_positive, default=120.0, help="bound on a whole transaction (s)")

    for name, text in (
        ("hogs", "slot hogs: connect, read the banner, stay silent (or drip); reconnect when dropped"),
        ("pretalk", "send EHLO before the banner, then linger"),
        ("swarm", "many sources, each holding 1..--per-source silent connections"),
    ):
        p = role(name, text)
        p.add_argument("--per-source", type=int, default=DEFAULT_PER_SOURCE[name])
        p.add_argument("--drip", type=float, default=0.0, help="send one byte about every N s (0: silent)")
        p.add_argument("--ramp", type=float, default=5.0 if name == "swarm" else 1.0, help="spread the opening (s)")
        p.add_argument("--timeout", type=_positive, default=10.0, help="connect timeout (s)")
        p.add_argument("--retry-delay", type=float, default=1.0, help="pause after a failed connect")
        add_spread(p)

    p = role("reconnect", "prolific reconnectors: connect, read the banner, QUIT (or close/reset), again")
    p.add_argument("--rate", type=float, default=5.0, help="connections per second per source (0: no limit)")
    p.add_argument("--style", choices=("quit", "close", "rst"), default="quit")
    p.add_argument("--no-banner", dest="banner", action="store_false", help="do not wait for the banner")
    p.add_argument("--timeout", type=_positive, default=10.0, help="connect and banner timeout (s)")
    p.add_argument("--retry-delay", type=float, default=0.2, help="pause after a failed connect")

    p = role("synflood", "spoofed SYNs from random bot-range addresses (scapy, raw socket)")
    p.add_argument("--pps", type=_positive, default=1000.0, help="packets per second")

    from govern_lab import adversaries

    adversaries.add_parsers(role)
    return ap


def size_range(text: str) -> tuple[float, float]:
    """--size: "MIN-MAX" or "N" KiB; "0" for the one-line message."""
    lo, _, hi = text.partition("-")
    try:
        a, b = float(lo), float(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size in KiB (N or MIN-MAX): {text}") from None
    if not 0 <= a <= b <= 10_240:
        raise argparse.ArgumentTypeError(f"sizes must satisfy 0 <= MIN <= MAX <= 10240 KiB: {text}")
    return a, b


def add_size(p: argparse.ArgumentParser, default: tuple[float, float]) -> None:
    p.add_argument(
        "--size",
        type=size_range,
        default=default,
        metavar="KIB",
        help=f"message size in KiB, MIN-MAX drawn per message, 0 for one line (default {default[0]:g}-{default[1]:g})",
    )


def add_spread(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--spread",
        type=int,
        metavar="LEN",
        help="each source from a /LEN subnet of its own (e.g. 64 with --sources 2001:db8:bad::/48: one per /64)",
    )


def options(ns: argparse.Namespace) -> Common:
    """The role's options from parsed arguments."""
    common: dict[str, Any] = {
        "dst": tuple(ns.dst),
        "duration": ns.duration,
        "port": ns.port,
        "sources": tuple(ns.sources),
        "seed": ns.seed,
    }
    if ns.role != "synflood":
        common["count"] = ns.count
    if ns.role == "legit":
        return TxnOptions(
            **common,
            rate=ns.rate,
            timeout=ns.timeout,
            cmd_timeout=ns.cmd_timeout,
            txn_timeout=ns.txn_timeout,
            size_kb=ns.size,
        )
    if ns.role == "trusted":
        return TxnOptions(
            **common,
            parallel=ns.parallel,
            rate=ns.rate,
            retry_delay=ns.retry_delay,
            timeout=ns.timeout,
            cmd_timeout=ns.cmd_timeout,
            txn_timeout=ns.txn_timeout,
        )
    if ns.role in ("hogs", "pretalk", "swarm"):
        return HoldOptions(
            **common,
            per_source=ns.per_source,
            drip=ns.drip,
            ramp=ns.ramp,
            timeout=ns.timeout,
            retry_delay=ns.retry_delay,
            spread=ns.spread,
        )
    if ns.role == "reconnect":
        return ReconnectOptions(
            **common, rate=ns.rate, style=ns.style, banner=ns.banner, timeout=ns.timeout, retry_delay=ns.retry_delay
        )
    if ns.role in MATRIX_ROLES:
        from govern_lab import adversaries

        return adversaries.options(ns.role, ns, common)
    return FloodOptions(**common, pps=ns.pps)


async def run(role: str, opts: Common, stop: asyncio.Event | None = None) -> dict[str, Any]:
    """Run one role to its end and return its report."""
    if role in ("legit", "trusted") and isinstance(opts, TxnOptions):
        return await (legit if role == "legit" else trusted)(opts, stop)
    if role in ("hogs", "pretalk", "swarm") and isinstance(opts, HoldOptions):
        return await {"hogs": hogs, "pretalk": pretalk, "swarm": swarm}[role](opts, stop)
    if role == "reconnect" and isinstance(opts, ReconnectOptions):
        return await reconnect(opts, stop)
    if role == "synflood" and isinstance(opts, FloodOptions):
        return await synflood(opts, stop)
    if role in MATRIX_ROLES:
        from govern_lab import adversaries

        return await adversaries.run(role, opts, stop)
    raise TrafficError(f"role {role!r} does not take {type(opts).__name__}")


def summary_line(doc: dict[str, Any]) -> str:
    """The one line a run prints."""
    role, t = doc["role"], doc["totals"]
    tail = f"{doc['duration']:.1f} s ({doc['stopped_by']})"
    if role in TXN_ROLES:
        rate = "-" if t["success_rate"] is None else f"{100 * t['success_rate']:.1f}%"
        p50 = "-" if t["latency_p50"] is None else f"{1000 * t['latency_p50']:.0f} ms"
        p95 = "-" if t["latency_p95"] is None else f"{1000 * t['latency_p95']:.0f} ms"
        return (
            f"{role}: {t['transactions']} transactions, {t['ok']} ok ({rate}), {t['failed']} failed, {t['cut']} cut; "
            f"p50 {p50}, p95 {p95}; {tail}"
        )
    if role == "synflood":
        sent = f"{t['sent']} SYNs sent ({t['pps_sent']} pps of {t['pps_wanted']:g})"
        return f"synflood: {sent}, {t['errors']} errors; {tail}"
    counts = ", ".join(f"{k} {t[k]}" for k in BOT_FIELDS if k != "bytes_sent")
    return f"{role}: {t['sources']} sources; {counts}; held {t['held_at_end']} (max {t['max_held']}); {tail}"


def write_json(path: str, doc: dict[str, Any]) -> None:
    """Write atomically: the runner may read the file the moment the process is gone."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, separators=(",", ":")))
    os.replace(tmp, p)


async def _main_async(role: str, opts: Common) -> dict[str, Any]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    got: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        got.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    doc = await run(role, opts, stop)
    if got and doc["stopped_by"] == "stopped":
        doc["stopped_by"] = got[0]
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    try:
        opts = options(ns)
        check_common(opts)
        # The last resort if the event loop itself is stuck: SIGALRM's default action ends the process.
        signal.alarm(math.ceil(opts.duration) + 20)
        doc = asyncio.run(_main_async(ns.role, opts))
    except TrafficError as exc:
        print(f"traffic {ns.role}: {exc}", file=sys.stderr)
        return 2
    finally:
        signal.alarm(0)
    if ns.json_out:
        write_json(ns.json_out, doc)
    print(summary_line(doc), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
