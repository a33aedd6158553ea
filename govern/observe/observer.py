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

    def snapshot(self, policy: Policy, now: float) -> Snapshot:
        scan = self.sockets.scan(
            policy.ports, v4_len=policy.v4_len, v6_len=policy.v6_len, idle_after_ms=int(policy.idle_after * 1000)
        )
        rates = self.rates.update(self.syn_counts(), now)
        sources: dict[Prefix, SourceStats] = {}
        for p, c in scan.sources.items():
            new, per_min = rates.get(p, (0, 0))
            sources[p] = SourceStats(c.held, c.established, c.syn_recv, c.idle, c.max_idle_ms, new, per_min)
        for p, (new, per_min) in rates.items():
            if p not in sources:
                sources[p] = SourceStats(new=new, new_per_minute=per_min)
        netstat = self.counters.read()
        snap = Snapshot(
            taken_at=now,
            interval=0.0 if self._last is None else now - self._last,
            sources=sources,
            listeners=scan.listeners,
            counters=deltas(self._netstat, netstat),
        )
        self._netstat, self._last = netstat, now
        return snap
