"""govern's kernel-side connection counter counts connections, not SYN packets: a client retransmitting its SYN
while the server does not answer (what legitimate MTAs do during a flood) is counted once per connection, per source
and in the one named counter read between ticks."""

from __future__ import annotations

import time

import pytest

from govern import config
from govern.addr import Prefix
from govern.model import State
from govern.nft.backend import NftBackend
from govern.nft.ruleset import SEEN_SHARDS, seen_sets
from tests.kernel.daemon_harness import nft_set_part
from tests.netns import MX4, MX6, Lab, Listener, connect


def test_retransmitted_syns_count_once_per_connection(lab: Lab) -> None:
    # The operator's firewall drops port-25 SYNs after govern has seen them, so the client keeps retransmitting.
    lab.mx.sh("nft", "add table inet operator")
    lab.mx.sh("nft", "add chain inet operator in { type filter hook input priority 0; }")
    lab.mx.sh("nft", "add rule inet operator in tcp dport 25 drop")
    with lab.mx.entered():
        backend = NftBackend()
    try:
        backend.setup(config.from_mapping({}).firewall(), [], State(), time.time())
        t0 = time.monotonic()
        for _ in range(2):  # two connections, each retrying its SYN for ~3.5 s (SYNs at 0, 1 and 3 s)
            try:
                with lab.net.entered():
                    connect("198.51.100.9", MX4, 25, timeout=3.5)
            except OSError:
                pass
        assert time.monotonic() - t0 >= 6.5
        assert backend.syn_counts() == {Prefix.parse("198.51.100.9"): 2}
        # The one counter the daemon reads between ticks counts the same: connections, not SYNs.
        assert backend.attempts() == 2
    finally:
        backend.close()


def test_the_counting_sets_are_unchanged_until_the_kernel_counts_a_new_connection(lab: Lab) -> None:
    """What lets a calm tick skip the read (Enforcer.syn_counts_unchanged): the counter the daemon polls counts in
    the same rules as the per-source sets, so it stands still exactly while they do; an allowlisted source's
    connections move neither."""
    srv = Listener(lab.mx, 25)
    with lab.mx.entered():
        backend = NftBackend()
    try:
        backend.setup(config.from_mapping({}).firewall(), [Prefix.parse("198.51.100.2/32")], State(), time.time())
        assert not backend.syn_counts_unchanged()  # nothing read yet
        assert backend.syn_counts() == {}
        assert backend.syn_counts_unchanged()
        with lab.net.entered():
            connect("198.51.100.9", MX4, 25, timeout=2.0).close()
        assert not backend.syn_counts_unchanged()
        assert backend.syn_counts_unchanged() is False  # asking does not read
        assert backend.syn_counts() == {Prefix.parse("198.51.100.9"): 1}
        assert backend.syn_counts_unchanged()
        with lab.net.entered():
            connect("198.51.100.2", MX4, 25, timeout=2.0).close()  # allowlisted
        assert backend.syn_counts_unchanged()
        assert backend.syn_counts() == {Prefix.parse("198.51.100.9"): 1}
    finally:
        backend.close()
        srv.close()


def test_a_count_that_times_out_is_read_again_though_nothing_new_was_counted(lab: Lab) -> None:
    """The read may be skipped only until the first element it read reaches its timeout: past it, the backend
    says the counts may have changed, and the next read finds the element gone (so a flood's sources held for
    two minutes cost no read while nothing new comes, and are let go when the kernel lets them go)."""
    with lab.mx.entered():
        backend = NftBackend()
    try:
        backend.setup(config.from_mapping({}).firewall(), [], State(), time.time())
        srv = Listener(lab.mx, 25)
        with lab.net.entered():
            connect("198.51.100.9", MX4, 25, timeout=2.0).close()
        srv.close()
        lab.mx.sh("nft", f"add element inet govern {seen_sets(4)[0]} {{ 198.51.100.7 timeout 2s }}")
        t0 = time.monotonic()
        counts = backend.syn_counts()
        assert set(counts) == {Prefix.parse("198.51.100.9"), Prefix.parse("198.51.100.7")}
        assert backend.syn_counts_unchanged()
        while time.monotonic() - t0 < 1.5:
            assert backend.syn_counts_unchanged()  # not yet: the element has time left
            time.sleep(0.25)
        time.sleep(0.75)
        assert not backend.syn_counts_unchanged()  # nothing new counted, but 198.51.100.7 may be gone
        assert set(backend.syn_counts()) == {Prefix.parse("198.51.100.9")}
        assert backend.syn_counts_unchanged()  # the connection's count has its two minutes left
    finally:
        backend.close()


