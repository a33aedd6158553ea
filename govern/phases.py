"""Where a tick's time goes: the wall-clock seconds of each phase of the last tick, and their totals since start
(`govern status`'s tick line, `govern_tick_phase_seconds_total`), so an operator sees which part of the daemon's
cost grows with the load (docs/benchmarks.md measures the same parts)."""

from __future__ import annotations

import time

# The phases, in the order a tick runs them (docs/metrics.md lists what each holds).
PHASES = ("upkeep", "fleet", "scan", "counts", "sources", "netstat", "learn", "decide", "act", "maintain")


class PhaseClock:
    """Laps of one tick: `start` it, then `lap(phase)` at the end of each phase; a phase lapped twice adds up."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self.total: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self._t = 0.0

    def start(self) -> None:
        self.last = {}
        self._t = time.perf_counter()

    def lap(self, phase: str) -> None:
        t = time.perf_counter()
        took = t - self._t
        self._t = t
        self.last[phase] = self.last.get(phase, 0.0) + took
        self.total[phase] = self.total.get(phase, 0.0) + took
