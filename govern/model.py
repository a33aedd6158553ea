"""The values that flow through observe -> decide -> act: Snapshot in, Plan out, State remembered.

Everything here is plain data. Per-source records are NamedTuples because the observer makes one per connecting
source every tick; the rest are frozen dataclasses. A snapshot's sources that hold no socket (a flood can bring a
million, seen only by their connection attempts) are numpy columns instead (`Sources`).
"""

from __future__ import annotations

import sys
from collections.abc import ItemsView, Iterator, Mapping, ValuesView
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import chain
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from govern.addr import Prefix
from govern.keys import Keys, empty_keys


class SourceStats(NamedTuple):
    """What the kernel shows of one source (an IPv4 /32 or IPv6 /64 by default) on the protected ports."""

    held: int = 0  # sockets that occupy the MTA or the kernel: every state but TIME_WAIT
    established: int = 0
    syn_recv: int = 0
    idle: int = 0  # established sockets where the server has been waiting on a silent client past idle_after
    max_idle_ms: int = 0  # the longest such wait, in ms
    new: int = 0  # connection attempts (SYNs) since the previous snapshot, counted in the kernel
    new_per_minute: int = 0  # connection attempts over the last 60 s


class Attempts(NamedTuple):
    """Sources seen only by their connection attempts, as columns: the sources are the `listed` rows of `keys`.

    The keys may be the rate window's own columns (govern.keys.KeyTable never rewrites a row, it only appends), so a
    snapshot costs the window 17 bytes a source rather than a copy of each address."""

    keys: Keys
    listed: npt.NDArray[np.bool_]
    new: npt.NDArray[np.int64]  # SourceStats.new, by row
    per_minute: npt.NDArray[np.int64]  # SourceStats.new_per_minute, by row

    @staticmethod
    def none() -> Attempts:
        return Attempts(empty_keys(), np.zeros(0, np.bool_), np.zeros(0, np.int64), np.zeros(0, np.int64))


class Sources(Mapping[Prefix, SourceStats]):
    """A snapshot's sources: those holding sockets as records (`records`), the others, which only connected
    (`attempts`: up to a million in a flood), as columns. Read as a Mapping, a row of the columns is
    SourceStats(new=..., new_per_minute=...) and comes after the records.

    Going over the whole Mapping makes a Prefix and a record per row: code that looks at every source each tick
    asks `records` (the only sources with sockets) and `over(limit)` or `top(n)` (the rows that could matter)."""

    __slots__ = ("_rows", "attempts", "records")

    def __init__(self, records: Mapping[Prefix, SourceStats], attempts: Attempts | None = None) -> None:
        self.records = records  # disjoint from the rows of `attempts`
        self.attempts = attempts if attempts is not None else Attempts.none()
        self._rows = int(np.count_nonzero(self.attempts.listed))

    def __len__(self) -> int:
        return len(self.records) + self._rows

    def __iter__(self) -> Iterator[Prefix]:
        return chain(self.records, self.attempts.keys.prefixes(np.flatnonzero(self.attempts.listed).tolist()))

    def _find(self, p: object) -> int:
        if not isinstance(p, Prefix):
            return -1
        row = self.attempts.keys.find(p)
        return row if row >= 0 and self.attempts.listed[row] else -1

    def __contains__(self, p: object) -> bool:
        return p in self.records or self._find(p) >= 0

    def __getitem__(self, p: Prefix) -> SourceStats:
        hit = self.records.get(p)
        if hit is not None:
            return hit
        row = self._find(p)
        if row < 0:
            raise KeyError(p)
        return SourceStats(new=int(self.attempts.new[row]), new_per_minute=int(self.attempts.per_minute[row]))

    def items(self) -> ItemsView[Prefix, SourceStats]:
        return _Items(self)

    def values(self) -> ValuesView[SourceStats]:
        return _Values(self)

    def rows(self, rows: npt.NDArray[np.intp]) -> list[tuple[Prefix, SourceStats]]:
        """The given (listed) rows of the columns as (source, record), in the order given."""
        at = rows.tolist()
        new, per_minute = self.attempts.new[rows].tolist(), self.attempts.per_minute[rows].tolist()
        make = tuple.__new__
        return [
            (p, make(SourceStats, (0, 0, 0, 0, 0, n, m)))
            for p, n, m in zip(self.attempts.keys.prefixes(at), new, per_minute, strict=True)
        ]

    def over(self, per_minute: int) -> list[tuple[Prefix, SourceStats]]:
        """The rows with more than `per_minute` attempts in the last minute, in row order."""
        return self.rows(np.flatnonzero(self.attempts.listed & (self.attempts.per_minute > per_minute)))

    def top(self, n: int) -> list[tuple[Prefix, SourceStats]]:
        """The `n` rows with the most attempts in the last minute, most first, ties in row order."""
        listed = np.flatnonzero(self.attempts.listed)
        if n <= 0 or not listed.size:
            return []
        counts = self.attempts.per_minute[listed]
        if n < counts.size:
            cut = np.partition(counts, counts.size - n)[counts.size - n]
            pick = np.flatnonzero(counts >= cut)
        else:
            pick = np.arange(counts.size)
        return self.rows(listed[pick[np.lexsort((pick, -counts[pick]))][:n]])


