"""The host's own addresses, read from the kernel (rtnetlink) of the network namespace govern runs in: never
exported, and the default FlowSpec destination."""

from __future__ import annotations

from govern.addr import Prefix
from govern.errors import KernelError

SCOPE_UNIVERSE = 0


def host_addresses() -> tuple[tuple[Prefix, ...], tuple[Prefix, ...]]:
    """(every local address as a host prefix, the global-scope ones among them)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    every: set[Prefix] = set()
    public: set[Prefix] = set()
    try:
        with IPRoute() as ipr:
            for msg in ipr.get_addr():
                text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
                if not text:
                    continue
                p = Prefix.parse(str(text).split("%", 1)[0])
                every.add(p)
                if msg["scope"] == SCOPE_UNIVERSE:
                    public.add(p)
    except (NetlinkError, OSError) as exc:
        raise KernelError(f"cannot read the host's addresses: {exc}") from None
    return tuple(sorted(every)), tuple(sorted(public))
