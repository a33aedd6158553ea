"""`govern top` without a terminal (issue 14, item 4): what the daemon's status adds for it (bytes of the top
sources, the MTA's slots held by strangers, blocks by reason), and each frame drawn from a status to fit the
terminal, whatever its size. tests/kernel/test_top.py runs it in tmux against the real daemon."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from govern import reports, top
from govern.addr import Prefix
from govern.model import Block, SessionInfo
from tests.unit.test_governor import hog, make, run_ticks

HOG = Prefix.parse("198.18.0.1")
PARTNER = Prefix.parse("192.0.2.7")  # allowlisted by make()'s config


def session(remote: str, bytes_in: int, bytes_out: int) -> SessionInfo:
    return SessionInfo(remote, 40000, 25, "ESTABLISHED", True, bytes_in=bytes_in, bytes_out=bytes_out)


def test_status_carries_bytes_slots_and_blocks_by_reason(tmp_path: Path) -> None:
    gov, socks, _enf, clock = make(tmp_path)
    socks.sources = {HOG: hog(30), PARTNER: hog(3), Prefix.parse("198.51.100.4"): hog(2)}
    socks.live = [session("198.18.0.1", 10, 100), session("198.18.0.1", 5, 1000), session("192.0.2.7", 7, 0)]
    gov.tick()
    st = reports.status(gov)
    rows = {r["source"]: r for r in st["top"]}
    assert (rows["198.18.0.1"]["bytes_in"], rows["198.18.0.1"]["bytes_out"]) == (15, 1100)
    assert (rows["192.0.2.7"]["bytes_in"], rows["198.51.100.4"]["bytes_in"]) == (7, 0)
    # The allowlisted partner's sessions are not strangers'.
    assert st["slots"] == {"established": 35, "strangers": 32}
    assert st["blocks_by_reason"] == {}
    assert gov.handle({"cmd": "block", "prefix": "203.0.113.0/24"})["ok"]
    run_ticks(gov, clock, 8)  # the hog: throttled, then blocked for staying over
    by = reports.status(gov)["blocks_by_reason"]
    assert by == {"operator": 1, "over limits after throttling": 1}, gov.state.blocks


def status(mode: str = "wave", sources: int = 30, recent: int = 10) -> dict[str, Any]:
    now = time.time()
    return {
        "mode": mode,
        "mode_detail": {
            "mode": mode,
            "ends_in": 840.0,
            "reason": "listen queue 92% full (wave at 50%)",
            "manual": False,
        },
        "dry_run": False,
        "backend": "nftables",
        "uptime": 3723.0,
        "last_tick_ms": 12.5,
        "sources": 1234,
        "sockets": 5678,
        "listeners": [
            {"address": "0.0.0.0", "port": 25, "queued": 118, "backlog": 128, "fill": 0.922},
            {"address": "::", "port": 587, "queued": 3, "backlog": 128, "fill": 0.023},
        ],
        "counters_last_tick": {"ListenOverflows": 12, "ListenDrops": 12, "TCPTimeouts": 4},
        "counters_since_start": {"ListenOverflows": 1200, "ListenDrops": 1300},
        "slots": {"established": 95, "strangers": 80},
        "budget": {"slots": 64, "newcomers": 8, "capacity": 128, "basis": "the accept backlog of 0.0.0.0:25"},
        "blocks": 42,
        "throttles": 7,
        "tarpits": 3,
        "blocks_by_reason": {"wave: most prolific": 30, "operator": 1, "over limits after throttling": 11},
        "top": [
            {
                "source": f"198.18.{i}.{i}" if i % 5 else f"2001:db8:bad:{i}::/64",
                "held": 30 - i,
                "established": 25 - i,
                "syn_recv": 1,
                "idle": 20,
                "max_idle_ms": 0,
                "new": 3,
                "new_per_minute": 120,
                "bytes_in": 1234 * i,
                "bytes_out": 5_600_000,
                "standing": ("blocked", "throttled", "", "allowlisted")[i % 4],
            }
            for i in range(sources)
        ],
        "recent": [
            {
                "at": now - i,
                "kind": "block",
                "prefix": f"198.18.{i}.0/24",
                "reason": "wave: among the 10 most prolific sources; holds 30 connections, 28 idle (limit 20)",
                "until": 0,
            }
            for i in range(recent)
        ],
    }


def draw(st: dict[str, Any], width: int, height: int, note: str = "") -> list[str]:
    c = Console(width=width, height=height, color_system=None, record=True, file=io.StringIO())
    c.print(top.render(st, width, height, note))
    return c.export_text().rstrip("\n").split("\n")


def test_a_frame_fits_the_terminal_and_shows_what_matters() -> None:
    for width, height in ((120, 40), (80, 24), (60, 15), (200, 60)):
        lines = draw(status(), width, height)
        assert len(lines) <= height and max(map(len, lines)) <= width, (width, height)
        text = "\n".join(lines)
        for needle in ("WAVE", "reason    listen queue 92%", "budget 64", "80 held by strangers", "198.18.1.1"):
            assert needle in text, (width, height, needle)
        assert "drops     24 in the last tick, 2500 since start" in text
        assert "blocked" in text
    full = "\n".join(draw(status(), 120, 40))
    assert "by reason wave: most prolific 30, over limits after throttling 11, operator 1" in full
    assert "0.0.0.0:25 #########. 118/128" in full and "[::]:587" in full
    assert "5.6M" in full and "2001:db8:bad:5::/64" in full


def test_a_small_terminal_keeps_the_sources_and_gives_up_recent_actions_first() -> None:
    def rows(lines: list[str], title: str, end: str | None) -> int:
        start = next(i for i, line in enumerate(lines) if line.startswith(title)) + 2
        stop = next(i for i, line in enumerate(lines) if line.startswith(end)) if end else len(lines)
        return stop - start

    big, small = draw(status(), 120, 40), draw(status(), 80, 18)
    assert rows(big, "top sources", "recent actions") > rows(small, "top sources", "recent actions") >= top.MIN_ROWS
    assert rows(small, "recent actions", None) < rows(big, "recent actions", None)
    assert rows(draw(status(recent=0), 80, 24), "top sources", "recent actions") == 24 - top._FIXED


def test_normal_mode_an_idle_host_a_note_and_no_status_yet() -> None:
    quiet = status("normal", sources=0, recent=0) | {"listeners": [], "budget": {}, "blocks_by_reason": {}}
    text = "\n".join(draw(quiet, 80, 24, note="the daemon stopped answering"))
    assert "NORMAL" in text and "no listener on the protected ports" in text and "budget: none" in text
    assert text.rstrip().endswith("the daemon stopped answering")
    assert draw({}, 80, 24, "govern: the govern daemon is not running") == ["govern: the govern daemon is not running"]


def test_piped_it_prints_one_frame() -> None:
    out = io.StringIO()
    asked: list[int] = []

    def fetch(rows: int) -> dict[str, Any]:
        asked.append(rows)
        return status()

    top.watch(fetch, console=Console(file=out, width=100, height=30, color_system=None))
    assert asked == [30] and "WAVE" in out.getvalue() and len(out.getvalue().splitlines()) <= 30


def test_blocks_group_by_what_their_reason_says() -> None:
    def kind(reason: str, manual: bool = False) -> str:
        return reports.block_reason(Block(HOG, reason, 0.0, 1.0, 1, manual))

    assert kind("manual: seen in a flood", manual=True) == "operator"
    assert kind("wave: among the 10 most prolific sources; holds 30 connections (limit 20)") == "wave: most prolific"
    assert kind("cut 2 times in this wave; held a session without progress for 4s under pressure") == (
        "cut again in a wave"
    )
    assert kind("12 sources of 198.18.0.0/24 blocked; for 1h") == "aggregated prefix"
    assert kind("holds 30 connections (limit 20); still over after throttling") == "over limits after throttling"
    assert kind("still hammering while blocked: 90 attempts in the last minute") == "extended: still hammering"
    assert kind("something new") == "other"
