"""The adversary matrix's traffic roles (govern_lab.matrix): bots govern was not tuned for, and the legitimate
senders a flood must not hurt. They run like the other roles, one process each inside a lab namespace
(`python -m govern_lab.traffic ROLE ...`), bounded in count and time, and write the same JSON report.

Bots (bot ranges only; per second BOT_FIELDS plus "commands"; "held" is the connections open):
- `drip`: each source holds --per-source connections; each sends one byte of printable junk every --drip seconds
  (never a CR or LF, so never a command line; at most --max-bytes per connection, then silence), and reconnects within
  --reconnect seconds of a close or reset.
- `babble`: each connection reads the first line the server sends, then sends --bytes of printable junk without a
  line end (never a command), then holds silently until closed; reconnects within --reconnect seconds.
- `slowtalk`: each connection waits --pause seconds, sends EHLO, then MAIL FROM and one RCPT TO after another, each
  --gap seconds after the last (just inside Postfix's stress-mode smtpd_timeout of 10 s); reconnects after a close.
  It uses RCPT rather than NOOP: under stress Postfix counts NOOP, RSET and VRFY as junk commands and disconnects
  after one (smtpd_junk_command_limit), while each RCPT to an accepted domain is a valid command.

Legitimate senders (one event per SMTP transaction, like `legit`):
- `strangers`: --count never-seen addresses (default 300 of 198.51.100.128/25 and 2001:db8:51:100::/56, away from
  the known relays of 198.51.100.0/28 and 2001:db8:51::/64), each sending one or two messages of 2-60 KiB, in a
  random order at one steady aggregate rate over --over seconds (default the whole run). Real MTA timeouts, as
  Postfix's smtp client has them: connect 30 s, banner and each reply 300 s; a transaction still waiting when the
  run ends is reported as cut.
- `slowlegit`: one sender whose MTA is slow and patient: a new transaction every --interval seconds, a --pause
  (1.5 s) before every command it sends, up to 300 s for each reply.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import math
import random
import socket
import string
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from govern_lab.addresses import KNOWN_RELAYS, LEGIT_RANGES
from govern_lab.traffic import (
    BOT_FIELDS,
    DEFAULT_PER_SOURCE,
    Common,
    Network,
    Timeline,
    TrafficError,
    Transactions,
    TxnOptions,
    _bot_setup,
    _drive,
    _held,
    _open,
    _positive,
    _report,
    add_size,
    add_spread,
    check_common,
    check_namespace,
    host_span,
    pair_sources,
    pick_sources,
    raise_nofile,
    resolve_sources,
    summarise,
)

BOTS = ("drip", "babble", "slowtalk")
SENDERS = ("strangers", "slowlegit")
ROLES = BOTS + SENDERS
ADV_FIELDS = (*BOT_FIELDS, "commands")
# Printable junk: never a CR or an LF, so the server never sees a command line end.
JUNK = (string.ascii_letters + string.digits).encode()


# --- options --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SlowBotOptions(Common):
    """What every bot of this module takes: --per-source connections per source, each opened again within
    `reconnect` seconds of a close, reset or failed connect."""

    per_source: int | None = None
    reconnect: float = 2.0
    ramp: float = 5.0  # connection starts are spread over this many seconds
    timeout: float = 10.0  # connect
    spread: int | None = None  # each source from a /spread subnet of its own


@dataclass(frozen=True, kw_only=True)
class DripOptions(SlowBotOptions):
    drip: float = 5.0  # seconds between bytes
    max_bytes: int = 1000  # per connection (well under smtpd's 2,048-byte line limit), then silent


@dataclass(frozen=True, kw_only=True)
class BabbleOptions(SlowBotOptions):
    bytes: int = 300
    reconnect: float = 1.0


@dataclass(frozen=True, kw_only=True)
class SlowtalkOptions(SlowBotOptions):
    pause: float = 20.0  # before EHLO
    gap: float = 8.0  # between commands


@dataclass(frozen=True, kw_only=True)
class StrangerOptions(TxnOptions):
    """strangers: `count` addresses, each sending 1..`max_messages`, steady over `over` seconds (None: the run)."""

    max_messages: int = 2
    over: float | None = None


BotOptions = DripOptions | BabbleOptions | SlowtalkOptions


# --- addresses (pure) -----------------------------------------------------------------------------------------


def spread_sources(nets: Sequence[Network], count: int, rng: random.Random, length: int) -> list[str]:
    """`count` host addresses, each in a /`length` subnet of its own, spread evenly over `nets` (whose prefixes must be
    at most `length` long): a swarm over many /64s of one /48 rather than random addresses, which may share one."""
    if not nets:
        raise TrafficError("no source prefixes")
    if count < 1:
        raise TrafficError("--count must be at least 1")
    caps = []
    for n in nets:
        if not n.prefixlen <= length <= n.max_prefixlen:
            raise TrafficError(f"--spread {length} does not fit {n} (it must be /{n.prefixlen}..{n.max_prefixlen})")
        caps.append(1 << (length - n.prefixlen))
    if count > sum(caps):
        raise TrafficError(f"--count {count} is more than the {sum(caps)} /{length} subnets of --sources")
    share, extra = divmod(count, len(nets))
    alloc = [min(cap, share + (1 if i < extra else 0)) for i, cap in enumerate(caps)]
    short = count - sum(alloc)
    for i, cap in enumerate(caps):
        more = min(short, cap - alloc[i])
        alloc[i] += more
        short -= more
    out: list[str] = []
    for n, cap, want in zip(nets, caps, alloc, strict=True):
        subnets = rng.sample(range(cap), want) if cap < 2**62 else _distinct(rng, cap, want)
        step = 1 << (n.max_prefixlen - length)
        base = int(n.network_address)
        cls = ipaddress.IPv4Network if n.version == 4 else ipaddress.IPv6Network
        for k in sorted(subnets):
            sub = cls((base + k * step, length))
            first, size = host_span(sub)
            out.append(str(ipaddress.ip_address(first + rng.randrange(size))))
    return out


def _distinct(rng: random.Random, size: int, want: int) -> list[int]:
    chosen: set[int] = set()
    while len(chosen) < want:
        chosen.add(rng.randrange(size))
    return list(chosen)


def stranger_schedule(sources: Sequence[str], max_messages: int, rng: random.Random) -> list[str]:
    """Which address sends each message, in order: every address 1..max_messages times, shuffled."""
    if max_messages < 1:
        raise TrafficError("--max-messages must be at least 1")
    order = [s for s in sources for _ in range(rng.randint(1, max_messages))]
    rng.shuffle(order)
    return order


def junk(rng: random.Random, n: int) -> bytes:
    """`n` bytes of printable junk without a line end."""
    return bytes(rng.choice(JUNK) for _ in range(n))


def slowtalk_commands(rng: random.Random) -> Iterator[bytes]:
    """What a slow talker says, one command at a time: EHLO, MAIL FROM, then RCPT TO after RCPT TO."""
    yield b"EHLO slowtalk.bots.lab.test\r\n"
    yield f"MAIL FROM:<slow{rng.randrange(10**6)}@bots.lab.test>\r\n".encode()
    for k in range(1, 10**6):
        yield f"RCPT TO:<slow{k}@lab.test>\r\n".encode()


# --- bots -----------------------------------------------------------------------------------------------------


async def _timed(
    sock: socket.socket,
    first: float,
    next_gap: Callable[[], float],
    sends: Iterator[bytes],
    tl: Timeline,
    commands: bool = False,
) -> None:
    """Send each of `sends`, the first `first` seconds after the start and each next `next_gap()` after the last,
    reading and discarding whatever the server says meanwhile; return when the server closes. When `sends` runs
    out, stay silent until then."""
    loop = asyncio.get_running_loop()
    due: float | None = loop.time() + first
    while True:
        try:
            async with asyncio.timeout_at(due):
                data = await loop.sock_recv(sock, 4096)
        except TimeoutError:
            chunk = next(sends, None)
            if chunk is None:
                due = None
                continue
            await loop.sock_sendall(sock, chunk)
            tl.add("bytes_sent", len(chunk))
            if commands:
                tl.add("commands")
            assert due is not None
            due += next_gap()
            continue
        if not data:
            return


async def _read_line(sock: socket.socket) -> bool:
    """Until the server has sent a line end (a banner, or its first line); False if it closed first."""
    loop = asyncio.get_running_loop()
    buf = b""
    while b"\n" not in buf:
        data = await loop.sock_recv(sock, 4096)
        if not data:
            return False
        buf += data
    return True


async def _drip_session(sock: socket.socket, opts: DripOptions, rng: random.Random, tl: Timeline) -> None:
    def gap() -> float:
        return opts.drip * rng.uniform(0.9, 1.1)

    sends = (junk(rng, 1) for _ in range(opts.max_bytes))
    await _timed(sock, gap(), gap, sends, tl)


async def _babble_session(sock: socket.socket, opts: BabbleOptions, rng: random.Random, tl: Timeline) -> None:
    if not await _read_line(sock):
        return
    await _timed(sock, 0.0, lambda: 0.0, iter([junk(rng, opts.bytes)]), tl)


async def _slowtalk_session(sock: socket.socket, opts: SlowtalkOptions, rng: random.Random, tl: Timeline) -> None:
    await _timed(sock, opts.pause, lambda: opts.gap, slowtalk_commands(rng), tl, commands=True)


Session = Callable[[socket.socket, Any, random.Random, Timeline], Any]
SESSIONS: dict[str, Session] = {"drip": _drip_session, "babble": _babble_session, "slowtalk": _slowtalk_session}


async def _slot(
    src: str, dst: str, role: str, opts: BotOptions, tl: Timeline, delay: float, rng: random.Random
) -> None:
    """One connection slot of a bot: open, run the role's session until the server closes, wait up to `reconnect`
    seconds, open again."""
    await asyncio.sleep(delay)
    session = SESSIONS[role]
    first = True
    while True:
        if not first:
            tl.add("reconnects")
        first = False
        sock = await _open(src, dst, opts.port, opts.timeout, rng.uniform(0.05, opts.reconnect), tl)
        if sock is None:
            continue
        with _held(sock, tl):
            await session(sock, opts, rng, tl)
            tl.add("dropped")
        await asyncio.sleep(rng.uniform(0.05, opts.reconnect))


def check_bot(role: str, opts: BotOptions) -> None:
    check_common(opts)
    if opts.per_source is not None and opts.per_source < 1:
        raise TrafficError("--per-source must be at least 1")
    if opts.reconnect <= 0 or opts.ramp < 0 or opts.timeout <= 0:
        raise TrafficError("--reconnect and --timeout must be positive, --ramp not negative")
    if isinstance(opts, DripOptions) and not (opts.drip > 0 and opts.max_bytes >= 0):
        raise TrafficError("--drip must be positive, --max-bytes not negative")
    if isinstance(opts, BabbleOptions) and not 1 <= opts.bytes <= 1900:
        raise TrafficError("--bytes must be 1..1900 (a line stays under smtpd's 2,048-byte limit)")
    if isinstance(opts, SlowtalkOptions) and not (opts.pause >= 0 and opts.gap > 0):
        raise TrafficError("--pause must not be negative, --gap must be positive")


async def bot(role: str, opts: BotOptions, stop: asyncio.Event | None = None) -> dict[str, Any]:
    """Run a bot role of this module to its end; its report."""
    check_namespace()
    check_bot(role, opts)
    pairs, rng = _bot_setup(role, opts)
    per = opts.per_source if opts.per_source is not None else DEFAULT_PER_SOURCE[role]
    slots = [(s, d) for s, d in pairs for _ in range(per)]
    raise_nofile(len(slots) + 64)
    t0, wall = time.monotonic(), time.time()
    tl = Timeline(ADV_FIELDS, t0, opts.duration)

    async def body() -> None:
        async with asyncio.TaskGroup() as tg:
            for i, (src, dst) in enumerate(slots):
                delay = opts.ramp * i / len(slots)
                tg.create_task(_slot(src, dst, role, opts, tl, delay, random.Random(rng.random())))

    ending = await _drive(opts.duration, stop, body(), tl.freeze)
    events, totals = tl.result()
    totals.update(sources=len(pairs), connections_wanted=len(slots))
    return _report(role, opts, t0, wall, ending, events, totals)


# --- legitimate senders ---------------------------------------------------------------------------------------


def _check_txn(opts: TxnOptions) -> None:
    check_common(opts)
    for name, v in (("timeout", opts.timeout), ("cmd-timeout", opts.cmd_timeout), ("txn-timeout", opts.txn_timeout)):
        if v <= 0:
            raise TrafficError(f"--{name} must be positive")
    if (opts.banner_timeout is not None and opts.banner_timeout <= 0) or opts.pause < 0:
        raise TrafficError("--banner-timeout must be positive, --pause not negative")


def stranger_sources(opts: StrangerOptions) -> tuple[Network, ...]:
    """The strangers' prefixes: inside the legitimate ranges, never overlapping the known relays'."""
    nets = resolve_sources("strangers", opts, LEGIT_RANGES)
    for n in nets:
        for k in KNOWN_RELAYS:
            known = ipaddress.ip_network(k)
            if n.version == known.version and n.overlaps(known):
                raise TrafficError(f"--sources {n} overlaps the known relays' {known}: strangers are never seen")
    return nets


async def _scheduled(
    role: str, opts: TxnOptions, plan: Sequence[tuple[float, str, str]], stop: asyncio.Event | None
) -> dict[str, Any]:
    """Transactions started at their planned offsets (seconds), each on its own, until the plan or the run ends."""
    raise_nofile(len(plan) + 64)
    t0, wall = time.monotonic(), time.time()
    txns = Transactions(role, opts, t0)

    async def body() -> None:
        async with asyncio.TaskGroup() as tg:
            for n, (at, src, dst) in enumerate(plan):
                if at >= opts.duration:
                    break
                await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
                tg.create_task(txns.one(n, src, dst))

    ending = await _drive(opts.duration, stop, body(), lambda: None)
    return _report(role, opts, t0, wall, ending, txns.events, summarise(txns.events))


async def strangers(opts: StrangerOptions, stop: asyncio.Event | None = None) -> dict[str, Any]:
    """Never-seen senders: each of `count` addresses sends one or two messages, at one steady aggregate rate."""
    check_namespace()
    _check_txn(opts)
    nets = stranger_sources(opts)
    rng = random.Random(opts.seed)
    sources = pick_sources(nets, opts.count, rng, 300)
    order = stranger_schedule(sources, opts.max_messages, rng)
    over = opts.duration if opts.over is None else min(opts.over, opts.duration)
    if over <= 0:
        raise TrafficError("--over must be positive")
    step = over / len(order)
    pairs = pair_sources(order, opts.dst)
    return await _scheduled("strangers", opts, [(k * step, s, d) for k, (s, d) in enumerate(pairs)], stop)


async def slowlegit(opts: TxnOptions, stop: asyncio.Event | None = None) -> dict[str, Any]:
    """One slow, patient sender: a transaction every 1/rate seconds, pausing before each command."""
    check_namespace()
    _check_txn(opts)
    nets = resolve_sources("slowlegit", opts, LEGIT_RANGES)
    rng = random.Random(opts.seed)
    pairs = pair_sources(pick_sources(nets, opts.count, rng, 1), opts.dst)
    rate = opts.rate or 0.1
    n = math.ceil(opts.duration * rate)
    return await _scheduled("slowlegit", opts, [(k / rate, *pairs[k % len(pairs)]) for k in range(n)], stop)


# --- command line ---------------------------------------------------------------------------------------------

RoleAdder = Callable[[str, str], argparse.ArgumentParser]


def add_parsers(role: RoleAdder) -> None:
    """This module's roles on traffic's command line (`role` makes a subparser with the common options)."""
    texts = {
        "drip": "slow drippers: per source several connections, one junk byte every --drip s, never a line end",
        "babble": "babblers: after the first line from the server, --bytes of junk without a line end, then silence",
        "slowtalk": "slow talkers: EHLO after --pause s, then MAIL and RCPT after RCPT, each --gap s after the last",
    }
    for name in BOTS:
        p = role(name, texts[name])
        p.add_argument("--per-source", type=int, default=DEFAULT_PER_SOURCE[name], help="connections per source")
        p.add_argument(
            "--reconnect",
            type=_positive,
            default=1.0 if name == "babble" else 2.0,
            help="reconnect within this many seconds of a close, reset or failed connect",
        )
        p.add_argument("--ramp", type=float, default=5.0, help="spread the opening over this many seconds")
        p.add_argument("--timeout", type=_positive, default=10.0, help="connect timeout (s)")
        add_spread(p)
        if name == "drip":
            p.add_argument("--drip", type=_positive, default=5.0, help="seconds between bytes")
            p.add_argument("--max-bytes", type=int, default=1000, help="bytes per connection, then silence")
        elif name == "babble":
            p.add_argument("--bytes", type=int, default=300, help="junk bytes sent once per connection")
        else:
            p.add_argument("--pause", type=float, default=20.0, help="seconds before EHLO")
            p.add_argument("--gap", type=_positive, default=8.0, help="seconds between commands")

    p = role("strangers", "never-seen senders: one or two messages each, at one steady aggregate rate")
    p.add_argument("--max-messages", type=int, default=2, help="messages per address, at most (1..N each)")
    p.add_argument("--over", type=_positive, help="spread every message over this many seconds (default: the run)")
    _real_mta(p)
    p = role("slowlegit", "one slow, patient sender: a pause before every command, long reply timeouts")
    p.add_argument("--rate", type=_positive, default=0.1, help="new transactions per second")
    p.add_argument("--pause", type=float, default=1.5, help="seconds before every command")
    _real_mta(p)


def _real_mta(p: argparse.ArgumentParser) -> None:
    """Postfix's smtp client timeouts (smtp_connect_timeout, smtp_helo_timeout, smtp_*_timeout)."""
    add_size(p, (2.0, 60.0))
    p.add_argument("--timeout", type=_positive, default=30.0, help="connect timeout (s)")
    p.add_argument("--banner-timeout", type=_positive, default=300.0, help="wait for the banner (s)")
    p.add_argument("--cmd-timeout", type=_positive, default=300.0, help="wait for each reply (s)")
    p.add_argument("--txn-timeout", type=_positive, default=3600.0, help="bound on a whole transaction (s)")


