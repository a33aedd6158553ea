"""The lab's address plan (docs/lab.md): every address and range a lab namespace or lab VM uses, and nothing else.

Documentation ranges only (RFC 5737, RFC 3849, RFC 2544's benchmarking 198.18.0.0/15): the lab's traffic can never
be mistaken for, or reach, a real host. Every lab module takes its addresses from here; what a scenario floods from is
its own choice of prefixes inside BOT_RANGES (the tests check that they stay inside).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from govern.addr import Prefix

# The MX under test, and the ranges of its links.
MX4 = "203.0.113.25"
MX6 = "2001:db8:25::25"
MX_RANGES = ("203.0.113.0/24", "2001:db8:25::/48")
# The router on the mx link (the mx's default gateway).
ROUTER4 = "203.0.113.1"
ROUTER6 = "2001:db8:25::1"
# The fleet scenario's second MX (docs/lab.md, "Fleet: the second MX spared"), on a link of its own to the router,
# inside MX_RANGES and beside the client links (.64/29, .72/29, .80/29): the router at the first host address, mx2 at
# the second, as on the client links. The mx link's /24 covers it too; the router answers for it by proxy ARP there.
MX2_LINK = ("203.0.113.88/29", "2001:db8:25:25::/64")
MX2_4 = "203.0.113.90"
MX2_6 = "2001:db8:25:25::2"
# Each MX role's addresses, IPv4 then IPv6.
MX_ADDRS = {"mx": (MX4, MX6), "mx2": (MX2_4, MX2_6)}

# Each client namespace's sources (on its loopback), IPv4 then IPv6.
TRUSTED_RANGES = ("192.0.2.0/24", "2001:db8:2::/48")
LEGIT_RANGES = ("198.51.100.0/24", "2001:db8:51::/48")
BOT4 = "198.18.0.0/15"
BOT6 = "2001:db8:bad::/48"
BOT_RANGES = (BOT4, BOT6)
CLIENT_RANGES = TRUSTED_RANGES + LEGIT_RANGES + BOT_RANGES
RANGES = {"trusted": TRUSTED_RANGES, "legit": LEGIT_RANGES, "bots": BOT_RANGES}

# Each client's link to the router, inside MX_RANGES: the router at the first host address, the client at the second.
LINKS = {
    "trusted": ("203.0.113.64/29", "2001:db8:25:2::/64"),
    "legit": ("203.0.113.72/29", "2001:db8:25:51::/64"),
    "bots": ("203.0.113.80/29", "2001:db8:25:bad::/64"),
}

# The legitimate senders of the adversary matrix, inside LEGIT_RANGES: the busy known relays, the never-seen
# senders (the upper half of the /24 and a /56 of the /48, away from the known relays), the slow, patient MTA.
KNOWN_RELAYS = ("198.51.100.0/28", "2001:db8:51::/64")
STRANGERS = ("198.51.100.128/25", "2001:db8:51:100::/56")
SLOWLEGIT = ("198.51.100.20/32", "2001:db8:51:1::20/128")
# The scenarios' trusted relay, inside TRUSTED_RANGES.
TRUSTED_RELAY = "192.0.2.10/32"
# Spoofed SYN sources, inside BOT_RANGES: the router drops what the MX sends them.
SPOOFED = "198.18.128.0/17"
# Where the wide swarms of the scenarios send from, inside BOT_RANGES: the upper half of the IPv4 bot range.
SWARMS = "198.19.0.0/16"

# What a traffic generator sends from when it is given no --sources: a few legitimate relays, the trusted relay,
# and for every bot the lower half of the IPv4 bot range and the whole IPv6 one.
DEFAULT_LEGIT = ("198.51.100.0/29", "2001:db8:51::/125")
DEFAULT_TRUSTED = ("192.0.2.25/32", "2001:db8:2::25/128")
DEFAULT_BOTS = ("198.18.0.0/16", BOT6)


def link_addrs(role: str) -> tuple[str, str, str, str]:
    """(router v4, client v4, router v6, client v6) of a client role's link (or mx2's), without prefix lengths."""
    net4, net6 = (ipaddress.ip_network(n) for n in (MX2_LINK if role == "mx2" else LINKS[role]))
    return str(net4[1]), str(net4[2]), str(net6[1]), str(net6[2])


def overlaps(member: str, ranges: Sequence[str]) -> bool:
    """Whether `member` (an address or prefix, as a set lists it) is, or overlaps, one of `ranges`; False for
    anything that is not an address."""
    try:
        p = Prefix.parse(member)
    except Exception:
        return False
    return any(Prefix.parse(r).overlaps(p) for r in ranges)
