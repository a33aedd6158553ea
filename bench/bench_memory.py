"""Benchmark: memory per tracked source -- RSS growth of the daemon's per-source structures at 1M sources.

    .venv/bin/python bench/bench_memory.py [--sources 1000000] [--ticks 3] [--base OTHER_TREE]

Pure Python, no root, no kernel. Each part runs in a fresh child process (so one part's freed memory cannot
hide the next one's growth) that imports the whole daemon (`govern.daemon`), collects garbage, reads VmRSS from
/proc/self/status, builds the structure, drops its inputs, collects again and reads VmRSS again; the growth over
the number of sources is the cost per source. VmHWM (the peak) is reported too. With `--base OTHER_TREE` (a checkout
of another commit, e.g. `git archive main | tar -x -C /tmp/base`), every part also runs on that tree's govern, in
its own child process, and the two are printed side by side.

Sources: the 131,072 IPv4 hosts of 198.18.0.0/15, the rest IPv6 prefixes inside 2001:db8:bad::/48 (docs/testing.md;
the /48 holds only 65,536 /64s, so beyond those they are /128s: a Prefix object is the same size either way).
IPv6 Prefix values are 128-bit ints, 12 bytes larger than IPv4 ones, so this mix (87% IPv6) errs high by ~10 bytes
per source against a mostly-IPv4 flood.

Parts:
- base: the interpreter with govern's modules imported, nothing tracked.
- rates: govern.observe.rates.RateWindow fed `--ticks` ticks of cumulative SYN counters for N sources, each tick's
  keys made afresh as the kernel dump makes them (so a window of dicts ends up holding different, equal Prefix
  objects, as in the daemon). Timed: each tick's step at N, as the observer calls it (`advance`, the columns, where
  the window has it, then the heap's free pages handed back as the observer does; `update`, a dict, before), and
  one full cyclic-GC collection with it alive.
- observer: what the tick keeps per tracked source: an Observer (its RateWindow) plus the last Snapshot, which
  Governor keeps as `self.snapshot` until the next tick; N sources with SYN counters, none holding sockets. Its
  peak (VmHWM) is that of the tick in the order the Governor runs it since 2026-12-06: the last snapshot let go,
  then the counters read (as the nft backend reads them, before the Observer's snapshot is timed) and handed to the
  Observer, which holds the only reference, as it does the backend's; then the snapshot made.
- observer_held: the same ticks with the last snapshot held until the next one is made, as the Governor did before
  2026-12-06 (its peak only; the tree's own daemon runs one of the two orders).
- state: govern.model.State after State.record of N automatic blocks (Plans of 10,000 BLOCK actions, one per
  tick): `blocks` (Prefix -> Block, each with its own reason string and expiry) and `offenders` (Prefix ->
  Offender), as the daemon records them; then the nftables backend's in-memory copy of the block sets
  (NftBackend.held: a set of the same Prefix objects per set, modelled here without opening the backend), and the
  time of the copy of those sets that NftBackend.apply makes on every plan.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import machine  # noqa: E402

TARGET_MB = 150
V4_BASE = 0xC6120000  # 198.18.0.0
V4_SPAN = 1 << 17  # 198.18.0.0/15
V6_BASE = 0x20010DB80BAD << 80  # 2001:db8:bad::
V6_64S = 1 << 16  # /64s in 2001:db8:bad::/48
NOW = 1_700_000_000.0


def status() -> dict[str, int]:
    """VmRSS and VmHWM in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def rss() -> int:
    gc.collect()
    return status()["VmRSS"]


def source_keys(n: int) -> Iterator[tuple[int, int, int]]:
    """(version, value, length) of n distinct sources in the bot ranges, IPv4 first."""
    n4 = min(n, V4_SPAN)
    for i in range(n4):
        yield 4, V4_BASE + i, 32
    n6 = n - n4
    for i in range(min(n6, V6_64S)):
        yield 6, V6_BASE | (i << 64), 64
    for i in range(max(n6 - V6_64S, 0)):
        # /128s in the first /64s: 2001:db8:bad:0:0:x::1 ... (distinct from the /64 network addresses above)
        yield 6, V6_BASE | ((i >> 16) << 64) | ((i & 0xFFFF) << 16) | 1, 128


