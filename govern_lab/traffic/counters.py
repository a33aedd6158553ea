"""What a bot or flood role counts: its per-second fields and the Timeline that keeps them, with the totals."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from govern_lab.traffic.host import failure_reason

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
            self.error_kinds[failure_reason(exc)] += 1

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
