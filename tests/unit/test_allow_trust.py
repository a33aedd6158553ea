"""Learned trust (govern.allow.trust, .postfix, .learning): completed deliveries read from realistic Postfix log
lines, the log followed through rotation and truncation, and trust that expires."""

from __future__ import annotations

import os
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from govern import config
from govern.addr import Prefix
from govern.allow.learning import TrustSources
from govern.allow.postfix import DeliveryParser, LogFollower, logged_at
from govern.allow.trust import Trust

NOW = time.mktime((2024, 3, 3, 12, 0, 0, 0, 0, -1))

DELIVERED = """\
Mar  3 10:15:01 mx1 postfix/smtpd[21012]: connect from mail-out.partner.example[192.0.2.25]
Mar  3 10:15:01 mx1 postfix/smtpd[21012]: 4F2Xk81qZ5z9sWd: client=mail-out.partner.example[192.0.2.25]
Mar  3 10:15:02 mx1 postfix/cleanup[21015]: 4F2Xk81qZ5z9sWd: message-id=<20240303101501.ABC@partner.example>
Mar  3 10:15:02 mx1 postfix/qmgr[1201]: 4F2Xk81qZ5z9sWd: from=<news@partner.example>, size=4521, nrcpt=1 (queue active)
Mar  3 10:15:02 mx1 postfix/smtpd[21012]: disconnect from mail-out.partner.example[192.0.2.25] ehlo=2 starttls=1 \
mail=1 rcpt=1 data=1 quit=1 commands=7
Mar  3 10:15:03 mx1 postfix/lmtp[21020]: 4F2Xk81qZ5z9sWd: to=<alice@example.org>, relay=mail.example.org[private/\
dovecot-lmtp], delay=1.2, delays=0.1/0/0/1.1, dsn=2.0.0, status=sent (250 2.0.0 <alice@example.org> Saved)
Mar  3 10:15:03 mx1 postfix/qmgr[1201]: 4F2Xk81qZ5z9sWd: removed
"""

NOT_DELIVERED = """\
Mar  3 10:16:10 mx1 postfix/smtpd[21030]: NOQUEUE: reject: RCPT from unknown[198.18.4.7]: 554 5.7.1 <x@example.org>: \
Relay access denied; from=<spam@bad.example> to=<x@example.org> proto=ESMTP helo=<bot>
Mar  3 10:17:00 mx1 postfix/smtpd[21040]: 4F2XmB0abcz9sWe: client=unknown[198.18.9.9]
Mar  3 10:17:01 mx1 postfix/cleanup[21041]: 4F2XmB0abcz9sWe: message-id=<x@bad.example>
Mar  3 10:17:01 mx1 postfix/cleanup[21041]: 4F2XmB0abcz9sWe: milter-reject: END-OF-MESSAGE from unknown[198.18.9.9]: \
5.7.1 Spam message rejected; from=<a@bad.example> to=<x@example.org> proto=ESMTP helo=<bot>
Mar  3 10:17:02 mx1 postfix/smtpd[21042]: 3A1B2C3D4E: client=unknown[198.18.9.10]
Mar  3 10:17:09 mx1 postfix/smtpd[21042]: lost connection after DATA (0 bytes) from unknown[198.18.9.10]
Mar  3 10:17:10 mx1 postfix/pickup[1300]: 5B6C7D8E9F: uid=0 from=<root>
Mar  3 10:17:10 mx1 postfix/qmgr[1201]: 5B6C7D8E9F: from=<root@mx1.example.org>, size=300, nrcpt=1 (queue active)
"""