def fresh_prefixes(n: int) -> list[object]:
    """New Prefix objects with new int values, as the kernel dump makes them (int.from_bytes of each key)."""
    from govern.addr import Prefix

    return [
        Prefix(v, int.from_bytes(val.to_bytes(4 if v == 4 else 16, "big"), "big"), ln) for v, val, ln in source_keys(n)
    ]


def tick_counts(n: int, packets: int) -> Mapping[Any, int]:
    """One tick's SYN counters as the tree's nft backend hands them to the Observer: with govern.keys.Counted,
    columns made as CountParser.columns makes them (each element's key and packets as the dump loop takes them,
    joined, grouped per family and length); before it, a dict of fresh Prefix objects."""
    try:
        from govern.keys import Counted, group_counts
    except ImportError:
        return dict.fromkeys(fresh_prefixes(n), packets)
    parts = []
    for version, plen in ((4, 32), (6, 64), (6, 128)):
        size = 4 if version == 4 else 16
        keys, counts = bytearray(), bytearray()  # as the dump loop appends each element's
        for v, val, ln in source_keys(n):
            if v == version and ln == plen:
                keys += val.to_bytes(size, "big")
                counts += packets.to_bytes(8, "big")
        parts.append(group_counts(keys, counts, version, plen))
        del keys, counts
    return Counted.concat(parts)


# --- parts (each in its own child process) ------------------------------------------------------------------


def part_base(n: int, ticks: int) -> dict[str, float]:
    import govern.daemon  # noqa: F401  # every module the daemon loads

    return {"rss": rss()}


def _step(rw: object) -> Callable[[dict[Any, int], float], object]:
    """The window's step as the observer calls it: `advance` (columns) and the heap handed back where the tree
    has them, `update` before."""
    advance = getattr(rw, "advance", None)
    if advance is None:
        return rw.update  # type: ignore[attr-defined, no-any-return]
    from govern.heap import give_back  # type: ignore[import-not-found, unused-ignore]

    def step(cum: dict[Any, int], now: float) -> object:
        advance(cum, now)  # the result dropped first, as the observer's are by the time it hands the heap back
        give_back()
        return None

    return step


def part_rates(n: int, ticks: int) -> dict[str, float]:
    import govern.daemon
    from govern.addr import Prefix
    from govern.observe.rates import RateWindow

    r: dict[str, float] = {}
    r["before"] = rss()
    rw = RateWindow()
    step = _step(rw)
    took = []
    for t in range(ticks):
        keys: list[Prefix] = fresh_prefixes(n)  # type: ignore[assignment]
        cum = dict.fromkeys(keys, 5 + 3 * t)  # counts > 256: one int object per source, as in a flood
        del keys
        t0 = time.perf_counter()
        out = step(cum, NOW + t)
        took.append(time.perf_counter() - t0)
        del cum, out
        if t == 0:
            r["one_tick"] = rss()
    r["after"] = rss()
    r["hwm"] = status()["VmHWM"]
    t0 = time.perf_counter()
    gc.collect()
    r["gc_s"] = time.perf_counter() - t0
    r["tracked"] = len(gc.get_objects())
    r["update_s"], r["update_min"], r["update_max"] = statistics.median(took), min(took), max(took)
    r["tree"] = str(Path(govern.__file__).parent.parent)  # type: ignore[assignment]
    assert len(rw) == n
    return r


def part_observer(n: int, ticks: int, *, hold: bool = False) -> dict[str, float]:
    import govern.daemon  # noqa: F401
    from govern import config
    from govern.fakes import FakeCounters, FakeSockets
    from govern.model import Snapshot
    from govern.observe.observer import Observer

    policy = config.from_mapping({}).policy()
    r: dict[str, float] = {}
    r["before"] = rss()
    read: list[Mapping[Any, int]] = []  # the tick's counters, handed over: the Observer holds the only reference
    obs = Observer(FakeSockets(), read.pop, FakeCounters())
    last: Snapshot | None = None
    took = []
    for t in range(ticks):
        if not hold:
            last = None  # the Governor lets the last snapshot go before the next one is read and made
        read.append(tick_counts(n, 300 + 3 * t))
        t0 = time.perf_counter()
        last = obs.snapshot(policy, NOW + t)
        took.append(time.perf_counter() - t0)
    r["snapshot_s"], r["snapshot_min"], r["snapshot_max"] = statistics.median(took), min(took), max(took)
    r["after"] = rss()
    r["hwm"] = status()["VmHWM"]
    assert last is not None and len(last.sources) == n and not read
    return r


