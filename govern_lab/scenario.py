"""Lab scenarios: `baseline` (no flood), `flood` (no protection) and `flood+govern`, each run against a real Postfix
in the lab's MX namespace with the same legitimate senders, trusted relay and bot flood, measured from outside
govern (sock_diag, the nft CLI, /proc) once a second, and reported as a Result (JSON, table, PNG)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from govern.addr import Prefix
from govern.errors import GovernError
from govern.model import ScanOptions
from govern.nft.ruleset import KINDS, NET6_LEN, parts
from govern.observe.netstat import deltas, parse
from govern_lab import report
from govern_lab.addresses import (
    BOT_RANGES,
    KNOWN_RELAYS,
    LEGIT_RANGES,
    MX4,
    MX6,
    SPOOFED,
    SWARMS,
    TRUSTED_RANGES,
    TRUSTED_RELAY,
    overlaps,
)
from govern_lab.postfix import Postfix, install
from govern_lab.topology import Lab

SCENARIOS = ("baseline", "flood", "flood+govern")
LAB_ALLOW = TRUSTED_RANGES
# The bot ranges (docs/testing.md): sessions from these are the flood's, whatever role opened them.
BOT_PREFIXES = tuple(Prefix.parse(p) for p in BOT_RANGES)
GOVERN_SETS = ("block4", "block6", "throttle4", "throttle6", "tight4", "tight6", "tarpit4", "tarpit6")


@dataclass(frozen=True)
class Bot:
    """One bot role of the flood: the traffic generator's role name and its options."""

    role: str
    args: tuple[str, ...]


# The flood: every kind of bot the lab has, bounded by the flood's duration (passed to each role).
FULL_FLOOD = (
    Bot("hogs", ("--sources", "198.18.10.0/27", "--per-source", "25")),
    Bot("hogs", ("--sources", "2001:db8:bad:10::/60", "--per-source", "25", "--drip", "20")),
    Bot("reconnect", ("--sources", "198.18.20.0/28", "--rate", "20")),
    Bot("pretalk", ("--sources", "198.18.30.0/28", "--per-source", "5")),
    Bot("swarm", ("--sources", SWARMS, "--count", "3000")),
    Bot("synflood", ("--sources", SPOOFED, "--pps", "2000")),
)
# The flood the core governor is expected to ride: prolific sources only. A wide swarm of sources that each stay
# under every per-source limit needs idle-session cutting (the ride-the-wave mode), so it is in FULL_FLOOD only.
PROLIFIC_FLOOD = tuple(b for b in FULL_FLOOD if b.role != "swarm")


@dataclass
class Plan:
    """Timing and load of a run. The defaults are the full scenario; `short()` is the CI one."""

    duration: float = 120.0
    flood_start: float = 20.0
    flood_length: float = 80.0
    legit_rate: float = 4.0
    # How long a legitimate client waits for the banner and each reply. The run lasts at least this long past the
    # flood, so every transaction started during the flood has an outcome (none is cut off by the end of the run).
    client_timeout: float = 30.0
    # 14 senders at ~17 connections a minute each: a busy relay's few addresses, under govern's default 60/minute,
    # with several sessions pending each while a flood holds the MTA's slots.
    legit_sources: str = KNOWN_RELAYS[0]
    trusted_parallel: int = 30
    trusted_rate: float = 10.0  # transactions per second across its parallel sessions
    flood: tuple[Bot, ...] = FULL_FLOOD
    process_limit: int = 50

    def __post_init__(self) -> None:
        self.duration = max(self.duration, self.flood_start + self.flood_length + self.client_timeout + 5)

    def client_timeouts(self) -> list[str]:
        """Every wait of a legitimate client bounded by `client_timeout`, the whole transaction included."""
        t = f"{self.client_timeout:g}"
        return ["--timeout", t, "--cmd-timeout", t, "--txn-timeout", t]

    @classmethod
    def short(cls) -> Plan:
        return cls(duration=65.0, flood_start=10.0, flood_length=30.0, client_timeout=20.0, flood=PROLIFIC_FLOOD)


