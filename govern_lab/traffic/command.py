"""The traffic generators' command line, `python -m govern_lab.traffic ROLE ...` (docs in govern_lab.traffic):
every role's arguments, the options built from them, the run with its signals and SIGALRM backstop, the one line it
prints and the JSON report it writes."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from govern_lab.traffic import adversaries, bots, senders, syn
from govern_lab.traffic.adversaries import BabbleOptions, DripOptions, ProveOptions, SlowtalkOptions, StrangerOptions
from govern_lab.traffic.counters import BOT_FIELDS
from govern_lab.traffic.options import (
    ALL_HOSTS_UP_TO,
    DEFAULT_COUNT,
    DEFAULT_PER_SOURCE,
    DEFAULT_SOURCES,
    MATRIX_ROLES,
    TXN_ROLES,
    Common,
    FloodOptions,
    HoldOptions,
    ReconnectOptions,
    TrafficError,
    TxnOptions,
)
from govern_lab.traffic.sources import check_common


def _positive(text: str) -> float:
    v = float(text)
    if not v > 0 or math.isinf(v):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text}") from None
    if not 1 <= v <= 1000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 1000: {text}")
    return v


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m govern_lab.traffic",
        description="Traffic for the flood lab (run inside a lab namespace: ip netns exec NS ...).",
    )
    sub = ap.add_subparsers(dest="role", required=True)

    def role(name: str, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--dst", action="append", required=True, help="the MX address; give it twice for v4 and v6")
        p.add_argument("--port", type=int, default=25)
        p.add_argument("--duration", type=_positive, required=True, help="seconds; the generator stops by itself")
        p.add_argument(
            "--sources",
            action="append",
            default=[],
            metavar="CIDR",
            help=f"source prefixes (repeatable; default {' '.join(DEFAULT_SOURCES[name])})",
        )
        if name != "synflood":
            p.add_argument(
                "--count",
                type=int,
                help=f"source addresses to use (default every host if at most {ALL_HOSTS_UP_TO}, "
                f"else {DEFAULT_COUNT[name]})",
            )
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--json-out", metavar="PATH", help="where the JSON report goes")
        return p

    for name, text in (
        ("legit", "whole SMTP transactions at a steady rate from a few addresses"),
        ("trusted", "back-to-back SMTP transactions from the trusted relay, several at once"),
    ):
        p = role(name, text)
        if name == "legit":
            p.add_argument("--rate", type=_positive, default=2.0, help="new transactions per second")
            add_size(p, (2.0, 60.0))
        else:
            p.add_argument("--parallel", type=int, default=30, help="transactions in flight, at most")
            p.add_argument(
                "--rate", type=float, default=0.0, help="new transactions per second in all (0: back to back)"
            )
            p.add_argument("--retry-delay", type=float, default=1.0, help="pause after a failed transaction")
        p.add_argument("--timeout", type=_positive, default=30.0, help="connect + banner wait (s)")
        p.add_argument("--cmd-timeout", type=_positive, default=30.0, help="wait for each reply (s)")
        p.add_argument("--txn-timeout", type=_positive, default=120.0, help="bound on a whole transaction (s)")
        add_pipelining(p)

    for name, text in (
        ("hogs", "slot hogs: connect, read the banner, stay silent (or drip); reconnect when dropped"),
        ("pretalk", "send EHLO before the banner, then linger"),
        ("swarm", "many sources, each holding 1..--per-source silent connections"),
    ):
        p = role(name, text)
        p.add_argument("--per-source", type=int, default=DEFAULT_PER_SOURCE[name])
        p.add_argument("--drip", type=float, default=0.0, help="send one byte about every N s (0: silent)")
        p.add_argument("--ramp", type=float, default=5.0 if name == "swarm" else 1.0, help="spread the opening (s)")
        p.add_argument("--timeout", type=_positive, default=10.0, help="connect timeout (s)")
        p.add_argument("--retry-delay", type=float, default=1.0, help="pause after a failed connect")
        add_spread(p)

    p = role("reconnect", "prolific reconnectors: connect, read the banner, QUIT (or close/reset), again")
    p.add_argument("--rate", type=float, default=5.0, help="connections per second per source (0: no limit)")
    p.add_argument("--style", choices=("quit", "close", "rst"), default="quit")
    p.add_argument("--no-banner", dest="banner", action="store_false", help="do not wait for the banner")
    p.add_argument("--timeout", type=_positive, default=10.0, help="connect and banner timeout (s)")
    p.add_argument("--retry-delay", type=float, default=0.2, help="pause after a failed connect")

    p = role("synflood", "spoofed SYNs from random bot-range addresses (scapy, raw socket)")
    p.add_argument("--pps", type=_positive, default=1000.0, help="packets per second")

    _add_matrix_parsers(role)
    return ap


def size_range(text: str) -> tuple[float, float]:
    """--size: "MIN-MAX" or "N" KiB; "0" for the one-line message."""
    lo, _, hi = text.partition("-")
    try:
        a, b = float(lo), float(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size in KiB (N or MIN-MAX): {text}") from None
    if not 0 <= a <= b <= 10_240:
        raise argparse.ArgumentTypeError(f"sizes must satisfy 0 <= MIN <= MAX <= 10240 KiB: {text}")
    return a, b


def add_size(p: argparse.ArgumentParser, default: tuple[float, float]) -> None:
    p.add_argument(
        "--size",
        type=size_range,
        default=default,
        metavar="KIB",
        help=f"message size in KiB, MIN-MAX drawn per message, 0 for one line (default {default[0]:g}-{default[1]:g})",
    )


def add_pipelining(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-pipelining",
        dest="pipelining",
        action="store_false",
        help="one command at a time, even where the server offers PIPELINING (real MTAs pipeline)",
    )
    add_starttls(p)


def add_starttls(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--starttls",
        action="store_true",
        help="STARTTLS where the server offers it, then the transaction inside TLS (as MTAs do)",
    )


def add_spread(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--spread",
        type=int,
        metavar="LEN",
        help="each source from a /LEN subnet of its own (e.g. 64 with --sources 2001:db8:bad::/48: one per /64)",
    )


RoleAdder = Callable[[str, str], argparse.ArgumentParser]


def _add_matrix_parsers(role: RoleAdder) -> None:
    """The adversary matrix's roles (govern_lab.traffic.adversaries); `role` makes a subparser with the common
    options."""
    texts = {
        "drip": "slow drippers: per source several connections, one junk byte every --drip s, never a line end",
        "babble": "babblers: after the first line from the server, --bytes of junk without a line end, then silence",
        "slowtalk": "slow talkers: EHLO after --pause s, then MAIL and RCPT after RCPT, each --gap s after the last",
        "prove": "provers: EHLO, MAIL, RCPT and DATA at once, each answered (the kernel's proof), then silent",
    }
    for name in adversaries.BOTS:
        p = role(name, texts[name])
        p.add_argument("--per-source", type=int, default=DEFAULT_PER_SOURCE[name], help="connections per source")
        p.add_argument(
            "--reconnect",
            type=_positive,
            default=1.0 if name in ("babble", "prove") else 2.0,
            help="reconnect within this many seconds of a close, reset or failed connect",
        )
        p.add_argument("--ramp", type=float, default=5.0, help="spread the opening over this many seconds")
        p.add_argument("--timeout", type=_positive, default=10.0, help="connect timeout (s)")
        add_spread(p)
        if name == "drip":
            p.add_argument("--drip", type=_positive, default=5.0, help="seconds between bytes")
            p.add_argument("--max-bytes", type=int, default=1000, help="bytes per connection, then silence")
        elif name == "babble":
            p.add_argument("--bytes", type=int, default=300, help="junk bytes sent once per connection")
        elif name == "prove":
            p.add_argument("--rcpts", type=_positive_int, default=1, help="RCPT commands before DATA")
            p.add_argument(
                "--deliver", action="store_true", help="send a short message after the 354 (queued), then hold"
            )
            p.add_argument(
                "--quit-first",
                action="store_true",
                help="with --deliver: each connection's first session QUITs after its message; the later ones hold",
            )
        elif name == "slowtalk":
            p.add_argument("--pause", type=float, default=20.0, help="seconds before EHLO")
            p.add_argument("--gap", type=_positive, default=8.0, help="seconds between commands")
            p.add_argument(
                "--starttls", action="store_true", help="STARTTLS after the first EHLO; every command after it in TLS"
            )

    p = role("strangers", "never-seen senders: one or two messages each, at one steady aggregate rate")
    p.add_argument("--max-messages", type=int, default=2, help="messages per address, at most (1..N each)")
    p.add_argument("--over", type=_positive, help="spread every message over this many seconds (default: the run)")
    _real_mta(p)
    add_pipelining(p)
    p = role("slowlegit", "one slow, patient sender: a pause before every command, long reply timeouts")
    p.add_argument("--rate", type=_positive, default=0.1, help="new transactions per second")
    p.add_argument("--pause", type=float, default=1.5, help="seconds before every command")
    _real_mta(p)
    add_starttls(p)


def _real_mta(p: argparse.ArgumentParser) -> None:
    """Postfix's smtp client timeouts (smtp_connect_timeout, smtp_helo_timeout, smtp_*_timeout)."""
    add_size(p, (2.0, 60.0))
    p.add_argument("--timeout", type=_positive, default=30.0, help="connect timeout (s)")
    p.add_argument("--banner-timeout", type=_positive, default=300.0, help="wait for the banner (s)")
    p.add_argument("--cmd-timeout", type=_positive, default=300.0, help="wait for each reply (s)")
    p.add_argument("--txn-timeout", type=_positive, default=3600.0, help="bound on a whole transaction (s)")