OTHER_FORMS = """\
2024-03-03T10:18:00.123456+01:00 mx1 postfix/submission/smtpd[21050]: 4F2XnC1defz9sWf: client=relay6.partner.\
example[2001:db8:2::25], sasl_method=PLAIN, sasl_username=relay
2024-03-03T10:18:00.456789+01:00 mx1 postfix/qmgr[1201]: 4F2XnC1defz9sWf: from=<relay@partner.example>, size=900, \
nrcpt=2 (queue active)
2024-03-03T10:18:00.5+01:00 mx1 postfix/submission/smtpd[21050]: disconnect from relay6.partner.example\
[2001:db8:2::25] ehlo=2 starttls=1 auth=1 mail=1 rcpt=2 data=1 quit=1 commands=9
Mar  3 10:19:00 mx1 postfix/smtpd[21060]: 7C8D9E0F1A: client=localhost[127.0.0.1], orig_queue_id=4F2XoA0xyzz9sWh, \
orig_client=mail.partner.example[192.0.2.26]
Mar  3 10:19:00 mx1 postfix/smtpd[21060]: disconnect from localhost[127.0.0.1] ehlo=1 mail=1 rcpt=1 data=1 quit=1 \
commands=5
Mar  3 10:19:00 mx1 postfix/qmgr[1201]: 7C8D9E0F1A: from=<b@partner.example>, size=1200, nrcpt=1 (queue active)
Mar  3 10:19:05 mx1 postfix/smtpd[21061]: 8D9E0F1A2B: client=localhost[127.0.0.1]
Mar  3 10:19:05 mx1 postfix/qmgr[1201]: 8D9E0F1A2B: from=<c@example.org>, size=1200, nrcpt=1 (queue active)
Mar  3 10:19:05 mx1 postfix/smtpd[21061]: disconnect from localhost[127.0.0.1]
Mar  3 10:19:06 mx1 postfix-out/smtpd[21062]: 4F2XqE3jklz9sWi: client=unknown[198.51.100.7]
Mar  3 10:19:06 mx1 postfix/smtpd[21062]: disconnect from unknown[198.51.100.9] ehlo=1 quit=1 commands=2
Mar  3 10:19:07 mx1 postfix-out/qmgr[1202]: 4F2XqE3jklz9sWi: from=<>, size=2100, nrcpt=1 (queue active)
Mar  3 10:19:07 mx1 postfix-out/smtpd[21062]: disconnect from unknown[198.51.100.7] ehlo=1 mail=1 rcpt=1 data=1 \
rset=1 mail=1 rcpt=0/1 quit=1 commands=7/8
"""

# The lab's deliverers: a message queued, then the session held silently until the server (or govern) ended it.
BOUGHT = """\
Mar  3 10:20:00 mx1 postfix/smtpd[21070]: 1A2B3C4D5E: client=unknown[198.18.9.11]
Mar  3 10:20:00 mx1 postfix/qmgr[1201]: 1A2B3C4D5E: from=<spam@bad.example>, size=300, nrcpt=1 (queue active)
Mar  3 10:20:03 mx1 postfix/smtpd[21070]: lost connection after END-OF-MESSAGE from unknown[198.18.9.11]
Mar  3 10:20:03 mx1 postfix/smtpd[21070]: disconnect from unknown[198.18.9.11] ehlo=1 mail=1 rcpt=1 data=1 commands=4
Mar  3 10:20:04 mx1 postfix/smtpd[21071]: 2B3C4D5E6F: client=unknown[198.18.9.12]
Mar  3 10:20:04 mx1 postfix/smtpd[21071]: timeout after END-OF-MESSAGE from unknown[198.18.9.12]
Mar  3 10:20:04 mx1 postfix/smtpd[21071]: disconnect from unknown[198.18.9.12] ehlo=1 mail=1 rcpt=1 data=1 commands=4
Mar  3 10:20:05 mx1 postfix/qmgr[1201]: 2B3C4D5E6F: from=<spam@bad.example>, size=300, nrcpt=1 (queue active)
Mar  3 10:20:06 mx1 postfix/smtpd[21071]: disconnect from unknown[198.18.9.13] ehlo=1 quit=1 commands=2
"""


def delivered(text: str) -> list[tuple[str, float]]:
    p = DeliveryParser()
    return [(str(a), t) for line in text.splitlines() if (got := p.feed(line, NOW)) for a, t in [got]]


