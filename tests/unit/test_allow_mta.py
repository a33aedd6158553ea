"""The MTA's own relays (Postfix's mynetworks) are allowlisted by default; what is not an address is Postfix's."""

from __future__ import annotations

from govern import config
from govern.addr import Prefix
from govern.allow.mta import parse
from govern.allow.sources import AllowSources
from govern.fakes import FakeResolver, InlineExecutor

P = Prefix.parse
POSTFIX_DEFAULT = "127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128 203.0.113.25/32 [2001:db8:25::25]/128"


def test_postfix_notation_is_read_and_lookups_are_left_to_postfix() -> None:
    extra = ", 198.51.100.0/24 hash:/etc/postfix/network_table !192.0.2.7 relay.example"
    entries, notes = parse(POSTFIX_DEFAULT + extra)
    assert [e.prefix for e in entries] == [
        P("127.0.0.0/8"),
        P("127.0.0.0/8"),  # IPv4-mapped, as the kernel would see it
        P("::1/128"),
        P("203.0.113.25"),
        P("2001:db8:25::25"),
        P("198.51.100.0/24"),
    ]
    assert len(notes) == 3 and any("hash:" in n for n in notes) and any("relay.example" in n for n in notes)


def sources(value: str | None, **allow: object) -> AllowSources:
    s = AllowSources(
        config.from_mapping({"allow": allow}).allow_section(), FakeResolver(), InlineExecutor(), lambda: value
    )
    s.refresh(0.0)
    return s


def test_mynetworks_are_allowlisted_by_default_and_the_guard_still_holds() -> None:
    s = sources("198.51.100.0/24 10.0.0.0/4")
    assert P("198.51.100.0/24") in s.prefixes() and P("10.0.0.0/4") not in s.prefixes()  # wider than /8
    row = next(r for r in s.status() if r["source"] == "postfix mynetworks")
    assert row["prefixes"] == 1 and any("0.0.0.0/4" in n or "/4" in n for n in row["notes"])
    assert {"kind": "allow", "prefix": "198.51.100.0/24", "sources": ["postfix mynetworks"]} in s.listing()
    # Switched off, or no Postfix on the host: nothing from it.
    assert not sources("198.51.100.0/24", mta_networks=False).prefixes()
    assert not sources(None).prefixes()
