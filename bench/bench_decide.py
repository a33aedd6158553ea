"""Benchmark: one tick's decision for 100k sources, and the Observer's conversion of a scan into a Snapshot.

    .venv/bin/python bench/bench_decide.py [--sources 100000] [--over 500] [--blocks 10000] [--throttles 1000]
        [--reps 21] [--tree=OTHER_TREE]

`--tree=PATH` (with the `=`) runs this bench on another tree's govern (a checkout of another commit), so that two
commits are measured by the same bench: run it with and without, alternating.

Pure Python, no root, no kernel: the inputs are built in memory (addresses from docs/testing.md's bot ranges).

1. decide: `govern.core.decide.decide(snapshot, state, policy, now)` on a Snapshot of `--sources` sources against a
   State holding `--blocks` blocks and `--throttles` throttles, with the default limits and an allowlist of the
   trusted ranges. The mix, as a flood might look to the daemon:
   - three in four sources are IPv4 hosts from 198.18.0.0/15, one in four IPv6 /64s from 2001:db8:bad::/48;
   - most are under every limit (1-3 connections, up to 10 new per minute);
   - every blocked source is still in the snapshot and still hammering (its SYNs are counted while blocked): 99%
     of them with more than half of the block left (looked up, nothing to do), 1% extended;
   - `--over` sources over a limit: 40% new offenders (throttled), 40% throttled for longer than escalate_after
     (blocked), 20% throttled for less (left alone this tick);
   - 1% of the blocks and 5% of the throttles have lapsed (released), 16 manual /24 blocks (wider prefixes, so
     every lookup also tries the /24), and 50 allowlisted relays over the connection limit (never acted on).
   The plan's counts are checked against what the mix must produce.
2. Observer.snapshot at the same scale (govern/observe/observer.py with govern.fakes edges): 80% of the sources
   hold sockets (FakeSockets), 80% have kernel SYN counters (60% both, so `--sources` in all); each tick's counters
   are new objects, as the kernel dump makes them. Reported: the whole snapshot, the fake's own scan (a dict copy,
   not govern's cost), the rate window's step alone (`advance`, its columns, where the tree has it; `update`, a
   dict, before), and the rest (merging both into the snapshot's sources). Then decide on the last of these
   snapshots with an empty state: the daemon's decide over the observer's own Snapshot.

Each timing is the median of `--reps` runs after a warm-up, with the cyclic GC enabled as in the daemon; the time
spent in its collections during the snapshot is timed too (gc.callbacks). The snapshot then runs `--reps` more
ticks with the GC held off during the step, to split its own time into RateWindow.update and the merge.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Read before govern is imported: the tree whose govern is measured.
TREE = next((a.partition("=")[2] for a in sys.argv if a.startswith("--tree=")), "")
if TREE:
    sys.path.insert(0, str(Path(TREE).resolve()))

from bench.machine import machine  # noqa: E402
from govern import config, model  # noqa: E402
from govern.addr import Prefix  # noqa: E402
from govern.core.decide import decide  # noqa: E402
from govern.core.modes import totals  # noqa: E402
from govern.fakes import FakeCounters, FakeSockets  # noqa: E402
from govern.model import (  # noqa: E402
    ActionKind,
    Block,
    Plan,
    Snapshot,
    SockCounts,
    SourceStats,
    State,
    Throttle,
)
from govern.observe.observer import Observer  # noqa: E402
from govern.observe.rates import RateWindow  # noqa: E402

NOW = 1_700_000_000.0
V4_BASE = Prefix.parse("198.18.0.0").value
V4_SPAN = 1 << 17  # 198.18.0.0/15
V6_BASE = Prefix.parse("2001:db8:bad::").value
V6_SPAN = 1 << 16  # /64s in 2001:db8:bad::/48
MANUAL_BASE = Prefix.parse("198.19.240.0").value  # 16 manual /24 blocks: 198.19.240.0 - 198.19.255.255
HOSTS_V4 = MANUAL_BASE - V4_BASE  # automatic IPv4 sources stay below the manual /24s
ALLOW = ["192.0.2.0/24", "2001:db8:2::/48", "198.51.100.0/28"]


def sources(n: int, seed: int = 25) -> list[Prefix]:
    """n distinct sources, three in four IPv4 hosts, one in four IPv6 /64s, in a fixed pseudo-random order."""
    n6 = n // 4
    n4 = n - n6
    if n4 > HOSTS_V4 or n6 > V6_SPAN:
        sys.exit(f"bench_decide: the bot ranges hold {HOSTS_V4 + V6_SPAN} sources, not {n}")
    rng = random.Random(seed)
    v4 = [Prefix(4, V4_BASE + i, 32) for i in rng.sample(range(HOSTS_V4), n4)]
    v6 = [Prefix(6, V6_BASE + (i << 64), 64) for i in rng.sample(range(V6_SPAN), n6)]
    out = v4 + v6
    rng.shuffle(out)
    return out


class Scenario:
    """The snapshot, state and policy of one tick, and the plan they must produce."""

    def __init__(self, n: int, over: int, blocks: int, throttles: int) -> None:
        if blocks + throttles + over > n:
            sys.exit("bench_decide: --blocks + --throttles + --over must not exceed --sources")
        rng = random.Random(7)
        # The normal-mode ladder, as the figures since the first run measured it: the 10,000 blocked sources of one
        # /15 would otherwise be gathered into /24s (aggregation), and their knocking start a wave.
        self.policy = config.from_mapping(
            {"allow": {"cidrs": ALLOW}, "modes": {"auto": False}, "aggregate": {"enabled": False}}
        ).policy()
        pol = self.policy
        srcs = sources(n)
        blocked, throttled, offenders = srcs[:blocks], srcs[blocks : blocks + throttles], srcs[blocks + throttles :]
        self.expect: dict[ActionKind, int] = dict.fromkeys(ActionKind, 0)
        stats: dict[Prefix, SourceStats] = {}
        state = State()
        over_new = SourceStats(held=2, established=2, new=3, new_per_minute=pol.max_new_per_minute + 40)
        over_held = SourceStats(held=pol.max_connections + 10, established=pol.max_connections + 10, idle=25)
        # Blocks: 1% lapsed (released; their sources are left out of the snapshot), 1% with less than half left
        # (extended), the rest with more than half left (looked up, left alone). Every live one still hammers.
        for i, p in enumerate(blocked):
            if i % 100 == 0:
                until = NOW - 1
                self.expect[ActionKind.UNBLOCK] += 1
            elif i % 100 == 1:
                until = NOW + pol.block_duration / 4
                self.expect[ActionKind.EXTEND] += 1
            else:
                until = NOW + pol.block_duration * 0.9
            why = f"{over_new.new_per_minute} attempts; still over after throttling"
            state.blocks[p] = Block(p, why, NOW, until, 1)
            if until > NOW:
                stats[p] = over_new
        # Throttles: 5% lapsed and quiet now (released); the rest under the limits again (nothing to do).
        for i, p in enumerate(throttled):
            lapsed = i % 20 == 0
            until = NOW - 1 if lapsed else NOW + pol.throttle_duration / 2
            state.throttles[p] = Throttle(p, "holds 30 connections (limit 20)", NOW - 300, until)
            self.expect[ActionKind.UNTHROTTLE] += lapsed
            stats[p] = SourceStats(held=1, established=1)
        # Sources over a limit: 40% new offenders, 40% throttled long enough ago, 20% throttled just now.
        for i, p in enumerate(offenders[:over]):
            stats[p] = over_held if i % 2 else over_new
            kind = i % 5
            if kind < 2:
                self.expect[ActionKind.THROTTLE] += 1
                continue
            since = NOW - pol.escalate_after - 1 if kind < 4 else NOW - 1
            state.throttles[p] = Throttle(p, "over", since, NOW + pol.throttle_duration)
            self.expect[ActionKind.BLOCK] += kind < 4
        # Everyone else under every limit.
        for p in offenders[over:]:
            held = rng.randint(1, 3)
            stats[p] = SourceStats(held, held, 0, rng.randint(0, 1), 0, rng.randint(0, 2), rng.randint(0, 10))
        # Manual wider blocks and allowlisted relays over the limit.
        for k in range(16):
            wide = Prefix(4, MANUAL_BASE + (k << 8), 24)
            state.blocks[wide] = Block(wide, "manual: abuse desk ticket", NOW - 3600, NOW + 86400, 0, True)
        for k in range(50):
            stats[Prefix(4, Prefix.parse("192.0.2.0").value + 10 + k, 32)] = over_held
        # The pressure sums come with the snapshot, as the Observer keeps them (it remembers each source's
        # allowlist standing from tick to tick); their cost is in the Observer.snapshot rows.
        self.snapshot = Snapshot(
            taken_at=NOW, interval=1.0, sources=stats, totals=totals(stats, self.policy.allow.intersects)
        )
        self.state = state

    def check(self, plan: Plan) -> None:
        got = dict.fromkeys(ActionKind, 0)
        for a in plan.actions:
            got[a.kind] += 1
        if got != self.expect:
            raise RuntimeError(f"plan has {got}, expected {self.expect}")


def median_ms(fn: Callable[[], object], reps: int) -> tuple[float, list[float]]:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), times


def bench_decide(args: argparse.Namespace) -> dict[str, float]:
    t0 = time.perf_counter()
    sc = Scenario(args.sources, args.over, args.blocks, args.throttles)
    print(f"scenario built in {time.perf_counter() - t0:.1f} s: {len(sc.snapshot.sources):,} sources in the snapshot,")
    print(f"  {len(sc.state.blocks):,} blocks and {len(sc.state.throttles):,} throttles in the state")
    plan = decide(sc.snapshot, sc.state, sc.policy, NOW)
    sc.check(plan)
    print("  plan: " + ", ".join(f"{sc.expect[k]} {k}" for k in ActionKind) + " (as the mix requires)")
    r: dict[str, float] = {"actions": len(plan.actions)}
    r["decide"], times = median_ms(lambda: decide(sc.snapshot, sc.state, sc.policy, NOW), args.reps)
    r["decide_max"] = max(times)
    print(f"decide: median {r['decide']:.1f} ms, max {r['decide_max']:.1f} ms over {args.reps} runs")
    # For context: the same sources, all under every limit, no state (the common quiet tick at this scale).
    calm = {p: SourceStats(1, 1) for p in sc.snapshot.sources}
    quiet = Snapshot(NOW, 1.0, calm, totals=totals(calm, sc.policy.allow.intersects))
    r["decide_quiet"], _ = median_ms(lambda: decide(quiet, State(), sc.policy, NOW), args.reps)
    print(f"decide, every source under the limits and an empty state: {r['decide_quiet']:.1f} ms")
    return r


class GcTimer:
    """Time spent in the cyclic GC's collections (gc.callbacks), and how many of them were full ones."""

    def __init__(self) -> None:
        self.ms = 0.0
        self.full = 0
        self._t0 = 0.0
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.ms += (time.perf_counter() - self._t0) * 1000
            self.full += info["generation"] == 2

    def reset(self) -> None:
        self.ms, self.full = 0.0, 0

    def close(self) -> None:
        gc.callbacks.remove(self._cb)