class _Items(ItemsView[Prefix, SourceStats]):
    _mapping: Sources

    def __iter__(self) -> Iterator[tuple[Prefix, SourceStats]]:
        src = self._mapping
        yield from src.records.items()
        yield from src.rows(np.flatnonzero(src.attempts.listed))


class _Values(ValuesView[SourceStats]):
    _mapping: Sources

    def __iter__(self) -> Iterator[SourceStats]:
        for _p, s in self._mapping.items():
            yield s


def holding(sources: Mapping[Prefix, SourceStats]) -> Mapping[Prefix, SourceStats]:
    """The sources that may hold sockets: a Sources' records (its other rows hold none), any other Mapping whole.
    For sums and searches over sockets, which the rows would only add zeros to."""
    return sources.records if isinstance(sources, Sources) else sources


class ListenerStats(NamedTuple):
    """One listening socket on a protected port: its accept queue now and the backlog it may grow to."""

    address: str
    port: int
    queued: int
    backlog: int
    # The socket's inode, by which /proc/PID/fd names it (who holds the listener: the MTA, postscreen). sock_diag's
    # (`SocketSource.listeners`) has it; 0 in the BPF iterator's tick scan, which does not read it.
    inode: int = 0


class SockCounts(NamedTuple):
    """One source's sockets on the protected ports."""

    held: int  # sockets in any state except TIME_WAIT (and not LISTEN)
    established: int
    syn_recv: int
    idle: int  # ESTABLISHED sockets where the server waits on a silent client for >= idle_after_ms
    max_idle_ms: int  # longest such wait among this source's sockets (0 if none)


class SessionInfo(NamedTuple):
    """One session on a protected port as `govern why` shows it: its state and what its tcp_info says."""

    remote: str  # the client's address (an IPv4-mapped IPv6 peer as its IPv4 address)
    remote_port: int
    local_port: int
    state: str  # "ESTABLISHED", "SYN_RECV", "CLOSE_WAIT", ...
    info: bool  # the kernel sent tcp_info (request sockets have none): the fields below mean something
    server_sent_ms: int = 0  # tcpi_last_data_sent: since the server last sent data
    client_sent_ms: int = 0  # tcpi_last_data_recv: since the client last sent data (the handshake, if never)
    segs_in: int = 0  # tcpi_data_segs_in: data segments from the client
    segs_out: int = 0  # tcpi_data_segs_out: data segments to the client
    bytes_in: int = 0  # tcpi_bytes_received
    bytes_out: int = 0  # tcpi_bytes_acked: what the client acknowledged of what the server sent


@dataclass(frozen=True, slots=True)
class ScanOptions:
    """What a socket scan reads and how it counts what it reads: one value from the policy to every scanner (the
    daemon's, sock_diag's, the BPF iterator's, the dry run's), so that none of them forwards its fields one by one."""

    ports: frozenset[int]  # the protected ports: only sockets whose local port is one of them
    v4_len: int = 32  # sources grouped by IPv4 /v4_len and IPv6 /v6_len
    v6_len: int = 64
    idle_after_ms: int = 10_000  # an established socket is idle once the server has waited this long on its client
    greet_ms: int = 0  # no socket is idle before this while the server has sent only its greeting
    pregreet_cut: bool = False  # ... unless its client talked meanwhile (postscreen's pregreet test in front)


@dataclass(frozen=True, slots=True)
class Scan:
    """One enumeration of the protected ports."""

    sources: dict[Prefix, SockCounts]  # by source group: IPv4 /v4_len, IPv6 /v6_len
    listeners: tuple[ListenerStats, ...]  # LISTEN sockets on the protected ports
    sockets: int  # non-listening sockets seen (TIME_WAIT is left out: the kernel is asked not to send it)