def part_observer_held(n: int, ticks: int) -> dict[str, float]:
    return part_observer(n, ticks, hold=True)


def part_state(n: int, ticks: int) -> dict[str, float]:
    import govern.daemon  # noqa: F401
    from govern.addr import Prefix
    from govern.model import Action, ActionKind, Plan, State

    r: dict[str, float] = {}
    r["before"] = rss()
    st = State()
    prefixes: list[Prefix] = fresh_prefixes(n)  # type: ignore[assignment]
    chunk = 10_000
    for lo in range(0, n, chunk):
        now = NOW + lo // chunk
        plan = Plan(
            tuple(
                Action(
                    ActionKind.BLOCK,
                    p,
                    f"holds {20 + i % 40} connections, {i % 30} idle (limit 20); still over after throttling",
                    until=now + 600 + i % 600,
                    offences=1,
                )
                for i, p in enumerate(prefixes[lo : lo + chunk], lo)
            )
        )
        st.record(plan, now)
        del plan
    del prefixes
    r["after"] = rss()
    assert len(st.blocks) == n and len(st.offenders) == n
    # The backend's in-memory truth of the block sets: sets of the same Prefix objects.
    held: dict[str, set[Prefix]] = {"block4": set(), "block6": set(), "throttle4": set(), "throttle6": set()}
    for p in st.blocks:
        held[f"block{p.version}"].add(p)
    r["held"] = rss()
    t0 = time.perf_counter()
    copy = {k: set(v) for k, v in held.items()}  # what NftBackend.apply does on every plan
    r["copy_s"] = time.perf_counter() - t0
    del copy
    r["hwm"] = status()["VmHWM"]
    t0 = time.perf_counter()
    gc.collect()
    r["gc_s"] = time.perf_counter() - t0
    # What the daemon does after start-up and every 10 minutes (govern.heap.settle, where the tree has it):
    # the state frozen out of the collector, whose full collections then walk only what was made since.
    try:
        from govern.heap import settle  # type: ignore[attr-defined, unused-ignore]
    except ImportError:
        r["gc_frozen_s"] = -1.0
    else:
        settle()
        t0 = time.perf_counter()
        gc.collect()
        r["gc_frozen_s"] = time.perf_counter() - t0
    return r


PARTS = {
    "base": part_base,
    "rates": part_rates,
    "observer": part_observer,
    "observer_held": part_observer_held,
    "state": part_state,
}


def run_part(name: str, n: int, ticks: int, tree: str | None = None) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--part", name, "--sources", str(n), "--ticks", str(ticks)]
    if tree is not None:
        cmd += ["--tree", tree]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, check=True, text=True, timeout=900).stdout
    data: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return data


