"""TcpExt counters from /proc/net/netstat of the current network namespace."""

from __future__ import annotations

from collections.abc import Mapping

# The counters that tell an operator the listen queue is overflowing or the host is shedding SYNs.
INTERESTING = (
    "ListenOverflows",
    "ListenDrops",
    "TCPReqQFullDrop",
    "TCPReqQFullDoCookies",
    "SyncookiesSent",
    "SyncookiesRecv",
    "SyncookiesFailed",
    "TCPAbortOnData",
    "TCPAbortOnClose",
    "TCPAbortOnTimeout",
    "TCPBacklogDrop",
    "EmbryonicRsts",
)


def parse(text: str) -> dict[str, int]:
    """Pairs of header/value lines per protocol; returns TcpExt's counters by name."""
    lines = text.splitlines()
    out: dict[str, int] = {}
    for head, vals in zip(lines[0::2], lines[1::2], strict=False):
        names, values = head.split(), vals.split()
        if names and names[0] == "TcpExt:" and values and values[0] == "TcpExt:":
            out.update((n, int(v)) for n, v in zip(names[1:], values[1:], strict=False))
    return out


class ProcNetstat:
    """Reads the TcpExt counters of the namespace the daemon runs in."""

    def __init__(self, path: str = "/proc/net/netstat") -> None:
        self.path = path

    def read(self) -> dict[str, int]:
        try:
            with open(self.path, encoding="ascii") as fh:
                return parse(fh.read())
        except OSError:
            return {}


def deltas(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in INTERESTING if k in after}
