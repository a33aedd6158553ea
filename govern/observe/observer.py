"""The Observer: one Snapshot per tick from sock_diag (sessions and listeners), the backend's kernel-side SYN
counters (new connections, so a connection that opens and closes within a tick still counts) and TcpExt."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from govern.addr import Prefix, PrefixSet
from govern.core.modes import totals
from govern.core.policy import Policy
from govern.edges import Counters, SocketSource
from govern.model import Snapshot, SourceStats
from govern.observe.netstat import deltas
from govern.observe.rates import RateWindow

_NO_SOCKETS = (0, 0, 0, 0, 0)
_STANDINGS_STALE = 1 << 16  # sources gone since they were last seen that the standing cache may keep


class Observer:
    def __init__(
        self, sockets: SocketSource, syn_counts: Callable[[], Mapping[Prefix, int]], counters: Counters
    ) -> None:
        self.sockets = sockets
        self.syn_counts = syn_counts
        self.counters = counters
        self.rates = RateWindow()
        self._netstat = counters.read()
        self._last: float | None = None
        # Each source's allowlist standing, kept from tick to tick (most sources outlive a tick; asking the
        # allowlist costs ~1 us a source, a dict lookup ~50 ns).
        self._allow: PrefixSet | None = None
        self._allowlisted: dict[Prefix, bool] = {}

    def _standing(self, p: Prefix) -> bool:
        hit = self._allowlisted.get(p)
        if hit is None:
            assert self._allow is not None
            hit = self._allowlisted[p] = self._allow.intersects(p)
        return hit

    def snapshot(self, policy: Policy, now: float, trusted: frozenset[Prefix] = frozenset()) -> Snapshot:
        # Idle is counted from the shortest wait anything judges by: the status display's, or an idle cut's.
        idle_after = min((policy.idle_after, *(policy.cut_idle_after or ())))
        scan = self.sockets.scan(
            policy.ports,
            v4_len=policy.v4_len,
            v6_len=policy.v6_len,
            idle_after_ms=int(idle_after * 1000),
            greet_ms=int(policy.greet_floor * 1000),
        )
        rates = self.rates.update(self.syn_counts(), now)
        # One record per connecting source every tick: build them as plain tuple concatenations (SockCounts'
        # fields followed by the two rate fields), which costs a third of calling the NamedTuple constructor.
        make, get, none = tuple.__new__, rates.get, (0, 0)
        sources: dict[Prefix, SourceStats] = {p: make(SourceStats, c + get(p, none)) for p, c in scan.sources.items()}
        for p, r in rates.items():
            if p not in sources:
                sources[p] = make(SourceStats, _NO_SOCKETS + r)
        if policy.allow is not self._allow:  # a new allowlist: every source's standing is asked again
            self._allow, self._allowlisted = policy.allow, {}
        elif len(self._allowlisted) > 2 * len(sources) + _STANDINGS_STALE:
            self._allowlisted = {}
        sums = totals(sources, self._standing)
        netstat = self.counters.read()
        snap = Snapshot(
            taken_at=now,
            interval=0.0 if self._last is None else now - self._last,
            sources=sources,
            listeners=scan.listeners,
            counters=deltas(self._netstat, netstat),
            trusted=trusted,
            totals=sums,
        )
        self._netstat, self._last = netstat, now
        return snap
