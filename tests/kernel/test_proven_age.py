"""The kernel's proven sets, as the daemon reads them: each source with the time since its last proof (its element's
timeout runs again at each proof), so learned trust runs from the proof, not from when the set was last read."""

from __future__ import annotations

import time

from govern import config
from govern.addr import Prefix, group_key
from govern.model import State
from govern.nft.backend import NftBackend
from tests.netns import MX4, MX6, Lab, SmtpListener, connect, converse

DIALOGUE = (b"EHLO relay.example", b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@example.net>")


def test_the_proven_sets_say_how_long_ago_each_source_proved_itself(lab: Lab) -> None:
    srv = SmtpListener(lab.mx, 25)
    with lab.mx.entered():
        backend = NftBackend()
    try:
        backend.setup(config.from_mapping({}).firewall(), [], State(), time.time())
        with lab.net.entered():  # a dialogue the MTA answered: proven now
            s = connect("198.51.100.7", MX4, 25)
            converse(s, *DIALOGUE)
            s.close()
        # A source proven a day ago: its element has a day less to live.
        lab.mx.sh("nft", "add element inet govern proven6 { 2001:db8:51::9 timeout 7d expires 6d }")
        ages = dict(backend.proven())
        assert set(ages) == {Prefix.parse("198.51.100.7"), Prefix.parse("2001:db8:51::/64")}
        assert 0 <= ages[Prefix.parse("198.51.100.7")] < 5
        assert 86_400 <= ages[Prefix.parse("2001:db8:51::/64")] < 86_400 + 5
    finally:
        backend.close()
        srv.close()


def test_a_proof_given_again_starts_the_elements_timeout_again(lab: Lab) -> None:
    """The log proves a busy relay at each delivery: each proof must give it its whole time in the proven set, not
    leave it to lapse from the first one."""
    with lab.mx.entered():
        backend = NftBackend()
    try:
        backend.setup(config.from_mapping({}).firewall(), [], State(), time.time())
        relay = Prefix.parse("198.51.100.8")
        backend.prove({relay: 100.0})
        time.sleep(1.5)
        backend.prove({relay: 1000.0})
        with lab.mx.entered():
            left = {e.prefix: e.expires_ms for e in backend.nl.dump_set("proven4")}
        assert relay in left
        assert 990_000 <= left[relay] <= 1_000_000
    finally:
        backend.close()


def test_an_unproven_source_is_held_off_and_its_next_dialogue_does_not_prove_it_again(lab: Lab) -> None:
    """A source that lost its proof in a wave (govern.core.proof) leaves the proven sets, and for the daemon's
    hold-off the kernel's count of replies does not prove it again: without that, a looper's or a deliverer's next
    dialogue put it back past the gate and the budget whatever the daemon's trust said. IPv6 by its /64."""
    srv = SmtpListener(lab.mx, 25)
    with lab.mx.entered():
        backend = NftBackend()
    try:
        backend.setup(config.from_mapping({}).firewall(), [], State(), time.time())
        bots = {"198.51.100.9": MX4, "2001:db8:51::9": MX6}
        for src, dst in bots.items():
            with lab.net.entered():
                s = connect(src, dst, 25)
                converse(s, *DIALOGUE)
                s.close()
        groups = [Prefix.parse("198.51.100.9"), Prefix.parse("2001:db8:51::/64")]
        assert {p for p, _ in backend.proven()} == set(groups)
        backend.unprove(groups, 3600.0)
        assert backend.proven() == []
        with lab.mx.entered():
            dumped = [e for n in ("unproven4", "unproven6") for e in backend.nl.dump_set(n)]
        held = {group_key(e.prefix, 32, 64): e.expires_ms for e in dumped}  # as the sets key them: IPv6 by its /64
        assert set(held) == set(groups) and all(3_590_000 <= ms <= 3_600_000 for ms in held.values()), held
        for src, dst in {"198.51.100.9": MX4, "2001:db8:51::77": MX6}.items():  # another host of the same /64
            with lab.net.entered():
                s = connect(src, dst, 25)
                converse(s, *DIALOGUE, b"RCPT TO:<c@example.net>")
                s.close()
        assert backend.proven() == []
        # Another source's dialogue still proves it: the hold-off is per source.
        with lab.net.entered():
            s = connect("198.51.100.10", MX4, 25)
            converse(s, *DIALOGUE)
            s.close()
        assert {p for p, _ in backend.proven()} == {Prefix.parse("198.51.100.10")}
    finally:
        backend.close()
        srv.close()
