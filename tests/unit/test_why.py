"""`govern why`'s pure core: each advice rule on the evidence that should fire it (and not on its near misses), the
"nothing wrong" case, what an address counts as, and the property that an allowlisted source never hears anything
punitive."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from govern import config, why
from govern.addr import Prefix
from govern.core.policy import Policy
from govern.core.proof import UNPROVEN_LOOP_REASON
from govern.errors import UsageError
from govern.model import Block, Event, Mode, Offender, SessionInfo, SourceStats, State, Tarpitted, Throttle

NOW = 1_700_000_000.0
SRC = Prefix.parse("198.18.7.1")
POLICY: Policy = config.from_mapping({"allow": {"cidrs": ["192.0.2.0/24"]}}).policy()
STRANGER = why.Standing(why.STRANGER)
ALLOWED = why.Standing(why.ALLOWLISTED, ((Prefix.parse("192.0.2.0/24"), ("allow.cidrs",)),))


def evidence(
    *,
    source: Prefix = SRC,
    standing: why.Standing = STRANGER,
    mode: Mode = Mode.NORMAL,
    gate: int = 10,
    **over: Any,
) -> why.Evidence:
    return why.Evidence(
        asked=over.pop("asked", source),
        source=source,
        now=NOW,
        standing=standing,
        limits=why.in_force(POLICY, mode, standing, gate),
        **over,
    )


def session(**f: Any) -> SessionInfo:
    """An ESTABLISHED session on port 25 with tcp_info; the fields a test cares about set by name."""
    base: dict[str, Any] = {
        "remote": str(SRC),
        "remote_port": 40000,
        "local_port": 25,
        "state": "ESTABLISHED",
        "info": True,
        "segs_out": 1,
        "bytes_out": 19,
    }
    return SessionInfo(**(base | f))


def silent_since_banner(wait_ms: int) -> SessionInfo:
    return session(server_sent_ms=wait_ms, client_sent_ms=wait_ms)


def rules(ev: why.Evidence) -> list[str]:
    return [a.rule for a in why.explain(ev).advice]


def advice(ev: why.Evidence, rule: str) -> str:
    (text,) = [a.text for a in why.explain(ev).advice if a.rule == rule]
    return text


def stats(**f: int) -> SourceStats:
    return SourceStats(**f)


# -- the advice rules --------------------------------------------------------------------------------------------


def test_nothing_wrong_seen() -> None:
    ev = evidence(stats=stats(held=2, established=2, new_per_minute=5), sessions=[session(segs_in=4, bytes_in=90)])
    assert rules(ev) == ["nothing-wrong"]
    assert advice(ev, "nothing-wrong") == "nothing wrong seen"
    assert why.explain(evidence()).actions == ()


def test_silent_after_greeting_with_its_wait_and_count() -> None:
    ev = evidence(sessions=[silent_since_banner(41_000), silent_since_banner(12_000), session(segs_in=3)])
    assert rules(ev) == ["silent-after-greeting"]
    assert advice(ev, "silent-after-greeting") == (
        "your client waits 41s after our greeting before it says EHLO (2 sessions like this): it should send EHLO "
        "as soon as it reads our 220 banner"
    )
    # Under the idle threshold (3 s: the shortest of limits.idle_after and the cuts), or not greeted yet: nothing.
    assert rules(evidence(sessions=[silent_since_banner(2_000)])) == ["nothing-wrong"]
    assert rules(evidence(sessions=[silent_since_banner(60_000)._replace(segs_out=0)])) == ["nothing-wrong"]
    # Behind postscreen, the silence its "220-" asks for is no fault until the pregreet wait and a second are over;
    # after smtpd's banner (a second segment) the usual threshold holds.
    screened = replace(POLICY, greet_floor=7.0)
    limits = why.in_force(screened, Mode.NORMAL, STRANGER, 10)
    ev = replace(evidence(sessions=[silent_since_banner(5_000)]), limits=limits)
    assert rules(ev) == ["nothing-wrong"]
    ev = replace(evidence(sessions=[silent_since_banner(5_000)._replace(segs_out=2)]), limits=limits)
    assert rules(ev) == ["silent-after-greeting"]
    # A client that talked during the wait: waited for too, unless postscreen enforces its pregreet test.
    talker = session(segs_in=1, bytes_in=300, server_sent_ms=5_000, client_sent_ms=4_900)
    assert rules(replace(evidence(sessions=[talker]), limits=limits)) == ["nothing-wrong"]
    enforced = why.in_force(replace(screened, pregreet_cut=True), Mode.NORMAL, STRANGER, 10)
    assert rules(replace(evidence(sessions=[talker]), limits=enforced)) == ["talked-first"]
    assert "talks before our greeting is complete (300 bytes after its first line" in advice(
        replace(evidence(sessions=[talker]), limits=enforced), "talked-first"
    )
    assert rules(replace(evidence(sessions=[silent_since_banner(5_000)]), limits=enforced)) == ["nothing-wrong"]


def test_talked_first_but_not_on_the_implicit_tls_port() -> None:
    early = session(segs_in=1, bytes_in=6, server_sent_ms=9_000, client_sent_ms=9_500)
    assert rules(evidence(sessions=[early])) == ["talked-first"]
    assert "talks before our greeting and then says nothing for 9s" in advice(
        evidence(sessions=[early]), "talked-first"
    )
    # On SMTPS the client speaks first (TLS): the same figures are a stalled handshake, not a pre-greeting talker.
    assert "talked-first" not in rules(evidence(sessions=[early._replace(local_port=465)]))


def test_silent_mid_dialogue() -> None:
    stuck = session(segs_in=3, segs_out=3, bytes_in=60, server_sent_ms=20_000, client_sent_ms=20_100)
    assert rules(evidence(sessions=[stuck])) == ["silent-mid-dialogue"]
    assert advice(evidence(sessions=[stuck]), "silent-mid-dialogue").startswith(
        "your client stops talking for 20s in the middle of the SMTP dialogue"
    )
    # The client spoke last: it is our turn, not a silent client.
    assert rules(evidence(sessions=[stuck._replace(client_sent_ms=50)])) == ["nothing-wrong"]


def test_dripping_but_not_a_sender_in_the_middle_of_data() -> None:
    drip = session(segs_in=12, segs_out=2, bytes_in=14, server_sent_ms=30_000, client_sent_ms=800)
    assert rules(evidence(sessions=[drip])) == ["dripping"]
    assert advice(evidence(sessions=[drip]), "dripping") == (
        "your client sends its commands a few bytes at a time (14 bytes in 12 packets): it should send each command "
        "line whole"
    )
    data = drip._replace(bytes_in=12 * 1400)  # full segments: a message body
    assert rules(evidence(sessions=[data])) == ["nothing-wrong"]
    answered = drip._replace(segs_out=11)  # every line answered: short commands, each one whole
    assert rules(evidence(sessions=[answered])) == ["nothing-wrong"]


def test_over_the_limits_in_force_softer_when_trusted_and_tighter_in_a_wave() -> None:
    busy = stats(held=25, established=25, new_per_minute=85)
    ev = evidence(stats=busy)
    assert rules(ev) == ["too-many-sessions", "too-many-new"]
    assert advice(ev, "too-many-sessions") == (
        "you held 25 sessions at once (limit 20): open fewer sessions to us in parallel"
    )
    assert advice(ev, "too-many-new") == (
        "you opened 85 connections in the last minute (limit 60): reuse connections (connection caching) or send "
        "fewer in parallel"
    )
    trusted = why.Standing(why.TRUSTED, trusted_until=NOW + 3600)
    assert rules(evidence(stats=busy, standing=trusted)) == ["nothing-wrong"]  # 4 times the limits
    calm = stats(held=12, established=12, new_per_minute=40)
    assert rules(evidence(stats=calm)) == ["nothing-wrong"]
    assert rules(evidence(stats=calm, mode=Mode.WAVE, gate=0)) == ["too-many-sessions", "too-many-new"]
    assert "(limit 10)" in advice(evidence(stats=calm, mode=Mode.WAVE, gate=0), "too-many-sessions")


def test_no_progress_from_the_snapshot_only_when_the_sessions_do_not_say_more() -> None:
    idle = stats(held=3, established=3, idle=3, max_idle_ms=33_000)
    assert rules(evidence(stats=idle)) == ["no-progress"]
    assert advice(evidence(stats=idle), "no-progress").startswith("3 sessions of yours made no progress for up to 33s")
    assert rules(evidence(stats=idle, sessions=[silent_since_banner(34_000)])) == ["silent-after-greeting"]


def test_what_is_in_force_now_with_govern_s_reason() -> None:
    st = State()
    st.blocks[Prefix.parse("198.18.9.9")] = Block(
        Prefix.parse("198.18.9.9"), "manual: customer complaint #4711", NOW - 60, NOW + 3540, 0, manual=True
    )
    ev = evidence(source=Prefix.parse("198.18.9.9"), state=st)
    assert rules(ev) == ["manual-block"]
    assert advice(ev, "manual-block") == "an operator blocked you by hand: customer complaint #4711 (for another 59m)"
    wide = Prefix.parse("198.18.7.0/24")
    st = State(
        blocks={wide: Block(wide, "8 sources of 198.18.7.0/24 blocked; for 10m", NOW - 5, NOW + 595, 1)},
        tarpits={SRC: Tarpitted(SRC, "holds 6 connections, 2 silent, under pressure (wave)", NOW - 5, NOW + 60)},
    )
    ev = evidence(state=st, mode=Mode.WAVE)
    assert rules(ev) == ["blocked", "tarpitted", "wave-gate"]
    assert advice(ev, "blocked") == (
        "you are blocked for another 9m55s (as part of 198.18.7.0/24), then it lapses by itself; govern's reason: "
        "8 sources of 198.18.7.0/24 blocked; for 10m"
    )
    st = State(throttles={SRC: Throttle(SRC, "opened 85 connections in the last minute (limit 60)", NOW, NOW + 600)})
    assert advice(evidence(state=st), "throttled") == (
        "your new connections are rate-limited for another 10m; govern's reason: opened 85 connections in the last "
        "minute (limit 60)"
    )
    actions = why.explain(evidence(state=st)).actions
    assert actions == ("throttled since 1ms ago, for another 10m: opened 85 connections in the last minute (limit 60)",)


def test_a_shed_session_is_explained_by_what_it_did_silence_or_a_loop_without_a_message() -> None:
    why_loop = "its session looping with no message while strangers fill the slot budget of 30"
    looped = Event(NOW - 60, "shed", str(SRC), why_loop, 0.0)
    assert rules(evidence(events=[looped])) == ["shed"]
    assert advice(evidence(events=[looped]), "shed") == (
        "during a flood we ended connections of yours that kept us answering commands, or waiting, with no message 1 "
        f"time, the last 1m ago ({why_loop}), while senders we did not know filled our MTA's budget: send your "
        "message within a few commands (pipeline MAIL, RCPT and DATA) and QUIT when done"
    )
    silent = Event(NOW - 60, "shed", str(SRC), "its session not answering the greeting while strangers hold ...", 0.0)
    assert advice(evidence(events=[silent]), "shed").endswith(
        "answer our greeting at once, and open one connection at a time"
    )
    either = "its session not answering the greeting, or looping with no message, while strangers hold ..."
    text = advice(evidence(events=[Event(NOW - 60, "shed", str(SRC), either, 0.0)]), "shed")
    assert "or that kept us answering commands with no message" in text
    assert text.endswith("open one connection at a time, and send your message within a few commands")


def test_history_cuts_and_an_earlier_block_when_nothing_now_explains_it() -> None:
    cut = Event(NOW - 120, "cut", str(SRC), "silent for 6s while the host is under pressure (wave)", 0.0)
    ev = evidence(events=[cut])
    assert rules(ev) == ["cut"]
    assert advice(ev, "cut").startswith(
        "we ended sessions of yours that made no progress 1 time, the last 2m ago (silent for 6s while the host is "
        "under pressure (wave))"
    )
    # What its sessions show now says it better.
    assert rules(evidence(events=[cut], sessions=[silent_since_banner(9_000)])) == ["silent-after-greeting"]
    old = Event(NOW - 7200, "block", "198.18.7.0/24", "8 sources of 198.18.7.0/24 blocked; for 10m", NOW - 6600)
    assert advice(evidence(events=[old]), "before") == (
        "you were blocked 2h ago; govern's reason: 8 sources of 198.18.7.0/24 blocked; for 10m; that has lapsed"
    )
    manual = Event(NOW - 60, "block", str(SRC), "manual: spam reported", NOW - 30)
    assert advice(evidence(events=[manual, old]), "before") == (
        "an operator blocked you by hand 1m ago: spam reported; that has lapsed"
    )
    released = Event(NOW - 10, "unblock", str(SRC), "manual unblock", 0.0)
    assert rules(evidence(events=[released])) == ["nothing-wrong"]
    assert why.explain(evidence(events=[released])).history == ("10s ago: unblock 198.18.7.1: manual unblock",)


def test_a_revoked_proof_is_explained_with_what_to_fix() -> None:
    lost = Event(NOW - 30, "unproven", str(SRC), "proven during a wave, then its session held without progress", 0.0)
    cut = Event(NOW - 30, "cut", str(SRC), "silent for 6s while the host is under pressure (wave)", 0.0)
    ev = evidence(events=[lost, cut])
    assert rules(ev) == ["cut", "unproven"]
    assert advice(ev, "unproven") == (
        "during a flood a message of yours was accepted and then your session was held open without a word until we "
        "ended it (30s ago): your address lost, for an hour, the standing a delivery gives, so its connections wait "
        "with every sender we do not know; QUIT when done, or send the next message at once"
    )
    assert "unproven" in why.PUNITIVE_RULES
    # The cut that revoked it throttles the source: said beside the throttle, not only once nothing is in force.
    st = State(throttles={SRC: Throttle(SRC, "held a session without progress", NOW, NOW + 600)})
    assert "unproven" in rules(evidence(state=st, events=[lost, cut]))


def test_a_proof_revoked_for_a_loop_says_so_and_the_budget_says_a_delivery_frees_it_only_after_the_hour() -> None:
    lost = Event(NOW - 20, "unproven", str(SRC), UNPROVEN_LOOP_REASON, 0.0)
    ev = evidence(events=[lost], mode=Mode.WAVE)
    ev = replace(ev, limits=why.in_force(POLICY, Mode.WAVE, STRANGER, 10, budget_slots=30))
    assert advice(ev, "unproven") == (
        "during a flood we accepted your commands and then your session kept us answering more of them with no "
        "message until we ended it (20s ago): your address lost, for an hour, the standing our answers gave it, so "
        "its connections wait with every sender we do not know; send your message within a few commands (pipeline "
        "MAIL, RCPT and DATA) and QUIT when done"
    )
    assert "after the hour above, once a message of yours is accepted" in advice(ev, "wave-budget")
    fresh = replace(ev, events=[])
    assert "retrying works, and once a message of yours is accepted" in advice(fresh, "wave-budget")


def test_the_budget_is_in_force_for_strangers_before_a_wave_but_only_a_wave_advises_on_it() -> None:
    calm = replace(evidence(), limits=why.in_force(POLICY, Mode.NORMAL, STRANGER, 10, budget_slots=30))
    assert calm.limits.budget_slots == 30 and "wave-budget" not in rules(calm)
    assert any("; strangers' sessions share 30 of the MTA's slots" in f for f in why.explain(calm).facts)
    wave = replace(evidence(mode=Mode.WAVE), limits=why.in_force(POLICY, Mode.WAVE, STRANGER, 10, budget_slots=30))
    assert "wave-budget" in rules(wave)
    assert any("during this wave strangers' sessions share 30" in f for f in why.explain(wave).facts)
    trusted = why.in_force(POLICY, Mode.NORMAL, why.Standing(why.TRUSTED), 10, budget_slots=30)
    assert trusted.budget_slots == 0


def test_a_proof_on_probation_is_said_and_the_budget_holds_it() -> None:
    crowd = why.Standing(why.STRANGER, probation=math.inf)  # recalled as the flood began
    ev = replace(evidence(mode=Mode.WAVE), standing=crowd)
    ev = replace(ev, limits=why.in_force(POLICY, Mode.WAVE, crowd, 10, budget_slots=30))
    facts = why.explain(ev).facts
    assert f"{SRC} delivered mail here, but counts as a stranger while its proof is on probation" in facts
    assert any(f.startswith("its proof is on probation until this flood is over: it was first proven") for f in facts)
    assert why.explain(ev).to_dict()["standing"]["probation"] == {"until": None}
    trusted = why.Standing(why.TRUSTED, probation=NOW + 5)  # a crowd's proof by the log, withheld in the wave
    lim = why.in_force(POLICY, Mode.WAVE, trusted, 10, budget_slots=30)
    assert lim.budget_slots == 30
    exp = why.explain(replace(evidence(mode=Mode.WAVE), standing=trusted, limits=lim))
    assert any(f.startswith("its proof is on probation during this flood (for another 5s)") for f in exp.facts)
    assert exp.to_dict()["standing"]["probation"] == {"until": NOW + 5}
    assert why.explain(evidence()).to_dict()["standing"]["probation"] is None


def test_a_proof_on_probation_tells_the_sender_its_concurrency_set_it_off_and_when_it_ends() -> None:
    """The phone call from a relay recalled in a flood: what it must change, and that a delivery frees it of
    nothing until the flood is over (the budget's usual "once a message of yours is accepted" would be wrong)."""
    crowd = why.Standing(why.STRANGER, probation=math.inf)
    ev = replace(evidence(mode=Mode.WAVE), standing=crowd, limits=why.in_force(POLICY, Mode.WAVE, crowd, 10, 30))
    said = advice(ev, "probation")
    assert "holds several sessions with it at once" in said and "until the flood is over" in said
    assert "smtp_destination_concurrency_limit" in said and "whatever you deliver meanwhile" in said
    assert advice(ev, "wave-budget").endswith(
        "retrying works, and once the flood is over your address is no longer held to it"
    )
    held = why.Standing(why.TRUSTED, probation=NOW + 5)
    ev = replace(evidence(mode=Mode.WAVE), standing=held, limits=why.in_force(POLICY, Mode.WAVE, held, 10, 30))
    assert "waits (for another 5s) before it counts" in advice(ev, "probation")
    assert "once the probation above ends your address" in advice(ev, "wave-budget")
    assert "probation" not in rules(evidence(mode=Mode.WAVE))


def test_the_wave_gate_for_strangers_only() -> None:
    assert rules(evidence(mode=Mode.WAVE)) == ["nothing-wrong", "wave-gate"]
    assert "share 10/s" in advice(evidence(mode=Mode.WAVE), "wave-gate")
    trusted = why.Standing(why.TRUSTED)
    assert rules(evidence(mode=Mode.WAVE, standing=trusted)) == ["nothing-wrong"]
    assert rules(evidence(mode=Mode.WAVE, gate=0)) == ["nothing-wrong"]  # no gate (iptables, a dry run, gate off)
    assert rules(evidence(mode=Mode.ELEVATED)) == ["nothing-wrong"]


def test_allowlisted_hears_only_that_govern_never_acts_on_it() -> None:
    st = State(blocks={SRC: Block(SRC, "stale", NOW - 5, NOW + 600, 1)})  # not yet lifted
    ev = evidence(
        standing=ALLOWED,
        source=Prefix.parse("192.0.2.10"),
        stats=stats(held=50, established=50, idle=50, max_idle_ms=60_000, new_per_minute=500),
        sessions=[silent_since_banner(60_000)._replace(remote="192.0.2.10")],
        state=st,
    )
    exp = why.explain(ev)
    assert [a.rule for a in exp.advice] == ["allowlisted"]
    assert exp.advice[0].text == (
        "nothing to fix on govern's side: 192.0.2.10 is allowlisted (192.0.2.0/24), and govern never limits, slows, "
        "blocks or cuts it; if its mail is refused, the MTA's log says why"
    )
    assert "192.0.2.10 is allowlisted: 192.0.2.0/24 (allow.cidrs)" in exp.facts
    assert "limit" not in exp.facts[-2].replace("no limits apply", "")


# -- facts, the reply and its text -------------------------------------------------------------------------------


def test_facts_next_to_the_limits_and_the_json_reply() -> None:
    st = State(offenders={SRC: Offender(2, NOW - 3600)})
    ev = evidence(
        asked=SRC,
        stats=stats(held=25, established=24, syn_recv=1, idle=2, max_idle_ms=41_000, new_per_minute=85),
        sessions=[silent_since_banner(41_000), session(state="SYN_RECV", info=False, segs_out=0, bytes_out=0)],
        state=st,
    )
    exp = why.explain(ev)
    assert exp.facts == (
        "198.18.7.1 is a stranger: not allowlisted, and no delivery from it seen recently",
        "limits in force (normal mode): 20 sessions at once, 60 new connections a minute; a session waiting 3s on "
        "its client counts as idle; silent sessions are not cut in normal mode",
        "last snapshot: 25 sessions held (limit 20), 24 established, 1 SYN_RECV, 2 idle (the longest 41s); 85 new "
        "connections in the last minute (limit 60)",
        "2 sessions open now, 1 waiting on the client",
    )
    assert exp.actions == ("offence record: 2 blocks, the last 1h ago; another within 7d of the last blocks longer",)
    doc = json.loads(json.dumps(exp.to_dict()))
    assert set(doc) == {
        "asked", "source", "now", "mode", "dry_run", "standing", "limits", "snapshot", "sessions", "sessions_total",
        "sessions_error", "enforcement", "offences", "events", "facts", "actions", "history", "advice",
    }  # fmt: skip
    assert doc["sessions"][0] | {"waiting": True} == doc["sessions"][0]
    assert doc["sessions"][1]["waiting"] is False and doc["snapshot"]["new_per_minute"] == 85
    assert doc["limits"] == {
        "max_connections": 20,
        "max_new_per_minute": 60,
        "trust_factor": 1,
        "silent_after": 3.0,
        "cut_after": None,
        "gate_per_second": 0,
        "budget_slots": 0,
        "greet_floor": 0.0,
        "pregreet_cut": False,
    }
    text = why.render(doc)
    assert text.startswith("why 198.18.7.1: stranger, host in normal mode\n")
    assert "198.18.7.1:40000    25  ESTABLISHED  41s ago    never          0/1          0/19  yes" in text
    assert "\nactions:\n  offence record: 2 blocks" in text
    assert "  - your client waits 41s after our greeting before it says EHLO" in text
    assert "recent events:\n  none recorded" in text


def test_the_limits_in_a_wave_for_a_trusted_source() -> None:
    lim = why.in_force(POLICY, Mode.WAVE, why.Standing(why.TRUSTED), 10)
    assert (lim.max_connections, lim.max_new_per_minute, lim.trust_factor) == (40, 120, 4)
    # 3 s in a wave, twice for the trusted (their connection limits four times: the patience for silence at most
    # twice in a wave, decide.WAVE_PATIENCE)
    assert lim.cut_after == 6.0 and lim.gate_per_second == 0
    assert why.in_force(POLICY, Mode.ELEVATED, why.Standing(why.TRUSTED), 10).cut_after == 120.0
    assert why.in_force(POLICY, Mode.ELEVATED, STRANGER, 10).cut_after == 30.0
    no_cuts = config.from_mapping({"cut": {"enabled": False}}).policy()
    assert why.in_force(no_cuts, Mode.WAVE, STRANGER, 10).silent_after == no_cuts.idle_after


def test_many_sessions_list_the_longest_waits_first() -> None:
    many = [silent_since_banner(6_000 + i) for i in range(why.SESSIONS_SHOWN + 50)] + [session(segs_in=2)]
    exp = why.explain(evidence(sessions=many))
    assert len(exp.sessions) == why.SESSIONS_SHOWN and exp.sessions[0].server_sent_ms == 6_000 + 249
    assert exp.to_dict()["sessions_total"] == why.SESSIONS_SHOWN + 51
    assert exp.facts[-1].endswith("(the 200 waiting longest are listed)")


def test_sessions_unknown_when_the_kernel_would_not_say() -> None:
    exp = why.explain(evidence(sessions_error="sock_diag dump failed: EPERM (1)"))
    assert exp.facts[-1] == "sessions now: unknown (sock_diag dump failed: EPERM (1))"


def test_docs_name_every_key_and_rule() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "why.md").read_text()
    keys = doc.split("## `--json`", 1)[1]
    for key in why.explain(evidence()).to_dict():
        assert f"`{key}`" in keys, key
    table = doc.split("- **What the sender must fix**", 1)[1]
    for rule in why.PUNITIVE_RULES | {"allowlisted", "nothing-wrong"}:
        assert f"`{rule}`" in table, rule


