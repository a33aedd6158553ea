"""The MTA's own relays: Postfix's `mynetworks` (as `postconf -h mynetworks` resolves it, defaults included), an
allowlist source on by default (`allow.mta_networks`), so the hosts an operator already told the MTA to trust are
never throttled, blocked or cut by govern either."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Sequence

from govern.addr import Prefix
from govern.allow.entries import AllowEntry
from govern.allow.files import within_guard
from govern.errors import AddressError

SOURCE = "postfix mynetworks"


def postconf_mynetworks(timeout: float = 5.0) -> str | None:
    """The value, or None where there is no Postfix (no postconf) or it cannot say."""
    try:
        res = subprocess.run(["postconf", "-h", "mynetworks"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout if res.returncode == 0 else None


def parse(value: str) -> tuple[list[AllowEntry], list[str]]:
    """The addresses and networks of a mynetworks value, and a note for each item that is not one: lookup tables
    (`hash:...`), files (`/etc/postfix/network_table`), host names and negations (`!...`) are Postfix's to match."""
    entries: list[AllowEntry] = []
    notes: list[str] = []
    for item in filter(None, re.split(r"[\s,]+", value)):
        if item.startswith(("!", "/")) or (re.match(r"^[a-z][a-z0-9_]*:", item) and not _looks_ipv6(item)):
            notes.append(f"{SOURCE}: {item[:60]} skipped (a negation, file or lookup table: Postfix's to match)")
            continue
        text = re.sub(r"^\[([^\]]+)\]", r"\1", item)  # Postfix writes IPv6 as [2001:db8::]/32
        try:
            entries.append(AllowEntry(Prefix.parse(text), SOURCE))
        except AddressError:
            notes.append(f"{SOURCE}: {item[:60]} skipped (not an address or network)")
    return entries, notes


def _looks_ipv6(item: str) -> bool:
    return bool(re.fullmatch(r"[0-9A-Fa-f:.]+(/\d+)?", item))


def read(
    too_wide: Callable[[Prefix], str | None], value: Callable[[], str | None] = postconf_mynetworks
) -> tuple[Sequence[AllowEntry], list[str]]:
    """The MTA's networks that pass the allowlist's guard, and notes (what was skipped and why)."""
    raw = value()
    if raw is None:
        return (), []
    entries, notes = parse(raw)
    kept, skipped = within_guard(tuple(entries), too_wide)
    return kept, notes + skipped