def _matrix_options(role: str, ns: argparse.Namespace, common: dict[str, Any]) -> Common:
    """An adversary matrix role's options from parsed arguments (`common` holds what every role takes)."""
    if role in adversaries.BOTS:
        bot_common = {
            **common,
            "per_source": ns.per_source,
            "reconnect": ns.reconnect,
            "ramp": ns.ramp,
            "timeout": ns.timeout,
            "spread": ns.spread,
        }
        if role == "drip":
            return DripOptions(**bot_common, drip=ns.drip, max_bytes=ns.max_bytes)
        if role == "babble":
            return BabbleOptions(**bot_common, bytes=ns.bytes)
        if role == "prove":
            return ProveOptions(**bot_common, rcpts=ns.rcpts, deliver=ns.deliver, quit_first=ns.quit_first)
        return SlowtalkOptions(**bot_common, pause=ns.pause, gap=ns.gap, starttls=ns.starttls)
    txn = {
        **common,
        "size_kb": ns.size,
        "timeout": ns.timeout,
        "banner_timeout": ns.banner_timeout,
        "cmd_timeout": ns.cmd_timeout,
        "txn_timeout": ns.txn_timeout,
    }
    if role == "strangers":
        return StrangerOptions(
            **txn, max_messages=ns.max_messages, over=ns.over, pipelining=ns.pipelining, starttls=ns.starttls
        )
    if role == "slowlegit":  # an old, slow MTA: one command at a time
        return TxnOptions(**txn, rate=ns.rate, pause=ns.pause, pipelining=False, starttls=ns.starttls)
    raise TrafficError(f"unknown role {role!r}")


