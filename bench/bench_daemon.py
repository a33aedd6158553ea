"""Benchmark: the whole daemon's cost against size -- the real `govern run` in a network namespace, its CPU per tick,
its memory and its tick durations with N live sessions, M tracked sources and B restored blocks.

    .venv/bin/python bench/bench_daemon.py [--sockets 1000 10000 20000 50000 100000] [--tracked 10000 30000 100000]
        [--blocks 100000] [--reps 3] [--window 20] [--per-source 10] [--talk-every 10]
        [--json bench_daemon.json] [--plot docs/bench_daemon.png]

Needs root; not part of the test suite (tests/kernel/test_bench_daemon.py runs it at a tiny size). Every case builds
its own namespaces (tests/netns.py) and a temporary state directory and removes them at the end, also on failure;
the root namespace's firewall, routes and sysctls are never touched (the daemon runs with `sysctl.apply_at_start =
false`). The daemon is `python -m govern run` from this tree, started and stopped by PID (tests/kernel/
daemon_harness.py), with `[modes] auto = false` (so every tick is a normal 1 s tick: the targets are for 1 Hz),
`[aggregate] enabled = false` (restored host blocks stay host blocks), `protect.ipv6_prefix = 128` (so the IPv6
sources the address plan allows can fill a counting set) and the metrics endpoint on the namespace's loopback.

Cases (each a separate daemon, sizes ascending within a case):
- sockets N: N ESTABLISHED sessions to [::]:25, `--per-source` per source address (bench/bench_observer.py's
  Population: its server processes accept and hold them, its client processes open them from 198.18.0.0/16 and
  2001:db8:bad::/48 in a namespace with its own established hash). With `--talk-every S`, each session sends one
  command line every S seconds and the server answers it, as live sessions do.
- tracked M: M distinct sources that each sent one SYN, which is what govern tracks per source: the kernel counts
  SYNs per source in the counting sets seen4/seen6 (govern/nft/ruleset.py: 16 shards each, seen4_00 ..., 262,144
  elements in all, 2 min timeout),
  the daemon dumps them (NftBackend.syn_counts) and its RateWindow (govern/observe/rates.py) keeps every
  source the dump reports. The SYNs are crafted (govern_lab's SynCrafter) and sent through a raw socket from the
  client namespace to port 465 (protected, nothing listens: the MX answers with a RST), paced at `--syn-pps`;
  before every measurement they are sent again, so the sets and the window keep all M. Nothing new comes during a
  window: since the daemon skips the read while the kernel counts nothing new and no count has reached its timeout,
  this row is what holding M sources costs.
- trickled M (`--trickle PPS`, with --tracked's sizes): the tracked case with PPS SYNs a second during each window,
  each from a source of the M drawn at random: the counts move, so every tick reads the counting sets whole; what a
  host pays after a flood while a few connections a second still come, and what every tick of a flood pays.
- `--wave`: the tracked (or trickled) case with the daemon switched to a wave (`govern wave on`) once each size's
  sources are counted (in normal mode: a wave drops a first contact's first SYN uncounted); above normal mode a tick
  whose counts moved reads the counting sets whole unless the last read was dear (observer.PRESSED_READS).
- blocks B: B active blocks written to the store before the daemon starts (bench/bench_restore.py's block_plan:
  three in four IPv4 hosts, one in four IPv6 /64s), restored into the kernel by the daemon's start-up.

Per size, after the daemon reports the size (sockets, sources or blocks) and `--settle` more seconds, `--reps` times:
1. quiet window (`--window` s, nothing asks the daemon anything): CPU as % of one core and per tick, the larger of
   the whole process's utime + stime (/proc/PID/stat: ended threads included, such as the one that reads a large
   set's dump) and its live threads' schedstat (exact, but blind to ended threads); ticks and their mean duration
   from the tick-duration histogram of /metrics (scraped at both ends); VmRSS and VmHWM from /proc/PID/status at
   the end.
2. latency window (`--window` s): /metrics scraped every 0.25 s; between two scrapes that saw exactly one tick end,
   the histogram's sum grew by that tick's duration, so each such tick is timed exactly (p50, p99 = max below 100
   ticks). A scrape waits for the lock a tick holds; when long ticks run back to back, one interval can hold
   several tick ends, and their mean stands for each of them (counted as `pooled_ticks`).
Medians over the reps are reported with their range. Side by side: `ss -Htn` listing the same N sessions in the MX
namespace, and `nft list set` of the block set (blocks case) or of seen4's shards (tracked case, one nft process
for each, summed) at the same size.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_observer import PORT, Population  # noqa: E402
from bench.bench_restore import block_plan  # noqa: E402
from bench.machine import machine  # noqa: E402
from govern.addr import Prefix  # noqa: E402
from govern.errors import DaemonUnavailable  # noqa: E402
from govern.nft.ruleset import seen_sets  # noqa: E402
from govern.store import Store  # noqa: E402
from govern_lab.traffic.syn import SynCrafter  # noqa: E402
from tests.kernel.daemon_harness import Daemon  # noqa: E402
from tests.netns import MX4, MX6, Lab, Netns, entered  # noqa: E402

METRICS = "127.0.0.1:9742"
SYN_PORT = 465  # protected, nothing listens: counted by the kernel, answered with a RST
V4_BASE = Prefix.parse("198.18.0.0").value
V4_SPAN = 1 << 17  # 198.18.0.0/15, every host a source
# IPv6 sources one a /64, so they are as many source groups at `protect.ipv6_prefix = 64` (the default) as at 128:
# 2001:db8:bac::/46 holds 262,144 /64s, the most the IPv6 counting shards hold.
V6_RANGE = "2001:db8:bac::/46"
V6_BASE = Prefix.parse(V6_RANGE).value
SEEN_SIZE = 262144  # govern/nft/ruleset.py SEEN_SIZE: the most one family's counting shards hold in all
TRACKED_MAX = V4_SPAN + SEEN_SIZE
# docs/targets.md: whole daemon at 1 Hz <= 2% of a core at 20k live sessions, <= 10% at 100k; tick p99 <= 250 ms
# at 100k; RSS <= 150 MB with 1M tracked sources.
TARGET_CPU = {20_000: 2.0, 100_000: 10.0}
TARGET_P99_MS = (100_000, 250.0)
TARGET_RSS_MB = (1_000_000, 150.0)


# Set from the command line: the socket scan (`backend.socket_scan`), the IPv6 grouping and how often a calm tick
# walks the sockets (`daemon.calm_scan_every`, 0: the daemon's default) of every case's daemon.
SCAN = {"socket_scan": "auto", "ipv6_prefix": 128, "calm_scan_every": 0}


def config(tmp: Path, extra: str = "") -> Path:
    cfg = tmp / "govern.toml"
    cfg.write_text(
        '[allow]\ncidrs = ["192.0.2.0/24", "2001:db8:2::/48"]\n'
        f"[protect]\nipv6_prefix = {SCAN['ipv6_prefix']}\n"
        f'[backend]\nsocket_scan = "{SCAN["socket_scan"]}"\n'
        "[modes]\nauto = false\n"
        "[aggregate]\nenabled = false\n"
        f'[metrics]\nlisten = "{METRICS}"\n'
        "[sysctl]\napply_at_start = false\n"
        f'[daemon]\nstate_dir = "{tmp}/state"\nsocket = "{tmp}/run/govern.sock"\n'
        + (f"calm_scan_every = {SCAN['calm_scan_every']}\n" if SCAN["calm_scan_every"] else "")
        + extra
    )
    return cfg


# --- reading the daemon ---------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """CPU time of the whole process in seconds, the threads that ended included: utime + stime of /proc/PID/stat
    (the thread group's, which keeps what its ended threads ran), in clock ticks (10 ms). The daemon's reads of a
    large nftables set hand the kernel's side of the dump to a thread of its own that ends with the dump
    (govern.netlink, `read_ahead_after`): the live threads' count (`live_cpu_seconds`) misses all of it, and the
    figures of 2026-12-05 to 2026-12-07 were read that way (docs/benchmarks.md)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def live_cpu_seconds(pid: int) -> float:
    """CPU time of the process's live threads, in seconds: the scheduler's own count in nanoseconds
    (/proc/PID/task/TID/schedstat, first field), finer than clock ticks but blind to threads that ended between
    two readings."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        path = f"/proc/{pid}/task/{task}/schedstat"
        with contextlib.suppress(FileNotFoundError, ProcessLookupError), open(path) as f:
            total += int(f.read().split()[0])
    return total / 1e9


def memory_mb(pid: int) -> dict[str, float]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(line.split()[1]) / 1024
    return out


@dataclass
class Ticks:
    """The tick-duration histogram of /metrics: how many ticks so far, their summed seconds, how many over 250 ms;
    and the seconds the ticks spent in each phase (govern.phases)."""

    count: float
    seconds: float
    over_250ms: float
    phases: dict[str, float] = field(default_factory=dict)


def scrape(mx: Netns) -> Ticks:
    with entered(mx.name), urllib.request.urlopen(f"http://{METRICS}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    got: dict[str, float] = {}
    phases: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("govern_tick_duration_seconds"):
            name, value = line.rsplit(" ", 1)
            got[name] = float(value)
        elif line.startswith('govern_tick_phase_seconds_total{phase="'):
            name, value = line.rsplit(" ", 1)
            phases[name.split('"')[1]] = float(value)
    count = got["govern_tick_duration_seconds_count"]
    return Ticks(
        count,
        got["govern_tick_duration_seconds_sum"],
        count - got['govern_tick_duration_seconds_bucket{le="0.25"}'],
        phases,
    )


def try_scrape(mx: Netns) -> Ticks | None:
    """A scrape, or None when the daemon did not answer it within 10 s (a tick holds the lock the scrape needs)."""
    try:
        return scrape(mx)
    except OSError:
        return None


def try_status(d: Daemon) -> dict[str, Any]:
    with contextlib.suppress(DaemonUnavailable):
        reply = d.ask(cmd="status")
        if "status" in reply:
            return dict(reply["status"])
    return {}


def wait_until(what: str, cond: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(DaemonUnavailable):  # a daemon busy with a long tick answers late
            if cond():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.5)


def reaches(d: Daemon, key: str, n: int) -> Callable[[], bool]:
    def check() -> bool:
        reply = d.ask(cmd="status")
        if "status" not in reply:  # refused or failed: say so, and ask again
            print(f"  status: {reply}", file=sys.stderr, flush=True)
            return False
        return int(reply["status"][key]) >= n

    return check


@dataclass
class Window:
    """One rep's figures."""

    cpu_pct: float
    cpu_ms_per_tick: float
    ticks: int
    mean_tick_ms: float
    over_250ms: int
    rss_mb: float
    hwm_mb: float
    p50_ms: float
    p99_ms: float
    timed_ticks: int
    sockets: int
    sources: int
    blocks: int
    host_busy_pct: float = float("nan")  # the whole VM over the quiet window, % of all its CPUs
    load_cpu_pct: float = float("nan")  # the bench's own helper processes (sessions), % of one core
    live_cpu_pct: float = float("nan")  # the daemon's live threads only (what cpu_pct was until 2026-12-07)
    pooled_ticks: int = 0  # of timed_ticks, those timed by the mean of an interval with several (see measure)
    # The slowest tick timed alone, by phase (ms): where the p99 goes (the phases' sum is the tick's duration).
    slowest_phases_ms: dict[str, float] = field(default_factory=dict)
    # The quiet window's ticks by phase, mean ms a tick: where the CPU per tick goes.
    mean_phases_ms: dict[str, float] = field(default_factory=dict)


def nearest_rank(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def host_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat: what else ran on the VM while the daemon was measured."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def measure(d: Daemon, window: float, load: list[int] = []) -> Window:  # noqa: B006 - read only
    assert d.proc is not None
    pid, mx = d.proc.pid, d.ns
    # 1. quiet: nothing but the daemon's own ticks between the two readings.
    m0 = try_scrape(mx)
    h0, l0 = host_jiffies(), sum(cpu_seconds(p) for p in load)
    c0, v0, t0 = cpu_seconds(pid), live_cpu_seconds(pid), time.monotonic()
    time.sleep(window)
    c1, v1, t1 = cpu_seconds(pid), live_cpu_seconds(pid), time.monotonic()
    h1, l1 = host_jiffies(), sum(cpu_seconds(p) for p in load)
    m1 = try_scrape(mx)
    mem = memory_mb(pid)
    ticks = int(m1.count - m0.count) if m0 and m1 else 0
    # The whole process's count takes in the threads that ended; its clock ticks (10 ms) can read a short, quiet
    # window as nothing, where the live threads' count is exact: the larger of the two.
    cpu = max(c1 - c0, v1 - v0)
    # 2. latency: a scrape every 0.25 s; an interval with exactly one tick's end gives that tick's duration.
    durations: list[float] = []
    slowest: dict[str, float] = {}
    pooled = 0
    prev = try_scrape(mx)
    end = time.monotonic() + window
    while time.monotonic() < end:
        time.sleep(0.25)
        cur = try_scrape(mx)
        k = int(cur.count - prev.count) if cur and prev else 0
        if k == 1:
            assert cur is not None and prev is not None
            took = (cur.seconds - prev.seconds) * 1000
            if not durations or took > max(durations):
                slowest = {p: round((s - prev.phases.get(p, 0.0)) * 1000, 1) for p, s in cur.phases.items()}
            durations.append(took)
        elif k > 1:
            # A scrape waits for the lock a tick holds, and back-to-back long ticks can keep it from the scrape
            # for more than one: their mean stands for each, lest the longest ticks be the ones left out.
            durations += [(cur.seconds - prev.seconds) * 1000 / k] * k  # type: ignore[union-attr]
            pooled += k
        prev = cur
    st = try_status(d)  # {} when unanswered: -1 below
    mean_phases = (
        {p: round((s - m0.phases.get(p, 0.0)) * 1000 / ticks, 2) for p, s in m1.phases.items()}
        if m0 and m1 and ticks
        else {}
    )
    return Window(
        cpu_pct=100 * cpu / (t1 - t0),
        live_cpu_pct=100 * (v1 - v0) / (t1 - t0),
        cpu_ms_per_tick=1000 * cpu / ticks if ticks else float("nan"),
        ticks=ticks,
        mean_tick_ms=1000 * (m1.seconds - m0.seconds) / ticks if m0 and m1 and ticks else float("nan"),
        over_250ms=int(m1.over_250ms - m0.over_250ms) if m0 and m1 else -1,
        rss_mb=mem["VmRSS"],
        hwm_mb=mem["VmHWM"],
        p50_ms=statistics.median(durations) if durations else float("nan"),
        p99_ms=nearest_rank(durations, 0.99) if durations else float("nan"),
        timed_ticks=len(durations),
        pooled_ticks=pooled,
        slowest_phases_ms=slowest,
        mean_phases_ms=mean_phases,
        sockets=int(st.get("sockets", -1)),
        sources=int(st.get("sources", -1)),
        blocks=int(st.get("blocks", -1)),
        host_busy_pct=100 * (h1[0] - h0[0]) / max(1, h1[1] - h0[1]),
        load_cpu_pct=100 * (l1 - l0) / (t1 - t0),
    )


@dataclass
class Row:
    case: str
    size: int
    windows: list[Window] = field(default_factory=list)
    side: dict[str, float] = field(default_factory=dict)  # contenders' times in ms, and notes in figures
    started_s: float = 0.0
    note: str = ""

    def med(self, key: str) -> float:
        vals = [getattr(w, key) for w in self.windows if not math.isnan(getattr(w, key))]
        return statistics.median(vals) if vals else float("nan")

    def span(self, key: str) -> tuple[float, float]:
        vals = [getattr(w, key) for w in self.windows if not math.isnan(getattr(w, key))]
        return (min(vals), max(vals)) if vals else (float("nan"), float("nan"))

    def cell(self, key: str, f: str = ".1f") -> str:
        """The median, with the range over the reps when there are several."""
        lo, hi = self.span(key)
        mid = self.med(key)
        return f"{mid:{f}}" if len(self.windows) < 2 else f"{mid:{f}} ({lo:{f}}-{hi:{f}})"


def timed_ms(mx: Netns, cmd: list[str], reps: int = 3) -> float:
    """Median wall time of a command run in the MX namespace, its output read through a pipe."""
    times = []
    for _ in range(reps):
        with entered(mx.name):
            t0 = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.PIPE, check=True)
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


@contextlib.contextmanager
def daemon(mx: Netns, tmp: Path, wait: float = 30.0) -> Iterator[Daemon]:
    d = Daemon(mx, config(tmp))
    try:
        yield d.start(wait=wait)
    except BaseException:
        with contextlib.suppress(OSError):
            print("daemon log, last lines:\n" + "\n".join(d.log.read_text().splitlines()[-30:]), file=sys.stderr)
        raise
    finally:
        d.stop()


def wave(d: Daemon, action: str) -> None:
    answer = d.ask(cmd="wave", action=action, **({"duration": "1h"} if action == "on" else {}))
    if not answer.get("ok"):
        raise RuntimeError(f"wave {action} refused: {answer}")


def steady(d: Daemon, settle: float) -> None:
    """A few ticks more after the size was reached: the first ticks with new sources cost more (their group keys,
    allowlist standings and rate buckets are made once)."""
    time.sleep(settle)


# --- the cases ------------------------------------------------------------------------------------------------


def run_sockets(sizes: list[int], args: argparse.Namespace, log: Callable[[str], None]) -> list[Row]:
    rows = []
    with (
        Population(max(sizes), args.per_source, talk_every=args.talk_every) as pop,
        tempfile.TemporaryDirectory(prefix="govern-bench-") as tmp,
        daemon(pop.lab.mx, Path(tmp)) as d,
    ):
        for n in sorted(set(sizes)):
            t0 = time.monotonic()
            pop.grow(n)
            wait_until(f"the daemon to see {n} sockets", reaches(d, "sockets", n), 60 + n / 1000)
            scanner = d.status().get("scanner", "?")
            log(f"sockets {n:,}: open and seen by the daemon in {time.monotonic() - t0:.1f} s; read by {scanner}")
            steady(d, args.settle)
            row = Row("sockets", n)
            for _ in range(args.reps):
                row.windows.append(measure(d, args.window, [p.pid for p in pop.servers + pop.clients]))
                log(f"  {fmt_window(row.windows[-1])}")
            ss = ["ss", "-Htn", "state", "established", f"( sport = :{PORT} )"]
            row.side["ss -Htn"] = timed_ms(pop.lab.mx, ss)
            rows.append(row)
    return rows


def syn_pool(m: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    """One SYN from each of m sources: IPv4 hosts of 198.18.0.0/15 first, then IPv6 hosts of V6_RANGE, one a /64."""
    rng = random.Random(seed)
    n4 = min(m, V4_SPAN)
    c4, c6 = SynCrafter(MX4, SYN_PORT), SynCrafter(MX6, SYN_PORT)
    v4 = [c4.packet(V4_BASE + i, rng.randrange(1024, 65536), rng.getrandbits(32), 0) for i in range(n4)]
    v6 = [c6.packet(V6_BASE + (i << 64) + 1, rng.randrange(1024, 65536), rng.getrandbits(32), 0) for i in range(m - n4)]
    return v4, v6


def send_syns(net: Netns, pools: tuple[list[bytes], list[bytes]], pps: float) -> float:
    """Send the pools through raw sockets from the client namespace, paced: a burst far beyond conntrack's table
    (262,144 entries per namespace, each RST'd SYN's entry lingers 10 s) would only log drops."""
    with entered(net.name):
        s4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        s6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    t0 = time.monotonic()
    sent = 0
    try:
        for sock, dst, pool in ((s4, MX4, pools[0]), (s6, MX6, pools[1])):
            for i in range(0, len(pool), 1000):
                for pkt in pool[i : i + 1000]:
                    sock.sendto(pkt, (dst, 0))
                sent += len(pool[i : i + 1000])
                ahead = sent / pps - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
    finally:
        s4.close()
        s6.close()
    return time.monotonic() - t0


@contextlib.contextmanager
def trickle(net: Netns, m: int, pps: float) -> Iterator[None]:
    """New connections from sources of the M (syn_pool's), drawn at random, at `pps` a second from a thread, for as
    long as the block runs: each SYN with a fresh port and sequence number, so the kernel counts each (a SYN sent
    again is a retransmission, which it does not)."""
    if pps <= 0:
        yield
        return
    with entered(net.name):
        s4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        s6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    c4, c6 = SynCrafter(MX4, SYN_PORT), SynCrafter(MX6, SYN_PORT)
    n4 = min(m, V4_SPAN)
    stop = threading.Event()

    def send() -> None:
        rng = random.Random()  # not seeded: a SYN of an earlier window within 40 s would not count again
        t0, sent = time.monotonic(), 0
        while not stop.is_set():
            i, port, seq = rng.randrange(m), rng.randrange(1024, 65536), rng.getrandbits(32)
            if i < n4:
                s4.sendto(c4.packet(V4_BASE + i, port, seq, 0), (MX4, 0))
            else:
                s6.sendto(c6.packet(V6_BASE + ((i - n4) << 64) + 1, port, seq, 0), (MX6, 0))
            sent += 1
            ahead = sent / pps - (time.monotonic() - t0)
            if ahead > 0:
                stop.wait(ahead)

    thread = threading.Thread(target=send, name="trickle", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        s4.close()
        s6.close()


def run_tracked(sizes: list[int], args: argparse.Namespace, log: Callable[[str], None]) -> list[Row]:
    case = ("trickled" if args.trickle > 0 else "tracked") + (" in a wave" if args.wave else "")
    rows = []
    lab = Lab()
    try:
        lab.up()
        # The whole of 198.18.0.0/15 as sources (tests/netns.py's Lab routes only the /16): the MX's RSTs go back.
        lab.net.sh("ip", "route", "add", "local", "198.19.0.0/16", "dev", "lo")
        lab.mx.sh("ip", "route", "add", "198.19.0.0/16", "via", "203.0.113.1")
        lab.net.sh("ip", "-6", "route", "add", "local", V6_RANGE, "dev", "lo")
        lab.mx.sh("ip", "-6", "route", "add", V6_RANGE, "via", "2001:db8:25::1")
        with tempfile.TemporaryDirectory(prefix="govern-bench-") as tmp, daemon(lab.mx, Path(tmp)) as d:
            for m in sorted(set(sizes)):
                row = Row(case, m)
                for r in range(args.reps):
                    # Ports and sequence numbers of their own at each size: a SYN that repeats one of the size before
                    # (address, port and sequence number) may pass for a retransmission and not count again, and the
                    # earlier count then lapses during the wait (seen on 2026-12-08: 150,000 of 250,000 counted).
                    pools = syn_pool(m, seed=m * 100 + r)
                    if args.wave and r == 0 and d.status()["mode"] != "normal":
                        # A wave drops a first contact's first SYN uncounted (the lab's SYNs are sent once): the
                        # new sources are counted in normal mode, and the wave comes back for the windows.
                        wave(d, "off")
                    took = send_syns(lab.net, pools, args.syn_pps)
                    if r == 0:
                        try:
                            wait_until(f"the daemon to track {m} sources", reaches(d, "sources", m), 120)
                        except RuntimeError:
                            # Measured all the same (CPU and memory come from /proc): the row says so.
                            row.note = f"the daemon did not report {m:,} sources within 120 s"
                            log(f"tracked {m:,}: {row.note}")
                            send_syns(lab.net, pools, args.syn_pps)  # the first ones may have expired meanwhile
                        log(f"tracked {m:,}: {m:,} SYNs sent in {took:.1f} s")
                        if args.wave:
                            wave(d, "on")
                        steady(d, args.settle)
                    else:
                        time.sleep(2)  # a tick to take the new counts in
                    with trickle(lab.net, m, args.trickle):
                        row.windows.append(measure(d, args.window))
                    log(f"  {fmt_window(row.windows[-1])}")
                # One process a shard: nft 1.0.6 fails a second `list set` in one run ("No such file or directory").
                shards = (["nft", "list", "set", "inet", "govern", name] for name in seen_sets(4))
                row.side["nft list set seen4_*"] = sum(timed_ms(lab.mx, cmd, 1) for cmd in shards)
                rows.append(row)
    finally:
        lab.down()
    return rows


def run_blocks(sizes: list[int], args: argparse.Namespace, log: Callable[[str], None]) -> list[Row]:
    rows = []
    for b in sorted(set(sizes)):
        lab = Lab()
        try:
            lab.up()
            with tempfile.TemporaryDirectory(prefix="govern-bench-") as tmp:
                now = time.time()
                Store(f"{tmp}/state").save(block_plan(b, now), now)
                t0 = time.monotonic()
                with daemon(lab.mx, Path(tmp), wait=120) as d:
                    row = Row("blocks", b, started_s=time.monotonic() - t0)
                    wait_until(f"{b} blocks", reaches(d, "blocks", b), 60)
                    log(f"blocks {b:,}: restored, the daemon answered {row.started_s:.1f} s after its start")
                    steady(d, args.settle)
                    for _ in range(args.reps):
                        row.windows.append(measure(d, args.window))
                        log(f"  {fmt_window(row.windows[-1])}")
                    nft = ["nft", "list", "set", "inet", "govern", "block4"]
                    row.side["nft list set block4"] = timed_ms(lab.mx, nft, 1)
                    rows.append(row)
        finally:
            lab.down()
    return rows


# --- reporting ------------------------------------------------------------------------------------------------


def fmt_window(w: Window) -> str:
    return (
        f"cpu {w.cpu_pct:.2f}% ({w.cpu_ms_per_tick:.1f} ms/tick over {w.ticks} ticks; live threads alone "
        f"{w.live_cpu_pct:.2f}%), tick mean {w.mean_tick_ms:.1f}"
        f" p50 {w.p50_ms:.1f} p99 {w.p99_ms:.1f} ms ({w.timed_ticks} timed, {w.pooled_ticks} of them by a mean; "
        f"{w.over_250ms} over 250 ms), "
        f"RSS {w.rss_mb:.0f} MB (peak {w.hwm_mb:.0f}); daemon sees {w.sockets:,} sockets, {w.sources:,} sources, "
        f"{w.blocks:,} blocks; VM busy {w.host_busy_pct:.0f}% of its CPUs, the sessions' processes "
        f"{w.load_cpu_pct:.0f}% of a core; the slowest tick timed alone by phase (ms): "
        + (", ".join(f"{p} {ms:.0f}" for p, ms in w.slowest_phases_ms.items() if ms >= 1) or "-")
        + "; the quiet window's ticks by phase, mean ms: "
        + (", ".join(f"{p} {ms:.1f}" for p, ms in w.mean_phases_ms.items() if ms >= 0.1) or "-")
    )


def table(rows: list[Row]) -> str:
    head = (
        "| case | size | CPU % of a core | CPU ms per tick | tick p50 ms | tick p99 ms | ticks > 250 ms | RSS MB "
        "(peak) | side by side, ms |\n|---|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    lines = [head]
    for r in rows:
        over = sum(w.over_250ms for w in r.windows)
        ticks = sum(w.ticks for w in r.windows)
        side = "; ".join([f"{k} {v:,.0f}" for k, v in r.side.items()] + ([r.note] if r.note else []))
        lines.append(
            f"| {r.case} | {r.size:,} | {r.cell('cpu_pct', '.2f')} | {r.cell('cpu_ms_per_tick')} | {r.cell('p50_ms')} "
            f"| {r.cell('p99_ms')} | {over}/{ticks} | {r.med('rss_mb'):.0f} ({max(w.hwm_mb for w in r.windows):.0f}) "
            f"| {side} |"
        )
    return "\n".join(lines)


def plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2))
    style = {
        "sockets": ("o-", "C0"),
        "tracked": ("s-", "C1"),
        "trickled": ("D-", "C3"),
        "tracked in a wave": ("v-", "C4"),
        "trickled in a wave": ("P-", "C5"),
        "blocks": ("^", "C2"),
    }
    label = {
        "sockets": "N live sessions (x = sockets)",
        "tracked": "M tracked sources (x = sources)",
        "trickled": "M tracked sources, a trickle of new SYNs (x = sources)",
        "tracked in a wave": "M tracked sources in a wave (x = sources)",
        "trickled in a wave": "M tracked sources in a wave, a trickle of new SYNs (x = sources)",
        "blocks": "B restored blocks (x = blocks)",
    }
    for case in style:
        rs = [r for r in rows if r.case == case]
        if not rs:
            continue
        xs = [r.size for r in rs]
        mk, color = style[case]
        for ax, key, lo_hi in ((axes[0], "cpu_pct", True), (axes[1], "rss_mb", True)):
            ys = [r.med(key) for r in rs]
            err = [
                [y - r.span(key)[0] for y, r in zip(ys, rs, strict=True)],
                [r.span(key)[1] - y for y, r in zip(ys, rs, strict=True)],
            ]
            ax.errorbar(xs, ys, yerr=err if lo_hi else None, fmt=mk, color=color, capsize=3, label=label[case])
        axes[2].plot(xs, [r.med("p99_ms") for r in rs], mk, color=color, label=f"{label[case].split(' (')[0]}: p99")
        axes[2].plot(
            xs,
            [r.med("p50_ms") for r in rs],
            mk.replace("-", ":"),
            color=color,
            alpha=0.6,
            mfc="none",
            label=f"{label[case].split(' (')[0]}: p50",
        )
        if case == "sockets":
            ss = [r.side.get("ss -Htn", float("nan")) for r in rs]
            axes[2].plot(xs, ss, "x--", color="C7", label="`ss -Htn` listing the same sessions")
    tx, ty = zip(*sorted(TARGET_CPU.items()), strict=True)
    axes[0].plot(tx, ty, "r*", ms=14, label="target (20k: 2%, 100k: 10%)")
    axes[1].plot(*TARGET_RSS_MB, "r*", ms=14, label="target: 150 MB at 1M tracked")
    axes[1].axhline(TARGET_RSS_MB[1], color="r", ls=":", lw=1)
    axes[2].plot(*TARGET_P99_MS, "r*", ms=14, label="target: p99 250 ms at 100k sessions")
    axes[2].axhline(TARGET_P99_MS[1], color="r", ls=":", lw=1)
    for ax, ylab in zip(
        axes,
        ("CPU, % of one core (CPU time over the window)", "RSS, MB (VmRSS)", "tick duration, ms"),
        strict=True,
    ):
        ax.set_xscale("log")
        ax.set_xlabel("size: sessions, tracked sources or blocks (log)")
        ax.set_ylabel(ylab)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7.5, loc="upper left")
    axes[0].set_yscale("log")
    axes[2].set_yscale("log")
    axes[0].set_title("CPU at 1 Hz")
    axes[1].set_title("memory")
    axes[2].set_title("tick latency")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load(path: Path) -> list[Row]:
    """The rows of an earlier run's --json: the cases may be run one at a time (each under the lab's lock) and
    drawn together."""
    rows = []
    for r in json.loads(path.read_text())["rows"]:
        windows = [Window(**w) for w in r.pop("windows")]
        rows.append(Row(**r, windows=windows))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sockets", type=int, nargs="*", default=[1000, 10000, 20000, 50000, 100000])
    ap.add_argument("--tracked", type=int, nargs="*", default=[10000, 30000, 100000])
    ap.add_argument("--blocks", type=int, nargs="*", default=[100000])
    ap.add_argument("--reps", type=int, default=3, help="measurements per size (consecutive, same daemon)")
    ap.add_argument("--window", type=float, default=20.0, help="seconds of each of the two windows of a rep")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds after a size is reached before measuring")
    ap.add_argument("--per-source", type=int, default=10, help="sessions per source address")
    ap.add_argument("--talk-every", type=float, default=10.0, help="each session sends a line this often (0: never)")
    ap.add_argument("--syn-pps", type=float, default=20000.0, help="pace of the tracked case's SYNs")
    ap.add_argument(
        "--trickle", type=float, default=0.0, help="SYNs a second during the tracked case's windows (0: none)"
    )
    ap.add_argument(
        "--wave",
        action="store_true",
        help="the tracked case in a wave (`govern wave on`): every tick above normal mode reads the counting sets",
    )
    ap.add_argument("--json", type=Path, help="write every figure here")
    ap.add_argument(
        "--load", type=Path, nargs="*", default=[], help="also put the rows of earlier --json files in table and plot"
    )
    ap.add_argument("--plot", type=Path, help="write the PNG here")
    ap.add_argument(
        "--scan", choices=["auto", "sock_diag"], default="auto", help="backend.socket_scan: the BPF iterator or not"
    )
    ap.add_argument(
        "--ipv6-prefix", type=int, default=128, help="protect.ipv6_prefix (above 64, the scan is sock_diag's loop)"
    )
    ap.add_argument(
        "--calm-scan-every", type=int, default=0, help="daemon.calm_scan_every (0: the daemon's default, 3)"
    )
    args = ap.parse_args(argv)
    SCAN.update(socket_scan=args.scan, ipv6_prefix=args.ipv6_prefix, calm_scan_every=args.calm_scan_every)
    if os.geteuid() != 0:
        sys.exit("bench_daemon: needs root (network namespaces)")
    if any(m > TRACKED_MAX for m in args.tracked):
        sys.exit(f"bench_daemon: at most {TRACKED_MAX:,} tracked sources (see the module docstring)")
    command = " ".join([".venv/bin/python", "bench/bench_daemon.py", *(argv if argv is not None else sys.argv[1:])])
    mach = machine()

    def log(line: str) -> None:
        print(line, flush=True)

    log(f"machine: {mach}")
    log(f"command: {command}")
    rows = [row for path in args.load for row in load(path)]
    failed = False
    for sizes, case in ((args.sockets, run_sockets), (args.tracked, run_tracked), (args.blocks, run_blocks)):
        if sizes:
            try:
                rows += case(sizes, args, log)
            except Exception:  # the other cases still run; the failure is in the output
                traceback.print_exc()
                failed = True
    log("\n" + table(rows))
    if args.json:
        doc: dict[str, Any] = {"machine": mach, "command": command, "rows": [asdict(r) for r in rows]}
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    if args.plot:
        # With --load the rows come from several runs: their commands are in their JSON files.
        how = "bench/bench_daemon.py, rows of several runs (see docs/benchmarks.md)" if args.load else command
        plot(rows, args.plot, f"govern run, whole daemon at 1 Hz - {mach}\n{how}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
