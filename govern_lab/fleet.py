"""The lab's fleet scenario (docs/lab.md, "Fleet: the second MX spared"): two MX namespaces behind one router, each
with its own private Postfix and its own govern, legitimate senders and the trusted relay sending to both all along,
and a bot flood that hits mx1, stops there, and hits mx2 from the same sources, as a botnet moves on to the backup
MX. Run twice: "alone" (no [fleet]: mx2 learns the flood itself) and "sharing" (both daemons in one fleet through a
real redis-server on a unix socket in the run's directory: mx2 has mx1's blocks before the flood reaches it).

This module owns the plan and the run; the lab's pieces are reused (govern_lab.topology's Lab with mx2,
govern_lab.postfix, the traffic roles, govern_lab.scenario's sampler and govern starter) and the figures, table and
picture are govern_lab.fleet_report's."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from govern_lab import fleet_report, redisd
from govern_lab.addresses import KNOWN_RELAYS, MX_ADDRS, TRUSTED_RELAY
from govern_lab.fleet_report import FleetResult, MxFigures
from govern_lab.postfix import Postfix, install
from govern_lab.scenario import FULL_FLOOD, Bot, _govern, _Sampler, _traffic, run_events
from govern_lab.topology import MX2, Lab
from govern_lab.traffic.analysis import rolling_success
from govern_lab.traffic.command import hold_sources

RUNS = ("alone", "sharing")
# Each MX's name in the fleet, by its lab role.
NAMES = {"mx": "mx1", MX2: "mx2"}
# The bots govern blocks on its own (a fleet shares blocks, nothing else): the IPv4 and IPv6 hogs of the scenarios'
# flood, 40 sources at 25 sessions each. Left out: the pre-banner talkers (the wave cuts their sessions; a first short
# run blocked 3 of their 14 sources on mx1, so the other 11 met mx2 as strangers in both runs and held its 50 slots),
# the reconnectors (the full queue starves them, and the wave's gate then holds them back, so they are seldom blocked:
# tests/kernel/test_lab_scenario.py), the swarm (each source under every per-source limit: cut, never blocked) and
# the spoofed SYNs (never a session).
FLEET_FLOOD = tuple(b for b in FULL_FLOOD if b.role == "hogs")


@dataclass
class FleetPlan:
    """Timing and load of a fleet run. The defaults are the full scenario; `short()` is the CI one."""

    warmup: float = 20.0  # legitimate mail to both MXs before the flood: govern learns the senders it sees deliver
    flood_length: float = 40.0  # on each MX
    move_after: float = 5.0  # between the flood's end on mx1 and its start on mx2
    legit_rate: float = 4.0  # per MX
    client_timeout: float = 30.0
    legit_sources: str = KNOWN_RELAYS[0]
    trusted_parallel: int = 30  # per MX
    trusted_rate: float = 10.0  # per MX
    flood: tuple[Bot, ...] = FLEET_FLOOD
    process_limit: int = 50

    @property
    def floods(self) -> dict[str, tuple[float, float]]:
        """Each MX role's flood window, in seconds since the run's start."""
        second = self.warmup + self.flood_length + self.move_after
        return {"mx": (self.warmup, self.warmup + self.flood_length), MX2: (second, second + self.flood_length)}

    @property
    def duration(self) -> float:
        """Until every transaction started during mx2's flood has an outcome."""
        return self.floods[MX2][1] + self.client_timeout + 5

    def client_timeouts(self) -> list[str]:
        t = f"{self.client_timeout:g}"
        return ["--timeout", t, "--cmd-timeout", t, "--txn-timeout", t]

    @classmethod
    def short(cls) -> FleetPlan:
        return cls(warmup=8.0, flood_length=15.0, move_after=3.0, client_timeout=10.0)


def bot_sources(plan: FleetPlan) -> list[str]:
    """Every source address the flood sends from (its picking is seeded: the same on both MXs and in both runs)."""
    dst = [a for addr in MX_ADDRS["mx"] for a in ("--dst", addr)]
    out: list[str] = []
    for bot in plan.flood:
        out += hold_sources([bot.role, *dst, "--duration", "1", *bot.args])
    return out


def fleet_config(url: str, name: str, key: Path) -> str:
    return f'[fleet]\nurl = "{url}"\nname = "{name}"\nkey_file = "{key}"\n'


def _cli(lab: Lab, role: str, work: Path, *args: str) -> Any:
    """`govern ARGS --json` against the daemon of `role` (its config under `work`), parsed; None if it failed."""
    cfg = str(work / "govern.toml")
    out = lab.run(role, sys.executable, "-m", "govern", *args, "--json", "--config", cfg, check=False)
    try:
        return json.loads(out)
    except ValueError:
        return None


@dataclass
class _Mx:
    """One MX of a run: its lab role, its directory, its daemon's pid and its sampler."""

    role: str
    work: Path
    pid: int
    sampler: _Sampler

    def blocked(self, sources: list[str]) -> list[str]:
        """Those of `sources` its nftables block sets cover now."""
        sets = self.sampler._govern_sets()
        return fleet_report.covered(sources, sets.get("block4", []) + sets.get("block6", []))

    def origins(self, hit: list[str]) -> dict[str, int]:
        """By whose decision its blocks cover `hit` (`govern list --json`: its own, or a fleet host's)."""
        return fleet_report.origins(hit, _cli(self.sampler.lab, self.role, self.work, "list") or [])


