"""`govern top`: the daemon's status as a live terminal view, redrawn every second.

`render` is a pure function of one `govern status` reply and the terminal's size, so what the operator sees can be
tested without a terminal; `watch` is the loop around it: the alternate screen, the keyboard (q quits), a redraw
when the terminal is resized, and the terminal handed back as it was found, however the loop ends.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from govern.durations import format_duration

Status = Mapping[str, Any]

_MODE_STYLE = {"normal": "bold green", "elevated": "bold yellow", "wave": "bold white on red"}
# TcpExt counters that say the listen queue overflowed: SYNs or handshakes the kernel dropped.
DROPS = ("ListenOverflows", "ListenDrops", "TCPReqQFullDrop")
# Lines besides the sources and the recent actions: the summary's seven, and each table's title and heading.
_FIXED = 11
MIN_ROWS = 3  # sources shown even on a small terminal (the recent actions give way first)


def _size(n: float) -> str:
    """Bytes, short: 0, 812, 4.1k, 12M."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            v = n / scale
            return f"{v:.1f}{unit}" if v < 10 else f"{v:.0f}{unit}"
    return str(int(n))


def _bar(fill: float, width: int = 10) -> str:
    done = max(0, min(width, round(fill * width)))
    return "#" * done + "." * (width - done)


def _label(name: str) -> Text:
    return Text(f"{name:<10}", style="bold")


def _header(st: Status) -> list[Text]:
    mode = st["mode"]
    m = st.get("mode_detail") or {}
    line = Text.assemble(("govern top", "bold"), "  mode ", (f" {mode.upper()} ", _MODE_STYLE.get(mode, "bold")))
    if st.get("dry_run"):
        line.append(" DRY RUN: nothing enforced", style="bold yellow")
    if mode != "normal":
        who = "by the operator" if m.get("manual") else "automatically"
        ends = f", ends in {format_duration(max(m['ends_in'], 1))}" if m.get("ends_in") is not None else ""
        line.append(f" {who}{ends}")
    up = format_duration(max(st["uptime"], 1))
    line.append(f"   {st['backend']}, up {up}, tick {st['last_tick_ms']:g} ms", style="dim")
    return [line, _label("reason").append(m.get("reason") or "-")]


def _pressure(st: Status) -> list[Text]:
    queues = _label("queues")
    for ls in st["listeners"] or ():
        where = f"[{ls['address']}]:{ls['port']}" if ":" in ls["address"] else f"{ls['address']}:{ls['port']}"
        style = "red" if ls["fill"] >= 0.5 else "yellow" if ls["fill"] >= 0.1 else ""
        queues.append(f"{where} {_bar(ls['fill'])} {ls['queued']}/{ls['backlog']}  ", style=style)
    if not st["listeners"]:
        queues.append("no listener on the protected ports", style="yellow")
    tick = st.get("counters_last_tick") or {}
    total = st.get("counters_since_start") or {}
    now, ever = sum(tick.get(k, 0) for k in DROPS), sum(total.get(k, 0) for k in DROPS)
    drops = _label("drops").append(f"{now} in the last tick", style="bold red" if now else "")
    drops.append(f", {ever} since start (listen queue overflows)")
    return [queues, drops]


def _slots(st: Status) -> Text:
    used = st.get("slots") or {}
    b = st.get("budget") or {}
    line = _label("slots")
    line.append(f"{used.get('established', 0)} established, {used.get('strangers', 0)} held by strangers")
    if b.get("slots"):
        over = used.get("strangers", 0) > b["slots"]
        line.append(f"  budget {b['slots']}", style="bold red" if over else "bold")
        line.append(f" of {b['capacity']} for strangers", style="dim")
    else:
        line.append("  budget: none", style="dim")
    return line


