"""`govern export --format exabgp --follow`: an ExaBGP `process` (text encoder) that follows the daemon's blocks.

It announces what the guardrails let out and withdraws what leaves the set (unblock, expiry, a new allowlist
entry), one line per route, flushed at once. What it announced is kept in memory: a daemon restart restores the
same blocks, so the diff is empty and nothing is announced twice; while the daemon is away nothing is withdrawn
(ExaBGP withdraws every route of a process that dies, so the follower must not die either). ExaBGP restarting
the process has already withdrawn its routes, so a fresh follower announces the current set once.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import TextIO

from govern.errors import DaemonUnavailable

log = logging.getLogger("govern.export")
Routes = Callable[[], list[str]]  # the routes to be announced now; DaemonUnavailable when the daemon is away


class Follower:
    def __init__(self, routes: Routes, out: TextIO) -> None:
        self.routes = routes
        self.out = out
        self.announced: dict[str, None] = {}  # insertion-ordered: withdrawals go out in announcement order
        self.away = False

    def step(self) -> int:
        """One poll: write the withdrawals, then the announcements. Returns how many lines went out."""
        try:
            want = list(dict.fromkeys(self.routes()))
        except DaemonUnavailable as exc:
            if not self.away:
                log.warning("keeping %d announced route(s) while the daemon is away: %s", len(self.announced), exc)
            self.away = True
            return 0
        self.away = False
        wanted = set(want)
        lines = [f"withdraw {r}" for r in self.announced if r not in wanted]
        lines += [f"announce {r}" for r in want if r not in self.announced]
        for line in lines:
            self.out.write(line + "\n")
            self.out.flush()  # ExaBGP reads line by line; a buffered announcement is a late one
        self.announced = {r: None for r in want}
        return len(lines)


def run(routes: Routes, poll: float, out: TextIO = sys.stdout, stdin: TextIO = sys.stdin) -> int:
    """Follow until ExaBGP goes away (its end of our stdin or stdout closes)."""
    gone = threading.Event()

    def drain() -> None:
        # ExaBGP may acknowledge each command on our stdin; reading keeps its pipe from filling up.
        for _ in stdin:
            pass
        gone.set()

    threading.Thread(target=drain, name="govern-export-stdin", daemon=True).start()
    f = Follower(routes, out)
    try:
        while not gone.is_set():
            f.step()
            gone.wait(poll)
    except BrokenPipeError:
        pass
    log.info("ExaBGP closed the pipe; %d route(s) were announced", len(f.announced))
    return 0
