"""What the fleet scenario reports (docs/lab.md, "Fleet: the second MX spared"): each MX's figures over its own
flood (MxFigures), a run's two MXs (FleetResult), the side-by-side markdown table of both runs, and the PNG timeline
of mx2 alone and sharing. Pure, like govern_lab.report: computed from recorded samples, transactions and the sets
read at the flood's arrival; nothing here touches the lab."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from govern.addr import Prefix, PrefixSet
from govern_lab.report import Sample, summarise, time_to_mitigate, time_to_stay


@dataclass
class MxFigures:
    """One MX over its own flood window [flood_start, flood_end) of a run."""

    mx: str  # "mx1" or "mx2"
    flood_start: float
    flood_end: float
    legit: dict[str, Any]  # report.summarise of the legitimate transactions started during its flood
    trusted: dict[str, Any]
    time_to_mitigate: float | None  # report.time_to_mitigate from its flood's start
    time_to_stay: float | None  # until rolling legitimate success is >= 90% for good (to its flood's end)
    bot_sessions_peak: int  # established port-25 sockets of bot-range peers, once a second during its flood
    bot_sessions_mean: float
    smtpd_busy_peak: int  # sessions smtpd took from the accept queue (established minus queued): busy smtpd processes
    smtpd_busy_mean: float
    bot_sources: int  # the flood's source addresses (the same on both MXs)
    blocked_on_arrival: int  # of them, covered by this MX's nftables block sets when its flood began
    sources_on_arrival: list[str]  # which
    arrival_origins: dict[str, int]  # those, by the host that decided the covering block ("own" for this one)
    blocked_at_end: int  # of them, covered by its block sets when its flood ended
    fleet_applied: int | None  # blocks this MX applied from the fleet over the run (None: no fleet)
    blocks_by_reason: dict[str, int]  # `govern status --json` at the run's end
    samples: list[Sample] = field(default_factory=list)
    rolling: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class FleetResult:
    run: str  # "alone" (no [fleet]) or "sharing"
    mx1: MxFigures
    mx2: MxFigures
    plan: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def covered(sources: Sequence[str], blocks: Sequence[str]) -> list[str]:
    """The sources (addresses) that one of `blocks` (nftables set elements: addresses or prefixes) covers."""
    held = PrefixSet(Prefix.parse(b) for b in blocks)
    return [s for s in sources if held.covers(Prefix.parse(s))]


def origins(sources: Sequence[str], entries: Sequence[dict[str, Any]]) -> dict[str, int]:
    """How many of `sources` each host's blocks cover, from `govern list --json` entries ("from": the fleet host
    that decided it, "" for this host's own, shown as "own"); a source under blocks of two hosts counts once, for
    the first entry listed."""
    blocks = [(Prefix.parse(e["prefix"]), e.get("from") or "own") for e in entries if e.get("kind") == "block"]
    out: dict[str, int] = {}
    for s in sources:
        addr = Prefix.parse(s)
        who = next((w for p, w in blocks if p.contains(addr)), None)
        if who is not None:
            out[who] = out.get(who, 0) + 1
    return out


def figures(
    mx: str,
    flood: tuple[float, float],
    legit: Sequence[dict[str, Any]],
    trusted: Sequence[dict[str, Any]],
    rolling: list[tuple[float, float]],
    samples: list[Sample],
    arrival: tuple[list[str], dict[str, int], int],
    bot_sources: int,
    status: dict[str, Any] | None,
) -> MxFigures:
    """An MX's figures over `flood`; `arrival`: (the bot sources blocked when it began, by whose decision, how many
    were blocked at its end)."""
    start, end = flood
    during = [s for s in samples if start <= s.t < end]
    bots = [s.bot_sessions for s in during]
    busy = [max(0, s.sessions - s.queued) for s in during]
    fleet = (status or {}).get("fleet") or {}
    return MxFigures(
        mx=mx,
        flood_start=start,
        flood_end=end,
        legit=summarise(legit, start, end),
        trusted=summarise(trusted, start, end),
        time_to_mitigate=time_to_mitigate(rolling, start),
        time_to_stay=time_to_stay(rolling, start, end),
        bot_sessions_peak=max(bots, default=0),
        bot_sessions_mean=round(statistics.fmean(bots), 1) if bots else 0.0,
        smtpd_busy_peak=max(busy, default=0),
        smtpd_busy_mean=round(statistics.fmean(busy), 1) if busy else 0.0,
        bot_sources=bot_sources,
        blocked_on_arrival=len(arrival[0]),
        sources_on_arrival=list(arrival[0]),
        arrival_origins=arrival[1],
        blocked_at_end=arrival[2],
        fleet_applied=fleet.get("applied") if fleet.get("state", "off") != "off" else None,
        blocks_by_reason=dict((status or {}).get("blocks_by_reason") or {}),
        samples=samples,
        rolling=rolling,
    )


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _secs(v: float | None) -> str:
    return "never" if v is None else f"{v:.1f} s"


def _arrival(m: MxFigures) -> str:
    by = ", ".join(f"{n} from {who}" for who, n in sorted(m.arrival_origins.items()))
    return f"{m.blocked_on_arrival} of {m.bot_sources}" + (f" ({by})" if by else "")


ROWS: tuple[tuple[str, Callable[[MxFigures], str]], ...] = (
    ("legit delivered", lambda m: _pct(m.legit.get("success"))),
    ("legit attempted", lambda m: str(m.legit.get("attempted"))),
    ("legit latency p95", lambda m: "-" if m.legit.get("latency_p95") is None else f"{m.legit['latency_p95']:.2f} s"),
    ("until rolling success stays >= 90%", lambda m: _secs(m.time_to_stay)),
    ("trusted delivered", lambda m: _pct(m.trusted.get("success"))),
    ("bot sessions held, peak / mean", lambda m: f"{m.bot_sessions_peak} / {m.bot_sessions_mean:.1f}"),
    ("smtpd busy, peak / mean", lambda m: f"{m.smtpd_busy_peak} / {m.smtpd_busy_mean:.1f}"),
    ("bot sources blocked on arrival", _arrival),
    ("bot sources blocked at the flood's end", lambda m: f"{m.blocked_at_end} of {m.bot_sources}"),
    ("blocks applied from the fleet", lambda m: "-" if m.fleet_applied is None else str(m.fleet_applied)),
)


def table(results: Sequence[FleetResult]) -> str:
    """Markdown: a row per figure, a column per MX of each run (mx1 for reference, then mx2), each over its own
    flood."""
    cols = [(f"{m.mx} {r.run}", m) for r in results for m in (r.mx1, r.mx2)]
    lines = ["| during its own flood | " + " | ".join(name for name, _ in cols) + " |"]
    lines.append("|---|" + "---|" * len(cols))
    for name, get in ROWS:
        lines.append(f"| {name} | " + " | ".join(get(m) for _, m in cols) + " |")
    return "\n".join(lines)


def plot(results: Sequence[FleetResult], path: str) -> None:
    """A PNG: mx2's bot sessions, its block sets and its rolling legitimate success over the run, one line per run
    (alone, sharing), with both floods shaded (mx1's light, mx2's darker)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"alone": "tab:red", "sharing": "tab:blue"}
    # Where the runs coincide (no bots, the same blocks, 100%), a thin line over a wide one shows both.
    widths = {"alone": 1.2, "sharing": 3.0}
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    if results:  # where the flood was first, for scale: mx1 (the first run's) before it learned
        ref = results[0]
        ax1.plot(
            [s.t for s in ref.mx1.samples],
            [s.bot_sessions for s in ref.mx1.samples],
            color="grey",
            linestyle=":",
            linewidth=1,
            label=f"mx1 ({ref.run} run), for scale",
        )
    for r in results:
        m, c = r.mx2, colours.get(r.run, "tab:grey")
        style = {"color": c, "linewidth": widths.get(r.run, 1.5), "zorder": 3 if r.run == "alone" else 2}
        t = [s.t for s in m.samples]
        ax1.plot(t, [s.bot_sessions for s in m.samples], label=f"{r.run}: held by bot-range sources", **style)
        ax2.plot(t, [s.blocked for s in m.samples], label=f"{r.run}: elements (a /24 counts one)", **style)
        if m.rolling:
            ax3.plot([x for x, _ in m.rolling], [100 * y for _, y in m.rolling], label=r.run, **style)
    ax1.set_ylabel("mx2 SMTP sessions")
    ax2.set_ylabel("mx2 block-set elements")
    ax3.set_ylabel("mx2 legit success % (rolling 5 s)")
    ax3.axhline(90, color="grey", linestyle=":", linewidth=1)
    ax3.set_ylim(-5, 105)
    ax3.set_xlabel("seconds (shaded: the flood on mx1, light, then the same sources on mx2, dark)")
    if results:
        first = results[0]
        for ax in (ax1, ax2, ax3):
            ax.axvspan(first.mx1.flood_start, first.mx1.flood_end, color="orange", alpha=0.08, linewidth=0)
            ax.axvspan(first.mx2.flood_start, first.mx2.flood_end, color="red", alpha=0.12, linewidth=0)
            ax.grid(alpha=0.3)
    # Where the lines are not: the spikes come at each flood's start, the lines settle low (sessions) or high.
    ax1.legend(loc="upper right", fontsize=8)
    ax2.legend(loc="lower right", fontsize=8)
    ax3.legend(loc="lower right", fontsize=8)
    summary = ", ".join(
        f"{r.run}: bot sessions peak {r.mx2.bot_sessions_peak}, legit {_pct(r.mx2.legit.get('success'))}"
        for r in results
    )
    fig.suptitle(f"mx2 when the flood moves over from mx1 ({summary})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
