"""Per-source connection-attempt rates over the last minute, from the kernel's cumulative counters.

Memory matters here (a flood can bring a million sources), so each source holds three numbers, not a history:
the sliding-window estimate of Cloudflare's rate limiter, current minute plus the overlapping share of the
previous one. Its error is bounded by the change of rate across one window and it never under-counts a steady
attacker.
"""

from __future__ import annotations

from collections.abc import Mapping

from govern.addr import Prefix

WINDOW = 60.0


class RateWindow:
    """Turns cumulative per-source counters into per-tick deltas and per-minute rates."""

    __slots__ = ("_buckets", "_last")

    def __init__(self) -> None:
        self._last: dict[Prefix, int] = {}
        # source -> [start of current window, count in current window, count in previous window]
        self._buckets: dict[Prefix, list[float]] = {}

    def update(self, cumulative: Mapping[Prefix, int], now: float) -> dict[Prefix, tuple[int, int]]:
        """Feed this tick's cumulative counts; returns source -> (new since last tick, new over the last minute)."""
        last = self._last
        out: dict[Prefix, tuple[int, int]] = {}
        for p, total in cumulative.items():
            before = last.get(p)
            # A smaller total means the kernel's element expired and was created afresh: all of it is new.
            delta = total if before is None or total < before else total - before
            b = self._buckets.get(p)
            if b is None:
                b = self._buckets[p] = [now, 0.0, 0.0]
            self._roll(b, now)
            b[1] += delta
            out[p] = (delta, self._estimate(b, now))
        self._last = dict(cumulative)
        for p, b in list(self._buckets.items()):
            if p in out:
                continue
            self._roll(b, now)
            if b[1] == 0 and b[2] == 0:
                del self._buckets[p]
            else:
                out[p] = (0, self._estimate(b, now))
        return out

    @staticmethod
    def _roll(b: list[float], now: float) -> None:
        elapsed = now - b[0]
        if elapsed >= 2 * WINDOW:
            b[0], b[1], b[2] = now, 0.0, 0.0
        elif elapsed >= WINDOW:
            b[0], b[2], b[1] = b[0] + WINDOW, b[1], 0.0

    @staticmethod
    def _estimate(b: list[float], now: float) -> int:
        into = min(max(now - b[0], 0.0), WINDOW)
        return round(b[1] + b[2] * (WINDOW - into) / WINDOW)

    def __len__(self) -> int:
        return len(self._buckets)
