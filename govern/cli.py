"""The `govern` command line. Every command takes --config; bad input exits with status 2 before anything is
changed, and errors are one line on stderr, never a traceback. With --json a command prints its reply as one JSON
document on stdout; its errors and exit codes are the same as without. Commands that only read (status, list, why,
allow --list, top, config check and show, sysctl plan and verify) take no lock and write nothing."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from importlib import metadata
from typing import Annotated, Any, NoReturn

import typer

from govern import config as configmod
from govern import protocol
from govern.addr import Prefix
from govern.control import call
from govern.durations import format_duration
from govern.errors import DaemonUnavailable, GovernError, UsageError
from govern.sysctl.manager import Report, SysctlManager
from govern.sysctl.planner import Item

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Help as written: rich markup would take the config's section names, [block] or [export], for style tags.
    rich_markup_mode=None,
    # Plain help wraps at 80 columns and cuts each command's summary short; a wide terminal may show more.
    context_settings={"max_content_width": 120},
    help="govern: a kernel-assisted connection governor for SMTP MX hosts.",
)
config_app = typer.Typer(no_args_is_help=True, help="Check or show the configuration.")
app.add_typer(config_app, name="config")
wave_app = typer.Typer(no_args_is_help=True, help="The ride-the-wave emergency mode: switch it on, off, or look.")
app.add_typer(wave_app, name="wave")

LAB_EXTRA = "pip install 'govern[lab]'"


def _version(value: bool) -> None:
    if not value:
        return
    try:
        print(f"govern {metadata.version('govern')}")
    except metadata.PackageNotFoundError:
        print("govern: version unknown (not installed as a package)")
    raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print govern's version and exit")
    ] = False,
) -> None:
    """govern: a kernel-assisted connection governor for SMTP MX hosts."""


def add_lab(app: typer.Typer) -> None:
    """`govern lab`: the flood lab's commands (govern_lab.cli) when the lab extra is installed; otherwise a stand-in
    that says how to get them. The lab is the only thing outside the product that the command line touches."""
    try:
        from govern_lab.cli import lab_app
    except ImportError as exc:
        missing = (exc.name or "govern_lab").split(".")[0]

        @app.command(
            "lab",
            context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
            help="The flood lab: not installed here (it comes with govern's lab extra).",
        )
        def lab_missing() -> None:
            print(
                f"govern: the flood lab is not installed ({missing} is missing); install it with: {LAB_EXTRA}",
                file=sys.stderr,
            )
            raise typer.Exit(2)

        return
    app.add_typer(lab_app, name="lab")


add_lab(app)
sysctl_app = typer.Typer(
    no_args_is_help=True, help="Size the TCP stack for the expected sessions: plan, apply, verify, restore sysctls."
)
app.add_typer(sysctl_app, name="sysctl")

ConfigOpt = Annotated[
    str | None,
    typer.Option("--config", "-c", help=f"config file (default {configmod.DEFAULT_PATH} if it exists)"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _fail(exc: GovernError) -> NoReturn:
    print(f"govern: {exc}", file=sys.stderr)
    raise typer.Exit(exc.exit_code)


def _walk(st: dict[str, Any]) -> str:
    """How the sockets were read, and when, where a calm tick reused an earlier walk of them."""
    parts = [f"read by {st['scanner']}"] if st.get("scanner") else []
    ago = st.get("sockets_walked_ago")
    if ago is not None:  # calm ticks reuse a walk (`daemon.calm_scan_every`): the counts may be a few seconds old
        parts.append(f"walked {ago:g} s ago")
    counted = st.get("counts_read_ago")
    if counted is not None and counted >= 2:  # a dear read of the SYN counts may wait (observer.ReadPace)
        parts.append(f"new connections counted {counted:g} s ago")
    return f" ({'; '.join(parts)})" if parts else ""


def _prefix(text: str) -> Prefix:
    try:
        return Prefix.parse(text, strict=True)
    except UsageError as exc:
        if "has host bits set" in str(exc):
            _fail(UsageError(f"{text!r} has host bits set; did you mean {Prefix.parse(text)}?"))
        _fail(exc)


def _load(path: str | None) -> configmod.Config:
    try:
        return configmod.load(path)
    except GovernError as exc:
        _fail(exc)


def _said(reply: dict[str, Any], as_json: bool) -> None:
    """A daemon's reply to a change: its message, or the whole reply as JSON."""
    print(json.dumps(reply, indent=2) if as_json else reply["message"])