class Totals(NamedTuple):
    """Sums over a snapshot's sources that pressure is judged by; the observer keeps them as it builds the snapshot,
    with each source's allowlist standing remembered from tick to tick."""

    established: int
    syn_recv: int
    foreign_idle: int  # idle sockets of non-allowlisted sources
    foreign_new: int  # connection attempts of non-allowlisted sources since the previous snapshot


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One tick's immutable view of the kernel."""

    taken_at: float
    interval: float  # seconds since the previous snapshot (0 for the first)
    sources: Mapping[Prefix, SourceStats]
    listeners: tuple[ListenerStats, ...] = ()
    counters: Mapping[str, int] = field(default_factory=dict)  # TcpExt deltas since the previous snapshot
    trusted: frozenset[Prefix] = frozenset()  # sources (groups) that delivered mail recently: softer limits
    # Of `trusted`, those holding sockets whose first proof came during this wave (govern.core.proof): in a wave
    # their silence is judged as a stranger's.
    young: frozenset[Prefix] = frozenset()
    totals: Totals | None = None  # sums over `sources` for the pressure figures (None: computed from `sources`)
    slotted: int | None = None  # connections holding a slot of the wave's budget (None: no budget in force)
    # The highest rate of new connections from non-allowlisted sources read between the ticks since the previous
    # snapshot (per second; 0: none read), so a flood that started just before this tick counts at its own rate.
    attempts_peak: float = 0.0
    # Seconds the sources' `new` counts cover: the time since the counting sets were last read (the observer may
    # defer a read in calm; 0: as `interval`).
    counted_over: float = 0.0


class Mode(StrEnum):
    """The host's posture: how hard govern leans on sources that are not allowlisted."""

    NORMAL = "normal"
    ELEVATED = "elevated"  # under pressure: idle sessions are cut
    WAVE = "wave"  # ride the wave: tighter limits, the most prolific blocked at once, short idle cuts

    @property
    def level(self) -> int:
        return _MODE_LEVEL[self]

    @staticmethod
    def of(level: int) -> Mode:
        return (Mode.NORMAL, Mode.ELEVATED, Mode.WAVE)[max(0, min(level, 2))]


_MODE_LEVEL = {Mode.NORMAL: 0, Mode.ELEVATED: 1, Mode.WAVE: 2}


@dataclass(frozen=True, slots=True)
class ModeState:
    """The current mode, why, and until when. Durable: a wave survives a daemon restart."""

    mode: Mode = Mode.NORMAL
    since: float = 0.0
    until: float = 0.0  # a wave lapses at this time unless renewed (0: no timer)
    reason: str = ""
    manual: bool = False  # switched on by the operator: ends by its timer or `govern wave off`, not by calm
    calm_since: float = 0.0  # when pressure last fell below what holds this mode (0: it has not)
    quiet_until: float = 0.0  # after `govern wave off`: no automatic wave before this time


class ActionKind(StrEnum):
    THROTTLE = "throttle"
    BLOCK = "block"
    EXTEND = "extend"
    UNBLOCK = "unblock"
    UNTHROTTLE = "unthrottle"
    TARPIT = "tarpit"
    UNTARPIT = "untarpit"


PUNITIVE = frozenset({ActionKind.THROTTLE, ActionKind.BLOCK, ActionKind.EXTEND, ActionKind.TARPIT})
TARPIT_KINDS = frozenset({ActionKind.TARPIT, ActionKind.UNTARPIT})


@dataclass(frozen=True, slots=True)
class Action:
    """One change to enforcement, with the reason a person reads in `govern status` and the event log."""

    kind: ActionKind
    prefix: Prefix
    reason: str
    until: float = 0.0  # epoch seconds the block or throttle lapses (kernel timeout); 0 for releases
    offences: int = 0
    manual: bool = False  # asked for by the operator; the automatic ladder never extends or shortens it
    tight: bool = False  # a throttle at the wave's tighter rate

    def describe(self) -> str:
        return f"{self.kind} {self.prefix}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Cut:
    """End this source's sessions on which the server has waited on a client whose session has not advanced for at
    least `idle_ms`; with `queued`, also those still waiting for the server's greeting (in the accept queue). `shed`:
    the slot budget's shedding, which judges nothing the source did and so never counts towards a block; it takes
    only sessions not past the greeting, but with `past` any session that has not advanced for the wait, and with
    `loops` any whose server answered at least that many commands while its client sent no message (`loops` below),
    and with `stale_ms` any greeted that long ago, whose client has sent no message and is keeping the server waiting
    (`no_message` below). A shed that `unproves` takes the source's proof when it ends a session (a loop of a
    source proven during the wave: govern.core.shedding.young_loops); any other shed leaves proof alone."""

    prefix: Prefix
    idle_ms: int
    reason: str
    shed: bool = False
    queued: bool = False
    past: bool = False
    loops: int = 0
    stale_ms: int = 0
    behind: bool = False
    unproves: bool = False

    def shedding(self) -> Shed:
        """What the socket edge is asked for a shed cut: its wait and every question it carries."""
        return Shed(self.idle_ms, self.queued, self.past, self.loops, self.stale_ms, self.behind)


