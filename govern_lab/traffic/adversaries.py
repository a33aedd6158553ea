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
  after one (smtpd_junk_command_limit), while each RCPT to an accepted domain is a valid command. With --starttls,
  STARTTLS and the TLS handshake follow the first EHLO at once, and the rest (EHLO again, MAIL, RCPT...) goes
  encrypted, each command a TLS record.
- `prove`: each connection holds the dialogue a spam bot holds, at once: EHLO, MAIL FROM, --rcpts RCPT TO (1) and
  DATA, each sent when the last reply is in (the banner and four answers: the kernel's proof), then stays silent in
  DATA until the server closes; reconnects within --reconnect seconds. Proof bought with a real dialogue. With
  --deliver it sends a short message after the 354 (queued: the proof the MTA's log gives), then holds silently; with
  --quit-first as well, each connection slot's first session quits after its message, as a real MTA does (the proof
  govern takes from the log), and only the sessions after it hold.

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

import asyncio
import ipaddress
import math
import random
import socket
import ssl
import string
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from govern_lab.addresses import KNOWN_RELAYS, LEGIT_RANGES
from govern_lab.traffic.analysis import summarise
from govern_lab.traffic.bots import bot_setup, held, open_socket
from govern_lab.traffic.counters import BOT_FIELDS, Timeline
from govern_lab.traffic.driver import drive, role_report
from govern_lab.traffic.host import check_namespace, raise_nofile
from govern_lab.traffic.options import DEFAULT_PER_SOURCE, Common, TrafficError, TxnOptions
from govern_lab.traffic.smtp import Transactions, opportunistic
from govern_lab.traffic.sources import Network, check_common, pair_sources, pick_sources, resolve_sources

BOTS = ("drip", "babble", "slowtalk", "prove")
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
    starttls: bool = False  # EHLO, STARTTLS and the handshake first; each command then a TLS record


@dataclass(frozen=True, kw_only=True)
class ProveOptions(SlowBotOptions):
    reconnect: float = 1.0
    rcpts: int = 1  # RCPT commands before DATA: each is one more positive reply the kernel counts
    deliver: bool = False  # send a short message after the 354 (the MTA queues it: the log's proof), then hold
    quit_first: bool = False  # with deliver: a slot's first session QUITs after its message, the later ones hold


@dataclass(frozen=True, kw_only=True)
class StrangerOptions(TxnOptions):
    """strangers: `count` addresses, each sending 1..`max_messages`, steady over `over` seconds (None: the run)."""

    max_messages: int = 2
    over: float | None = None


BotOptions = DripOptions | BabbleOptions | SlowtalkOptions | ProveOptions


# --- what the roles send, and in what order (pure) ------------------------------------------------------------


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


def prove_commands(rng: random.Random, rcpts: int = 1) -> tuple[bytes, ...]:
    """What a proving bot says, each after the last reply: a spam bot's dialogue up to the message."""
    return (
        b"EHLO prove.bots.lab.test\r\n",
        f"MAIL FROM:<p{rng.randrange(10**6)}@bots.lab.test>\r\n".encode(),
        *(f"RCPT TO:<p{rng.randrange(10**6)}@lab.test>\r\n".encode() for _ in range(rcpts)),
        b"DATA\r\n",
    )


def reply_ends(buf: bytes) -> bool:
    """`buf` holds a whole SMTP reply: a complete line whose code is followed by a space (or nothing), the last line
    of a multi-line reply ("250-..." lines go before it)."""
    lines = buf.split(b"\r\n")[:-1]
    return any(len(line) >= 3 and line[:3].isdigit() and line[3:4] in (b"", b" ") for line in lines)


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
            # The run's end may come as this wait times out, before the task is cancelled: send nothing its report
            # would not count (a CI run's drip test saw the server get one byte more than the report said).
            if tl.frozen:
                return
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


async def _read_reply(sock: socket.socket) -> bool:
    """Until the server has sent a whole reply; False if it closed first."""
    loop = asyncio.get_running_loop()
    buf = b""
    while not reply_ends(buf):
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
    if opts.starttls:
        await _slowtalk_tls(sock, opts, rng, tl)
        return
    await _timed(sock, opts.pause, lambda: opts.gap, slowtalk_commands(rng), tl, commands=True)


class _Tls:
    """TLS over a bot's non-blocking socket (an SSLObject between memory BIOs): the bots run thousands of sockets
    in one event loop without streams."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = opportunistic().wrap_bio(self.incoming, self.outgoing)

    async def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def _fill(self) -> bool:
        data = await asyncio.get_running_loop().sock_recv(self.sock, 16384)
        if not data:
            return False
        self.incoming.write(data)
        return True

    async def handshake(self) -> bool:
        while True:
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    return False
                continue
            await self._flush()
            return True

    async def send(self, data: bytes) -> None:
        self.obj.write(data)
        await self._flush()

    async def recv(self) -> bytes:
        """Some plaintext; b"" once the server closed."""
        while True:
            try:
                return self.obj.read(16384)
            except ssl.SSLWantReadError:
                if not await self._fill():
                    return b""
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""


async def _slowtalk_tls(sock: socket.socket, opts: SlowtalkOptions, rng: random.Random, tl: Timeline) -> None:
    """The slow talker after STARTTLS: EHLO --pause s after the banner, STARTTLS and the handshake at once, then
    EHLO again, MAIL and RCPT after RCPT inside TLS, each --gap s after the last; returns when the server closes."""
    loop = asyncio.get_running_loop()
    if not await _read_reply(sock):
        return
    await asyncio.sleep(opts.pause)
    for command in (b"EHLO slowtalk.bots.lab.test\r\n", b"STARTTLS\r\n"):
        await loop.sock_sendall(sock, command)
        tl.add("bytes_sent", len(command))
        tl.add("commands")
        if not await _read_reply(sock):
            return
    tls = _Tls(sock)
    try:
        if not await tls.handshake():
            return
        due = loop.time()
        for command in slowtalk_commands(rng):
            if tl.frozen:  # the run's end: send nothing the report would not count
                return
            await tls.send(command)
            tl.add("bytes_sent", len(command))
            tl.add("commands")
            due += opts.gap
            while (left := due - loop.time()) > 0:
                try:
                    async with asyncio.timeout(left):
                        if not await tls.recv():
                            return
                except TimeoutError:
                    break
    except (ssl.SSLError, OSError):
        return


async def _prove_session(
    sock: socket.socket, opts: ProveOptions, rng: random.Random, tl: Timeline, *, quit: bool = False
) -> None:
    if not await _read_reply(sock):  # the banner
        return
    loop = asyncio.get_running_loop()
    for command in prove_commands(rng, opts.rcpts):
        await loop.sock_sendall(sock, command)
        tl.add("bytes_sent", len(command))
        tl.add("commands")
        if not await _read_reply(sock):
            return
    if opts.deliver:  # a spam bot's message, queued: the MTA's own word that the source delivered
        message = f"Subject: offer {rng.randrange(10**6)}\r\n\r\nbuy now\r\n.\r\n".encode()
        await loop.sock_sendall(sock, message)
        tl.add("bytes_sent", len(message))
        tl.add("commands")
        if not await _read_reply(sock):
            return
        if quit:  # as a real MTA ends its session: the proof by delivery the log gives
            await loop.sock_sendall(sock, b"QUIT\r\n")
            tl.add("bytes_sent", 6)
            tl.add("commands")
    await _timed(sock, 0.0, lambda: 0.0, iter(()), tl)  # silent (in DATA, or after it) until the server closes


Session = Callable[[socket.socket, Any, random.Random, Timeline], Any]
SESSIONS: dict[str, Session] = {
    "drip": _drip_session,
    "babble": _babble_session,
    "slowtalk": _slowtalk_session,
    "prove": _prove_session,
}


async def _slot(
    src: str, dst: str, role: str, opts: BotOptions, tl: Timeline, delay: float, rng: random.Random
) -> None:
    """One connection slot of a bot: open, run the role's session until the server closes, wait up to `reconnect`
    seconds, open again."""
    await asyncio.sleep(delay)
    session = SESSIONS[role]
    reconnects = -1
    while True:
        reconnects += 1
        if reconnects:
            tl.add("reconnects")
        sock = await open_socket(src, dst, opts.port, opts.timeout, rng.uniform(0.05, opts.reconnect), tl)
        if sock is None:
            continue
        with held(sock, tl):
            if isinstance(opts, ProveOptions) and opts.quit_first and opts.deliver and reconnects == 0:
                await _prove_session(sock, opts, rng, tl, quit=True)
            else:
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
    if isinstance(opts, ProveOptions) and opts.quit_first and not opts.deliver:
        raise TrafficError("--quit-first needs --deliver (it quits after the message)")


async def bot(role: str, opts: BotOptions, stop: asyncio.Event | None = None) -> dict[str, Any]:
    """Run a bot role of this module to its end; its report."""
    check_namespace()
    check_bot(role, opts)
    pairs, rng = bot_setup(role, opts)
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

    ending = await drive(opts.duration, stop, body(), tl.freeze)
    events, totals = tl.result()
    totals.update(sources=len(pairs), connections_wanted=len(slots))
    return role_report(role, opts, t0, wall, ending, events, totals)


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

    ending = await drive(opts.duration, stop, body(), lambda: None)
    return role_report(role, opts, t0, wall, ending, txns.events, summarise(txns.events))


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


async def run(role: str, opts: Common, stop: asyncio.Event | None = None) -> dict[str, Any]:
    """Run one of this module's roles to its end and return its report."""
    if role in BOTS and isinstance(opts, DripOptions | BabbleOptions | SlowtalkOptions | ProveOptions):
        return await bot(role, opts, stop)
    if role == "strangers" and isinstance(opts, StrangerOptions):
        return await strangers(opts, stop)
    if role == "slowlegit" and isinstance(opts, TxnOptions):
        return await slowlegit(opts, stop)
    raise TrafficError(f"role {role!r} does not take {type(opts).__name__}")