def _ask(path: str | None, req: protocol.Request) -> dict[str, Any]:
    cfg = _load(path)
    try:
        reply = call(cfg["daemon"]["socket"], protocol.to_wire(req))
    except DaemonUnavailable as exc:
        _fail(exc)
    if not reply.get("ok"):
        print(f"govern: {reply.get('error', 'the daemon refused without a reason')}", file=sys.stderr)
        raise typer.Exit(2 if reply.get("refused") else 1)
    return reply


@app.command()
def run(
    config: ConfigOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="log every plan instead of enforcing it")] = False,
) -> None:
    """Run the daemon in the foreground (SIGTERM/SIGINT stop it, SIGHUP reloads the config)."""
    from govern import process

    try:
        raise typer.Exit(process.run(config, dry_run=dry_run))
    except GovernError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


@app.command()
def status(
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    top: Annotated[int, typer.Option("--top", help="how many of the most prolific sources to show")] = 10,
) -> None:
    """Mode, top sources, blocks and throttles, listener queues and kernel counters."""
    st = _ask(config, _request(protocol.Status, top=top))["status"]
    if as_json:
        print(json.dumps(st, indent=2))
        return
    mode = st["mode"] + (" (DRY RUN: nothing enforced)" if st["dry_run"] else "")
    print(f"mode: {mode}   backend: {st['backend']}   uptime: {format_duration(max(st['uptime'], 1))}")
    if st["mode"] != "normal":
        print("  " + _mode_line(st["mode_detail"]))
    read = _walk(st)
    print(f"tick: {st['last_tick_ms']} ms{_phases(st)}   sources: {st['sources']}   sockets: {st['sockets']}{read}")
    print(f"blocks: {st['blocks']}   throttles: {st['throttles']}   allowlist entries: {st['allowlist']}")
    store = st.get("store") or {}
    if store.get("state") == "behind":
        since = time.strftime("%H:%M:%S", time.localtime(store["since"]))
        print(
            f"STATE STORE NOT WRITTEN since {since} ({store['error']}): enforcing from memory; block, unblock, "
            "allow and wave requests are refused until it can be written"
        )
    print(
        f"sessions ended for blocked sources: {st['ended_sessions']}, cut for want of progress: {st['cut_sessions']}, "
        f"conntrack entries forgotten: {st['conntrack_forgotten']}"
    )
    print(_budget_line(st))
    slots = st.get("slots") or {}
    counted = f", {slots['in_budget']} of the budget's slots taken" if "in_budget" in slots else ""
    held = f"{slots.get('established', 0)} established, {slots.get('strangers', 0)} held by strangers"
    print(f"slots now: {held}{counted}")
    if not str(st.get("tarpit", "")).startswith("ready"):
        print(f"tarpit: off ({st.get('tarpit')})")
    for feature, why in (st.get("unavailable") or {}).items():
        print(f"{feature}: off ({why})")
    if st.get("trust"):
        print(_trust_line(st["trust"]))
    print(_fleet_line(st.get("fleet") or {}))
    m = st.get("metrics") or {}
    if m.get("state") == "serving":
        print(f"metrics: {m['url']}")
    elif m.get("state") == "failed":
        print(f"METRICS NOT SERVED: {m['error']}")
    for ls in st["listeners"]:
        where = f"[{ls['address']}]:{ls['port']}" if ":" in ls["address"] else f"{ls['address']}:{ls['port']}"
        print(f"listener {where}  queue {ls['queued']}/{ls['backlog']} ({ls['fill']:.0%})")
    if st["top"]:
        print(f"\n{'source':<28}{'held':>6}{'estab':>7}{'synrecv':>8}{'idle':>6}{'new/min':>9}  standing")
        for s in st["top"]:
            print(
                f"{s['source']:<28}{s['held']:>6}{s['established']:>7}{s['syn_recv']:>8}{s['idle']:>6}"
                f"{s['new_per_minute']:>9}  {s['standing']}"
            )
    nonzero = {k: v for k, v in st["counters_since_start"].items() if v}
    if nonzero:
        print("\nkernel counters since start: " + ", ".join(f"{k} {v}" for k, v in sorted(nonzero.items())))
    if st["failures"]:
        print(
            "\nfailures: " + ", ".join(f"{k} x{v} ({st['last_errors'].get(k, '')})" for k, v in st["failures"].items())
        )