def test_sources_spread_over_the_counting_shards_and_read_back_whole(lab: Lab) -> None:
    """Each source is counted in one shard of the counting set, chosen by a hash of its key (an IPv6 source by its
    /64): the read gives every source once, with all its connections, whichever shard holds it."""
    srv = Listener(lab.mx, 25)
    sent = {f"198.18.6.{i}": i % 3 + 1 for i in range(1, 201)}
    sent6 = {f"2001:db8:bad:{i:x}::{j}": 1 for i in range(0x100, 0x180) for j in (1, 2)}
    with lab.mx.entered():
        backend = NftBackend()
    try:
        backend.setup(config.from_mapping({}).firewall(), [], State(), time.time())
        with lab.net.entered():
            for src, count in sent.items():
                for _ in range(count):
                    connect(src, MX4, 25, timeout=2.0).close()
            for src in sent6:
                connect(src, MX6, 25, timeout=2.0).close()
        want = {Prefix.parse(a): n for a, n in sent.items()}
        want |= {Prefix.parse(f"2001:db8:bad:{i:x}::/64"): 2 for i in range(0x100, 0x180)}
        assert backend.syn_counts() == want
        used = {v: [name for name in seen_sets(v) if nft_set_part(lab.mx, name)] for v in (4, 6)}
        # 200 and 128 keys over 16 shards: a hash that spreads them leaves none empty (a fixed seed: the same each
        # run).
        assert len(used[4]) == len(used[6]) == SEEN_SHARDS, used
        held = [a for v in (4, 6) for name in seen_sets(v) for a in nft_set_part(lab.mx, name)]
        assert len(held) == len(set(held)) == len(want)  # each key in one shard only
    finally:
        backend.close()
        srv.close()


@pytest.mark.parametrize(
    "old", [("seen{v}",), tuple(f"seen{{v}}_{i}" for i in range(4))], ids=["unsharded", "four-shards"]
)
def test_a_table_with_an_older_counting_set_converges_to_the_shards(lab: Lab, old: tuple[str, ...]) -> None:
    """An upgrade in place: the table of a daemon before these shards counted in seen4/seen6 (or in 4 shards of
    each, seen4_0 ...), which its rules used. Setup replaces the rules and removes those sets in one transaction;
    the counts go on in the shards, which hold nothing else (the element each new shard is made with is gone)."""
    srv = Listener(lab.mx, 25)
    spec = config.from_mapping({}).firewall()
    with lab.mx.entered():
        backend = NftBackend()
    try:
        backend.setup(spec, [], State(), time.time())
        for v, key in ((4, "ip saddr"), (6, "ip6 saddr & ffff:ffff:ffff:ffff::")):
            decl = f"type ipv{v}_addr; size {262144 // len(old)}; flags dynamic,timeout; timeout 2m;"
            for name in old:
                lab.mx.sh("nft", f"add set inet govern {name.format(v=v)} {{ {decl} }}")
            lab.mx.sh(
                "nft", f"add rule inet govern guard tcp dport 25 update @{old[0].format(v=v)} {{ {key} counter }}"
            )
        with lab.net.entered():
            connect("198.51.100.9", MX4, 25, timeout=2.0).close()
        assert nft_set_part(lab.mx, old[0].format(v=4)) == {"198.51.100.9"}
        backend.setup(spec, [], State(), time.time())
        sets = lab.mx.sh("nft", "-t", "list", "sets", "inet")
        for v in (4, 6):
            assert all(f"set {name.format(v=v)} {{" not in sets for name in old), sets
            assert all(f"set {name} {{" in sets for name in seen_sets(v)), sets
        held = [a for v in (4, 6) for name in seen_sets(v) for a in nft_set_part(lab.mx, name)]
        assert held == ["198.51.100.9"]
        with lab.net.entered():
            connect("198.51.100.9", MX4, 25, timeout=2.0).close()
        # Both connections: the first was counted in its shard too (the first setup's rules), which kept it.
        assert backend.syn_counts() == {Prefix.parse("198.51.100.9"): 2}
        assert backend.changed() is None
    finally:
        backend.close()
        srv.close()