def test_a_queued_message_teaches_its_client_at_the_time_it_was_logged() -> None:
    assert delivered(DELIVERED) == [("192.0.2.25", time.mktime((2024, 3, 3, 10, 15, 1, 0, 0, -1)))]


def test_rejections_lost_sessions_and_local_pickup_teach_nothing() -> None:
    assert delivered(NOT_DELIVERED) == []


def test_a_client_that_delivered_and_did_not_quit_is_not_proven() -> None:
    """Bought trust: a message queued (qmgr before or after the session's end), then no QUIT: the session was
    held until it was cut or timed out. The same smtpd's next session, which quit, proves only its own client."""
    assert delivered(BOUGHT) == []


def test_ipv6_submission_content_filters_and_other_instances() -> None:
    """Each delivery proves its client at the line that completes it: the disconnect with QUIT, or qmgr's when the
    client left first; a Postfix without the disconnect's command counts is taken at its word."""
    got = delivered(OTHER_FORMS)
    assert [a for a, _ in got] == ["2001:db8:2::25", "192.0.2.26", "127.0.0.1", "198.51.100.7"]
    assert got[0][1] == 1709457480.123456  # 10:18:00.123456 at +01:00


def test_bsd_stamps_take_the_latest_year_not_in_the_future() -> None:
    assert logged_at("Dec 31 23:59:59 mx postfix/qmgr[1]: x", NOW) == time.mktime((2023, 12, 31, 23, 59, 59, 0, 0, -1))
    assert logged_at("garbage", NOW) == NOW


def test_pending_queue_ids_are_bounded_in_number_and_age() -> None:
    p = DeliveryParser(max_pending=3, pending_for=600)
    for n in range(5):
        p.feed(f"Mar  3 10:00:0{n} mx postfix/smtpd[1]: AAAAA{n}: client=x[198.51.100.{n}]", NOW)
    assert len(p) == 3
    p.feed("Mar  3 10:20:00 mx postfix/smtpd[1]: BBBBB0: client=x[198.51.100.9]", NOW)
    assert len(p) == 1  # the three from 10:00 were over ten minutes old
    assert p.feed("Mar  3 10:20:01 mx postfix/qmgr[2]: AAAAA4: from=<>, size=1, nrcpt=1 (queue active)", NOW) is None


# -- the follower ---------------------------------------------------------------------------------------------


