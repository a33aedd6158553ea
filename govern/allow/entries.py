"""An allowlist entry with its provenance, so `govern status` and `govern list` can say why a prefix is allowed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from govern.addr import Prefix


class AllowEntry(NamedTuple):
    prefix: Prefix
    source: str  # e.g. "allow.cidrs", "file /etc/govern/partners.txt:3", "host relay.partner.example"


def by_prefix(entries: Iterable[AllowEntry]) -> dict[Prefix, tuple[str, ...]]:
    """Each prefix with every source that lists it, in the order given."""
    out: dict[Prefix, list[str]] = {}
    for e in entries:
        sources = out.setdefault(e.prefix, [])
        if e.source not in sources:
            sources.append(e.source)
    return {p: tuple(s) for p, s in out.items()}
