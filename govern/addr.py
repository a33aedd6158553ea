"""Addresses and prefixes as govern handles them: parsing, grouping sources, and allowlist lookups.

A `Prefix` is a plain NamedTuple (version, network as int, length) because the observer builds tens of thousands
of them per tick: tuples are cheap to create and hash, and still read well.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from govern.errors import AddressError, shown

_BITS = {4: 32, 6: 128}
# The longest spelling of a prefix: an IPv6 address with an embedded IPv4 tail, then "/128".
MAX_TEXT = len("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255/128")


class Prefix(NamedTuple):
    """An IPv4 or IPv6 network: `value` is the network address as an integer, host bits zero."""

    version: int
    value: int
    length: int

    @property
    def bits(self) -> int:
        return _BITS[self.version]

    @property
    def is_host(self) -> bool:
        return self.length == self.bits

    @property
    def last(self) -> int:
        """The highest address inside the prefix, as an integer."""
        return self.value | ((1 << (self.bits - self.length)) - 1)

    def packed(self) -> bytes:
        return self.value.to_bytes(self.bits // 8, "big")

    def contains(self, other: Prefix) -> bool:
        """True when `other` lies wholly inside this prefix."""
        if other.version != self.version or other.length < self.length:
            return False
        shift = self.bits - self.length
        return (other.value >> shift) == (self.value >> shift)

    def overlaps(self, other: Prefix) -> bool:
        return self.contains(other) or other.contains(self)

    def __str__(self) -> str:
        fam = socket.AF_INET if self.version == 4 else socket.AF_INET6
        text = socket.inet_ntop(fam, self.packed())
        return text if self.is_host else f"{text}/{self.length}"

    @classmethod
    def parse(cls, text: str, *, strict: bool = False) -> Prefix:
        """Parse '198.51.100.7', '198.51.100.0/24' or '2001:db8::/48'.

        Host bits set under the prefix length are cleared, unless `strict`, where they are an error. An IPv4-mapped
        IPv6 address or prefix (::ffff:198.51.100.7, ::ffff:198.51.100.0/120) is its IPv4 one: the kernel sees such a
        peer as IPv4, and in an IPv6 set it would never match.
        """
        fast = parse_canonical(text)
        return fast if fast is not None else parse_full(text, strict=strict)

    @classmethod
    def from_packed(cls, raw: bytes, length: int | None = None) -> Prefix:
        version = 4 if len(raw) == 4 else 6
        bits = _BITS[version]
        plen = bits if length is None else length
        value = int.from_bytes(raw, "big")
        if plen < bits:
            value &= ~((1 << (bits - plen)) - 1) & ((1 << bits) - 1)
        return cls(version, value, plen)


def parse_full(text: str, *, strict: bool = False) -> Prefix:
    """`Prefix.parse` the whole way, through ipaddress: every spelling it takes, and a clear error for the rest."""
    raw = text.strip()
    if len(raw) > MAX_TEXT:
        raise AddressError(f"{shown(text)} is too long to be an IPv4/IPv6 address or prefix")
    try:
        net = ipaddress.ip_network(raw, strict=strict)
    except ValueError as exc:
        # ipaddress's reason, when it adds something ("has host bits set", a bad netmask) and is short: some of
        # its reasons only quote the text again.
        reason = str(exc)
        detail = "" if "does not appear to be" in reason or len(reason) > 80 else f" ({reason})"
        raise AddressError(f"{shown(text)} is not an IPv4/IPv6 address or prefix{detail}") from None
    value = int(net.network_address)
    if net.version == 6 and net.prefixlen >= 96 and value >> 32 == 0xFFFF:
        return Prefix(4, value & 0xFFFFFFFF, net.prefixlen - 96)
    return Prefix(net.version, value, net.prefixlen)


def parse_canonical(text: str) -> Prefix | None:
    """`text` as a Prefix if it is canonical, exactly as `str(Prefix)` writes it; None for any other text.

    The store reads back 100,000 prefixes at a start-up with 100k blocks, all written by govern itself: through
    ipaddress each costs 3-5 us, here (inet_pton, then the checks) under 1 us (docs/benchmarks.md, "Restart").
    Only canonical text is taken here, and `parse_full` gives the same Prefix for every canonical text
    (tests/unit/test_addr.py), so the fast path never changes what is accepted, what it means, or which error the
    rest gets: all else goes the full way.
    """
    if not isinstance(text, str) or len(text) > MAX_TEXT:  # bytes, say: the full parser's to take or refuse
        return None
    addr, sep, length = text.partition("/")
    try:
        if ":" in addr:
            family, version, bits = socket.AF_INET6, 6, 128
        else:
            family, version, bits = socket.AF_INET, 4, 32
        raw = socket.inet_pton(family, addr)
        plen = int(length) if sep else bits
    except (OSError, ValueError):  # not an address inet_pton takes (a UnicodeError is a ValueError)
        return None
    # str(Prefix) writes a host without "/bits" and a length in plain decimal digits.
    if sep and not (0 <= plen < bits and length == str(plen)):
        return None
    value = int.from_bytes(raw, "big")
    if value & ((1 << (bits - plen)) - 1):  # host bits set: `strict` decides, so the full parser does
        return None
    if version == 6 and plen >= 96 and value >> 32 == 0xFFFF:  # IPv4-mapped: the full parser makes it IPv4
        return None
    if socket.inet_ntop(family, raw) != addr:  # another spelling of the address (case, zeros, "::" placement)
        return None
    return Prefix(version, value, plen)


def group_key(address: Prefix, v4_len: int, v6_len: int) -> Prefix:
    """The source a host address is counted as: IPv4 /32 and IPv6 /64 by default."""
    plen = v4_len if address.version == 4 else v6_len
    if plen >= address.length:
        return address
    shift = address.bits - plen
    return Prefix(address.version, (address.value >> shift) << shift, plen)


class PrefixSet:
    """A set of prefixes answering "is this covered?" in one dict lookup per distinct prefix length."""

    __slots__ = ("_by_len", "_items", "_longer")

    def __init__(self, prefixes: Iterable[Prefix] = ()) -> None:
        self._items: frozenset[Prefix] = frozenset(prefixes)
        by_len: dict[tuple[int, int], set[int]] = {}
        for p in self._items:
            by_len.setdefault((p.version, p.length), set()).add(p.value)
        # Longest first: the common answer for a covered host is a long prefix or the host itself.
        self._by_len = sorted(((v, ln, frozenset(vals)) for (v, ln), vals in by_len.items()), key=lambda t: -t[1])
        # Members that are not hosts, longest first: only they can lie strictly inside a prefix being checked.
        self._longer = sorted(self._items, key=lambda m: -m.length)

    def covers(self, p: Prefix) -> bool:
        """True when some member contains all of `p`."""
        bits = p.bits
        for version, length, values in self._by_len:
            if version != p.version or length > p.length:
                continue
            if (p.value >> (bits - length)) << (bits - length) in values:
                return True
        return False

    def intersects(self, p: Prefix) -> bool:
        """True when `p` and some member share any address (either contains the other)."""
        if self.covers(p):
            return True
        for m in self._longer:
            if m.length <= p.length:
                break
            if m.version == p.version and p.contains(m):
                return True
        return False

    def intersecting(self, prefixes: Iterable[Prefix]) -> set[Prefix]:
        """Those of `prefixes` that `intersects` would say True of, asked a whole prefix length at a time: at
        start-up every restored block is asked (release_allowlisted), and one set comprehension per member length
        costs a third of asking each block in turn."""
        groups: dict[tuple[int, int], list[Prefix]] = {}
        for p in prefixes:
            groups.setdefault((p.version, p.length), []).append(p)
        out: set[Prefix] = set()
        for (version, length), group in groups.items():
            bits = _BITS[version]
            for mv, mlen, values in self._by_len:
                if mv != version:
                    continue
                if mlen <= length:  # a member may contain the prefix
                    shift = bits - mlen
                    out.update(p for p in group if (p.value >> shift) << shift in values)
                else:  # a longer member may lie inside it
                    shift = bits - length
                    heads = {(v >> shift) << shift for v in values}
                    out.update(p for p in group if p.value in heads)
        return out

    def members(self) -> tuple[Prefix, ...]:
        return tuple(sorted(self._items))

    def __contains__(self, p: object) -> bool:
        return p in self._items

    def __iter__(self) -> Iterator[Prefix]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)
