"""The kernel's proven sets, as the daemon reads them: each source with the time since its last proof (its element's
timeout runs again at each proof), so learned trust runs from the proof, not from when the set was last read."""

from __future__ import annotations

import time

from govern import config
from govern.addr import Prefix
from govern.model import State
from govern.nft.backend import NftBackend
from tests.netns import MX4, Lab, SmtpListener, connect, converse

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
