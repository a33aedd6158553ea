"""`govern lab`: the flood lab's commands (docs/lab.md), registered by govern.cli when the lab extra is installed.

Importing this module fails with ImportError, naming the missing package, unless the lab's dependencies are
installed: the product's command line then offers a `govern lab` that says how to get them. It only looks for them
(importlib.util.find_spec), so `govern status` and the like do not pay for importing matplotlib or scapy.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from typing import Annotated, Any, NoReturn

import typer

from govern.errors import GovernError, UsageError

# What the lab needs beyond the product: matplotlib draws the timelines, scapy builds the SYN flood's template.
LAB_DEPENDENCIES = ("matplotlib", "scapy")
for _dep in LAB_DEPENDENCIES:
    if importlib.util.find_spec(_dep) is None:
        raise ModuleNotFoundError(f"the flood lab needs {_dep}, which is not installed", name=_dep)

lab_app = typer.Typer(
    no_args_is_help=True, help="The flood lab: a real Postfix under a bot flood in network namespaces, on this host."
)


def _fail(exc: GovernError) -> NoReturn:
    print(f"govern: {exc}", file=sys.stderr)
    raise typer.Exit(exc.exit_code)


def _lab_root() -> None:
    if os.geteuid() != 0:
        _fail(UsageError("the lab needs root: it creates network namespaces and installs Postfix"))
    _stop_like_ctrl_c()


def _stop_like_ctrl_c() -> None:
    """SIGTERM and SIGHUP end a lab run as Ctrl-C does, through its `finally` blocks, which stop its traffic, its
    govern and its Postfix and remove its namespaces: their default action ends the process at once, and left all of
    them running (a `timeout` around a run, a closed terminal, `kill`)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)


@lab_app.command("run")
def lab_run(
    scenarios: Annotated[
        list[str] | None, typer.Argument(help="baseline, flood, flood+govern (default: all three)")
    ] = None,
    out: Annotated[str, typer.Option("--out", help="directory for JSON, PNG and the table")] = "/var/lib/govern/lab",
    short: Annotated[bool, typer.Option("--short", help="the one-minute version (the CI scenario)")] = False,
    matrix: Annotated[
        bool, typer.Option("--matrix", help="the adversary matrix: every scenario against every peer")
    ] = False,
    scenario_names: Annotated[
        list[str] | None,
        typer.Option("--scenario", help="run these matrix scenarios (repeatable) beside one baseline"),
    ] = None,
    peers: Annotated[
        list[str] | None,
        typer.Option("--peer", help="none, fail2ban, postscreen or govern (repeatable; default all four)"),
    ] = None,
    fleet: Annotated[
        bool,
        typer.Option(
            "--fleet",
            help="the fleet scenario: two MXs, each with its own Postfix and govern; the flood hits mx1, then moves "
            "to mx2; run once with each govern alone and once sharing blocks through a real redis-server",
        ),
    ] = False,
) -> None:
    """Run lab scenarios side by side and report delivery, time to mitigate, blocks and costs; with --matrix or
    --scenario, the adversary matrix; with --fleet, the fleet scenario (docs/lab.md)."""
    from pathlib import Path

    from govern_lab import report, scenario

    if fleet:
        if scenarios or matrix or scenario_names or peers:
            _fail(UsageError("--fleet runs its own two runs (alone, sharing); it takes only --short and --out"))
        _lab_fleet(Path(out), short)
        return
    if matrix or scenario_names or peers:
        _lab_matrix(Path(out), short, matrix, scenario_names or [], peers or [], scenarios or [])
        return
    names = tuple(scenarios or scenario.SCENARIOS)
    bad = [n for n in names if n not in scenario.SCENARIOS]
    if bad:
        _fail(UsageError(f"unknown scenario {bad[0]!r}; choose from {', '.join(scenario.SCENARIOS)}"))
    _lab_root()
    plan = scenario.Plan.short() if short else scenario.Plan()
    try:
        results = scenario.run_all(Path(out), names, plan)
    except GovernError as exc:
        _fail(exc)
    print(report.table(results))
    print(f"\nresults, JSON and timeline pictures: {out}")