# -- what an address counts as -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "asked", "source"),
    [
        ("198.18.7.1", "198.18.7.1", "198.18.7.1"),
        (" 198.18.7.1 ", "198.18.7.1", "198.18.7.1"),
        ("::ffff:198.18.7.1", "198.18.7.1", "198.18.7.1"),
        ("2001:db8:bad:1::7", "2001:db8:bad:1::7", "2001:db8:bad:1::/64"),
        ("2001:db8:bad:1::/64", "2001:db8:bad:1::/64", "2001:db8:bad:1::/64"),
        ("2001:db8:bad:1::/96", "2001:db8:bad:1::/96", "2001:db8:bad:1::/64"),
    ],
)
def test_subject_and_its_source_group(text: str, asked: str, source: str) -> None:
    assert why.subject(text, 32, 64) == (Prefix.parse(asked), Prefix.parse(source))


@pytest.mark.parametrize(
    ("addr", "problem"),
    [
        (None, "no address given"),
        (7, "'addr' must be an address as text, got int"),
        (["198.18.7.1"], "got list"),
        ("", "give an address"),
        ("mx.example", "'mx.example' is not an IPv4/IPv6 address or prefix"),
        ("198.18.7.0/24", "198.18.7.0/24 is wider than one source (IPv4 sources are /32 groups)"),
        ("2001:db8:bad::/48", "wider than one source (IPv6 sources are /64 groups)"),
        ("1" * 500, "is too long to be an address"),
    ],
)
def test_subject_refuses_what_is_not_one_source(addr: object, problem: str) -> None:
    with pytest.raises(UsageError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        why.subject(addr, 32, 64)


def test_a_wider_source_grouping_takes_its_prefixes() -> None:
    assert why.subject("198.18.7.0/24", 24, 64) == (Prefix.parse("198.18.7.0/24"), Prefix.parse("198.18.7.0/24"))
    assert why.subject("198.18.7.9", 24, 64)[1] == Prefix.parse("198.18.7.0/24")


def test_entries_touching_a_source() -> None:
    p = Prefix.parse
    entries = {p("198.18.7.0/24"): "wide", p("198.18.7.1"): "exact", p("198.18.8.1"): "other", p("::/0"): "v6"}
    assert why.touching(entries, SRC) == [(p("198.18.7.1"), "exact"), (p("198.18.7.0/24"), "wide")]
    v6 = {p("2001:db8:bad:1::5"): "inside", p("2001:db8:bad::/48"): "wide", p("2001:db8:bad:2::5"): "beside"}
    assert sorted(why.touching(v6, p("2001:db8:bad:1::/64"))) == [
        (p("2001:db8:bad::/48"), "wide"),
        (p("2001:db8:bad:1::5"), "inside"),
    ]
    assert why.covering(p("10.0.0.1"))[:2] == [p("10.0.0.1"), p("10.0.0.0/31")] and why.covering(p("10.0.0.1"))[
        -1
    ] == p("0.0.0.0/0")


# -- the property ------------------------------------------------------------------------------------------------

waits = st.integers(0, 600_000)
sessions_st = st.lists(
    st.builds(
        SessionInfo,
        remote=st.just("192.0.2.10"),
        remote_port=st.integers(1024, 65535),
        local_port=st.sampled_from([25, 465, 587]),
        state=st.sampled_from(["ESTABLISHED", "SYN_RECV", "CLOSE_WAIT"]),
        info=st.booleans(),
        server_sent_ms=waits,
        client_sent_ms=waits,
        segs_in=st.integers(0, 50),
        segs_out=st.integers(0, 50),
        bytes_in=st.integers(0, 100_000),
        bytes_out=st.integers(0, 100_000),
    ),
    max_size=8,
)
stats_st = st.none() | st.builds(
    SourceStats,
    held=st.integers(0, 500),
    established=st.integers(0, 500),
    syn_recv=st.integers(0, 50),
    idle=st.integers(0, 500),
    max_idle_ms=waits,
    new=st.integers(0, 1000),
    new_per_minute=st.integers(0, 5000),
)
ALLOWED_SRC = Prefix.parse("192.0.2.10")
kinds = st.sampled_from(["block", "extend", "throttle", "tarpit", "cut", "unblock"])
events_st = st.lists(
    st.builds(
        Event,
        at=st.floats(NOW - 30 * 86400, NOW),
        kind=kinds,
        prefix=st.just("192.0.2.10"),
        reason=st.sampled_from(["manual: spam", "holds 30 connections", "silent for 6s"]),
        until=st.floats(NOW - 86400, NOW + 86400),
    ),
    max_size=5,
)


@st.composite
def states(draw: st.DrawFn) -> State:
    """Leftovers a moment before the allowlist lifts them, on the source or a prefix around it."""
    st_ = State()
    for p in draw(st.lists(st.sampled_from([ALLOWED_SRC, Prefix.parse("192.0.2.0/24")]), max_size=2)):
        until = NOW + draw(st.floats(-60, 3600))
        st_.blocks[p] = Block(
            p, draw(st.sampled_from(["manual: x", "holds 30"])), NOW - 5, until, 1, draw(st.booleans())
        )
        st_.throttles[p] = Throttle(p, "opened 90", NOW - 5, until)
        st_.tarpits[p] = Tarpitted(p, "hoards", NOW - 5, until)
        st_.offenders[p] = Offender(3, NOW - 100)
    return st_


@settings(max_examples=300, deadline=None)
@given(
    mode=st.sampled_from(list(Mode)),
    gate=st.integers(0, 100),
    figures=stats_st,
    sessions=sessions_st,
    state=states(),
    events=events_st,
)
def test_an_allowlisted_source_never_gets_punitive_advice(
    mode: Mode, gate: int, figures: SourceStats | None, sessions: list[SessionInfo], state: State, events: list[Event]
) -> None:
    seen: dict[str, Any] = {"mode": mode, "gate": gate, "stats": figures, "sessions": sessions, "state": state}
    seen["events"] = events
    exp = why.explain(evidence(source=ALLOWED_SRC, standing=ALLOWED, **seen))
    assert [a.rule for a in exp.advice] == ["allowlisted"]
    assert not {a.rule for a in exp.advice} & why.PUNITIVE_RULES
    assert not any("wave gate" in line for line in exp.actions)
    json.dumps(exp.to_dict())
    # The same evidence for a stranger explains itself with known rules only, and renders.
    other = why.explain(evidence(source=ALLOWED_SRC, **seen))
    assert other.advice and {a.rule for a in other.advice} <= why.PUNITIVE_RULES | {"nothing-wrong"}
    assert why.render(other.to_dict())
