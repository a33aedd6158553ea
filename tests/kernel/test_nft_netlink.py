"""govern.nft.netlink against the real kernel, inside namespaces these tests create.

Sets are created with the nft CLI; what NftNetlink commits is checked through the CLI's own listing (`nft -j`,
libnftables' view of the kernel), through our dump, and for enforcement through real TCP connections. The kernel
semantics the engine relies on (module docstring) are pinned here.
"""

from __future__ import annotations

import errno
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from govern.addr import Prefix
from govern.errors import KernelError
from govern.nft.netlink import ElemOp, NftNetlink, SetElem
from tests.netns import MX4, MX6, Lab, Listener, Netns, connect, new_name, sh

P = Prefix.parse
IV = frozenset({"block4", "block6", "allow4", "slowgc4"})
BASE4 = P("198.18.0.0").value

TABLE = """
table inet govern {
    set block4 { type ipv4_addr; flags interval,timeout; }
    set block6 { type ipv6_addr; flags interval,timeout; }
    set allow4 { type ipv4_addr; flags interval; }
    set slowgc4 { type ipv4_addr; flags interval,timeout; gc-interval 1h; }
    set slowhash4 { type ipv4_addr; flags timeout; gc-interval 1h; }
    set crowd6 { type ipv6_addr; flags dynamic,timeout; timeout 2m; }
}
"""

LAB_TABLE = """
table inet govern {
    set block4 { type ipv4_addr; flags interval,timeout; }
    set block6 { type ipv6_addr; flags interval,timeout; }
    set seen4 { type ipv4_addr; flags dynamic,timeout; timeout 1m; size 65536; }
    set seen6 { type ipv6_addr; flags dynamic,timeout; timeout 1m; size 65536; }
    chain guard {
        type filter hook prerouting priority raw; policy accept;
        tcp dport { 25, 465, 587 } tcp flags syn / syn,ack update @seen4 { ip saddr counter }
        tcp dport { 25, 465, 587 } tcp flags syn / syn,ack update @seen6 { ip6 saddr & ffff:ffff:ffff:ffff:: counter }
        ip saddr @block4 tcp dport 25 drop
        ip6 saddr @block6 tcp dport 25 drop
    }
}
"""


def load(ns: Netns, text: str, tmp_path: Path) -> None:
    path = tmp_path / f"{ns.name}.nft"
    path.write_text(text)
    ns.sh("nft", "-f", str(path))


@pytest.fixture
def ns(tmp_path: Path) -> Iterator[Netns]:
    n = Netns(new_name("nft"))
    sh("ip", "netns", "add", n.name)
    try:
        n.sh("ip", "link", "set", "lo", "up")
        load(n, TABLE, tmp_path)
        yield n
    finally:
        sh("ip", "netns", "del", n.name, check=False)


@pytest.fixture
def nl(ns: Netns) -> Iterator[NftNetlink]:
    with ns.entered():
        sock = NftNetlink()
    try:
        yield sock
    finally:
        sock.close()


def nft_listing(ns: Netns, set_name: str) -> dict[Prefix, int]:
    """The set as the nft CLI lists it: prefix -> timeout in seconds (0 if none)."""
    out = json.loads(ns.sh("nft", "-j", "list", "set", "inet", "govern", set_name))
    (body,) = [o["set"] for o in out["nftables"] if "set" in o]
    got: dict[Prefix, int] = {}
    for item in body.get("elem", []):
        timeout = 0
        if isinstance(item, dict) and "elem" in item:
            timeout = item["elem"].get("timeout", 0)
            item = item["elem"]["val"]
        if isinstance(item, dict) and "prefix" in item:
            key = P(f"{item['prefix']['addr']}/{item['prefix']['len']}")
        else:
            assert isinstance(item, str), item
            key = P(item)
        got[key] = timeout
    return got


def dumped(nl: NftNetlink, set_name: str) -> dict[Prefix, SetElem]:
    elems = nl.dump_set(set_name)
    by_prefix = {e.prefix: e for e in elems}
    assert len(by_prefix) == len(elems)
    return by_prefix


def host4(i: int) -> Prefix:
    return Prefix(4, BASE4 + i, 32)


# --- adding, listing, deleting --------------------------------------------------------------------------------