def _phases(st: dict[str, Any]) -> str:
    """The last tick's largest phases, for the tick line: where the daemon's time goes."""
    laps = st.get("last_tick_phases_ms") or {}
    top = sorted(((ms, name) for name, ms in laps.items() if ms >= 0.05), reverse=True)[:4]
    return " (" + ", ".join(f"{name} {ms:g}" for ms, name in top) + ")" if top else ""


def _trust_line(t: dict[str, Any]) -> str:
    """What proves a sender (passing the wave's gate and the slot budget): the Postfix log's deliveries, and the
    kernel's count of replies where it is on."""
    log = t.get("postfix_log") or ""
    basis = t.get("postfix_log_basis") or ""
    if log:
        found = f"; {basis}" if basis else ""
        source = f"proven by deliveries in {log} ({t.get('deliveries_learned', 0)} so far{found})"
        if t.get("log_error"):
            source += f", LOG NOT READ: {t['log_error']}"
    else:
        source = "no Postfix log followed" + (f" ({basis})" if basis else "")
    counted = "on" if t.get("from_sessions") else "off"
    revoked = f"; {t['revoked']} proofs revoked in waves" if t.get("revoked") else ""
    if t.get("withheld"):
        revoked += f"; {t['withheld']} crowds' proofs on probation, out of the kernel's proven sets"
    return f"trust: {t.get('trusted', 0)} sources, {source}; the kernel's count of replies: {counted}{revoked}"


def _fleet_line(f: dict[str, Any]) -> str:
    """`govern status`'s fleet line: off, connected (as whom, what went each way) or down since when and why."""
    state = f.get("state", "off")
    if state == "off":
        return "fleet: off"
    since = time.strftime("%H:%M:%S", time.localtime(f.get("since", 0)))
    counts = (
        f"published {f.get('published', 0)}, received {f.get('received', 0)}, applied {f.get('applied', 0)}, "
        f"unblocked {f.get('unblocked', 0)}, "
        f"refused {f.get('refused_here', 0)} by this host's rules and {f.get('refused', 0)} unverified"
    )
    if state == "connected":
        lag = f.get("lag")
        lag_text = f", lag {lag:.2f} s" if isinstance(lag, int | float) else ""
        return f"fleet: connected as {f.get('name')} since {since}{lag_text}; {counts}"
    if state == "down":
        return f"FLEET DOWN since {since} ({f.get('error')}): enforcing alone; {counts}"
    return f"fleet: connecting as {f.get('name')}; {counts}"