def _lab_fleet(out: Any, short: bool) -> None:
    from govern_lab import fleet, fleet_report

    _lab_root()
    plan = fleet.FleetPlan.short() if short else fleet.FleetPlan()
    try:
        results = fleet.run_both(out, plan)
    except GovernError as exc:
        _fail(exc)
    print(fleet_report.table(results))
    print(f"\ntable (table.md), each run's JSON (alone/, sharing/) and mx2's timeline (mx2.png): {out}")


def _lab_matrix(out: Any, short: bool, everything: bool, names: list[str], peers: list[str], extra: list[str]) -> None:
    from govern_lab import matrix

    if extra:
        _fail(UsageError("the matrix takes --scenario NAME, not positional scenarios"))
    if everything and names:
        _fail(UsageError("--matrix runs every scenario; leave out --scenario, or leave out --matrix"))
    if not everything and not names:
        _fail(UsageError("--peer needs --matrix or --scenario NAME"))
    bad = [n for n in names if n not in matrix.SCENARIOS] + [p for p in peers if p not in matrix.PEERS]
    if bad:
        _fail(
            UsageError(
                f"unknown scenario or peer {bad[0]!r}; scenarios: {', '.join(matrix.SCENARIOS)}; "
                f"peers: {', '.join(matrix.PEERS)}"
            )
        )
    _lab_root()
    plan = matrix.MatrixPlan.short() if short else matrix.MatrixPlan()
    try:
        base, cells = matrix.run_matrix(out, names or None, tuple(dict.fromkeys(peers)) or matrix.PEERS, plan)
    except GovernError as exc:
        _fail(exc)
    print(matrix.table(cells, base))
    print(f"\nmatrix (text and JSON), per-cell JSON and timeline pictures: {out}")


@lab_app.command("demo")
def lab_demo(
    out: Annotated[str, typer.Option("--out", help="where the picture and JSON go")] = "/var/lib/govern/lab-demo",
) -> None:
    """About a minute: build the lab, flood its Postfix, watch govern ride the wave, see the result, clean up."""
    from pathlib import Path

    from govern_lab import report, scenario

    _lab_root()
    plan = scenario.Plan.short()
    print(
        f"Building the lab: a Postfix MX limited to {plan.process_limit} sessions, legitimate senders, a trusted "
        f"relay with {plan.trusted_parallel} parallel sessions, and a bot swarm that floods from "
        f"t={plan.flood_start:.0f}s for {plan.flood_length:.0f}s. govern runs on its default config plus the lab's "
        "allowlist."
    )
    print(f"{'t':>5} {'SMTP sessions':>14} {'accept queue':>13} {'blocked':>8} {'throttled':>10} {'govern':>9}")

    def show(s: report.Sample) -> None:
        flood = plan.flood_start <= s.t < plan.flood_start + plan.flood_length
        print(
            f"{s.t:>5.0f} {s.sessions:>14} {s.queued:>13} {s.blocked:>8} {s.throttled:>10} {s.mode:>9}"
            f"  {'FLOOD' if flood else ''}"
        )

    work = Path(out)
    try:
        res = scenario.run("flood+govern", work, plan, on_sample=show)
    except GovernError as exc:
        _fail(exc)
    (work / "result.json").write_text(res.to_json())
    report.plot(res, str(work / "timeline.png"))
    print()
    print(report.table([res]))
    print(f"\npicture: {work / 'timeline.png'}\nfigures: {work / 'result.json'}\nthe lab has been removed.")


@lab_app.command("provision")
def lab_provision(
    role: Annotated[str, typer.Argument(help="mx, router, trusted, legit or bots")],
    confirm: Annotated[
        bool, typer.Option("--this-host-is-a-lab-vm", help="required: this changes this machine's addresses and routes")
    ] = False,
) -> None:
    """Give THIS machine a lab role (used by vagrant/provision.sh on the lab's VMs)."""
    from govern_lab import provision

    if not confirm:
        _fail(UsageError("this reconfigures this machine's network; pass --this-host-is-a-lab-vm on a lab VM only"))
    _lab_root()
    try:
        for line in provision.apply(role):
            print(line)
        if role == "mx":
            from govern_lab.postfix import Postfix, install

            install()
            Postfix(None, "/var/lib/govern-lab/postfix").start()
            print("postfix (lab instance) listening on port 25")
    except GovernError as exc:
        _fail(exc)
