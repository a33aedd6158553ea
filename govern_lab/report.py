"""What a lab scenario reports: the figures operators compare (JSON and a table) and the PNG timeline they look
at first. Everything here is computed from recorded samples and transactions; nothing here touches the lab."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One second of the MX as seen from outside govern (sock_diag and the nft CLI, run by the lab)."""

    t: float  # seconds since the scenario started
    sessions: int  # established sockets on port 25 in the MX namespace
    queued: int  # connections waiting in the listeners' accept queues
    blocked: int  # elements in govern's block sets (0 without govern)
    throttled: int
    govern_cpu: float = 0.0  # percent of one core since the previous sample
    govern_rss: int = 0  # bytes
    mode: str = ""  # govern's mode (normal, elevated, wave); empty without govern
    bot_sessions: int = 0  # established sockets on port 25 whose peer is in the bot ranges
    # Of those, the ones whose peer is not in govern's proven sets as last read (-1: no govern to ask): what the
    # slot budget caps (a source that delivered a message the MTA logged is trusted, and no longer counted).
    unproven_bot_sessions: int = -1


@dataclass
class Result:
    scenario: str
    duration: float
    flood_start: float | None
    flood_end: float | None
    legit: dict[str, Any]  # summary of legitimate transactions during the flood window (whole run for baseline)
    trusted: dict[str, Any]
    time_to_mitigate: float | None  # seconds from flood start until rolling legit success is back >= 90%
    trusted_in_govern_sets: bool
    legit_in_govern_sets: list[str]  # legitimate senders govern throttled or blocked (should stay empty)
    sources_blocked: int  # the most elements govern's block sets held at once (an aggregated /24 is one)
    peak_sessions: int
    counters: dict[str, int]  # TcpExt deltas in the MX namespace over the run
    govern_cpu_percent: float | None
    govern_rss_max: int | None
    rolling: list[tuple[float, float]] = field(default_factory=list)  # (t, legit success ratio)
    samples: list[Sample] = field(default_factory=list)
    bots: dict[str, Any] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)  # every element ever seen in govern's block sets

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps(data, indent=2)


def time_to_mitigate(
    rolling: Sequence[tuple[float, float]], flood_start: float, threshold: float = 0.9
) -> float | None:
    """Seconds from the flood's start until rolling success is back at or above `threshold`.

    0.0 when it never fell below the threshold; None when it fell and never came back.
    """
    after = [(t, r) for t, r in rolling if t >= flood_start]
    dip = next((i for i, (_t, r) in enumerate(after) if r < threshold), None)
    if dip is None:
        return 0.0
    back = next((t for t, r in after[dip:] if r >= threshold), None)
    return None if back is None else back - flood_start


def time_to_stay(
    rolling: Sequence[tuple[float, float]], start: float, end: float, threshold: float = 0.9
) -> float | None:
    """Seconds from `start` until rolling success is at or above `threshold` and stays there up to `end`.

    0.0 when it never fell below the threshold in [start, end]; None when its last point there is below it. Unlike
    time_to_mitigate, a recovery that falls back counts from the last dip, not the first return.
    """
    inside = [(t, r) for t, r in rolling if start <= t <= end]
    last_dip = next((i for i in range(len(inside) - 1, -1, -1) if inside[i][1] < threshold), None)
    if last_dip is None:
        return 0.0
    if last_dip == len(inside) - 1:
        return None
    return inside[last_dip + 1][0] - start


def summarise(transactions: Sequence[dict[str, Any]], start: float = 0.0, end: float = float("inf")) -> dict[str, Any]:
    """Success rate and latency of transactions that started within [start, end).

    Transactions still running when their generator stopped ("cut") have no outcome and are left out.
    """
    txs = [x for x in transactions if start <= x["t_start"] < end and not x.get("cut")]
    ok = [x for x in txs if x["ok"]]
    lat = sorted(x["latency"] for x in ok)
    reasons: dict[str, int] = {}
    for x in txs:
        if not x["ok"]:
            why = f"{x.get('stage', '?')}: {x.get('reason') or 'failed'}"
            reasons[why] = reasons.get(why, 0) + 1
    return {
        "attempted": len(txs),
        "delivered": len(ok),
        "success": round(len(ok) / len(txs), 4) if txs else None,
        "latency_p50": round(statistics.median(lat), 3) if lat else None,
        "latency_p95": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 3) if lat else None,
        "failures": reasons,
    }


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}s"


