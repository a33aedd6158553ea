"""Running a role to its end: its body until it finishes, its duration passes or it is told to stop, and the JSON
report every role writes."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

from govern_lab.traffic.options import Common


async def drive(
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


def role_report(
    role: str,
    opts: Common,
    t0: float,
    wall: float,
    ending: tuple[str, float],
    events: list[Any],
    totals: dict[str, Any],
) -> dict[str, Any]:
    """A role's JSON report (govern_lab.traffic's docstring describes it); `ending` is what `drive` returned."""
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