@dataclass
class _Sampler:
    lab: Lab
    govern_pid: int | None
    on_sample: Callable[[report.Sample], None] | None = None
    govern_socket: str | None = None
    # Other nftables sets in the mx namespace whose members count as blocked: (family, table, set), e.g. fail2ban's.
    block_sets: tuple[tuple[str, str, str], ...] = ()
    role: str = "mx"  # the MX namespace it samples (the fleet scenario's mx2 has one of its own)
    # Seconds between samples; the kernel's sets are read once a second whatever it is (a full flood's block sets
    # are large), the sockets every sample.
    every: float = 1.0
    samples: list[report.Sample] = field(default_factory=list)
    trusted_seen: set[str] = field(default_factory=set)
    legit_seen: set[str] = field(default_factory=set)
    blocked_peak: int = 0
    blocked_seen: set[str] = field(default_factory=set)
    # govern's proven sources as last read: (4, address) and (6, the address's /64), as its proven sets key them.
    proven: frozenset[tuple[int, int]] = frozenset()
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, t0: float) -> None:
        from govern.observe.sockdiag import SockDiag

        proc = _process(self.govern_pid)
        with self.lab.entered(self.role):
            diag = SockDiag()
        every, blocked, throttled, sets_read = self.every, 0, 0, -1.0
        try:
            while not self.stop.wait(max(0.0, every - (time.monotonic() - t0) % every)):
                scan = diag.scan(ScanOptions(frozenset({25}), idle_after_ms=10_000))
                bots = [(src, c) for src, c in scan.sources.items() if any(b.contains(src) for b in BOT_PREFIXES)]
                if time.monotonic() - sets_read >= 1.0 - every / 2:
                    sets_read = time.monotonic()
                    blocked, throttled = self._read_sets()
                cpu, rss = 0.0, 0
                if proc is not None:
                    with contextlib.suppress(Exception):
                        cpu, rss = proc.cpu_percent(None), proc.memory_info().rss
                sample = report.Sample(
                    t=round(time.monotonic() - t0, 2),
                    sessions=sum(c.established for c in scan.sources.values()),
                    queued=sum(ls.queued for ls in scan.listeners),
                    blocked=blocked,
                    throttled=throttled,
                    govern_cpu=cpu,
                    govern_rss=rss,
                    mode=self._mode(),
                    bot_sessions=sum(c.established for _src, c in bots),
                    unproven_bot_sessions=(
                        sum(c.established for src, c in bots if _key(src) not in self.proven) if self.govern_pid else -1
                    ),
                )
                self.samples.append(sample)
                if self.on_sample is not None:
                    self.on_sample(sample)
        finally:
            diag.close()

    def _read_sets(self) -> tuple[int, int]:
        """How many sources are blocked and throttled now; who was ever seen in a set is kept as it goes."""
        sets = self._govern_sets() if self.govern_pid else {}
        if self.govern_pid:
            listed = (
                self.lab.run(self.role, "nft", "-j", "list", "set", "inet", "govern", name, check=False)
                for name in ("proven4", "proven6")
            )
            self.proven = frozenset(_key(Prefix.parse(e)) for raw in listed for e in _elements(raw))
        for fam, table, name in self.block_sets:
            raw = self.lab.run(self.role, "nft", "-j", "list", "set", fam, table, name, check=False)
            sets.setdefault("block4", []).extend(_elements(raw))
        blocked = len(sets.get("block4", ())) + len(sets.get("block6", ()))
        throttled = sum(len(sets.get(n, ())) for n in ("throttle4", "throttle6", "tight4", "tight6"))
        self.blocked_peak = max(self.blocked_peak, blocked)
        self.blocked_seen.update(sets.get("block4", ()), sets.get("block6", ()))
        for members in sets.values():
            self.trusted_seen |= {m for m in members if overlaps(m, TRUSTED_RANGES)}
            self.legit_seen |= {m for m in members if overlaps(m, LEGIT_RANGES)}
        return blocked, throttled

    def _mode(self) -> str:
        if self.govern_socket is None:
            return ""
        from govern.control import call

        try:
            return str(call(self.govern_socket, {"cmd": "wave", "action": "status"}, timeout=1.0)["mode"]["mode"])
        except (GovernError, KeyError, OSError):
            return "?"

    def _govern_sets(self) -> dict[str, list[str]]:
        """Each of GOVERN_SETS's members; a block or throttle set of a family with all its parts (hosts, /64s,
        other prefixes: govern.nft.ruleset.parts)."""
        out: dict[str, list[str]] = {}
        for name in GOVERN_SETS:
            kind, version = name[:-1], int(name[-1])
            out[name] = []
            for each in parts(kind, version) if kind in KINDS else (name,):
                raw = self.lab.run(self.role, "nft", "-j", "list", "set", "inet", "govern", each, check=False)
                tail = f"/{NET6_LEN}" if each.endswith("6n") else ""
                out[name] += [e + tail for e in _elements(raw)]
        return out