def test_follower_reads_appended_complete_lines_only(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    f = LogFollower(str(log))
    assert f.lines() == [] and "No such file" in f.error
    log.write_text("one\ntw")
    assert f.lines() == ["one"]
    with open(log, "a") as fh:
        fh.write("o\nthree\n")
    assert f.lines() == ["two", "three"]
    assert f.lines() == []
    f.close()


def test_follower_follows_rotation_by_rename_reading_the_old_file_to_its_end(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("a\n")
    f = LogFollower(str(log))
    assert f.lines() == ["a"]
    with open(log, "a") as fh:
        fh.write("b\n")
    os.rename(log, tmp_path / "mail.log.1")
    log.write_text("c\n")
    got = f.lines()
    got += f.lines()
    assert got == ["b", "c"]
    f.close()


def test_follower_starts_again_after_truncation(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("first line\nsecond line\n")
    f = LogFollower(str(log))
    assert len(f.lines()) == 2
    with open(log, "r+") as fh:  # copytruncate
        fh.truncate(0)
    assert f.lines() == []
    with open(log, "a") as fh:
        fh.write("new\n")
    assert f.lines() == ["new"]
    f.close()


def test_follower_backfills_only_the_tail_from_a_line_boundary_and_reads_in_bounded_chunks(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("".join(f"line {n:04d}\n" for n in range(1000)))  # 10 bytes a line
    f = LogFollower(str(log), backfill=95, max_read=40)
    got: list[str] = []
    for _ in range(5):
        got += f.lines()
    assert got == [f"line {n:04d}" for n in range(991, 1000)]
    f.close()


# -- trust ------------------------------------------------------------------------------------------------------


def test_trust_is_per_source_group_and_expires() -> None:
    t = Trust(3600, v4_len=32, v6_len=64)
    assert t.learn(Prefix.parse("2001:db8:51::7"), 100, 100)
    assert not t.learn(Prefix.parse("2001:db8:51::8"), 200, 200)  # the same /64
    assert t.trusted().covers(Prefix.parse("2001:db8:51::/64"))
    assert not t.learn(Prefix.parse("127.0.0.1"), 200, 200) and not t.learn(Prefix.parse("::1"), 200, 200)
    assert not t.learn(Prefix.parse("198.51.100.1"), 0, 3600)  # already over
    assert not t.expire(3799)
    assert t.expire(3800) and len(t) == 0 and not t.trusted().covers(Prefix.parse("2001:db8:51::/64"))


def test_trust_runs_from_the_last_proof_not_from_when_it_was_read_again() -> None:
    """The kernel's proven set is read whole every 10 s: a proof read again is not a new one and extends nothing,
    and the order of last proofs (what a full table forgets first) stays as it was."""
    t = Trust(3600, max_sources=2)
    assert t.learn(Prefix.parse("198.51.100.1"), 100, 100)
    assert t.learn(Prefix.parse("198.51.100.2"), 200, 200)
    assert not t.learn(Prefix.parse("198.51.100.1"), 100, 5000)  # read again later: the same proof
    assert t.until(Prefix.parse("198.51.100.1")) == 3700
    t.learn(Prefix.parse("198.51.100.3"), 300, 300)  # full: 198.51.100.1's proof is still the oldest
    assert {str(p) for p in t.trusted()} == {"198.51.100.2", "198.51.100.3"}
    assert not t.learn(Prefix.parse("198.51.100.2"), 150, 400)  # an older proof shortens nothing
    assert t.until(Prefix.parse("198.51.100.2")) == 3800


def test_trust_forgets_the_oldest_delivery_first_when_full() -> None:
    t = Trust(3600, max_sources=2)
    for n, at in ((1, 10), (2, 20), (1, 30), (3, 40)):
        t.learn(Prefix.parse(f"198.51.100.{n}"), at, at)
    assert {str(p) for p in t.trusted()} == {"198.51.100.1", "198.51.100.3"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 10_000)), max_size=60), st.integers(0, 20_000))
def test_a_source_is_trusted_exactly_while_a_delivery_is_younger_than_learn_for(
    events: list[tuple[int, int]], now: int
) -> None:
    t = Trust(1000)
    for n, at in sorted(events, key=lambda e: e[1]):
        t.learn(Prefix.parse(f"198.51.100.{n}"), at, at)
    t.expire(now)
    for n in range(21):
        last = max((at for m, at in events if m == n and at <= now), default=None)
        future = any(m == n and at > now for m, at in events)
        expected = (last is not None and last + 1000 > now) or future
        assert t.trusted().covers(Prefix.parse(f"198.51.100.{n}")) == expected


def test_trust_sources_learn_from_the_log_and_survive_a_reload(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text(NOT_DELIVERED)
    c = config.from_mapping({"trust": {"postfix_log": str(log), "learn_for": "1d"}})
    ts = TrustSources(c.trust_section())
    assert not ts.refresh(NOW)
    with open(log, "a") as fh:
        fh.write(DELIVERED)
    assert ts.refresh(NOW)
    assert {str(p) for p in ts.trusted()} == {"192.0.2.25"}
    assert ts.status()["deliveries_learned"] == 1
    ts.configure(config.from_mapping({"trust": {"learn_for": "2d", "factor": 8}}).trust_section())
    assert {str(p) for p in ts.trusted()} == {"192.0.2.25"} and ts.factor == 8 and ts.follower is None
    assert not ts.refresh(NOW + 86400 + 3600)  # would have lapsed under 1d
    assert ts.refresh(NOW + 2 * 86400)
    assert len(ts.trusted()) == 0
    ts.close()
