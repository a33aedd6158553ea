"""Forgetting the connection-tracking entries of blocked sources, so a stateful firewall in front of the MTA holds
nothing for them either. Only entries towards the protected ports are touched."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from govern.addr import Prefix

log = logging.getLogger("govern.conntrack")


def forget(prefixes: Iterable[Prefix], ports: frozenset[int] | None = None) -> int:
    """Delete every conntrack entry whose original source lies in `prefixes`; returns how many went.

    A host without connection tracking (no module loaded, or nothing in this namespace uses it) has nothing to
    forget, which is not an error.
    """
    wanted = list(prefixes)
    if not wanted:
        return 0
    try:
        from pyroute2 import Conntrack
        from pyroute2.netlink.exceptions import NetlinkError
    except ImportError:  # pragma: no cover - pyroute2 is a dependency
        return 0
    removed = 0
    try:
        ct = Conntrack()
    except OSError as exc:
        log.debug("conntrack not available: %s", exc)
        return 0
    try:
        doomed = []
        for entry in ct.dump_entries():
            t = entry.tuple_orig
            if t.saddr is None or (ports is not None and t.dport not in ports):
                continue
            src = Prefix.parse(t.saddr.split("%", 1)[0])
            if any(p.contains(src) for p in wanted):
                doomed.append(entry)
        for entry in doomed:
            try:
                ct.delete(entry)
                removed += 1
            except NetlinkError as exc:
                if exc.code != 2:  # ENOENT: it went by itself meanwhile
                    log.warning("cannot delete conntrack entry %s: %s", entry, exc)
    except NetlinkError as exc:
        log.debug("conntrack dump failed: %s", exc)
    finally:
        ct.close()
    return removed