def _blocks(st: Status) -> list[Text]:
    line = _label("blocks").append(
        f"{st['blocks']} blocked, {st['throttles']} throttled, {st.get('tarpits', 0)} tarpitted"
    )
    by = sorted((st.get("blocks_by_reason") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
    return [line, _label("by reason").append(", ".join(f"{k} {v}" for k, v in by) or "-")]


def _sources(st: Status, rows: int) -> Table:
    t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold reverse")
    t.add_column("source", no_wrap=True, overflow="ellipsis", min_width=18)
    for name in ("held", "estab", "idle", "new/min", "bytes in", "out"):
        t.add_column(name, justify="right", no_wrap=True)
    t.add_column("standing", no_wrap=True, overflow="ellipsis", min_width=11)
    style = {"blocked": "red", "throttled": "yellow", "allowlisted": "green"}
    for s in st["top"][:rows]:
        t.add_row(
            s["source"],
            str(s["held"]),
            str(s["established"]),
            str(s["idle"]),
            str(s["new_per_minute"]),
            _size(s.get("bytes_in", 0)),
            _size(s.get("bytes_out", 0)),
            s["standing"],
            style=style.get(s["standing"], ""),
        )
    return t


def _recent(st: Status, rows: int) -> Table:
    t = Table(box=None, pad_edge=False, show_edge=False, expand=True, header_style="bold reverse")
    for name in ("time", "action", "source"):
        t.add_column(name, no_wrap=True)
    t.add_column("reason", no_wrap=True, overflow="ellipsis", ratio=1)
    for e in st.get("recent", [])[:rows]:
        t.add_row(time.strftime("%H:%M:%S", time.localtime(e["at"])), e["kind"], e["prefix"], e["reason"])
    return t


def render(st: Status, width: int, height: int, note: str = "") -> RenderableType:
    """One frame: at most `height` lines of at most `width` columns (long fields are cut, never wrapped). `note`
    is a line about the view itself (the daemon stopped answering, say); without a status yet, only it shows."""
    if not st:
        return Text(note or "waiting for the daemon's status", style="bold red", no_wrap=True, overflow="ellipsis")
    room = max(0, height - _FIXED - (1 if note else 0))
    recent = min(len(st.get("recent", [])), max(0, room - MIN_ROWS) // 2)
    rows = max(0, room - recent)
    parts: list[RenderableType] = [*_header(st), *_pressure(st), _slots(st), *_blocks(st)]
    parts += [Text(f"top sources ({st['sources']} seen, {st['sockets']} sockets)", style="bold"), _sources(st, rows)]
    parts += [Text("recent actions", style="bold"), _recent(st, recent)]
    if note:
        parts.append(Text(note, style="bold red"))
    for p in parts:
        if isinstance(p, Text):
            p.no_wrap, p.overflow = True, "ellipsis"
    return Group(*parts)


# -- the loop ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _keys() -> Iterator[list[int]]:
    """stdin in cbreak mode (keys arrive one by one, unechoed; Ctrl-C still interrupts) for the block's length;
    no keys (only Ctrl-C) when stdin is not a terminal."""
    if not sys.stdin.isatty():
        yield []
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield [fd]
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


@contextlib.contextmanager
def _resizes() -> Iterator[int]:
    """A pipe that becomes readable when the terminal is resized (SIGWINCH), so the wait for a key ends at once."""
    r, w = os.pipe()
    os.set_blocking(w, False)

    def wake(_sig: int, _frame: object) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(w, b"!")

    old = signal.signal(signal.SIGWINCH, wake)
    try:
        yield r
    finally:
        signal.signal(signal.SIGWINCH, old)
        os.close(r)
        os.close(w)


def _terminal_size(console: Console) -> tuple[int, int]:
    """The terminal's size now, told to the console. Rich prefers COLUMNS and LINES when they are set, and a shell
    that exports them leaves them stale after a resize: the terminal itself is asked."""
    try:
        width, height = os.get_terminal_size(console.file.fileno())
    except (OSError, ValueError):
        return console.size
    console.size = (width, height)
    return width, height


def watch(fetch: Callable[[int], Status], interval: float = 1.0, console: Console | None = None) -> None:
    """Draw `fetch(rows)` (a status with up to `rows` top sources) every `interval` seconds until q or Ctrl-C.
    A fetch that raises OSError or a GovernError keeps the last frame, with the error under it, and tries again."""
    from rich.live import Live

    from govern.errors import GovernError

    console = console or Console()
    if not console.is_terminal:  # piped: one frame, as wide as the console says
        console.print(render(fetch(console.size.height), console.size.width, console.size.height))
        return
    st: Status = {}
    # Ctrl-C outermost: the screen and the terminal's mode are given back before it is swallowed.
    with (
        contextlib.suppress(KeyboardInterrupt),
        _keys() as keys,
        _resizes() as resized,
        Live(console=console, screen=True, auto_refresh=False) as live,
    ):
        while True:
            width, height = _terminal_size(console)
            note = ""
            try:
                st = fetch(height)
            except (OSError, GovernError) as exc:
                note = f"{exc} (retrying every {interval:g}s; q quits)"
            live.update(render(st, width, height, note), refresh=True)
            deadline = time.monotonic() + interval
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([*keys, resized], [], [], left)
                if resized in ready:
                    os.read(resized, 64)
                    break  # redraw now, to the new size
                if keys and keys[0] in ready and b"q" in os.read(keys[0], 64).lower():
                    return
