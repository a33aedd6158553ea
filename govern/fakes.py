"""In-memory stand-ins for the kernel edges, shipped with the product so tests of the daemon's logic need no root.
They keep what a real backend would hold, so tests can assert on it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, TypeVar

from govern.addr import Prefix, PrefixSet
from govern.allow.dns import Answer, DnsTempError, RecordType
from govern.errors import KernelError
from govern.fleet.codec import Decision
from govern.fleet.link import LinkState
from govern.model import (
    Action,
    ActionKind,
    FirewallSpec,
    ListenerStats,
    Plan,
    Scan,
    ScanOptions,
    SessionInfo,
    Shed,
    SockCounts,
    State,
)
from govern.sysctl.planner import Access, Reading

T = TypeVar("T")


@dataclass
class FakeSockets:
    """Serves whatever sources a test sets; `destroy` forgets the sockets of the given prefixes. `live` holds the
    per-session records `sessions` picks from (apart from `sources`: a test sets what it needs)."""

    sources: dict[Prefix, SockCounts] = field(default_factory=dict)
    destroyed: list[Prefix] = field(default_factory=list)
    cuts: list[dict[Prefix, int]] = field(default_factory=list)
    shed: list[dict[Prefix, Shed]] = field(default_factory=list)  # each call's sources to shed
    live: list[SessionInfo] = field(default_factory=list)
    # Sessions of each source that loop with no message (govern.model.loops): a shed that asks the loop's question
    # ends them.
    looping: dict[Prefix, int] = field(default_factory=dict)
    scanner: str = "fake"
    listening: tuple[ListenerStats, ...] = ()  # what `listeners` reads between ticks

    def scan(self, opts: ScanOptions) -> Scan:
        return Scan(
            sources=dict(self.sources), listeners=self.listening, sockets=sum(c.held for c in self.sources.values())
        )

    def listeners(self, ports: frozenset[int]) -> tuple[ListenerStats, ...]:
        return self.listening

    def destroy(self, prefixes: Sequence[Prefix], ports: frozenset[int]) -> int:
        gone = [p for p in self.sources if any(q.contains(p) for q in prefixes)]
        n = sum(self.sources[p].held for p in gone)
        for p in gone:
            del self.sources[p]
        self.destroyed.extend(prefixes)
        return n

    def cut(
        self,
        idle_ms: Mapping[Prefix, int],
        ports: frozenset[int],
        shed: Mapping[Prefix, Shed] | None = None,
        greet_ms: int = 0,
        pregreet_cut: bool = False,
    ) -> dict[Prefix, int]:
        """Ends the idle sockets of each source whose longest wait reaches its threshold; the fake knows no accept
        queue nor greetings, so of the sources to `shed` only the `looping` sessions a loop's question takes end;
        every shed is recorded."""
        self.cuts.append(dict(idle_ms))
        if shed:
            self.shed.append(dict(shed))
        ended: dict[Prefix, int] = {}
        for p, how in (shed or {}).items():
            n, c = self.looping.get(p, 0), self.sources.get(p)
            if n and (how.loops or how.stale_ms) and c is not None:
                ended[p] = n
                del self.looping[p]
                self.sources[p] = c._replace(held=c.held - n, established=c.established - n)
        for p, ms in idle_ms.items():
            c = self.sources.get(p)
            if c is not None and c.idle and c.max_idle_ms >= ms:
                ended[p] = c.idle
                left = c._replace(held=c.held - c.idle, established=c.established - c.idle, idle=0, max_idle_ms=0)
                self.sources[p] = left
        return ended

    def sessions(self, prefix: Prefix | PrefixSet, ports: frozenset[int]) -> list[SessionInfo]:
        inside = prefix.covers if isinstance(prefix, PrefixSet) else prefix.contains
        return [s for s in self.live if s.local_port in ports and inside(Prefix.parse(s.remote))]


@dataclass
class FakeEnforcer:
    """Holds sets like the kernel would: prefix -> expiry, and fails a commit on demand."""

    name: str = "fake"
    blocks: dict[Prefix, float] = field(default_factory=dict)
    throttles: dict[Prefix, float] = field(default_factory=dict)
    tight: set[Prefix] = field(default_factory=set)  # throttles at the wave's rate
    allow: set[Prefix] = field(default_factory=set)
    syn: dict[Prefix, int] = field(default_factory=dict)
    delivering: set[Prefix] = field(default_factory=set)  # what the kernel proved (proven4/proven6)
    held_off: dict[Prefix, float] = field(default_factory=dict)  # unproven4/unproven6: no proof again, seconds
    crowd_delivering: set[Prefix] = field(default_factory=set)  # crowds the kernel proved in a wave (provenc4/6)
    proved_ago: dict[Prefix, float] = field(default_factory=dict)  # seconds since a delivering source's proof (0)
    log_proven: dict[Prefix, float] = field(default_factory=dict)  # what the daemon put in the proven sets, seconds
    crowd: set[Prefix] = field(default_factory=set)  # first contacts that came as a crowd in a wave (crowd4/crowd6)
    slots: int | None = None  # connections holding a slot of the budget (None: no budget)
    attempted: int | None = None  # the kernel's count of new connections (None: no counter)
    counted_at: int | None = None  # `attempted` at the last syn_counts, as the nftables backend keeps it
    counts_expire: bool = False  # a count read may have timed out since (the nftables backend's expirations)
    syn_reads: int = 0
    proven_reads: int = 0
    fail_next: bool = False
    commits: int = 0
    torn_down: bool = False
    tampered: str | None = None  # what `changed` reports until the next setup
    setups: int = 0

    def setup(self, spec: FirewallSpec, allow: Sequence[Prefix], state: State, now: float) -> Plan:
        self.setups += 1
        self.tampered = None
        self.set_allow(allow)
        # As the real backends do: what the kernel holds that the state does not know is returned for adoption.
        why = "found in the kernel at start-up"
        adopted = [Action(ActionKind.BLOCK, p, why, until=u) for p, u in self.blocks.items() if p not in state.blocks]
        adopted += [
            Action(ActionKind.THROTTLE, p, why, until=u, tight=p in self.tight)
            for p, u in self.throttles.items()
            if p not in state.throttles
        ]
        for p, b in state.blocks.items():
            self.blocks.setdefault(p, b.until)
        for p, t in state.throttles.items():
            self.throttles.setdefault(p, t.until)
        return Plan(tuple(adopted))

    def set_allow(self, allow: Sequence[Prefix]) -> None:
        self.allow = set(allow)

    def apply(self, plan: Plan, now: float) -> None:
        if self.fail_next:
            self.fail_next = False
            raise KernelError("fake kernel refused the transaction")
        self.commits += 1
        for a in plan.actions:
            if a.kind in (ActionKind.BLOCK, ActionKind.EXTEND):
                self.blocks[a.prefix] = a.until
                self.throttles.pop(a.prefix, None)
                self.tight.discard(a.prefix)
            elif a.kind is ActionKind.THROTTLE:
                self.throttles[a.prefix] = a.until
                if a.tight:
                    self.tight.add(a.prefix)
            elif a.kind is ActionKind.UNBLOCK:
                self.blocks.pop(a.prefix, None)
            elif a.kind is ActionKind.UNTHROTTLE:
                self.throttles.pop(a.prefix, None)
                self.tight.discard(a.prefix)

    def syn_counts(self) -> Mapping[Prefix, int]:
        self.counted_at = self.attempted
        self.syn_reads += 1
        return dict(self.syn)

    def syn_counts_unchanged(self) -> bool:
        return self.counted_at is not None and self.attempted == self.counted_at and not self.counts_expire

    def prove(self, sources: Mapping[Prefix, float]) -> None:
        self.log_proven.update(sources)
        self.crowd_delivering.difference_update(sources)

    def crowds(self, among: Iterable[Prefix]) -> frozenset[Prefix]:
        return frozenset(self.crowd).intersection(among)

    def unprove(self, sources: Sequence[Prefix], seconds: float) -> None:
        for p in sources:
            self.log_proven.pop(p, None)
            self.delivering.discard(p)
            self.crowd_delivering.discard(p)
            self.held_off[p] = seconds

    def proven(self) -> Sequence[tuple[Prefix, float]]:
        self.proven_reads += 1
        return tuple((p, self.proved_ago.get(p, 0.0)) for p in self.delivering)

    def crowd_proven(self) -> Sequence[tuple[Prefix, float]]:
        return tuple((p, self.proved_ago.get(p, 0.0)) for p in self.crowd_delivering)

    def attempts(self) -> int | None:
        return self.attempted

    def slotted(self) -> int | None:
        return self.slots

    def end_sessions(self, prefixes: Sequence[Prefix]) -> int:
        return 0

    def changed(self) -> str | None:
        return self.tampered

    def unavailable(self) -> Mapping[str, str]:
        return {}

    def teardown(self) -> bool:
        had = bool(self.blocks or self.throttles or self.allow)
        self.blocks.clear()
        self.throttles.clear()
        self.allow.clear()
        self.torn_down = True
        return had

    def close(self) -> None:
        pass


@dataclass
class FakeTarpit:
    """Holds tarpitted prefixes with their timeouts as the kernel would; `reason` makes it an unsupported host."""

    name: str = "fake"
    reason: str | None = None
    ports: frozenset[int] = frozenset()
    ifaces: tuple[str, ...] = ()
    held: dict[Prefix, float] = field(default_factory=dict)
    fail_next: bool = False
    commits: int = 0

    def supported(self) -> str | None:
        return self.reason

    def setup(self, ports: frozenset[int], ifaces: Sequence[str] = ()) -> None:
        if self.reason is not None:
            raise KernelError(self.reason)
        self.ports, self.ifaces = ports, tuple(ifaces)

    def apply(self, add: Mapping[Prefix, float], remove: Sequence[Prefix]) -> None:
        if self.fail_next:
            self.fail_next = False
            raise KernelError("fake kernel refused the transaction")
        self.commits += 1
        for p in remove:
            self.held.pop(p, None)
        self.held.update(add)

    def tarpitted(self) -> frozenset[Prefix]:
        return frozenset(self.held)

    def teardown(self) -> bool:
        had = bool(self.held or self.ports)
        self.held.clear()
        self.ports, self.ifaces = frozenset(), ()
        return had

    def close(self) -> None:
        pass


@dataclass
class FakeCounters:
    values: dict[str, int] = field(default_factory=dict)

    def read(self) -> Mapping[str, int]:
        return dict(self.values)


@dataclass
class FakeClock:
    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeSysctls:
    """Sysctls in a dict: key -> text, with read-only keys, keys the kernel refuses, and every write recorded."""

    values: dict[str, str] = field(default_factory=dict)
    read_only: set[str] = field(default_factory=set)
    refuse: set[str] = field(default_factory=set)
    initial: bool = True
    boot: str = "boot-1"
    netns: str = "net:[1]"
    writes: list[tuple[str, str]] = field(default_factory=list)

    def read(self, key: str) -> Reading:
        if key not in self.values:
            return Reading.absent()
        return Reading(self.values[key], Access.READ_ONLY if key in self.read_only else Access.WRITABLE, key)

    def write(self, key: str, value: str) -> None:
        if key not in self.values:
            raise KernelError(f"{key}: no such sysctl")
        if key in self.read_only or key in self.refuse:
            raise KernelError(f"{key}: refused")
        self.values[key] = value
        self.writes.append((key, value))

    def in_initial_namespace(self) -> bool:
        return self.initial

    def where(self) -> tuple[str, str]:
        return self.boot, self.netns


@dataclass
class FakeResolver:
    """DNS from a table: (name, type) -> records, or a failure; a name it does not hold does not exist.
    `calls` records every query, in order, so tests can count lookups."""

    records: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    ttls: dict[tuple[str, str], float] = field(default_factory=dict)
    failing: set[tuple[str, str]] = field(default_factory=set)
    calls: list[tuple[str, str]] = field(default_factory=list)

    def set(self, name: str, rdtype: RecordType, *records: str, ttl: float = 3600.0) -> None:
        self.records[(name, rdtype)] = records
        self.ttls[(name, rdtype)] = ttl
        self.failing.discard((name, rdtype))

    def fail(self, name: str, rdtype: RecordType) -> None:
        self.failing.add((name, rdtype))

    def query(self, name: str, rdtype: RecordType) -> Answer:
        self.calls.append((name, rdtype))
        if (name, rdtype) in self.failing:
            raise DnsTempError(f"{name} {rdtype}: fake SERVFAIL")
        return Answer(self.records.get((name, rdtype), ()), self.ttls.get((name, rdtype), 300.0))


class InlineExecutor(futures.Executor):
    """Runs each job at submit, on the caller's thread: background work made deterministic for tests."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> futures.Future[T]:
        fut: futures.Future[T] = futures.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except Exception as exc:
            fut.set_exception(exc)
        return fut


@dataclass
class FakeFleet:
    """The fleet edge without Redis: what the daemon publishes lands in `published`; a test puts other hosts'
    verified decisions in `incoming` for the next drain, and sets `link` to the state it wants shown."""

    name: str = "mx-test"
    published: list[Decision] = field(default_factory=list)
    incoming: list[Decision] = field(default_factory=list)
    link: LinkState = field(default_factory=lambda: LinkState("connected", 0.0))
    settings: tuple[object, ...] = ()
    started: bool = False
    closed: bool = False
    pending: list[Decision] = field(default_factory=list)  # published while "down": what unsent() hands over

    def start(self) -> None:
        self.started = True

    def publish(self, decisions: Sequence[Decision]) -> None:
        self.published.extend(decisions)

    def drain(self, limit: int = 10_000) -> list[Decision]:
        out, self.incoming = self.incoming[:limit], self.incoming[limit:]
        return out

    def unsent(self) -> list[Decision]:
        out, self.pending = self.pending, []
        return out

    def state(self) -> LinkState:
        return self.link

    def close(self) -> None:
        self.closed = True
