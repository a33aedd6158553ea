"""Completed deliveries from the Postfix log: which client addresses got a message accepted and queued, in a session
they then ended themselves.

The signal chosen: `smtpd` logs `QUEUEID: client=NAME[ADDR]` when a client's MAIL FROM is accepted, and `qmgr`
logs `QUEUEID: from=<...>, size=N, nrcpt=N (queue active)` only once the message was committed to the queue (the
client got its 250 after DATA). A queue id with both is a delivery from ADDR. `cleanup`'s `message-id=`
comes earlier, while the message may still be rejected (milter, header checks, a client that drops mid-DATA), and
`status=sent` is about onward delivery, which says nothing about the client. With an after-queue content filter
the re-injecting smtpd logs `orig_client=NAME[ADDR]`, which names the real client.

A delivery proves its client only once the same smtpd's `disconnect from NAME[ADDR] ... quit=1 ...` says the
client ended the session with QUIT (either order: qmgr may take the message after the client left). A real MTA
quits at once, or holds a cached connection for a second or two first; a bot that delivers a message to buy trust
and then holds the session silently (the lab's `deliverers`) never quits, and its session is cut as a stranger's.
A Postfix too old to log the session's commands on disconnect (before 3.0) is taken at its word that the client
disconnected.

Both syslog timestamps (`Jan  2 15:04:05`, local time, no year) and RFC 3339 ones (`2024-01-02T15:04:05.123+01:00`,
rsyslog's high-precision format and Postfix's own `maillog_file`) are read; a delivery is learned at the time it was
logged, so reading an old log at start does not stretch trust. `DeliveryParser` is pure; `LogFollower` reads the file.
"""

from __future__ import annotations

import os
import re
import stat
import time
from datetime import datetime

from govern.addr import Prefix
from govern.errors import AddressError

_LINE = re.compile(r" (?P<prog>[\w.-]+(?:/[\w.-]+)+)\[(?P<pid>\d+)\]: (?P<qid>[0-9A-Za-z]{5,}): (?P<msg>.*)$")
_DISCONNECT = re.compile(
    r" (?P<prog>[\w.-]+(?:/[\w.-]+)+)\[(?P<pid>\d+)\]: disconnect from [^\[\s]*\[[^\]]+\](?P<stats>.*)$"
)
_CLIENT = re.compile(
    r"^client=[^\[\s]*\[(?:IPv6:)?(?P<ip>[^\]]+)\](?:.*?\borig_client=[^\[\s]*\[(?:IPv6:)?(?P<orig>[^\]]+)\])?"
)
_QUEUED = re.compile(r"^from=<[^>]*>, size=\d+, nrcpt=\d+ \(queue active\)")
_ISO = re.compile(r"^(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?)\s")
_BSD = re.compile(r"^([A-Z][a-z]{2}) +(\d{1,2}) (\d\d):(\d\d):(\d\d)")
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS = {m: i for i, m in enumerate(_MONTH_NAMES, 1)}


def logged_at(line: str, now: float) -> float:
    """When a log line was written, as a Unix time; `now` when the stamp cannot be read."""
    if m := _ISO.match(line):
        try:
            stamp = datetime.fromisoformat(m.group(1))
        except ValueError:
            return now
        return stamp.timestamp()  # naive stamps are local time, as syslog writes them
    if m := _BSD.match(line):
        month = _MONTHS.get(m.group(1))
        if month is None:
            return now
        year = time.localtime(now).tm_year
        for y in (year, year - 1):  # no year in the stamp: the latest one not in the future
            try:
                t = datetime(y, month, int(m.group(2)), int(m.group(3)), int(m.group(4)), int(m.group(5))).timestamp()
            except ValueError:
                return now
            if t <= now + 86400:
                return t
    return now