class Shed(NamedTuple):
    """How a source's sessions are shed (govern.edges.SocketSource.cut): not advancing for `wait_ms`; with
    `queued` those not greeted yet too; with `past` those past the greeting too; with `loops`, also those whose
    server answered at least `loops` commands while the client sent nothing the size of a message (`loops` below);
    with `stale_ms`, also those greeted at least that long ago whose client has sent no message (`no_message`
    below) and keeps the server waiting. A `wait_ms` of 0 asks only those last two questions
    (govern.core.decide.looping). With `behind`, those not greeted yet too, but only in a look that found a loop
    among the sessions it was asked about: what waits in the accept queue behind a flood's loops is the flood's."""

    wait_ms: int
    queued: bool
    past: bool = False
    loops: int = 0
    stale_ms: int = 0
    behind: bool = False


# A client's data segments averaging under this many bytes are commands: a message (even a short one, with its
# headers) or a TLS handshake raises the average well over it.
COMMAND_BYTES = 64


# What a client that sent no message may still have sent besides its commands: a TLS handshake's side (ClientHello,
# 0.5 KB from OpenSSL's defaults, up to about 1.8 KB with a post-quantum key share, and Finished). After STARTTLS
# every command is a record (22 bytes more), and the handshake's bytes raise the average per segment `loops` goes by:
# the lab's tls-loopers stayed over 64 bytes a segment for 24 commands.
HANDSHAKE_BYTES = 2048


def no_message(received: int, segs_in: int) -> bool:
    """Whether a client has sent nothing the size of a message: its commands (and perhaps a TLS handshake), or
    nothing. A message's bytes, a few KB with its headers, put it over; one under the handshake's allowance does
    not, which costs nothing once it is delivered."""
    return received < COMMAND_BYTES * segs_in + HANDSHAKE_BYTES


def loops(received: int, segs_in: int, segs_out: int, replies: int) -> bool:
    """Whether a session's server has answered at least `replies` commands (its data segments after the greeting)
    while its client sent only commands, never a message (tcp_info's bytes and data segments in): a client that
    keeps a session busy without ever delivering, as the lab's loopers do (a recipient every 2 s; Postfix takes a
    thousand). A sender reaches DATA within a few replies: pipelining, after two (EHLO's and the batch's)."""
    return replies > 0 and segs_out > replies and segs_in > 0 and received < COMMAND_BYTES * segs_in


@dataclass(frozen=True, slots=True)
class Plan:
    """What one tick decided. Empty plans are common and cheap."""

    actions: tuple[Action, ...] = ()
    mode: ModeState | None = None  # a change of mode (or of its timer), None when it stays as it is
    cuts: tuple[Cut, ...] = ()  # sessions to end: not kernel state, so neither stored nor replayed
    forget: tuple[Prefix, ...] = ()  # offence records that lapsed (`block.forget_after`): no longer held against them
    # At a wave's start: the strangers holding sessions made before it (the kernel's budget never counted them)
    holders: frozenset[Prefix] | None = None

    def __bool__(self) -> bool:
        return bool(self.actions) or self.mode is not None or bool(self.cuts) or bool(self.forget)


@dataclass(frozen=True, slots=True)
class Block:
    prefix: Prefix
    reason: str
    since: float
    until: float
    offences: int
    manual: bool = False


@dataclass(frozen=True, slots=True)
class Throttle:
    prefix: Prefix
    reason: str
    since: float
    until: float
    tight: bool = False


@dataclass(frozen=True, slots=True)
class Tarpitted:
    """A source whose replies the kernel slows down (govern.tarpit)."""

    prefix: Prefix
    reason: str
    since: float
    until: float


@dataclass(frozen=True, slots=True)
class Offender:
    """A source's record of past blocks, kept after the block lapses so repeat offenders get longer blocks."""

    offences: int
    last: float


