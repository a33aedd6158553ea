"""govern's kernel-side connection counter counts connections, not SYN packets: a client retransmitting its SYN
while the server does not answer (what legitimate MTAs do during a flood) is counted once per connection, per source
and in the one named counter read between ticks."""

from __future__ import annotations

import time

from govern import config
from govern.addr import Prefix
from govern.model import State
from govern.nft.backend import NftBackend
from tests.netns import MX4, Lab, Listener, connect


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
