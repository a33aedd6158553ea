"""The legitimate roles: `legit` (a busy relay's transactions at a steady rate from a few addresses) and
`trusted` (the trusted relay, up to `parallel` sessions at once)."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from typing import Any

from govern_lab.addresses import CLIENT_RANGES, TRUSTED_RANGES
from govern_lab.traffic.analysis import summarise
from govern_lab.traffic.driver import drive, role_report
from govern_lab.traffic.host import check_namespace, raise_nofile
from govern_lab.traffic.options import DEFAULT_COUNT, TrafficError, TxnOptions
from govern_lab.traffic.smtp import Transactions
from govern_lab.traffic.sources import check_common, pair_sources, pick_sources, resolve_sources


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

    ending = await drive(opts.duration, stop, body(), lambda: None)
    return role_report("legit", opts, t0, wall, ending, txns.events, summarise(txns.events))


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

    ending = await drive(opts.duration, stop, body(), lambda: None)
    return role_report("trusted", opts, t0, wall, ending, txns.events, summarise(txns.events))
