"""In-memory stand-ins for the kernel edges, shipped with the product so tests of the daemon's logic need no root.
They keep what a real backend would hold, so tests can assert on it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from govern.addr import Prefix
from govern.config import Config
from govern.errors import KernelError
from govern.model import ActionKind, Plan, State
from govern.observe.sockdiag import Scan, SockCounts


@dataclass
class FakeSockets:
    """Serves whatever sources a test sets; `destroy` forgets the sockets of the given prefixes."""

    sources: dict[Prefix, SockCounts] = field(default_factory=dict)
    destroyed: list[Prefix] = field(default_factory=list)

    def scan(self, ports: frozenset[int], *, v4_len: int, v6_len: int, idle_after_ms: int) -> Scan:
        return Scan(sources=dict(self.sources), listeners=(), sockets=sum(c.held for c in self.sources.values()))

    def destroy(self, prefixes: Sequence[Prefix], ports: frozenset[int]) -> int:
        gone = [p for p in self.sources if any(q.contains(p) for q in prefixes)]
        n = sum(self.sources[p].held for p in gone)
        for p in gone:
            del self.sources[p]
        self.destroyed.extend(prefixes)
        return n


@dataclass
class FakeEnforcer:
    """Holds sets like the kernel would: prefix -> expiry, and fails a commit on demand."""

    name: str = "fake"
    blocks: dict[Prefix, float] = field(default_factory=dict)
    throttles: dict[Prefix, float] = field(default_factory=dict)
    allow: set[Prefix] = field(default_factory=set)
    syn: dict[Prefix, int] = field(default_factory=dict)
    fail_next: bool = False
    commits: int = 0
    torn_down: bool = False

    def setup(self, config: Config, allow: Sequence[Prefix], state: State, now: float) -> Plan:
        self.set_allow(allow)
        for p, b in state.blocks.items():
            self.blocks.setdefault(p, b.until)
        for p, t in state.throttles.items():
            self.throttles.setdefault(p, t.until)
        return Plan()

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
            elif a.kind is ActionKind.THROTTLE:
                self.throttles[a.prefix] = a.until
            elif a.kind is ActionKind.UNBLOCK:
                self.blocks.pop(a.prefix, None)
            elif a.kind is ActionKind.UNTHROTTLE:
                self.throttles.pop(a.prefix, None)

    def syn_counts(self) -> Mapping[Prefix, int]:
        return dict(self.syn)

    def end_sessions(self, prefixes: Sequence[Prefix]) -> int:
        return 0

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