def options(ns: argparse.Namespace) -> Common:
    """The role's options from parsed arguments."""
    common: dict[str, Any] = {
        "dst": tuple(ns.dst),
        "duration": ns.duration,
        "port": ns.port,
        "sources": tuple(ns.sources),
        "seed": ns.seed,
    }
    if ns.role != "synflood":
        common["count"] = ns.count
    if ns.role == "legit":
        return TxnOptions(
            **common,
            rate=ns.rate,
            timeout=ns.timeout,
            cmd_timeout=ns.cmd_timeout,
            txn_timeout=ns.txn_timeout,
            size_kb=ns.size,
            pipelining=ns.pipelining,
            starttls=ns.starttls,
        )
    if ns.role == "trusted":
        return TxnOptions(
            **common,
            parallel=ns.parallel,
            rate=ns.rate,
            retry_delay=ns.retry_delay,
            timeout=ns.timeout,
            cmd_timeout=ns.cmd_timeout,
            txn_timeout=ns.txn_timeout,
            pipelining=ns.pipelining,
            starttls=ns.starttls,
        )
    if ns.role in ("hogs", "pretalk", "swarm"):
        return HoldOptions(
            **common,
            per_source=ns.per_source,
            drip=ns.drip,
            ramp=ns.ramp,
            timeout=ns.timeout,
            retry_delay=ns.retry_delay,
            spread=ns.spread,
        )
    if ns.role == "reconnect":
        return ReconnectOptions(
            **common, rate=ns.rate, style=ns.style, banner=ns.banner, timeout=ns.timeout, retry_delay=ns.retry_delay
        )
    if ns.role in MATRIX_ROLES:
        return _matrix_options(ns.role, ns, common)
    return FloodOptions(**common, pps=ns.pps)


