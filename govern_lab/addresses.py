"""The lab's address plan (docs/lab.md): every address and range a lab namespace uses, and nothing else.

Documentation ranges only (RFC 5737, RFC 3849, RFC 2544's benchmarking 198.18.0.0/15): the lab's traffic can never
be mistaken for, or reach, a real host. Every lab module takes its addresses from here.
"""

from __future__ import annotations

# The MX under test, and the ranges of its links.
MX4 = "203.0.113.25"
MX6 = "2001:db8:25::25"
MX_RANGES = ("203.0.113.0/24", "2001:db8:25::/48")

# Each client namespace's sources (on its loopback), IPv4 then IPv6.
TRUSTED_RANGES = ("192.0.2.0/24", "2001:db8:2::/48")
LEGIT_RANGES = ("198.51.100.0/24", "2001:db8:51::/48")
BOT_RANGES = ("198.18.0.0/15", "2001:db8:bad::/48")
CLIENT_RANGES = TRUSTED_RANGES + LEGIT_RANGES + BOT_RANGES
RANGES = {"trusted": TRUSTED_RANGES, "legit": LEGIT_RANGES, "bots": BOT_RANGES}

# The legitimate senders of the adversary matrix, inside LEGIT_RANGES: the busy known relays, the never-seen
# senders (the upper half of the /24 and a /56 of the /48, away from the known relays), the slow, patient MTA.
KNOWN_RELAYS = ("198.51.100.0/28", "2001:db8:51::/64")
STRANGERS = ("198.51.100.128/25", "2001:db8:51:100::/56")
SLOWLEGIT = ("198.51.100.20/32", "2001:db8:51:1::20/128")
# Spoofed SYN sources, inside BOT_RANGES: the router drops what the MX sends them.
SPOOFED = "198.18.128.0/17"