def _key(src: Prefix) -> tuple[int, int]:
    """A source as govern's proven sets key it: an IPv4 host, an IPv6 address's /64 (protect.ipv6_prefix's default)."""
    return (4, src.value) if src.version == 4 else (6, src.value >> 64)


def _process(pid: int | None) -> Any:
    if pid is None:
        return None
    import psutil

    p = psutil.Process(pid)
    p.cpu_percent(None)
    return p


def _elements(raw: str) -> list[str]:
    try:
        data = json.loads(raw)
    except ValueError:
        return []
    out = []
    for obj in data.get("nftables", []):
        for e in obj.get("set", {}).get("elem", []):
            v = e["elem"]["val"] if isinstance(e, dict) and "elem" in e else e
            if isinstance(v, dict) and "prefix" in v:
                out.append(f"{v['prefix']['addr']}/{v['prefix']['len']}")
            else:
                out.append(str(v))
    return out


def _traffic(lab: Lab, ns: str, role: str, args: list[str], out: Path, duration: float) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "govern_lab.traffic", role, "--duration", f"{duration:g}", "--json-out", str(out)]
    return lab.popen(ns, *cmd, *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextlib.contextmanager
def _govern(lab: Lab, work: Path, role: str = "mx", extra: str = "") -> Iterator[int]:
    """govern on its default config plus the lab's allowlist in `role`'s namespace, its files under `work`; `extra`
    is appended to its config (the fleet scenario's [fleet] section)."""
    cidrs = ", ".join(f'"{c}"' for c in LAB_ALLOW)
    cfg = work / "govern.toml"
    cfg.write_text(
        f'[allow]\ncidrs = [{cidrs}]\n[daemon]\nstate_dir = "{work}/govern-state"\nsocket = "{work}/govern.sock"\n'
        + extra
    )
    log = open(work / "govern.log", "wb")  # noqa: SIM115 - handed to the child
    proc = lab.popen(role, sys.executable, "-m", "govern", "run", "--config", str(cfg), stdout=log, stderr=log)
    log.close()
    try:
        deadline = time.monotonic() + 20
        while not (work / "govern.sock").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"govern did not start: {(work / 'govern.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        lab.run(role, sys.executable, "-m", "govern", "teardown", "--config", str(cfg), check=False)


def _netstat(lab: Lab, role: str = "mx") -> dict[str, int]:
    return parse(lab.run(role, "cat", "/proc/net/netstat"))


def run(
    name: str,
    work: Path,
    plan: Plan | None = None,
    lab: Lab | None = None,
    on_sample: Callable[[report.Sample], None] | None = None,
) -> report.Result:
    """Run one scenario in a fresh lab (or the given one) and return its Result; files go to `work`."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r} (choose from {', '.join(SCENARIOS)})")
    plan = plan or Plan()
    work.mkdir(parents=True, exist_ok=True)
    install()
    own_lab = lab is None
    lab = lab or Lab().up()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with Postfix(lab, str(work / "postfix"), process_limit=plan.process_limit), contextlib.ExitStack() as stack:
            pid = stack.enter_context(_govern(lab, work)) if name == "flood+govern" else None
            before = _netstat(lab)
            sock = str(work / "govern.sock") if pid else None
            sampler = _Sampler(lab, pid, on_sample, govern_socket=sock)
            t0, wall0 = time.monotonic(), time.time()
            thread = threading.Thread(target=sampler.run, args=(t0,), daemon=True)
            thread.start()
            dst = ["--dst", MX4, "--dst", MX6]
            legit_out, trusted_out = work / "legit.json", work / "trusted.json"
            procs.append(
                _traffic(
                    lab,
                    "legit",
                    "legit",
                    [
                        *dst,
                        "--sources",
                        plan.legit_sources,
                        "--rate",
                        str(plan.legit_rate),
                        *plan.client_timeouts(),
                    ],
                    legit_out,
                    plan.duration,
                )
            )
            procs.append(
                _traffic(
                    lab,
                    "trusted",
                    "trusted",
                    [
                        *dst,
                        "--sources",
                        TRUSTED_RELAY,
                        "--parallel",
                        str(plan.trusted_parallel),
                        "--rate",
                        str(plan.trusted_rate),
                        *plan.client_timeouts(),
                    ],
                    trusted_out,
                    plan.duration,
                )
            )
            bot_outs: list[Path] = []
            flooding = name != "baseline"
            if flooding:
                time.sleep(plan.flood_start)
                for i, bot in enumerate(plan.flood):
                    out = work / f"bot-{i}-{bot.role}.json"
                    bot_outs.append(out)
                    procs.append(_traffic(lab, "bots", bot.role, [*dst, *bot.args], out, plan.flood_length))
            deadline = t0 + plan.duration + 45  # generators stop at their own deadlines; this is the backstop
            for p in procs:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            sampler.stop.set()
            thread.join(5)
            after = _netstat(lab)
            counters = deltas(before, after)
            return _result(name, plan, flooding, legit_out, trusted_out, bot_outs, sampler, counters, wall0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
        if own_lab:
            lab.down()


def _load(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return {"events": []}


def run_events(path: Path, wall0: float) -> list[dict[str, Any]]:
    """A generator's transactions on the run's clock (seconds since `wall0`, the run's start, as the samples
    count): a generator counts from its own start, a Python start-up (0.3-1 s on a busy machine) after the run's,
    and a transaction's start would otherwise be judged against the flood's window that much early."""
    doc = _load(path)
    shift = float(doc["started"]) - wall0 if "started" in doc else 0.0
    return [{**e, **{k: e[k] + shift for k in ("t_start", "t_end") if k in e}} for e in doc["events"]]


def flood_began(bot_outs: Sequence[Path], wall0: float, planned: float) -> float:
    """When the flood began on the run's clock: its first generator's start (each is started at `planned` and
    begins a Python start-up later), or `planned` if none reported."""
    starts = [float(d["started"]) - wall0 for d in map(_load, bot_outs) if "started" in d]
    return min(starts) if starts else planned


def _result(
    name: str,
    plan: Plan,
    flooding: bool,
    legit_out: Path,
    trusted_out: Path,
    bot_outs: list[Path],
    sampler: _Sampler,
    counters: dict[str, int],
    wall0: float,
) -> report.Result:
    from govern_lab.traffic.analysis import rolling_success

    legit = run_events(legit_out, wall0)
    began = flood_began(bot_outs, wall0, plan.flood_start)
    flood = (began, began + plan.flood_length) if flooding else None
    window = flood or (0.0, float("inf"))
    trusted = run_events(trusted_out, wall0)
    return assemble(name, plan, flood, window, legit, trusted, rolling_success(legit), bot_outs, sampler, counters)


def assemble(
    name: str,
    plan: Plan,
    flood: tuple[float, float] | None,
    window: tuple[float, float],
    legit: list[dict[str, Any]],
    trusted: list[dict[str, Any]],
    rolling: list[tuple[float, float]],
    bot_outs: list[Path],
    sampler: _Sampler,
    counters: dict[str, int],
) -> report.Result:
    """The lab's Result of one run (a scenario's, or a matrix cell's): legitimate and trusted transactions summarised
    over `window`, the flood's span (None without one), the sampler's figures and the bots' totals."""
    cpu = [s.govern_cpu for s in sampler.samples if s.govern_rss]
    rss = [s.govern_rss for s in sampler.samples if s.govern_rss]
    return report.Result(
        scenario=name,
        duration=plan.duration,
        flood_start=flood[0] if flood else None,
        flood_end=flood[1] if flood else None,
        legit=report.summarise(legit, *window),
        trusted=report.summarise(trusted, *window),
        time_to_mitigate=report.time_to_mitigate(rolling, flood[0]) if flood else None,
        trusted_in_govern_sets=bool(sampler.trusted_seen),
        legit_in_govern_sets=sorted(sampler.legit_seen),
        sources_blocked=sampler.blocked_peak,
        blocked=sorted(sampler.blocked_seen),
        peak_sessions=max((s.sessions for s in sampler.samples), default=0),
        counters=counters,
        govern_cpu_percent=round(sum(cpu) / len(cpu), 2) if cpu else None,
        govern_rss_max=max(rss) if rss else None,
        rolling=rolling,
        samples=sampler.samples,
        bots={p.stem: _load(p).get("totals", {}) for p in bot_outs},
    )


def run_all(work: Path, names: tuple[str, ...] = SCENARIOS, plan: Plan | None = None) -> list[report.Result]:
    """Run scenarios one after the other, each in a fresh lab; write JSON, PNG and the table into `work`."""
    results = []
    for name in names:
        sub = work / name.replace("+", "-")
        if sub.exists():
            shutil.rmtree(sub)
        res = run(name, sub, plan)
        (sub / "result.json").write_text(res.to_json())
        report.plot(res, str(sub / "timeline.png"))
        results.append(res)
    (work / "table.txt").write_text(report.table(results) + "\n")
    return results
