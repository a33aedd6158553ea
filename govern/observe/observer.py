"""The Observer: one Snapshot per tick from sock_diag (sessions and listeners), the backend's kernel-side SYN
counters (new connections, so a connection that opens and closes within a tick still counts) and TcpExt."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from govern.addr import Prefix
from govern.config import Policy
from govern.edges import Counters, SocketSource
from govern.model import Snapshot, SourceStats
from govern.observe.netstat import deltas
from govern.observe.rates import RateWindow

_NO_SOCKETS = (0, 0, 0, 0, 0)


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

    def snapshot(self, policy: Policy, now: float, trusted: frozenset[Prefix] = frozenset()) -> Snapshot:
        # Idle is counted from the shortest wait anything judges by: the status display's, or an idle cut's.
        idle_after = min(policy.idle_after, *(policy.cut_idle_after or ()))
        scan = self.sockets.scan(
            policy.ports, v4_len=policy.v4_len, v6_len=policy.v6_len, idle_after_ms=int(idle_after * 1000)
        )
        rates = self.rates.update(self.syn_counts(), now)
        # One record per connecting source every tick: build them as plain tuple concatenations (SockCounts'
        # fields followed by the two rate fields), which costs a third of calling the NamedTuple constructor.
        make, get, none = tuple.__new__, rates.get, (0, 0)
        sources: dict[Prefix, SourceStats] = {p: make(SourceStats, c + get(p, none)) for p, c in scan.sources.items()}
        for p, r in rates.items():
            if p not in sources:
                sources[p] = make(SourceStats, _NO_SOCKETS + r)
        netstat = self.counters.read()
        snap = Snapshot(
            taken_at=now,
            interval=0.0 if self._last is None else now - self._last,
            sources=sources,
            listeners=scan.listeners,
            counters=deltas(self._netstat, netstat),
            trusted=trusted,
        )
        self._netstat, self._last = netstat, now
        return snap