def bench_observer(args: argparse.Namespace) -> dict[str, float]:
    n = args.sources
    srcs = sources(n, seed=26)
    with_sockets = srcs[: n * 4 // 5]
    with_syns = srcs[n // 5 :]
    rng = random.Random(9)
    socks = FakeSockets(sources={p: SockCounts(h, h, 0, 0, 0) for p in with_sockets for h in [rng.randint(1, 3)]})
    counts = [rng.randint(1, 50) for _ in with_syns]
    policy = config.from_mapping({}).policy()
    made = getattr(model, "ScanOptions", None)
    scan_opts = None if made is None else made(policy.ports, v4_len=32, v6_len=64, idle_after_ms=10_000)
    old_scan: Any = socks.scan
    tick = 0

    def counters() -> dict[Prefix, int]:
        # The kernel's cumulative counters as the nft dump returns them: new Prefix objects every tick.
        return {_fresh(p): c + tick * (i & 3) for i, (p, c) in enumerate(zip(with_syns, counts, strict=True))}

    current: dict[Prefix, int] = {}
    obs = Observer(socks, lambda: current, FakeCounters())
    gct = GcTimer()
    res: dict[str, list[float]] = {k: [] for k in ("snap", "gc", "full", "snap_nogc", "fake", "rates")}
    try:
        # Ticks as the daemon runs them (cyclic GC on), then as many with the GC off during the step; the parts
        # on their own (GC off) with the same inputs: the fake's scan, and a rate window's update for a next tick.
        for rep in range(2 * args.reps + 2):
            tick = rep
            current = counters()
            now = NOW + rep
            gc_on = rep <= args.reps
            if not gc_on:
                gc.disable()
            gct.reset()
            t0 = time.perf_counter()
            snap = obs.snapshot(policy, now)
            took = (time.perf_counter() - t0) * 1000
            gc.enable()
            if len(snap.sources) != n:
                raise RuntimeError(f"snapshot has {len(snap.sources)} sources, expected {n}")
            if rep and gc_on:
                res["snap"].append(took)
                res["gc"].append(gct.ms)
                res["full"].append(gct.full)
            elif rep > args.reps + 1:
                res["snap_nogc"].append(took)
                rw = RateWindow()
                step = getattr(rw, "advance", rw.update)
                step(_with_fresh_keys(current), now - 1)
                fresh = _with_fresh_keys(current)
                gc.disable()
                t0 = time.perf_counter()
                if scan_opts is None:  # a tree from before the scan's options were one value (--tree)
                    old_scan(policy.ports, v4_len=32, v6_len=64, idle_after_ms=10_000)
                else:
                    socks.scan(scan_opts)
                t1 = time.perf_counter()
                step(fresh, now)
                t2 = time.perf_counter()
                gc.enable()
                res["fake"].append((t1 - t0) * 1000)
                res["rates"].append((t2 - t1) * 1000)
        r_decide, _ = median_ms(lambda: decide(snap, State(), policy, now), args.reps)
        own = decide(snap, State(), policy, now)
    finally:
        gc.enable()
        gct.close()
    r = {k: statistics.median(v) for k, v in res.items()}
    r["decide_own"] = r_decide
    r["own_actions"], r["own_cuts"] = len(own.actions), len(own.cuts)
    r["snap_max"] = max(res["snap"])
    r["full"] = sum(res["full"]) / len(res["full"])
    r["convert"] = r["snap_nogc"] - r["fake"] - r["rates"]
    print(
        f"Observer.snapshot of {n:,} sources ({len(with_sockets):,} with sockets, {len(with_syns):,} with SYN "
        f"counters), {args.reps} ticks: median {r['snap']:.1f} ms (max {r['snap_max']:.1f}), of which cyclic GC "
        f"{r['gc']:.1f} ms ({r['full']:.1f} full collections per tick)"
    )
    print(
        f"  with the GC off: {r['snap_nogc']:.1f} ms; parts: the fake scan {r['fake']:.1f} ms, the rate window's step "
        f"{r['rates']:.1f} ms, merging into the snapshot's sources {r['convert']:.1f} ms"
    )
    print(
        f"decide on the observer's last snapshot, empty state, default policy: {r['decide_own']:.1f} ms (a plan of "
        f"{r['own_actions']:.0f} actions and {r['own_cuts']:.0f} cuts)"
    )
    return r


def _fresh(p: Prefix) -> Prefix:
    """An equal Prefix made afresh from the packed address, as the kernel dump makes it (new int objects too)."""
    return Prefix(p.version, int.from_bytes(p.value.to_bytes(16 if p.version == 6 else 4, "big"), "big"), p.length)


def _with_fresh_keys(m: Mapping[Prefix, int]) -> dict[Prefix, int]:
    return {_fresh(p): c for p, c in m.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources", type=int, default=100_000)
    ap.add_argument("--over", type=int, default=500, help="sources over a limit (not counting blocked ones)")
    ap.add_argument("--blocks", type=int, default=10_000)
    ap.add_argument("--throttles", type=int, default=1_000)
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--tree", help="another tree's govern to measure (give it as --tree=PATH)")
    args = ap.parse_args()
    import govern

    print(f"machine: {machine()}")
    print(f"command: {' '.join(['.venv/bin/python', *sys.argv])}")
    print(f"govern from: {Path(govern.__file__).parent}")
    gc.collect()
    d = bench_decide(args)
    gc.collect()
    o = bench_observer(args)
    n = args.sources
    print(f"\n| step, {n:,} sources | median ms | per source |")
    print("|---|---:|---:|")
    rows = [
        (f"decide: {args.blocks:,} blocks, {args.throttles:,} throttles, plan of {d['actions']:.0f} actions",
         d["decide"]),
        ("decide: all under the limits, empty state", d["decide_quiet"]),
        (f"Observer.snapshot (fake edges), cyclic GC on (max {o['snap_max']:.0f})", o["snap"]),
        (f"  of which in the cyclic GC ({o['full']:.1f} full collections per tick)", o["gc"]),
        ("Observer.snapshot, GC off during the step", o["snap_nogc"]),
        ("  of which the rate window's step", o["rates"]),
        ("  of which merging scan and rates into the snapshot's sources", o["convert"]),
        ("  of which the fake scan (a dict copy; not govern's cost)", o["fake"]),
        ("decide on the observer's own snapshot, empty state", o["decide_own"]),
        ("tick without the socket scan: decide + snapshot - fake scan", d["decide"] + o["snap"] - o["fake"]),
    ]  # fmt: skip
    for name, v in rows:
        print(f"| {name} | {v:.1f} | {v * 1e6 / n:,.0f} ns |")


if __name__ == "__main__":
    main()
