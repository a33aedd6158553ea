"""The small Protocols at govern's edges (the sysctls' are govern.sysctl.edges, beside the values they carry).
Real implementations talk to the kernel; fakes (govern.fakes) stand in for them in unit tests. The real ones are
chosen in one place (govern.wiring)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

from govern.addr import Prefix, PrefixSet
from govern.model import Event, FirewallSpec, ListenerStats, Plan, Scan, ScanOptions, SessionInfo, Shed, State

if TYPE_CHECKING:
    from govern.fleet.codec import Decision
    from govern.fleet.link import LinkState


class SocketSource(Protocol):
    """Enumerates and ends TCP sessions on the protected ports (sock_diag; the scan through a BPF iterator where it
    loads)."""

    @property
    def scanner(self) -> str:
        """What reads the sockets each tick, and why not the BPF iterator if not (`govern status`)."""
        ...

    def scan(self, opts: ScanOptions) -> Scan: ...

    def listeners(self, ports: frozenset[int]) -> Sequence[ListenerStats]:
        """The listening sockets on `ports` with their accept queues: cheap enough to read between ticks."""
        ...

    def destroy(self, prefixes: Sequence[Prefix], ports: frozenset[int]) -> int: ...

    def cut(
        self,
        idle_ms: Mapping[Prefix, int],
        ports: frozenset[int],
        shed: Mapping[Prefix, Shed] | None = None,
        greet_ms: int = 0,
        pregreet_cut: bool = False,
    ) -> Mapping[Prefix, int]:
        """End the sessions of these sources idle (server waiting on a silent client) for at least `idle_ms`; none
        before `greet_ms` while the server has sent only its first segment (with `pregreet_cut`, unless its client
        talked meanwhile). Of the sources to `shed`
        (govern.model.Shed): those that got nothing but the greeting and have not advanced for the wait (with
        `past`, any that has not), and with `queued`, those the server has not greeted yet. Returns the sessions
        ended per source."""
        ...

    def sessions(self, prefix: Prefix | PrefixSet, ports: frozenset[int]) -> Sequence[SessionInfo]:
        """Every session on `ports` whose client lies in `prefix` (or any of a set's), with its tcp_info (on demand:
        `govern why`, and `govern status` for its top sources)."""
        ...


class Enforcer(Protocol):
    """A firewall backend. `apply` commits a whole plan as one kernel transaction or raises, changing nothing."""

    name: str

    def setup(self, spec: FirewallSpec, allow: Sequence[Prefix], state: State, now: float) -> Plan:
        """Create or converge the kernel objects and restore `state`'s blocks and throttles into them.

        Returns what the kernel held that `state` did not know, for the caller to adopt.
        """
        ...

    def set_allow(self, allow: Sequence[Prefix]) -> None: ...

    def apply(self, plan: Plan, now: float) -> None: ...

    def syn_counts(self) -> Mapping[Prefix, int]:
        """Cumulative connection attempts per source group, counted in the kernel."""
        ...

    def syn_counts_unchanged(self) -> bool:
        """Whether no source group's count can have grown or timed out since the last `syn_counts` (a counter the
        same rules count in has not moved, and no element read has reached its timeout), so a tick may skip the
        read; False where the backend cannot tell."""
        ...

    def proven(self) -> Sequence[tuple[Prefix, float]]:
        """Source groups the MTA answered a whole dialogue (the kernel counts its replies), where the backend can,
        each with the seconds since its last proof."""
        ...

    def crowd_proven(self) -> Sequence[tuple[Prefix, float]]:
        """Crowds the kernel proved during a wave (CROWD_PROOF_REPLIES), each with the seconds since its proof:
        kept out of the proven sets, so neither the gate nor the budget passes them, until the daemon's `prove`
        (after a probation: govern.proving)."""
        ...

    def prove(self, sources: Mapping[Prefix, float]) -> None:
        """Put source groups the MTA's log saw deliver into the kernel's proven sets, each for its seconds, so the
        wave's gate and the slot budget pass them as they pass the kernel's own proof (a no-op where the backend
        has neither)."""
        ...

    def crowds(self, among: Iterable[Prefix]) -> frozenset[Prefix]:
        """Those of the source groups `among` that the kernel saw open several connections at once as first contacts
        in a wave (sets crowd4/crowd6), where the backend has a wave's gate (none elsewhere)."""
        ...

    def unprove(self, sources: Sequence[Prefix], seconds: float) -> None:
        """Take source groups out of the kernel's proven sets (govern.core.proof: a bot that delivered, then
        stalled, or looped) and keep the kernel's count of replies from proving them again for `seconds`."""
        ...

    def attempts(self) -> int | None:
        """New connections to the protected ports from sources not allowlisted, counted in the kernel since the
        table was made (SYNs, not their retransmissions), or None where the backend has no such counter: cheap
        enough to read between ticks."""
        ...

    def slotted(self) -> int | None:
        """How many connections hold a slot of the wave's budget now (the kernel's own count), or None where the
        backend has no budget or it is not in force."""
        ...

    def end_sessions(self, prefixes: Sequence[Prefix]) -> int:
        """Forget the connection-tracking entries of these sources; returns how many went."""
        ...

    def changed(self) -> str | None:
        """What someone else removed or changed of the kernel objects the backend owns since its last `setup` (an
        operator's `nft flush ruleset`, a firewall reload), or None while they are as it made them; cheap enough
        for every tick."""
        ...

    def unavailable(self) -> Mapping[str, str]:
        """Features of this backend that the config asked for but that could not start (by feature name, each with
        why), as of the last `setup`; the backend protects without them meanwhile."""
        ...

    def teardown(self) -> bool:
        """Remove every kernel object the backend owns; True if there was something to remove."""
        ...

    def close(self) -> None: ...