def table(results: Sequence[Result]) -> str:
    """The side-by-side table of scenarios an operator reads."""
    rows: list[tuple[str, Callable[[Result], str]]] = [
        ("legit delivered", lambda r: _pct(r.legit.get("success"))),
        ("legit attempted", lambda r: str(r.legit.get("attempted"))),
        ("latency p50", lambda r: _s(r.legit.get("latency_p50"))),
        ("latency p95", lambda r: _s(r.legit.get("latency_p95"))),
        ("time to mitigate", lambda r: "-" if r.flood_start is None else (
            "never" if r.time_to_mitigate is None else f"{r.time_to_mitigate:.1f}s")),
        ("trusted delivered", lambda r: _pct(r.trusted.get("success"))),
        ("trusted in a govern set", lambda r: "yes" if r.trusted_in_govern_sets else "no"),
        ("legit senders in a govern set", lambda r: str(len(r.legit_in_govern_sets))),
        ("sources blocked", lambda r: str(r.sources_blocked)),
        ("peak SMTP sessions", lambda r: str(r.peak_sessions)),
        ("ListenOverflows", lambda r: str(r.counters.get("ListenOverflows", 0))),
        ("ListenDrops", lambda r: str(r.counters.get("ListenDrops", 0))),
        ("govern CPU", lambda r: "-" if r.govern_cpu_percent is None else f"{r.govern_cpu_percent:.1f}%"),
        ("govern RSS max", lambda r: "-" if r.govern_rss_max is None else f"{r.govern_rss_max / 2**20:.0f} MiB"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    cols = [max(14, len(r.scenario)) for r in results]
    head = " " * width + "  " + "  ".join(r.scenario.rjust(c) for r, c in zip(results, cols, strict=True))
    lines = [head]
    for name, get in rows:
        lines.append(name.ljust(width) + "  " + "  ".join(get(r).rjust(c) for r, c in zip(results, cols, strict=True)))
    return "\n".join(lines)


def plot(result: Result, path: str) -> None:
    """A PNG timeline: SMTP sessions and queue, govern's blocks, and legitimate success, over the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t for s in result.samples]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    ax1.plot(t, [s.sessions for s in result.samples], label="established SMTP sessions", color="tab:blue")
    ax1.plot(t, [s.queued for s in result.samples], label="accept queue", color="tab:orange")
    if any(s.bot_sessions for s in result.samples):
        ax1.plot(t, [s.bot_sessions for s in result.samples], label="held by bot-range sources", color="tab:red")
    ax1.set_ylabel("sockets")
    ax1.legend(loc="upper left")
    ax2.plot(t, [s.blocked for s in result.samples], label="blocked sources", color="tab:red")
    ax2.plot(t, [s.throttled for s in result.samples], label="throttled sources", color="tab:purple")
    # Each sample's mode from its time to the next sample's (the last: a second): spans that overlapped, with
    # samples four times a second, stacked their shades into bands the mode never had.
    samples = result.samples
    for i, s in enumerate(samples):
        shade = {"wave": 0.18, "elevated": 0.08}.get(s.mode)
        if shade:
            end = samples[i + 1].t if i + 1 < len(samples) else s.t + 1.0
            ax2.axvspan(s.t, end, color="tab:blue", alpha=shade, linewidth=0)
    if any(s.mode == "wave" for s in result.samples):
        ax2.text(
            0.99,
            0.95,
            "shaded: govern's wave (dark) / elevated (light) mode",
            transform=ax2.transAxes,
            ha="right",
            va="top",
            fontsize=8,
        )
    ax2.set_ylabel("govern sets")
    ax2.legend(loc="upper left")
    if result.rolling:
        ax3.plot([x for x, _ in result.rolling], [100 * y for _, y in result.rolling], color="tab:green")
    ax3.axhline(90, color="grey", linestyle=":", linewidth=1)
    ax3.set_ylim(-5, 105)
    ax3.set_ylabel("legit success % (rolling)")
    ax3.set_xlabel("seconds")
    for ax in (ax1, ax2, ax3):
        if result.flood_start is not None:
            end = result.flood_end if result.flood_end is not None else (t[-1] if t else result.flood_start)
            ax.axvspan(result.flood_start, end, color="red", alpha=0.07)
        ax.grid(alpha=0.3)
    ttm = result.time_to_mitigate
    title = f"{result.scenario}: legit {_pct(result.legit.get('success'))} delivered"
    if result.flood_start is not None:
        title += ", time to mitigate " + ("never" if ttm is None else f"{ttm:.1f}s")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
