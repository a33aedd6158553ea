"""The connection bots: `hogs` (hold slots silently or dripping), `pretalk` (talk before the banner), `swarm`
(many sources under every per-source limit) and `reconnect` (connect, banner, QUIT, again), with the socket helpers
the adversary matrix's bots share (opening a connection from a source, holding it)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

from govern_lab.addresses import BOT_RANGES
from govern_lab.traffic.counters import BOT_FIELDS, Timeline
from govern_lab.traffic.driver import drive, role_report
from govern_lab.traffic.host import check_namespace, client_socket, raise_nofile
from govern_lab.traffic.options import (
    DEFAULT_COUNT,
    DEFAULT_PER_SOURCE,
    Common,
    HoldOptions,
    ReconnectOptions,
    TrafficError,
)
from govern_lab.traffic.sources import check_common, pair_sources, pick_sources, resolve_sources, spread_sources

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
        sock = await open_socket(src, dst, opts.port, opts.timeout, opts.retry_delay, tl)
        if sock is None:
            continue
        since = time.monotonic()
        with held(sock, tl):
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
def held(sock: socket.socket, tl: Timeline) -> Iterator[None]:
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


async def open_socket(
    src: str, dst: str, port: int, timeout: float, retry_delay: float, tl: Timeline
) -> socket.socket | None:
    """A connected socket from `src`, or None (counted, after waiting `retry_delay`) when it could not connect."""
    try:
        sock = client_socket(src, dst)
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
        sock = await open_socket(src, dst, opts.port, opts.timeout, opts.retry_delay, tl)
        if sock is None:
            continue
        with held(sock, tl):
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


def bot_setup(role: str, opts: Common) -> tuple[list[tuple[str, str]], random.Random]:
    check_common(opts)
    nets = resolve_sources(role, opts, BOT_RANGES)
    rng = random.Random(opts.seed)
    spread = getattr(opts, "spread", None)
    if spread:
        picked = spread_sources(nets, opts.count or DEFAULT_COUNT[role], rng, spread)
    else:
        picked = pick_sources(nets, opts.count, rng, DEFAULT_COUNT[role])
    return pair_sources(picked, opts.dst), rng


async def _hold_role(role: str, opts: HoldOptions, stop: asyncio.Event | None, pretalk: bool) -> dict[str, Any]:
    check_namespace()
    pairs, rng = bot_setup(role, opts)
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

    ending = await drive(opts.duration, stop, body(), tl.freeze)
    events, totals = tl.result()
    totals.update(sources=len(pairs), connections_wanted=len(slots))
    return role_report(role, opts, t0, wall, ending, events, totals)


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
    pairs, _rng = bot_setup("reconnect", opts)
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

    ending = await drive(opts.duration, stop, body(), tl.freeze)
    events, totals = tl.result()
    totals.update(sources=len(pairs))
    return role_report("reconnect", opts, t0, wall, ending, events, totals)
