"""Forgetting the connection-tracking entries of blocked sources, so a stateful firewall in front of the MTA holds
nothing for them either. Only entries towards the protected ports are touched."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from govern.addr import Prefix

log = logging.getLogger("govern.conntrack")


def _tracking() -> bool:
    """Whether this namespace tracks any connection at all: without entries there is nothing to dump."""
    try:
        with open("/proc/sys/net/netfilter/nf_conntrack_count", encoding="ascii") as fh:
            return int(fh.read().strip() or 0) > 0
    except (OSError, ValueError):
        return False


def forget(prefixes: Iterable[Prefix], ports: frozenset[int] | None = None) -> int:
    """Delete every conntrack entry whose original source lies in `prefixes`; returns how many went.

    A host without connection tracking (no module loaded, or nothing in this namespace uses it) has nothing to
    forget, which is not an error. Host sources are looked up with the kernel's own filter (Linux 5.8+), so a busy
    conntrack table is not walked once per blocked source; wider prefixes need one full dump.
    """
    wanted = list(prefixes)
    if not wanted or not _tracking():
        return 0
    try:
        from pyroute2 import Conntrack
        from pyroute2.conntrack import NFCTAttrTuple
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
        hosts = [p for p in wanted if p.is_host]
        wide = [p for p in wanted if not p.is_host]
        found = []
        for p in hosts:
            found += list(ct.dump_entries(tuple_orig=NFCTAttrTuple(saddr=str(p), proto=6)))
        if wide:
            found += [e for e in ct.dump_entries() if _inside(e.tuple_orig.saddr, wide)]
        for entry in found:
            if ports is not None and entry.tuple_orig.dport not in ports:
                continue
            try:
                ct.delete(entry)
                removed += 1
            except NetlinkError as exc:
                if exc.code != 2:  # ENOENT: it went by itself meanwhile
                    log.warning("cannot delete conntrack entry %s: %s", entry, exc)
    except NetlinkError as exc:
        log.warning("conntrack lookup failed: %s", exc)
    finally:
        ct.close()
    return removed


def _inside(saddr: str | None, prefixes: list[Prefix]) -> bool:
    if not saddr:
        return False
    src = Prefix.parse(saddr.split("%", 1)[0])
    return any(p.contains(src) for p in prefixes)