def hold_sources(argv: Sequence[str]) -> list[str]:
    """The source addresses a hogs, pretalk or swarm run with these arguments (the role first, as on the command
    line) sends from: their picking is seeded, so a run of the same arguments sends from the same ones."""
    ns = _parser().parse_args(argv)
    if ns.role not in ("hogs", "pretalk", "swarm"):
        raise TrafficError(f"hold_sources takes hogs, pretalk or swarm, not {ns.role!r}")
    pairs, _ = bots.bot_setup(ns.role, options(ns))
    return [src for src, _ in pairs]


async def run(role: str, opts: Common, stop: asyncio.Event | None = None) -> dict[str, Any]:
    """Run one role to its end and return its report."""
    if role in ("legit", "trusted") and isinstance(opts, TxnOptions):
        return await (senders.legit if role == "legit" else senders.trusted)(opts, stop)
    if role in ("hogs", "pretalk", "swarm") and isinstance(opts, HoldOptions):
        return await {"hogs": bots.hogs, "pretalk": bots.pretalk, "swarm": bots.swarm}[role](opts, stop)
    if role == "reconnect" and isinstance(opts, ReconnectOptions):
        return await bots.reconnect(opts, stop)
    if role == "synflood" and isinstance(opts, FloodOptions):
        return await syn.synflood(opts, stop)
    if role in MATRIX_ROLES:
        return await adversaries.run(role, opts, stop)
    raise TrafficError(f"role {role!r} does not take {type(opts).__name__}")


def summary_line(doc: dict[str, Any]) -> str:
    """The one line a run prints."""
    role, t = doc["role"], doc["totals"]
    tail = f"{doc['duration']:.1f} s ({doc['stopped_by']})"
    if role in TXN_ROLES:
        rate = "-" if t["success_rate"] is None else f"{100 * t['success_rate']:.1f}%"
        p50 = "-" if t["latency_p50"] is None else f"{1000 * t['latency_p50']:.0f} ms"
        p95 = "-" if t["latency_p95"] is None else f"{1000 * t['latency_p95']:.0f} ms"
        return (
            f"{role}: {t['transactions']} transactions, {t['ok']} ok ({rate}), {t['failed']} failed, {t['cut']} cut; "
            f"p50 {p50}, p95 {p95}; {tail}"
        )
    if role == "synflood":
        sent = f"{t['sent']} SYNs sent ({t['pps_sent']} pps of {t['pps_wanted']:g})"
        return f"synflood: {sent}, {t['errors']} errors; {tail}"
    counts = ", ".join(f"{k} {t[k]}" for k in BOT_FIELDS if k != "bytes_sent")
    return f"{role}: {t['sources']} sources; {counts}; held {t['held_at_end']} (max {t['max_held']}); {tail}"


def write_json(path: str, doc: dict[str, Any]) -> None:
    """Write atomically: the runner may read the file the moment the process is gone."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, separators=(",", ":")))
    os.replace(tmp, p)


async def _main_async(role: str, opts: Common) -> dict[str, Any]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    got: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        got.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    doc = await run(role, opts, stop)
    if got and doc["stopped_by"] == "stopped":
        doc["stopped_by"] = got[0]
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    try:
        opts = options(ns)
        check_common(opts)
        # The last resort if the event loop itself is stuck: SIGALRM's default action ends the process.
        signal.alarm(math.ceil(opts.duration) + 20)
        doc = asyncio.run(_main_async(ns.role, opts))
    except TrafficError as exc:
        print(f"traffic {ns.role}: {exc}", file=sys.stderr)
        return 2
    finally:
        signal.alarm(0)
    if ns.json_out:
        write_json(ns.json_out, doc)
    print(summary_line(doc), flush=True)
    return 0