@app.command()
def top(
    config: ConfigOpt = None,
    interval: Annotated[
        float, typer.Option("--interval", "-n", min=0.2, max=60.0, help="seconds between refreshes")
    ] = 1.0,
) -> None:
    """A live view of the daemon, redrawn every second; q or Ctrl-C quits.

    The mode and its reason, the listen queues and their drops, the MTA's slots against the slot budget, the top
    sources with their sessions, idle and bytes, the recent actions and the blocks by reason. Piped, it prints one
    frame."""
    from govern import top as view

    sock = _load(config)["daemon"]["socket"]

    def fetch(rows: int) -> dict[str, Any]:
        reply = call(sock, protocol.to_wire(protocol.Status(top=max(1, min(rows, protocol.MAX_TOP)))), timeout=5.0)
        if not reply.get("ok"):
            raise GovernError(reply.get("error", "the daemon refused the status request"))
        status: dict[str, Any] = reply["status"]
        return status

    try:
        fetch(1)  # a daemon that is not running is said before the screen is taken (exit 3)
        view.watch(fetch, interval)  # on screen, later failures show in the view; piped, they end it here
    except GovernError as exc:
        _fail(exc)


def _budget_line(st: dict[str, Any]) -> str:
    b = st.get("budget") or {}
    if "iptables" in st["backend"]:
        return "slot budget: none with the iptables backend (an nftables feature: docs/iptables.md)"
    if not b.get("slots"):
        return "slot budget: off (wave.slot_budget = 0)"
    lane = ""
    if b.get("newcomers"):
        crowds = b.get("crowds", 0)
        part = f" ({crowds} of those for sources opening several at once)" if crowds else ""
        lane = f", {b['newcomers']} of them kept for first contacts in a wave{part}"
    ps = ""
    if st.get("postscreen"):
        talkers = "cut" if st.get("pregreet_cut") else "waited for too"
        action = st.get("postscreen_greet_action") or "unknown"
        ps = (
            f"; postscreen in front: no silent client cut before its greet wait, clients that talk during it {talkers}"
            f" (postscreen_greet_action = {action})"
        )
    when = ", before a wave too" if b.get("before_wave", True) else " in a wave"
    return f"slot budget: strangers hold at most {b['slots']} slots{when}{lane} ({b['basis']}){ps}"


# The command-line option each request field comes from, for errors worded as the operator typed them.
_OPTION = {"duration": "--for", "reason": "--reason", "note": "--note", "top": "--top"}


def _request(kind: Callable[..., protocol.Request], **values: Any) -> protocol.Request:
    """A request checked as the daemon will check it (govern.protocol), refused here, with the option's name."""
    try:
        return kind(**values)
    except UsageError as exc:
        name, _, rest = str(exc).partition(": ")
        _fail(UsageError(f"{_OPTION.get(name, name)}: {rest}" if rest else str(exc)))


def _mode_line(m: dict[str, Any]) -> str:
    since = time.strftime("%H:%M:%S", time.localtime(m["since"])) if m["since"] else "start"
    who = "by the operator" if m["manual"] else "automatically"
    ends = f", ends in {format_duration(max(m['ends_in'], 1))} unless renewed" if m["ends_in"] is not None else ""
    return f"{m['mode']} since {since} ({who}{ends}): {m['reason'] or '-'}"