@dataclass(frozen=True)
class Event:
    """One entry of the state store's event log (a decision, a mode change, a cut), as `govern why` and `status`
    read it back."""

    at: float
    kind: str
    prefix: str
    reason: str
    until: float


@dataclass(frozen=True, slots=True)
class CutRecord:
    """How often a source's sessions were cut in the current wave (a source cut again is blocked)."""

    count: int
    wave: float  # the `since` of the wave the cuts happened in
    last: float


@dataclass(slots=True)
class State:
    """What govern enforces and remembers. The daemon owns the one instance; decide only reads it."""

    blocks: dict[Prefix, Block] = field(default_factory=dict)
    throttles: dict[Prefix, Throttle] = field(default_factory=dict)
    offenders: dict[Prefix, Offender] = field(default_factory=dict)
    tarpits: dict[Prefix, Tarpitted] = field(default_factory=dict)
    mode: ModeState = field(default_factory=ModeState)
    cuts: dict[Prefix, CutRecord] = field(default_factory=dict)  # this wave's; not durable
    # The strangers that held sessions when this wave began (Plan.holders); not durable: a restart in a wave forgets
    # them, and shedding then goes by the sessions each source holds alone.
    holders: frozenset[Prefix] = frozenset()

    def cuts_in_wave(self, p: Prefix, wave: float) -> int:
        rec = self.cuts.get(p)
        return rec.count if rec is not None and rec.wave == wave else 0

    def record(self, plan: Plan, now: float) -> None:
        """Bring the state in line with a plan the kernel has accepted."""
        if plan.mode is not None:
            if plan.mode.mode is not Mode.WAVE or plan.mode.since != self.mode.since:
                self.cuts.clear()  # a wave's cut counts end with it
                self.holders = frozenset()
            self.mode = plan.mode
        if plan.holders is not None:
            self.holders = plan.holders
        if self.mode.mode is Mode.WAVE:
            for c in plan.cuts:
                if c.shed:
                    continue
                n = self.cuts_in_wave(c.prefix, self.mode.since)
                self.cuts[c.prefix] = CutRecord(n + 1, self.mode.since, now)
        for p in plan.forget:
            self.offenders.pop(p, None)
        for a in plan.actions:
            # A flood's sources break the same limits by similar counts: their reasons repeat, and each kept
            # entry holds the one string (~130 bytes a block at a million).
            if a.kind is ActionKind.BLOCK or a.kind is ActionKind.EXTEND:
                old = self.blocks.get(a.prefix)
                since = old.since if (old and a.kind is ActionKind.EXTEND) else now
                manual = old.manual if (old and a.kind is ActionKind.EXTEND) else a.manual
                self.blocks[a.prefix] = Block(a.prefix, sys.intern(a.reason), since, a.until, a.offences, manual)
                self.throttles.pop(a.prefix, None)
                if a.offences:
                    self.offenders[a.prefix] = Offender(a.offences, now)
            elif a.kind is ActionKind.THROTTLE:
                self.throttles[a.prefix] = Throttle(a.prefix, sys.intern(a.reason), now, a.until, a.tight)
            elif a.kind is ActionKind.UNBLOCK:
                self.blocks.pop(a.prefix, None)
            elif a.kind is ActionKind.UNTHROTTLE:
                self.throttles.pop(a.prefix, None)
            elif a.kind is ActionKind.TARPIT:
                self.tarpits[a.prefix] = Tarpitted(a.prefix, sys.intern(a.reason), now, a.until)
            elif a.kind is ActionKind.UNTARPIT:
                self.tarpits.pop(a.prefix, None)


@dataclass(frozen=True, slots=True)
class FirewallSpec:
    """The firewall edges' section of the config (govern.config.Config.firewall): what their kernel objects are
    made from. The slot budget is the daemon's resolution of `wave.slot_budget` (an int), or "auto" before it."""

    ports: tuple[int, ...]
    v4_len: int
    v6_len: int
    throttle_rate: int  # per minute, per source group
    throttle_burst: int
    tight_rate: int  # the wave's tighter throttle, per minute
    tight_burst: int
    gate_rate: int  # new connections per second from strangers in a wave; 0: no gate
    gate_burst: int
    slot_budget: int | str
    budget_share: float
    newcomer_share: float
    proof: bool  # count the MTA's replies in the kernel (trust.from_sessions)
    budget_before_wave: bool = True  # the slot budget caps strangers before a wave too (chain calm)