def report(label: str, n: int, ticks: int, res: dict[str, dict[str, float]]) -> list[str]:
    """Prints one tree's figures; returns its column of the table."""
    mb = 1 << 20
    base, rates, obs, st = res["base"], res["rates"], res["observer"], res["state"]
    one = rates["one_tick"] - rates["before"]
    steady = rates["after"] - rates["before"]
    grow = obs["after"] - obs["before"]
    blocks = st["after"] - st["before"]
    held = st["held"] - st["after"]
    print(f"--- {label}")
    print(f"base: the interpreter with govern imported, {base['rss'] / mb:.1f} MB RSS")
    print(
        f"RateWindow, {n:,} sources: +{one / mb:.0f} MB after one tick ({one / n:.0f} B/source), "
        f"+{steady / mb:.0f} MB after {ticks} ticks ({steady / n:.0f} B/source); process RSS "
        f"{rates['after'] / mb:.0f} MB, peak {rates['hwm'] / mb:.0f} MB; one step median {rates['update_s']:.2f} s "
        f"(min {rates['update_min']:.2f}, max {rates['update_max']:.2f}); one full GC {rates['gc_s']:.2f} s over "
        f"{rates['tracked']:,.0f} tracked objects"
    )
    print(
        f"Observer + last Snapshot, {n:,} sources: +{grow / mb:.0f} MB ({grow / n:.0f} B/source); process RSS "
        f"{obs['after'] / mb:.0f} MB, peak {obs['hwm'] / mb:.0f} MB; one snapshot median {obs['snapshot_s']:.2f} s "
        f"(min {obs['snapshot_min']:.2f}, max {obs['snapshot_max']:.2f}); with the last snapshot held through the "
        f"tick, peak {res['observer_held']['hwm'] / mb:.0f} MB"
    )
    print(
        f"State, {n:,} blocks (+ offender records): +{blocks / mb:.0f} MB ({blocks / n:.0f} B/block); "
        f"NftBackend.held sets: +{held / mb:.0f} MB ({held / n:.0f} B/block); process RSS {st['held'] / mb:.0f} MB, "
        f"peak {st['hwm'] / mb:.0f} MB; NftBackend.apply's copy of the held sets {st['copy_s'] * 1000:.0f} ms; "
        f"one full GC {st['gc_s']:.2f} s; with the state frozen (heap.settle) "
        + (f"{st['gc_frozen_s'] * 1000:.0f} ms" if st["gc_frozen_s"] >= 0 else "(not in this tree)")
    )
    return [
        f"{base['rss'] / mb:.0f} MB",
        f"{one / mb:.0f} MB ({one / n:.0f} B)",
        f"{steady / mb:.0f} MB ({steady / n:.0f} B), RSS **{(base['rss'] + steady) / mb:.0f} MB**",
        f"{rates['update_s']:.2f} s ({rates['update_min']:.2f}-{rates['update_max']:.2f})",
        f"{grow / mb:.0f} MB ({grow / n:.0f} B), RSS **{(base['rss'] + grow) / mb:.0f} MB**",
        f"{obs['snapshot_s']:.2f} s ({obs['snapshot_min']:.2f}-{obs['snapshot_max']:.2f})",
        f"{obs['hwm'] / mb:.0f} MB",
        f"{res['observer_held']['hwm'] / mb:.0f} MB",
        f"{blocks / mb:.0f} MB ({blocks / n:.0f} B)",
        f"{held / mb:.0f} MB ({held / n:.0f} B)",
        f"{(base['rss'] + blocks + held) / mb:.0f} MB",
        f"{st['gc_s']:.2f} s",
        f"{st['gc_frozen_s'] * 1000:.0f} ms" if st["gc_frozen_s"] >= 0 else "-",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources", type=int, default=1_000_000)
    ap.add_argument("--ticks", type=int, default=3)
    ap.add_argument("--base", help="another tree whose govern runs each part too, side by side")
    ap.add_argument("--part", choices=list(PARTS), help=argparse.SUPPRESS)
    ap.add_argument("--tree", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part:
        if args.tree:
            sys.path.insert(0, os.path.abspath(args.tree))
        print(json.dumps(PARTS[args.part](args.sources, args.ticks)))
        return

    n = args.sources
    print(f"machine: {machine()}")
    print(f"command: {' '.join(['.venv/bin/python', *sys.argv])}")
    trees: dict[str, str | None] = {"this tree": None}
    if args.base:
        trees = {f"base ({args.base})": args.base, **trees}
    res: dict[str, dict[str, dict[str, float]]] = {label: {} for label in trees}
    for part in PARTS:  # the trees alternate part by part
        for label, tree in trees.items():
            res[label][part] = run_part(part, n, args.ticks, tree)
    for label, tree in trees.items():
        want = str(ROOT if tree is None else Path(tree).resolve())
        if res[label]["rates"]["tree"] != want:  # type: ignore[comparison-overlap]
            sys.exit(f"bench_memory: {label} imported govern from {res[label]['rates']['tree']}, not {want}")
    cols = [report(label, n, args.ticks, res[label]) for label in trees]
    rows = [
        "interpreter + govern imported (RSS)",
        "RateWindow, one tick",
        f"RateWindow, {args.ticks} ticks (steady)",
        "one RateWindow step, median (min-max)",
        "Observer (RateWindow) + last Snapshot",
        "one Observer.snapshot, median (min-max)",
        "Observer part's peak RSS (VmHWM), the last snapshot let go first (the Governor since 2026-12-06)",
        "the same, the last snapshot held through the tick (the Governor before)",
        "State: blocks + offenders",
        "NftBackend.held (block sets)",
        "State + held + base (RSS)",
        f"one full collection of the cyclic GC, {n:,} blocks alive",
        "the same once the state is frozen (heap.settle)",
    ]
    print(f"\n| {n:,} sources, target <= {TARGET_MB} MB | " + " | ".join(trees) + " |")
    print("|---|" + "---:|" * len(trees))
    for i, name in enumerate(rows):
        print(f"| {name} | " + " | ".join(c[i] for c in cols) + " |")


if __name__ == "__main__":
    main()