def options(role: str, ns: argparse.Namespace, common: dict[str, Any]) -> Common:
    """A role's options from parsed arguments (`common` holds what every role takes)."""
    if role in BOTS:
        bot_common = {
            **common,
            "per_source": ns.per_source,
            "reconnect": ns.reconnect,
            "ramp": ns.ramp,
            "timeout": ns.timeout,
            "spread": ns.spread,
        }
        if role == "drip":
            return DripOptions(**bot_common, drip=ns.drip, max_bytes=ns.max_bytes)
        if role == "babble":
            return BabbleOptions(**bot_common, bytes=ns.bytes)
        return SlowtalkOptions(**bot_common, pause=ns.pause, gap=ns.gap)
    txn = {
        **common,
        "size_kb": ns.size,
        "timeout": ns.timeout,
        "banner_timeout": ns.banner_timeout,
        "cmd_timeout": ns.cmd_timeout,
        "txn_timeout": ns.txn_timeout,
    }
    if role == "strangers":
        return StrangerOptions(**txn, max_messages=ns.max_messages, over=ns.over)
    if role == "slowlegit":
        return TxnOptions(**txn, rate=ns.rate, pause=ns.pause)
    raise TrafficError(f"unknown role {role!r}")


async def run(role: str, opts: Common, stop: asyncio.Event | None = None) -> dict[str, Any]:
    """Run one of this module's roles to its end and return its report."""
    if role in BOTS and isinstance(opts, DripOptions | BabbleOptions | SlowtalkOptions):
        return await bot(role, opts, stop)
    if role == "strangers" and isinstance(opts, StrangerOptions):
        return await strangers(opts, stop)
    if role == "slowlegit" and isinstance(opts, TxnOptions):
        return await slowlegit(opts, stop)
    raise TrafficError(f"role {role!r} does not take {type(opts).__name__}")