@wave_app.command("on")
def wave_on(
    duration: Annotated[
        str | None, typer.Option("--for", help="how long, e.g. 15m or 2h (default modes.wave_duration)")
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Switch the wave on now; it ends by itself after --for unless switched off first. During a wave, take it over
    for --for: the same wave goes on (what it counted of each source is kept)."""
    _said(_ask(config, _request(protocol.Wave, action="on", duration=duration or "")), as_json)


@wave_app.command("off")
def wave_off(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """End the wave (or elevated mode) now; no automatic wave starts for modes.calm_for."""
    _said(_ask(config, protocol.Wave("off")), as_json)


@wave_app.command("status")
def wave_status(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """The mode, why it was entered, and when it ends."""
    m = _ask(config, protocol.Wave("status"))["mode"]
    print(json.dumps(m, indent=2) if as_json else _mode_line(m))


@app.command()
def block(
    address: Annotated[str, typer.Argument(help="address or prefix, e.g. 198.51.100.7 or 2001:db8:bad::/48")],
    duration: Annotated[
        str | None, typer.Option("--for", help="how long, e.g. 30m, 2h (default: duration in [block])")
    ] = None,
    reason: Annotated[str, typer.Option("--reason", help="why, for the log and `govern list`")] = "",
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Block an address or prefix on the protected ports (refused for allowlisted addresses)."""
    p = _prefix(address)
    _said(_ask(config, _request(protocol.Block, prefix=str(p), duration=duration or "", reason=reason)), as_json)


@app.command()
def unblock(
    address: Annotated[str, typer.Argument(help="the address or prefix exactly as blocked")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Lift a block (and any throttle) on an address or prefix."""
    p = _prefix(address)
    _said(_ask(config, protocol.Unblock(str(p))), as_json)


@app.command()
def allow(
    address: Annotated[str | None, typer.Argument(help="address or prefix to allowlist")] = None,
    remove: Annotated[bool, typer.Option("--remove", help="take it off the allowlist again")] = False,
    note: Annotated[str, typer.Option("--note", help="who or what it is")] = "",
    force: Annotated[
        bool,
        typer.Option("--force", help="allow a prefix wider than guard.allow_ipv4_widest / guard.allow_ipv6_widest"),
    ] = False,
    list_: Annotated[
        bool,
        typer.Option("--list", help="list the allowlist instead, with where each entry comes from (changes nothing)"),
    ] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Allowlist an address or prefix at once (kept across restarts); lifts any block on it. With --list, show the
    allowlist: each prefix with its sources (allow.cidrs, a file and line, a hostname, an SPF domain, govern allow)."""
    if list_:
        if address is not None or remove or note or force:
            _fail(UsageError("--list takes no address and none of --remove, --note, --force"))
        _allowlist(config, as_json)
        return
    if address is None:
        _fail(UsageError("give an address or prefix to allowlist, or --list to see the allowlist"))
    p = _prefix(address)
    req = _request(protocol.Allow, prefix=str(p), remove=remove, note=note, force=force)
    _said(_ask(config, req), as_json)


def _listing(config: str | None, req: protocol.Request, as_json: bool, empty: str) -> list[dict[str, Any]]:
    """The entries a listing request answers with, for a table; as JSON, or none (the `empty` line), printed here."""
    entries: list[dict[str, Any]] = _ask(config, req)["entries"]
    if as_json or not entries:
        print(json.dumps(entries, indent=2) if as_json else empty)
        return []
    return entries


def _allowlist(config: str | None, as_json: bool) -> None:
    entries = _listing(config, protocol.Allowlist(), as_json, "the allowlist is empty")
    if not entries:
        return
    width = max(28, *(len(e["prefix"]) + 2 for e in entries))
    print(f"{'prefix':<{width}}from")
    for e in entries:
        print(f"{e['prefix']:<{width}}{', '.join(e['sources'])}")


@app.command("list")
def list_(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Every active block and throttle with its reason and expiry."""
    entries = _listing(config, protocol.ListBlocks(), as_json, "no active blocks or throttles")
    if not entries:
        return
    now = time.time()
    print(f"{'kind':<9}{'source':<28}{'left':>9}  reason")
    for e in entries:
        left = format_duration(max(e["until"] - now, 1))
        print(f"{e['kind']:<9}{e['prefix']:<28}{left:>9}  {e['reason']}")


@app.command()
def why(
    address: Annotated[str, typer.Argument(help="the sender's address, e.g. 198.51.100.7 or 2001:db8:51::7")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What govern saw of a source and why it acted, and what the sender must fix (docs/why.md)."""
    from govern import why as explain

    cfg = _load(config)
    try:
        explain.subject(address, cfg["protect"]["ipv4_prefix"], cfg["protect"]["ipv6_prefix"])
    except UsageError as exc:
        _fail(exc)
    doc = _ask(config, protocol.Why(address))["why"]
    print(json.dumps(doc, indent=2) if as_json else explain.render(doc))


@app.command()
def export(
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="plain, netset, json, csv, exabgp, bird, gobgp or dots")
    ] = "plain",
    output: Annotated[str | None, typer.Option("--output", "-o", help="write to this file (replaced whole)")] = None,
    follow: Annotated[bool, typer.Option("--follow", help="exabgp only: run as an ExaBGP process")] = False,
    rtbh: Annotated[bool, typer.Option("--rtbh", help="blackhole routes (65535:666) instead of FlowSpec")] = False,
    config: ConfigOpt = None,
) -> None:
    """Export the blocklist for the upstream ISP, through the guardrails of [export] (docs/export.md)."""
    from govern.export import command

    cfg = _load(config)
    try:
        if follow:
            if fmt != "exabgp" or output:
                raise UsageError("--follow streams to ExaBGP: use it with --format exabgp and without --output")
            raise typer.Exit(command.follow(cfg, rtbh=rtbh))
        text = command.once(cfg, fmt, rtbh=rtbh)
        if output:
            command.write(output, text)
        else:
            sys.stdout.write(text)
    except GovernError as exc:
        _fail(exc)


@app.command()
def teardown(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Remove every kernel object govern created (table inet govern), stopping the daemon if it runs."""
    cfg = _load(config)
    try:
        reply = call(cfg["daemon"]["socket"], protocol.to_wire(protocol.Teardown()))
        if not reply.get("ok"):
            _fail(GovernError(reply.get("error", "teardown failed")))
        if as_json:
            print(json.dumps({**reply, "daemon_stopped": True}, indent=2))
        else:
            print(f"{reply['message']}; daemon stopped")
        return
    except DaemonUnavailable:
        pass
    from govern import wiring

    if os.geteuid() != 0:
        _fail(UsageError("govern teardown needs root: it removes govern's nftables table"))
    try:
        removed = wiring.teardown_offline(cfg)
    except GovernError as exc:
        _fail(exc)
    rep = _sysctls(cfg).restore()
    if as_json:
        _report_json(rep, removed=removed, daemon_stopped=False)
        return
    for line in removed:
        print(line)
    if not removed:
        print("nothing to remove: no govern objects in the kernel")
    _print_report(rep)


@config_app.command("check")
def config_check(
    path: Annotated[str | None, typer.Argument(help="file to check (default: --config or the default path)")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate a config file; exit 2 naming the file, key and problem if it is wrong."""
    cfg = _load(path or config)
    if as_json:
        print(json.dumps({"ok": True, "path": cfg.path}, indent=2))
    else:
        print(f"{cfg.path or 'embedded defaults'}: OK")


@config_app.command("show")
def config_show(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Print the effective configuration (defaults plus the file)."""
    cfg = _load(config)
    print(json.dumps(cfg.to_dict(), indent=2) if as_json else cfg.to_toml(), end="" if not as_json else "\n")


def _sysctls(cfg: configmod.Config) -> SysctlManager:
    from govern.wiring import sysctl_manager

    return sysctl_manager(cfg)


def _sysctl_root(command: str) -> None:
    if os.geteuid() != 0:
        _fail(UsageError(f"govern sysctl {command} needs root: it writes sysctls and the journal in state_dir"))


def _report_json(rep: Report, **extra: Any) -> None:
    """A sysctl report as JSON; exit 1 when a key failed, as the text does."""
    doc = {"ok": not rep.failed, "what": rep.what, **extra, "sysctls": [asdict(o) for o in rep.outcomes]}
    print(json.dumps(doc, indent=2))
    if rep.failed:
        raise typer.Exit(1)


def _print_report(rep: Report) -> None:
    for line in rep.lines():
        print(f"sysctl {line}")
    if rep.failed:
        raise typer.Exit(1)


def _backlog_warnings(cfg: configmod.Config, items: tuple[Item, ...]) -> list[str]:
    """Best effort: without sock_diag (no permission, no kernel support) there is simply nothing to warn about."""
    from govern import wiring
    from govern.sysctl import backlog

    try:
        with wiring.sockets() as sd:
            listeners = sd.listeners(frozenset(cfg["protect"]["ports"]))
    except (GovernError, OSError):
        return []
    return backlog.plan_warnings(listeners, items)


@sysctl_app.command("plan")
def sysctl_plan(
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    wave: Annotated[bool, typer.Option("--wave", help="the wave profile layered on the base")] = False,
) -> None:
    """Each key govern tunes: current -> target, status and reason; and listeners whose own backlog is too small.
    Reads only: no lock, nothing written, and it works as any user (what is in force is then unknown if the
    journal in state_dir is root's)."""
    from govern.sysctl.journal import JournalError

    cfg = _load(config)
    unread = ""
    try:
        mgr = _sysctls(cfg)
        items = mgr.plan(wave=wave)
        try:
            profiles: list[str] | None = mgr.profiles()
        except JournalError as exc:
            profiles, unread = None, str(exc)
    except GovernError as exc:
        _fail(exc)
    warnings = _backlog_warnings(cfg, items)
    if as_json:
        doc = {"profiles": profiles, "keys": [i.to_dict() for i in items], "warnings": warnings}
        print(json.dumps(doc | ({"journal_error": unread} if unread else {}), indent=2))
        return
    in_force = f"unknown ({unread})" if profiles is None else ", ".join(profiles) or "none"
    print(f"profile: {'wave on top of base' if wave else 'base'}   in force: {in_force}")
    print(f"{'key':<36}{'current':>10}{'target':>10}  {'status':<17}reason")
    for i in items:
        cur = "-" if i.current is None else str(i.current)
        tgt = "-" if i.target is None else str(i.target)
        print(f"{i.key:<36}{cur:>10}{tgt:>10}  {i.status.value:<17}{i.reason}")
    for w in warnings:
        print(f"warning: {w}")


def _sysctl_write(config: str | None, what: str, nothing: str, *, wave: bool, as_json: bool) -> None:
    cfg = _load(config)
    _sysctl_root(what)
    try:
        mgr = _sysctls(cfg)
        if what == "apply":
            rep = mgr.enter_wave() if wave else mgr.apply()
        else:
            rep = mgr.leave_wave() if wave else mgr.restore()
    except GovernError as exc:
        _fail(exc)
    if as_json:
        _report_json(rep)
        return
    if not rep.outcomes:
        print(nothing)
    _print_report(rep)


@sysctl_app.command("apply")
def sysctl_apply(
    config: ConfigOpt = None,
    wave: Annotated[bool, typer.Option("--wave", help="enter the wave profile (on top of what is in force)")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Apply the base profile (or the wave's), journaling each original value before its first write."""
    _sysctl_write(config, "apply", "nothing to change: every key is at or above its target", wave=wave, as_json=as_json)


@sysctl_app.command("restore")
def sysctl_restore(
    config: ConfigOpt = None,
    wave: Annotated[bool, typer.Option("--wave", help="end only the wave, back to the base targets")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Put every key govern changed back to its original value, from the journal (also after a crash)."""
    _sysctl_write(config, "restore", "nothing to restore: the journal is empty", wave=wave, as_json=as_json)


@sysctl_app.command("verify")
def sysctl_verify(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Drift between the plan (base, plus the wave while it is in force) and the live values; exit 1 on drift."""
    cfg = _load(config)
    try:
        drift = _sysctls(cfg).verify()
    except GovernError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps([d.__dict__ for d in drift], indent=2))
    elif drift:
        for d in drift:
            print(f"drift: {d.line()}")
    else:
        print("no drift: every key is at its planned value")
    if drift:
        raise typer.Exit(1)


def main() -> None:
    app()
