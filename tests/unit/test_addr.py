"""Prefixes: parsing, grouping sources, containment and allowlist lookups."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from govern.addr import Prefix, PrefixSet, group_key
from govern.errors import AddressError


def test_parse_and_print() -> None:
    assert str(Prefix.parse("198.51.100.7")) == "198.51.100.7"
    assert str(Prefix.parse("198.51.100.0/24")) == "198.51.100.0/24"
    assert str(Prefix.parse("2001:db8:bad::/48")) == "2001:db8:bad::/48"
    assert str(Prefix.parse("198.51.100.7/24")) == "198.51.100.0/24"
    with pytest.raises(AddressError, match="host bits set"):
        Prefix.parse("198.51.100.7/24", strict=True)
    for bad in ("", "example.org", "1.2.3.4.5", "2001:db8:::1", "10.0.0.0/33"):
        with pytest.raises(AddressError):
            Prefix.parse(bad)


def test_group_key_masks_ipv6_to_64() -> None:
    host = Prefix.parse("2001:db8:bad:1:2:3:4:5")
    assert str(group_key(host, 32, 64)) == "2001:db8:bad:1::/64"
    assert group_key(Prefix.parse("198.18.3.4"), 32, 64) == Prefix.parse("198.18.3.4")
    assert str(group_key(Prefix.parse("198.18.3.4"), 24, 64)) == "198.18.3.0/24"


def test_prefix_set_covers_and_intersects() -> None:
    s = PrefixSet([Prefix.parse("192.0.2.0/24"), Prefix.parse("2001:db8:2::/48"), Prefix.parse("198.51.100.9")])
    assert s.covers(Prefix.parse("192.0.2.55"))
    assert s.covers(Prefix.parse("2001:db8:2:1::/64"))
    assert not s.covers(Prefix.parse("192.0.0.0/16"))
    assert s.intersects(Prefix.parse("192.0.0.0/16"))
    assert s.intersects(Prefix.parse("198.51.100.0/24"))
    assert not s.intersects(Prefix.parse("198.18.0.0/15"))


# Addresses close together, so that random prefixes really do nest and overlap.
v4nets = st.builds(
    lambda n, ln: Prefix.from_packed((((192 << 24) | (2 << 8)) ^ n).to_bytes(4, "big"), ln),
    st.integers(0, 2**12 - 1),
    st.integers(16, 32),
)
v6nets = st.builds(
    lambda n, ln: Prefix.from_packed(((0x20010DB8 << 96) | (n << 60)).to_bytes(16, "big"), ln),
    st.integers(0, 2**10 - 1),
    st.integers(40, 128),
)
nets = st.one_of(v4nets, v6nets)


@given(st.lists(nets, max_size=8), nets)
def test_prefix_set_agrees_with_ipaddress(members: list[Prefix], probe: Prefix) -> None:
    ps = PrefixSet(members)
    nprobe = ipaddress.ip_network(str(probe))
    nm = [ipaddress.ip_network(str(m)) for m in members]
    assert ps.covers(probe) == any(n.version == nprobe.version and nprobe.subnet_of(n) for n in nm)  # type: ignore[arg-type]
    assert ps.intersects(probe) == any(n.version == nprobe.version and n.overlaps(nprobe) for n in nm)