class Tarpit(Protocol):
    """Slows the MX's replies on the protected ports to chosen sources (govern.tarpit; docs/tarpit.md).

    `apply` is one transaction; each added source carries a kernel-side timeout in seconds, so a tarpit lapses by
    itself if the daemon dies. Allowlisted sources must never be passed in; the kernel skips them anyway.
    """

    name: str

    def supported(self) -> str | None:
        """None if this host can tarpit, else the reason it cannot."""
        ...

    def setup(self, ports: frozenset[int], ifaces: Sequence[str] = ()) -> None: ...

    def apply(self, add: Mapping[Prefix, float], remove: Sequence[Prefix]) -> None: ...

    def tarpitted(self) -> frozenset[Prefix]: ...

    def teardown(self) -> bool:
        """Remove every kernel object the tarpit owns; True if there was something to remove."""
        ...

    def close(self) -> None: ...


class Counters(Protocol):
    """Kernel TCP counters (TcpExt) as cumulative values."""

    def read(self) -> Mapping[str, int]: ...


class StateStore(Protocol):
    """The durable state: blocks, throttles, offences, `govern allow` additions and the event log (govern.store)."""

    def load(self) -> State: ...

    def pending(self, plan: Plan, now: float) -> AbstractContextManager[None]:
        """Record `plan` as in flight while the kernel applies it: committed if the block exits cleanly."""
        ...

    def save(self, plan: Plan, now: float) -> None: ...

    def replace(self, state: State, now: float) -> None:
        """Write the whole state in place of what the store held (catching up after failed writes)."""
        ...

    def unblocked_last(self, prefixes: Iterable[Prefix]) -> set[Prefix]:
        """Of `prefixes`, those whose latest recorded block event is an unblock."""
        ...

    def trim_events(self, before: float) -> None: ...

    def events(self, limit: int = 50) -> list[Event]: ...

    def note(self, kind: str, entries: Iterable[tuple[Prefix, str]], now: float) -> None: ...

    def events_about(self, prefixes: Sequence[Prefix], limit: int = 20) -> list[Event]: ...

    def allowed(self) -> tuple[Prefix, ...]: ...

    def allow(self, prefix: Prefix, now: float, note: str = "") -> None: ...

    def disallow(self, prefix: Prefix) -> bool: ...

    def close(self) -> None: ...


class FleetLink(Protocol):
    """The fleet's shared decisions (govern.fleet.link; docs/fleet.md): a link that runs beside the tick. `publish`
    and `drain` never block: they put to and take from bounded queues a thread of the link's own serves."""

    name: str  # this host's name on what it publishes

    @property
    def settings(self) -> tuple[object, ...]:
        """What it was made from: a reload that changes them makes a new link."""
        ...

    def start(self) -> None: ...

    def unsent(self) -> list[Decision]:
        """This host's decisions not yet sent (a link being replaced hands them to the next)."""
        ...

    def publish(self, decisions: Sequence[Decision]) -> None:
        """Queue this host's own decisions for the fleet (signed and sent by the link's thread)."""
        ...

    def drain(self, limit: int = 10_000) -> list[Decision]:
        """The other hosts' decisions verified since the last drain, at most `limit`."""
        ...

    def state(self) -> LinkState: ...

    def close(self) -> None: ...