class DeliveryParser:
    """Feeds on log lines; returns the client address and time of each completed delivery, at the line that
    completes it (the session's disconnect with QUIT, or qmgr's, whichever comes last)."""

    def __init__(self, *, max_pending: int = 100_000, pending_for: float = 3600.0) -> None:
        self.max_pending = max_pending
        self.pending_for = pending_for  # an accepted MAIL FROM that never reached the queue is forgotten after this
        # qid -> (client, when, the smtpd's instance and pid): MAIL FROM accepted, the message not queued yet.
        self._pending: dict[str, tuple[Prefix, float, str]] = {}
        # the smtpd's instance and pid -> (client, when): its session queued a message and has not ended yet.
        self._queued: dict[str, tuple[Prefix, float]] = {}
        self._quit: set[str] = set()  # qids whose session ended with QUIT before qmgr took the message
        # the smtpd's instance and pid -> the qids of its session still pending: found at its disconnect without a
        # walk of every pending qid (a flood's bots leave many MAIL FROMs that never reach the queue).
        self._open: dict[str, list[str]] = {}

    def feed(self, line: str, now: float) -> tuple[Prefix, float] | None:
        if "client=" not in line and "(queue active)" not in line and "disconnect from" not in line:
            return None  # the bulk of a busy log, skipped before any regex
        m = _LINE.search(line)
        if m is None:
            return self._disconnect(line)
        prog, qid, msg = m.group("prog").rsplit("/", 1)[-1], m.group("qid"), m.group("msg")
        if prog == "smtpd":
            c = _CLIENT.match(msg)
            if c is None:
                return None
            try:
                addr = Prefix.parse(c.group("orig") or c.group("ip"))
            except AddressError:
                return None  # "unknown[unknown]" and the like
            at = logged_at(line, now)
            session = _session(m.group("prog"), m.group("pid"))
            self._pending[qid] = (addr, at, session)
            self._open.setdefault(session, []).append(qid)
            self._prune(at)
            return None
        if prog == "qmgr" and _QUEUED.match(msg) and (got := self._pending.pop(qid, None)) is not None:
            if qid in self._quit:
                self._quit.discard(qid)
                return got[0], got[1]
            self._queued[got[2]] = (got[0], got[1])
        return None

    def _disconnect(self, line: str) -> tuple[Prefix, float] | None:
        """A session's end: its delivery proves the client if the client said QUIT."""
        m = _DISCONNECT.search(line)
        if m is None or not m.group("prog").endswith("/smtpd"):
            return None
        session, stats = _session(m.group("prog"), m.group("pid")), m.group("stats")
        quit = " quit=1" in stats or "commands=" not in stats
        for qid in self._open.pop(session, ()):
            if qid in self._pending:  # the session is over: qmgr may still take its message
                if quit:
                    self._quit.add(qid)
                else:
                    self._drop(qid)
        got = self._queued.pop(session, None)
        return got if quit else None

    def _prune(self, at: float) -> None:
        while len(self._pending) > self.max_pending:
            self._drop(next(iter(self._pending)))
        for qid, (_, t, _) in list(self._pending.items()):
            if t > at - self.pending_for:
                break  # insertion order is log order: the rest are younger
            self._drop(qid)
        for held in (self._queued, self._open):  # sessions whose disconnect was never logged (a crash)
            while len(held) > self.max_pending:
                del held[next(iter(held))]

    def _drop(self, qid: str) -> None:
        del self._pending[qid]
        self._quit.discard(qid)

    def __len__(self) -> int:
        return len(self._pending) + len(self._queued)


def _session(prog: str, pid: str) -> str:
    """An smtpd process of one Postfix instance serves one session at a time: its name and pid name the session."""
    return f"{prog}[{pid}]"


class LogFollower:
    """Follows a log file like `tail -F`: reads complete lines as they are appended, follows a rotation by rename (the
    old file is read to its end first), starts again at a truncation, and waits for a file that is not there yet.

    At the first open it starts `backfill` bytes before the end, so a restart relearns recent deliveries; each call
    reads at most `max_read` bytes, so a large backlog is spread over several ticks.
    """

    def __init__(self, path: str, *, backfill: int = 16 << 20, max_read: int = 1 << 20) -> None:
        self.path = path
        self.backfill = backfill
        self.max_read = max_read
        self.error = ""
        self._file: int | None = None  # fd
        self._ino: tuple[int, int] | None = None
        self._pos = 0
        self._partial = b""
        self._opened_before = False

    def lines(self) -> list[str]:
        if self._file is None and not self._open():
            return []
        assert self._file is not None
        chunk = os.pread(self._file, self.max_read, self._pos)
        self._pos += len(chunk)
        if len(chunk) < self.max_read:
            self._check_rotation()
        data = self._partial + chunk
        end = data.rfind(b"\n") + 1
        self._partial = data[end:][-65536:]  # a line still being written; bounded against a file with no newline
        return data[:end].decode("utf-8", "replace").splitlines()

    def _open(self) -> bool:
        try:
            # Without blocking, and a regular file only: opening a FIFO would stop the daemon's loop until a
            # writer came, and reading one by position fails.
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError as exc:
            self.error = f"{self.path}: {exc.strerror or exc}"
            return False
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            self.error = f"{self.path}: not a regular file"
            return False
        self._file, self._ino, self.error = fd, (st.st_dev, st.st_ino), ""
        self._partial = b""
        self._pos = 0
        if not self._opened_before and st.st_size > self.backfill:
            # Start mid-file at a line boundary: the partial first line is dropped with the next newline.
            self._pos = st.st_size - self.backfill
            head = os.pread(fd, 65536, self._pos)
            self._pos += head.find(b"\n") + 1 if b"\n" in head else len(head)
        self._opened_before = True
        return True

    def _check_rotation(self) -> None:
        assert self._file is not None
        try:
            st = os.stat(self.path)
        except OSError:
            return  # renamed away and not yet recreated: keep reading the old one
        if (st.st_dev, st.st_ino) != self._ino:
            self.close()  # the old file was read to its end above; the new one is read from its start
            return
        if st.st_size < self._pos:  # truncated in place (copytruncate)
            self._pos, self._partial = 0, b""

    def close(self) -> None:
        if self._file is not None:
            os.close(self._file)
            self._file = None
