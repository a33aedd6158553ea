"""Benchmark: memory per tracked source -- RSS growth of the daemon's per-source structures at 1M sources.

    .venv/bin/python bench/bench_memory.py [--sources 1000000] [--ticks 3]

Pure Python, no root, no kernel. Each part runs in a fresh child process (so one part's freed memory cannot
hide the next one's growth) that imports the whole daemon (`govern.daemon`), collects garbage, reads VmRSS from
/proc/self/status, builds the structure, drops its inputs, collects again and reads VmRSS again; the growth over
the number of sources is the cost per source. VmHWM (the peak) is reported too.

Sources: the 131,072 IPv4 hosts of 198.18.0.0/15, the rest IPv6 prefixes inside 2001:db8:bad::/48 (docs/testing.md;
the /48 holds only 65,536 /64s, so beyond those they are /128s: a Prefix object is the same size either way).
IPv6 Prefix values are 128-bit ints, 12 bytes larger than IPv4 ones, so this mix (87% IPv6) errs high by ~10 bytes
per source against a mostly-IPv4 flood.

Parts:
- base: the interpreter with govern's modules imported, nothing tracked.
- rates: govern.observe.rates.RateWindow fed `--ticks` ticks of cumulative SYN counters for N sources, each tick's
  keys made afresh as the kernel dump makes them (so `_last` and `_buckets` end up holding different, equal Prefix
  objects, as in the daemon). Also timed: one update at N, and one full cyclic-GC collection with it alive.
- observer: what the tick keeps per tracked source: an Observer (its RateWindow) plus the last Snapshot, which
  Governor keeps as `self.snapshot` until the next tick; N sources with SYN counters, none holding sockets.
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
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

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


# --- parts (each in its own child process) ------------------------------------------------------------------


def part_base(n: int, ticks: int) -> dict[str, float]:
    import govern.daemon  # noqa: F401  # every module the daemon loads

    return {"rss": rss()}


def part_rates(n: int, ticks: int) -> dict[str, float]:
    import govern.daemon  # noqa: F401
    from govern.addr import Prefix
    from govern.observe.rates import RateWindow

    r: dict[str, float] = {}
    r["before"] = rss()
    rw = RateWindow()
    for t in range(ticks):
        keys: list[Prefix] = fresh_prefixes(n)  # type: ignore[assignment]
        cum = dict.fromkeys(keys, 5 + 3 * t)  # counts > 256: one int object per source, as in a flood
        del keys
        t0 = time.perf_counter()
        out = rw.update(cum, NOW + t)
        r["update_s"] = time.perf_counter() - t0
        del cum, out
        if t == 0:
            r["one_tick"] = rss()
    r["after"] = rss()
    r["hwm"] = status()["VmHWM"]
    t0 = time.perf_counter()
    gc.collect()
    r["gc_s"] = time.perf_counter() - t0
    r["tracked"] = len(gc.get_objects())
    assert len(rw) == n
    return r


def part_observer(n: int, ticks: int) -> dict[str, float]:
    import govern.daemon  # noqa: F401
    from govern import config
    from govern.addr import Prefix
    from govern.fakes import FakeCounters, FakeSockets
    from govern.model import Snapshot
    from govern.observe.observer import Observer

    policy = config.from_mapping({}).policy()
    r: dict[str, float] = {}
    r["before"] = rss()
    current: dict[Prefix, int] = {}
    obs = Observer(FakeSockets(), lambda: current, FakeCounters())
    last: Snapshot | None = None
    for t in range(ticks):
        keys: list[Prefix] = fresh_prefixes(n)  # type: ignore[assignment]
        current = dict.fromkeys(keys, 300 + 3 * t)
        del keys
        t0 = time.perf_counter()
        last = None  # Governor replaces its snapshot: the old one goes once the new one is made
        last = obs.snapshot(policy, NOW + t)
        r["snapshot_s"] = time.perf_counter() - t0
        current = {}
    r["after"] = rss()
    r["hwm"] = status()["VmHWM"]
    assert last is not None and len(last.sources) == n
    return r


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
    return r


PARTS = {"base": part_base, "rates": part_rates, "observer": part_observer, "state": part_state}


def run_part(name: str, n: int, ticks: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--part", name, "--sources", str(n), "--ticks", str(ticks)]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, check=True, text=True, timeout=600).stdout
    data: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources", type=int, default=1_000_000)
    ap.add_argument("--ticks", type=int, default=3)
    ap.add_argument("--part", choices=list(PARTS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part:
        print(json.dumps(PARTS[args.part](args.sources, args.ticks)))
        return

    n = args.sources
    mb = 1 << 20
    print(f"machine: {machine()}")
    print(f"command: {' '.join(['.venv/bin/python', *sys.argv])}")
    base = run_part("base", n, args.ticks)
    print(f"base: the interpreter with govern imported, {base['rss'] / mb:.1f} MB RSS")
    rates = run_part("rates", n, args.ticks)
    one = rates["one_tick"] - rates["before"]
    steady = rates["after"] - rates["before"]
    print(
        f"RateWindow, {n:,} sources: +{one / mb:.0f} MB after one tick ({one / n:.0f} B/source), "
        f"+{steady / mb:.0f} MB after {args.ticks} ticks ({steady / n:.0f} B/source); process RSS "
        f"{rates['after'] / mb:.0f} MB, peak {rates['hwm'] / mb:.0f} MB; one update {rates['update_s']:.2f} s; "
        f"one full GC {rates['gc_s']:.2f} s over {rates['tracked']:,.0f} tracked objects"
    )
    obs = run_part("observer", n, args.ticks)
    grow = obs["after"] - obs["before"]
    print(
        f"Observer + last Snapshot, {n:,} sources: +{grow / mb:.0f} MB ({grow / n:.0f} B/source); process RSS "
        f"{obs['after'] / mb:.0f} MB, peak {obs['hwm'] / mb:.0f} MB; one snapshot {obs['snapshot_s']:.2f} s"
    )
    st = run_part("state", n, args.ticks)
    blocks = st["after"] - st["before"]
    held = st["held"] - st["after"]
    print(
        f"State, {n:,} blocks (+ offender records): +{blocks / mb:.0f} MB ({blocks / n:.0f} B/block); "
        f"NftBackend.held sets: +{held / mb:.0f} MB ({held / n:.0f} B/block); process RSS {st['held'] / mb:.0f} MB, "
        f"peak {st['hwm'] / mb:.0f} MB; NftBackend.apply's copy of the held sets {st['copy_s'] * 1000:.0f} ms; "
        f"one full GC {st['gc_s']:.2f} s"
    )
    total_rates = base["rss"] + steady
    total_obs = base["rss"] + grow
    print(f"\n| structure, {n:,} sources | RSS growth | bytes per source | process RSS | target |")
    print("|---|---:|---:|---:|---|")
    rows = [
        ("interpreter + govern imported", "", "", f"{base['rss'] / mb:.0f} MB", ""),
        ("RateWindow, one tick", f"{one / mb:.0f} MB", f"{one / n:.0f}", "", ""),
        (f"RateWindow, {args.ticks} ticks (steady)", f"{steady / mb:.0f} MB", f"{steady / n:.0f}",
         f"{total_rates / mb:.0f} MB", f"<= {TARGET_MB} MB"),
        ("Observer (RateWindow) + last Snapshot", f"{grow / mb:.0f} MB", f"{grow / n:.0f}",
         f"{total_obs / mb:.0f} MB", f"<= {TARGET_MB} MB"),
        ("State: blocks + offenders", f"{blocks / mb:.0f} MB", f"{blocks / n:.0f}", "", ""),
        ("NftBackend.held (block sets)", f"{held / mb:.0f} MB", f"{held / n:.0f}", "", ""),
        ("State + held + base", "", "", f"{(base['rss'] + blocks + held) / mb:.0f} MB", ""),
    ]  # fmt: skip
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