def test_add_one_then_10k_in_one_commit(ns: Netns, nl: NftNetlink) -> None:
    nl.commit([ElemOp(True, "block4", P("198.18.200.5"), 600_000)], interval_sets=IV)
    assert nft_listing(ns, "block4") == {P("198.18.200.5"): 600}

    # 10k adjacent hosts (neighbours share a key: one's end is the next one's start), timeouts 1..50 minutes.
    ops = [ElemOp(True, "block4", host4(i), (i % 50 + 1) * 60_000) for i in range(10_000)]
    nl.commit(ops, interval_sets=IV)
    want = {op.prefix: op.timeout_ms for op in ops} | {P("198.18.200.5"): 600_000}
    assert nft_listing(ns, "block4") == {p: t // 1000 for p, t in want.items()}
    got = dumped(nl, "block4")
    assert {p: e.timeout_ms for p, e in got.items()} == want
    assert all(0 < e.expires_ms <= e.timeout_ms for e in got.values())


def test_prefixes_ipv6_and_the_top_of_the_address_space(ns: Netns, nl: NftNetlink) -> None:
    ops = [
        ElemOp(True, "block4", P("198.18.4.0/22"), 120_000),
        ElemOp(True, "block4", P("198.18.8.0/24")),
        ElemOp(True, "block4", P("255.255.255.255"), 60_000),
        ElemOp(True, "block6", P("2001:db8:bad::/64"), 3_600_000),
        ElemOp(True, "block6", P("2001:db8:bad:1::/64"), 3_600_000),  # adjacent to the one before
        ElemOp(True, "block6", P("2001:db8:bad:ff::1")),
        ElemOp(True, "allow4", P("192.0.2.0/24")),
    ]
    nl.commit(ops, interval_sets=IV)
    assert nft_listing(ns, "block4") == {P("198.18.4.0/22"): 120, P("198.18.8.0/24"): 0, P("255.255.255.255"): 60}
    assert nft_listing(ns, "block6") == {
        P("2001:db8:bad::/64"): 3600,
        P("2001:db8:bad:1::/64"): 3600,
        P("2001:db8:bad:ff::1"): 0,
    }
    assert nft_listing(ns, "allow4") == {P("192.0.2.0/24"): 0}
    for name in ("block4", "block6", "allow4"):
        got = dumped(nl, name)
        assert {p: e.timeout_ms for p, e in got.items()} == {o.prefix: o.timeout_ms for o in ops if o.set == name}

    # The kernel's lookup agrees: `nft get element` asks it which element holds a single address.
    def holder(addr: str) -> str:
        return ns.sh("nft", "get", "element", "inet", "govern", "block4", f"{{ {addr} }}", check=False)

    assert "198.18.4.0/22" in holder("198.18.7.255")
    assert "198.18.8.0/24" in holder("198.18.8.255")
    assert "255.255.255.255" in holder("255.255.255.255")
    assert holder("198.18.9.0") == "" and holder("198.18.3.255") == ""


def test_delete(ns: Netns, nl: NftNetlink) -> None:
    keep = [ElemOp(True, "block4", host4(2 * i), 60_000) for i in range(50)]
    drop = [ElemOp(True, "block4", host4(2 * i + 1), 60_000) for i in range(50)]
    nl.commit(keep + drop + [ElemOp(True, "block6", P("2001:db8:bad:7::/64"))], interval_sets=IV)
    nl.commit(
        [ElemOp(False, "block4", op.prefix) for op in drop] + [ElemOp(False, "block6", P("2001:db8:bad:7::/64"))],
        interval_sets=IV,
    )
    assert nft_listing(ns, "block4") == {op.prefix: 60 for op in keep}
    assert nft_listing(ns, "block6") == {}
    assert set(dumped(nl, "block4")) == {op.prefix for op in keep}


def test_readding_an_existing_element_succeeds_and_replaces_its_timeout(ns: Netns, nl: NftNetlink) -> None:
    elem = ElemOp(True, "block4", P("198.18.0.0/24"), 60_000)
    nl.commit([elem], interval_sets=IV)
    nl.commit([elem], interval_sets=IV)
    assert nft_listing(ns, "block4") == {elem.prefix: 60}
    nl.commit([elem._replace(timeout_ms=3_600_000)], interval_sets=IV)  # extend
    e = dumped(nl, "block4")[elem.prefix]
    assert e.timeout_ms == 3_600_000 and e.expires_ms > 3_500_000
    nl.commit([elem._replace(timeout_ms=30_000)], interval_sets=IV)  # shorten
    e = dumped(nl, "block4")[elem.prefix]
    assert e.timeout_ms == 30_000 and e.expires_ms <= 30_000
    # Re-adding without a timeout makes the element permanent (the set has no default timeout).
    nl.commit([elem._replace(timeout_ms=0)], interval_sets=IV)
    assert dumped(nl, "block4")[elem.prefix] == SetElem(elem.prefix, 0, 0, 0)


def test_readding_with_the_same_timeout_restarts_the_expiry(ns: Netns, nl: NftNetlink) -> None:
    """An extension by the block's own duration is an add with the timeout the element already has: the kernel
    restarts its expiry only because the expiration is sent beside it (without, it keeps the old expiry)."""
    for name in ("block4", "slowhash4"):
        elem = ElemOp(True, name, P("198.18.0.7"), 10_000)
        nl.commit([elem], interval_sets=IV)
        time.sleep(1.5)
        assert dumped(nl, name)[elem.prefix].expires_ms <= 8_600
        nl.commit([elem], interval_sets=IV)
        e = dumped(nl, name)[elem.prefix]
        assert e.timeout_ms == 10_000 and e.expires_ms > 9_500, (name, e)


def test_commit_returns_the_generation_it_made(ns: Netns, nl: NftNetlink) -> None:
    """The ruleset generation (NFT_MSG_GETGEN) moves on by one with each transaction that changes anything, and
    the commit learns the one it made from the kernel (NLM_F_ECHO); one that changes nothing makes none."""
    start = nl.generation()
    assert nl.commit([ElemOp(True, "slowhash4", P("198.18.0.1"), 60_000)], interval_sets=IV) == start + 1
    ops = [ElemOp(True, "block4", host4(i), 60_000) for i in range(5000)] + [ElemOp(True, "block6", P("2001:db8::/64"))]
    assert nl.commit(ops, interval_sets=IV) == start + 2 == nl.generation()
    assert nl.commit([ElemOp(False, "block4", P("198.18.200.1"))], interval_sets=IV, missing_ok=True) is None
    with pytest.raises(KernelError):
        nl.commit([ElemOp(False, "block4", P("198.18.200.1"))], interval_sets=IV)
    ns.sh("nft", "add", "table", "ip", "other")  # anyone's transaction, in any table
    assert nl.generation() == start + 3
    assert nl.commit([ElemOp(False, "block4", host4(0))], interval_sets=IV) == start + 4


# --- errors and atomicity -----------------------------------------------------------------------------------


def test_deleting_a_missing_element_fails_the_whole_batch(ns: Netns, nl: NftNetlink) -> None:
    nl.commit([ElemOp(True, "block4", P("198.18.0.1"), 60_000)], interval_sets=IV)
    before = (nft_listing(ns, "block4"), nft_listing(ns, "block6"))
    ops = [
        ElemOp(True, "block4", P("198.18.0.2"), 60_000),
        ElemOp(False, "block4", P("198.18.0.1")),
        ElemOp(True, "block6", P("2001:db8:bad:2::/64")),
        ElemOp(False, "block4", P("198.18.9.9")),  # not there
        ElemOp(True, "block4", P("198.18.0.3")),
    ]
    with pytest.raises(KernelError) as exc:
        nl.commit(ops, interval_sets=IV)
    assert exc.value.errno == errno.ENOENT
    assert "cannot delete 198.18.9.9 from set block4 of table inet govern" in str(exc.value)
    assert (nft_listing(ns, "block4"), nft_listing(ns, "block6")) == before
    # With missing_ok the same batch goes through (NFT_MSG_DESTROYSETELEM).
    nl.commit(ops, interval_sets=IV, missing_ok=True)
    assert nft_listing(ns, "block4") == {P("198.18.0.2"): 60, P("198.18.0.3"): 0}
    assert nft_listing(ns, "block6") == {P("2001:db8:bad:2::/64"): 0}


def test_overlapping_prefixes_are_refused_with_eexist(ns: Netns, nl: NftNetlink) -> None:
    nl.commit([ElemOp(True, "block4", P("198.18.1.0/24"), 60_000)], interval_sets=IV)
    before = nft_listing(ns, "block4")
    for bad in ("198.18.1.0/25", "198.18.1.128/25", "198.18.1.64/26", "198.18.0.0/16", "198.18.1.7"):
        with pytest.raises(KernelError) as exc:
            nl.commit([ElemOp(True, "block4", P("198.18.50.1")), ElemOp(True, "block4", P(bad))], interval_sets=IV)
        assert exc.value.errno == errno.EEXIST, bad
        assert f"cannot add {bad} to set block4" in str(exc.value)
        assert nft_listing(ns, "block4") == before
    # Replacing a prefix by a larger one works when the delete comes first in the same commit.
    nl.commit(
        [ElemOp(False, "block4", P("198.18.1.0/24")), ElemOp(True, "block4", P("198.18.0.0/23"), 60_000)],
        interval_sets=IV,
    )
    assert nft_listing(ns, "block4") == {P("198.18.0.0/23"): 60}


def test_kernel_misses_a_containing_prefix_that_shares_the_last_address(ns: Netns, nl: NftNetlink) -> None:
    """Pinned kernel gap (Linux 6.18): callers must not rely on the kernel to refuse every overlap."""
    nl.commit([ElemOp(True, "block4", P("198.18.0.5"), 60_000)], interval_sets=IV)
    nl.commit([ElemOp(True, "block4", P("198.18.0.4/31"), 60_000)], interval_sets=IV)  # accepted, nested
    assert set(dumped(nl, "block4")) == {P("198.18.0.4"), P("198.18.0.5")}
    with pytest.raises(KernelError) as exc:
        nl.commit([ElemOp(False, "block4", P("198.18.0.4/31"))], interval_sets=IV)
    assert exc.value.errno == errno.ENOENT


def test_unknown_set_and_wrong_family_are_reported(ns: Netns, nl: NftNetlink) -> None:
    with pytest.raises(KernelError) as exc:
        nl.commit([ElemOp(True, "nosuch", P("198.18.0.1"))], interval_sets=IV)
    assert exc.value.errno == errno.ENOENT and "set nosuch" in str(exc.value)
    with pytest.raises(KernelError) as exc:
        nl.commit([ElemOp(True, "block4", P("2001:db8:bad::1"))], interval_sets=IV)
    assert exc.value.errno == errno.EINVAL and "2001:db8:bad::1" in str(exc.value)
    with pytest.raises(KernelError) as exc:
        nl.dump_set("nosuch")
    assert exc.value.errno == errno.ENOENT
    assert nl.dump_set("block4") == []


def test_expired_but_not_collected_elements(ns: Netns, nl: NftNetlink) -> None:
    """gc-interval 1h: the elements time out long before garbage collection could reap them."""
    for name in ("slowgc4", "slowhash4"):
        nl.commit(
            [ElemOp(True, name, P("198.18.0.9"), 1000), ElemOp(True, name, P("198.18.0.10"), 1000)], interval_sets=IV
        )
    time.sleep(1.5)
    for name in ("slowgc4", "slowhash4"):
        assert nl.dump_set(name) == [] and nft_listing(ns, name) == {}
        with pytest.raises(KernelError) as exc:
            nl.commit([ElemOp(False, name, P("198.18.0.10"))], interval_sets=IV)
        assert exc.value.errno == errno.ENOENT
        nl.commit([ElemOp(False, name, P("198.18.0.10"))], interval_sets=IV, missing_ok=True)
        nl.commit([ElemOp(True, name, P("198.18.0.9"), 60_000)], interval_sets=IV)  # re-add: accepted
        assert [(e.prefix, e.timeout_ms) for e in nl.dump_set(name)] == [(P("198.18.0.9"), 60_000)]


def test_holds_asks_the_kernel_for_one_element_and_a_lapsed_one_is_not_held(ns: Netns, nl: NftNetlink) -> None:
    """What the daemon asks of the crowd sets for the few sources that just delivered, instead of dumping them."""
    nl.commit(
        [ElemOp(True, "slowhash4", P("198.18.0.9"), 1000), ElemOp(True, "slowhash4", P("198.18.0.10"), 60_000)],
        interval_sets=IV,
    )
    nl.commit([ElemOp(True, "crowd6", P("2001:db8:bad:1::"))], interval_sets=IV)
    assert nl.holds("slowhash4", P("198.18.0.9")) and nl.holds("slowhash4", P("198.18.0.10"))
    assert not nl.holds("slowhash4", P("198.18.0.11"))  # ENOENT, and the socket goes on
    # The key is the prefix's value: an IPv6 source group's element is its /64's first address.
    assert nl.holds("crowd6", P("2001:db8:bad:1::/64")) and not nl.holds("crowd6", P("2001:db8:bad:2::/64"))
    time.sleep(1.5)  # gc-interval 1h: timed out, not yet collected
    assert not nl.holds("slowhash4", P("198.18.0.9")) and nl.holds("slowhash4", P("198.18.0.10"))
    assert [e.prefix for e in nl.dump_set("slowhash4")] == [P("198.18.0.10")]
    assert not nl.holds("nosuchset", P("198.18.0.9"))  # the kernel's ENOENT says that too
    with pytest.raises(KernelError):  # a key of the wrong length is refused, not taken for absent
        nl.holds("slowhash4", P("2001:db8::1"))


def test_dump_round_trips_a_mixed_commit(ns: Netns, nl: NftNetlink) -> None:
    ops = [ElemOp(True, "block4", host4(3 * i), 1000 * (i % 900 + 100)) for i in range(5000)]
    ops += [ElemOp(True, "block4", Prefix(4, P("198.18.128.0").value + (i << 4), 28), 0) for i in range(500)]
    ops += [
        ElemOp(True, "block6", Prefix(6, P("2001:db8:bad::").value + (i << 64), 64), 7_000 + i) for i in range(3000)
    ]
    ops += [ElemOp(True, "block6", P("2001:db8:bad:ffff::1"), 5000)]
    nl.commit(ops, interval_sets=IV)
    for name in ("block4", "block6"):
        got = dumped(nl, name)
        want = {o.prefix: o.timeout_ms for o in ops if o.set == name}
        assert set(got) == set(want)
        # The kernel keeps timeouts in jiffies: whole seconds come back exact, others rounded down to a tick.
        assert all(0 <= want[p] - e.timeout_ms <= 10 for p, e in got.items())
        assert all(e.timeout_ms == want[p] for p, e in got.items() if want[p] % 1000 == 0)
        assert all(e.expires_ms <= e.timeout_ms and e.packets == 0 for e in got.values())


# --- enforcement and counters with real traffic ---------------------------------------------------------------


def test_seen_sets_count_syns_per_source(lab: Lab, tmp_path: Path) -> None:
    load(lab.mx, LAB_TABLE, tmp_path)
    srv = Listener(lab.mx, 25)
    sent4 = {f"198.18.5.{i}": i % 4 + 1 for i in range(1, 21)}
    sent6 = {"2001:db8:bad:5::1": 2, "2001:db8:bad:5::2": 3, "2001:db8:bad:6::1": 1}
    try:
        with lab.net.entered():
            for sent, dst in ((sent4, MX4), (sent6, MX6)):
                for src, count in sent.items():
                    for _ in range(count):
                        connect(src, dst, 25).close()
        with lab.mx.entered(), NftNetlink() as nl:
            seen4 = nl.dump_set("seen4")
            seen6 = nl.dump_set("seen6")
            counts4, counts6 = nl.dump_counts("seen4"), nl.dump_counts("seen6")
    finally:
        srv.close()
    assert {str(e.prefix): e.packets for e in seen4} == sent4
    # The per-tick read of the counters gives the same keys and packets as the generic dump.
    assert sorted(counts4) == sorted((e.prefix.value, e.packets) for e in seen4)
    assert sorted(counts6) == sorted((e.prefix.value, e.packets) for e in seen6)
    # The rule keys IPv6 sources by /64: the kernel stores the masked address, returned as given.
    assert {str(e.prefix): e.packets for e in seen6} == {"2001:db8:bad:5::": 5, "2001:db8:bad:6::": 1}
    # Elements made by the rule carry the set's default timeout, which the kernel leaves out of the dump.
    assert all(e.timeout_ms == 0 and 0 < e.expires_ms <= 60_000 for e in seen4 + seen6)


def test_blocked_sources_are_dropped_and_others_connect(lab: Lab, tmp_path: Path) -> None:
    load(lab.mx, LAB_TABLE, tmp_path)
    srv = Listener(lab.mx, 25)
    blocks = [
        ElemOp(True, "block4", P("198.18.0.66"), 60_000),
        ElemOp(True, "block4", P("198.18.9.0/24"), 60_000),
        ElemOp(True, "block6", P("2001:db8:bad:66::/64"), 60_000),
    ]

    def reachable(src: str) -> bool:
        # Not tests.netns.connect: a failed attempt must close its socket too.
        fam = socket.AF_INET6 if ":" in src else socket.AF_INET
        with lab.net.entered(), socket.socket(fam, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.bind((src, 0))
            try:
                s.connect((MX6 if ":" in src else MX4, 25))
            except OSError:
                return False
        return True

    try:
        with lab.mx.entered():
            nl = NftNetlink()
        with nl:
            nl.commit(blocks, interval_sets=IV)
            assert not reachable("198.18.0.66")
            assert not reachable("198.18.9.200")
            assert not reachable("2001:db8:bad:66::5")
            assert reachable("198.18.0.67")
            assert reachable("198.18.10.1")
            assert reachable("2001:db8:bad:67::5")
            nl.commit([op._replace(add=False) for op in blocks], interval_sets=IV)
            assert reachable("198.18.0.66")
            assert reachable("2001:db8:bad:66::5")
    finally:
        srv.close()
