"""Reading transactions, pure: the summary of a run (success rate, latency percentiles, failures by stage and
reason) and the rolling success ratio the scenario runner measures recovery by."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any


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