def run(name: str, work: Path, plan: FleetPlan | None = None, tag: str = "gvfleet") -> FleetResult:
    """One run ("alone" or "sharing") in a fresh lab with mx2; files go to `work` (mx1/, mx2/, redis/)."""
    if name not in RUNS:
        raise ValueError(f"unknown fleet run {name!r} (choose from {', '.join(RUNS)})")
    plan = plan or FleetPlan()
    work.mkdir(parents=True, exist_ok=True)
    install()
    if name == "sharing":
        redisd.install()
    sources = bot_sources(plan)
    lab = Lab(tag, mx2=True).up()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with contextlib.ExitStack() as stack:
            extra = {role: "" for role in NAMES}
            if name == "sharing":
                redis = stack.enter_context(redisd.Redis(lab, work / "redis"))
                key = redisd.write_key(work / "fleet.key")
                extra = {role: fleet_config(redis.url, NAMES[role], key) for role in NAMES}
            mxs: dict[str, _Mx] = {}
            for role, mx in NAMES.items():
                home = work / mx
                home.mkdir(exist_ok=True)
                stack.enter_context(Postfix(lab, str(home / "postfix"), process_limit=plan.process_limit, role=role))
                pid = stack.enter_context(_govern(lab, home, role, extra[role]))
                sampler = _Sampler(lab, pid, govern_socket=str(home / "govern.sock"), role=role, every=0.25)
                mxs[role] = _Mx(role, home, pid, sampler)
            t0, wall0 = time.monotonic(), time.time()
            threads = [threading.Thread(target=m.sampler.run, args=(t0,), daemon=True) for m in mxs.values()]
            for th in threads:
                th.start()
            for m in mxs.values():
                dst = [a for addr in MX_ADDRS[m.role] for a in ("--dst", addr)]
                legit = ["--sources", plan.legit_sources, "--rate", str(plan.legit_rate), *plan.client_timeouts()]
                procs.append(_traffic(lab, "legit", "legit", [*dst, *legit], m.work / "legit.json", plan.duration))
                trusted = ["--sources", TRUSTED_RELAY, "--parallel", str(plan.trusted_parallel)]
                trusted += ["--rate", str(plan.trusted_rate), *plan.client_timeouts()]
                procs.append(
                    _traffic(lab, "trusted", "trusted", [*dst, *trusted], m.work / "trusted.json", plan.duration)
                )
            arrival: dict[str, tuple[list[str], dict[str, int]]] = {}
            at_end: dict[str, int] = {}
            for role, m in mxs.items():
                start, end = plan.floods[role]
                _sleep_until(t0 + start)
                hit = m.blocked(sources)  # the kernel's sets, read in a few ms: then the flood arrives
                bots = _flood(lab, plan, role, m.work)
                # Whose blocks they were: the CLI takes a second to start, and a block held then is held a second on.
                arrival[role] = (hit, m.origins(hit))
                _sleep_until(t0 + end)
                at_end[role] = len(m.blocked(sources))
                _stop(bots, grace=5.0)
            deadline = t0 + plan.duration + 45  # generators stop at their own deadlines; this is the backstop
            for p in procs:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            for m in mxs.values():
                m.sampler.stop.set()
            for th in threads:
                th.join(5)
            status = {role: _cli(lab, role, m.work, "status") for role, m in mxs.items()}
            figs = {
                role: _figures(plan, m, wall0, arrival[role], at_end[role], len(sources), status[role])
                for role, m in mxs.items()
            }
            return FleetResult(run=name, mx1=figs["mx"], mx2=figs[MX2], plan=_plan_doc(plan))
    finally:
        _stop(procs, grace=10.0)
        lab.down()


def _flood(lab: Lab, plan: FleetPlan, role: str, work: Path) -> list[subprocess.Popen[bytes]]:
    dst = [a for addr in MX_ADDRS[role] for a in ("--dst", addr)]
    return [
        _traffic(lab, "bots", bot.role, [*dst, *bot.args], work / f"bot-{i}-{bot.role}.json", plan.flood_length)
        for i, bot in enumerate(plan.flood)
    ]


def _stop(procs: list[subprocess.Popen[bytes]], grace: float) -> None:
    """Each generator stops at its own deadline; one still running `grace` seconds later is told to stop."""
    deadline = time.monotonic() + grace
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.0, deadline - time.monotonic()))
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)


def _sleep_until(when: float) -> None:
    time.sleep(max(0.0, when - time.monotonic()))


def _figures(
    plan: FleetPlan,
    m: _Mx,
    wall0: float,
    arrival: tuple[list[str], dict[str, int]],
    at_end: int,
    n_sources: int,
    status: dict[str, Any] | None,
) -> MxFigures:
    legit = run_events(m.work / "legit.json", wall0)
    trusted = run_events(m.work / "trusted.json", wall0)
    return fleet_report.figures(
        NAMES[m.role],
        plan.floods[m.role],
        legit,
        trusted,
        rolling_success(legit),
        m.sampler.samples,
        (arrival[0], arrival[1], at_end),
        n_sources,
        status,
    )


def _plan_doc(plan: FleetPlan) -> dict[str, Any]:
    doc = asdict(plan)
    doc["floods"] = {NAMES[r]: w for r, w in plan.floods.items()}
    doc["duration"] = plan.duration
    return doc


def run_both(work: Path, plan: FleetPlan | None = None, runs: tuple[str, ...] = RUNS) -> list[FleetResult]:
    """The runs one after the other, each in a fresh lab; each run's JSON under work/RUN/, the markdown table
    (table.md) and the picture of mx2 (mx2.png) in `work`."""
    results = []
    for name in runs:
        sub = work / name
        if sub.exists():
            shutil.rmtree(sub)
        res = run(name, sub, plan)
        (sub / "result.json").write_text(res.to_json())
        results.append(res)
    (work / "table.md").write_text(fleet_report.table(results) + "\n")
    fleet_report.plot(results, str(work / "mx2.png"))
    return results
