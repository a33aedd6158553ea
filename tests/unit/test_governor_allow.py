"""The daemon's wiring of govern.allow with fake edges: an allowlist that changes between ticks (a file replaced, a
hostname resolving to a blocked source) reaches the kernel's allow set and lifts blocks at once; learned trust and
every source show in `govern status`."""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from govern import config, reports
from govern.addr import Prefix
from govern.allow.learning import TrustSources
from govern.allow.sources import AllowSources
from govern.core.proof import REVOKED_FOR, UNPROVEN_LOOP_REASON
from govern.daemon import Governor
from govern.fakes import FakeClock, FakeCounters, FakeEnforcer, FakeResolver, FakeSockets, InlineExecutor
from govern.model import SockCounts
from govern.proving import PROBATION
from govern.store import Store

PARTNER = Prefix.parse("192.0.2.77")


def make(
    tmp_path: Path, allow: dict[str, object], trust: dict[str, object] | None = None, **sections: dict[str, object]
) -> tuple[Governor, FakeSockets, FakeEnforcer, FakeClock, FakeResolver]:
    state = {"state_dir": str(tmp_path / "state")}
    cfg = config.from_mapping({"allow": allow, "trust": trust or {}, "daemon": state, **sections})
    socks, enf, clock, dns = FakeSockets(), FakeEnforcer(), FakeClock(), FakeResolver()
    sources = AllowSources(cfg.allow_section(), dns, InlineExecutor())
    gov = Governor(
        cfg,
        Store(cfg["daemon"]["state_dir"]),
        socks,
        enf,
        FakeCounters(),
        clock=clock,
        allow=sources,
        trust=TrustSources(cfg.trust_section()),
    )
    return gov, socks, enf, clock, dns


def hog(n: int) -> SockCounts:
    return SockCounts(held=n, established=n, syn_recv=0, idle=n, max_idle_ms=30_000)


def log_delivery(log: Path, stamp: str, qid: str, client: str) -> None:
    """A delivery as Postfix logs it: MAIL FROM accepted, the message queued, the session ended with QUIT."""
    with open(log, "a") as fh:
        fh.write(f"{stamp} mx postfix/smtpd[1]: {qid}: client=x[{client}]\n")
        fh.write(f"{stamp} mx postfix/qmgr[2]: {qid}: from=<a@b.example>, size=1, nrcpt=1 (queue active)\n")
        fh.write(f"{stamp} mx postfix/smtpd[1]: disconnect from x[{client}] quit=1 commands=5\n")


def test_a_host_that_comes_to_resolve_to_a_blocked_source_lifts_its_block(tmp_path: Path) -> None:
    gov, socks, enf, clock, dns = make(tmp_path, {"hosts": ["relay.partner.example"], "min_refresh": "1m"})
    dns.set("relay.partner.example", "A", "192.0.2.1", ttl=60)
    gov.start()
    assert Prefix.parse("192.0.2.1") in enf.allow  # resolved before the first tick
    socks.sources = {PARTNER: hog(30)}
    for _ in range(8):
        gov.tick()
        clock.advance(1.0)
    assert PARTNER in enf.blocks
    dns.set("relay.partner.example", "A", "192.0.2.1", "192.0.2.77")
    clock.advance(60)
    gov.tick()
    assert PARTNER in enf.allow and PARTNER not in enf.blocks and PARTNER not in gov.state.blocks
    row = next(r for r in reports.status(gov)["allowlist_sources"] if r["source"] == "host relay.partner.example")
    assert row["prefixes"] == 2 and row["error"] == ""


def test_a_replaced_file_changes_the_kernel_allow_set_at_the_next_tick(tmp_path: Path) -> None:
    f = tmp_path / "partners.txt"
    f.write_text("192.0.2.10\n")
    gov, _socks, enf, clock, _dns = make(tmp_path, {"files": [str(f)]})
    gov.start()
    assert enf.allow == {Prefix.parse("192.0.2.10")}
    tmp = tmp_path / "partners.tmp"
    tmp.write_text("192.0.2.11\n")
    os.replace(tmp, f)
    gov.tick()
    assert enf.allow == {Prefix.parse("192.0.2.11")}
    f.write_text("not an address\n")
    clock.advance(1)
    gov.tick()
    assert enf.allow == {Prefix.parse("192.0.2.11")}  # the last good content stays in force
    assert "partners.txt:1" in next(
        r["error"] for r in reports.status(gov)["allowlist_sources"] if r["source"].endswith("txt")
    )
    assert gov.handle({"cmd": "allowlist"})["entries"] == [
        {"kind": "allow", "prefix": "192.0.2.11", "sources": [f"file {f}:1"]}
    ]


def test_trust_learned_from_the_postfix_log_shows_in_status(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("")
    gov, _socks, _enf, clock, _dns = make(tmp_path, {}, {"postfix_log": str(log)})
    gov.start()
    stamp = "2023-11-14T22:13:00+00:00"  # a minute before the fake clock's start
    log_delivery(log, stamp, "4F2Xk81qZ5z9sWd", "198.51.100.7")
    gov.tick()
    assert reports.status(gov)["trust"]["trusted"] == 1
    assert gov.trust is not None and gov.trust.trusted().covers(Prefix.parse("198.51.100.7"))
    clock.advance(7 * 86400)
    gov.tick()
    assert reports.status(gov)["trust"]["trusted"] == 0


def test_a_delivery_the_postfix_log_saw_goes_into_the_kernels_proven_sets(tmp_path: Path) -> None:
    """The log's proof is the MTA's word that a message was queued: the wave's gate and the slot budget, which read
    the kernel's proven sets, must pass it as they pass the kernel's own count of replies."""
    log = tmp_path / "mail.log"
    log.write_text("")
    gov, _socks, enf, clock, _dns = make(tmp_path, {}, {"postfix_log": str(log), "learn_for": "1d"})
    gov.start()
    stamp = "2023-11-14T22:13:00+00:00"  # before the fake clock's start
    left = datetime.fromisoformat(stamp).timestamp() + 86400 - clock()

    def deliver(qid: str, client: str) -> None:
        log_delivery(log, stamp, qid, client)

    deliver("4F2Xk81qZ5z9sWd", "198.51.100.7")
    deliver("4F2Xk81qZ5z9sWe", "2001:db8:51::7")
    gov.tick()
    assert enf.log_proven == {
        Prefix.parse("198.51.100.7"): left,
        Prefix.parse("2001:db8:51::/64"): left,  # the source group, as the kernel keys it
    }
    enf.log_proven.clear()
    clock.advance(1)
    gov.tick()
    assert enf.log_proven == {}  # nothing new in the log: nothing sent to the kernel


def test_in_a_wave_a_source_that_delivered_then_stalled_loses_its_proof(tmp_path: Path) -> None:
    """The lab's deliverers: a short message queued (the log proves the source), then the session held silently.
    Cut for that in a wave, a source proven during the wave loses its proof, in the kernel too, and its next
    delivery does not prove it again; a relay proven before the wave keeps its proof through the same cut."""
    log = tmp_path / "mail.log"
    log.write_text("")
    gov, socks, enf, clock, _dns = make(tmp_path, {}, {"postfix_log": str(log)})
    gov.start()
    bot, relay = Prefix.parse("198.51.100.66"), Prefix.parse("198.51.100.7")

    def deliver(qid: str, client: str) -> None:
        stamp = datetime.fromtimestamp(clock(), UTC).isoformat()
        log_delivery(log, stamp, qid, client)

    deliver("4F2Xk81qZ5z9sWa", str(relay))
    gov.tick()
    clock.advance(3600)  # an hour later, a flood
    assert gov.handle({"cmd": "wave", "action": "on", "duration": "10m"})["ok"]
    deliver("4F2Xk81qZ5z9sWb", str(bot))
    gov.tick()
    assert bot in enf.log_proven and gov.trust is not None and gov.trust.trusted().covers(bot)
    stalled = SockCounts(held=1, established=1, syn_recv=0, idle=1, max_idle_ms=20_000)
    socks.sources = {bot: stalled, relay: stalled}
    clock.advance(1)
    gov.tick()
    assert gov.proving.revoked == 1 and bot not in enf.log_proven and not gov.trust.trusted().covers(bot)
    assert gov.trust.trusted().covers(relay)  # proven before the wave: cut, not unproven
    assert [e.kind for e in gov.store.events_about([bot]) if e.kind == "unproven"] == ["unproven"]  # for govern why
    assert not [e for e in gov.store.events_about([relay]) if e.kind == "unproven"]
    socks.sources = {}
    deliver("4F2Xk81qZ5z9sWc", str(bot))  # another message queued: no proof while held off
    clock.advance(1)
    gov.tick()
    assert bot not in enf.log_proven and not gov.trust.trusted().covers(bot)
    assert reports.status(gov)["proof_revoked"] == 1 and reports.status(gov)["trust"]["revoked"] == 1


def test_in_a_wave_a_loop_the_kernel_proved_is_shed_and_its_source_unproven_only_once_a_session_went(
    tmp_path: Path,
) -> None:
    """No log followed: the kernel's count of replies proves a looper whose recipients are accepted. While the budget
    is full, its sessions are asked the loop's questions; the proof goes only with a session that went (a shed that
    found no loop takes nothing), and `govern why` is told it was a loop."""
    gov, socks, enf, clock, _dns = make(tmp_path, {}, {"postfix_log": ""}, wave={"slot_budget": 2})
    gov.start()
    looper, sender = Prefix.parse("198.51.100.66"), Prefix.parse("198.51.100.67")
    assert gov.handle({"cmd": "wave", "action": "on", "duration": "10m"})["ok"]
    enf.delivering |= {looper, sender}  # the kernel proved both in the wave
    enf.slots = 2  # strangers' connections fill the budget
    busy = SockCounts(held=1, established=1, syn_recv=0, idle=0, max_idle_ms=0)
    socks.sources = {looper: busy, sender: busy}
    clock.advance(3)
    gov.tick()
    assert gov.trust is not None and gov.trust.trusted().covers(looper) and gov.trust.trusted().covers(sender)
    clock.advance(1)
    gov.tick()  # both asked; neither loops yet
    asked = socks.shed[-1]
    assert set(asked) == {looper, sender} and all(s.loops == 6 and s.wait_ms == 0 for s in asked.values())
    assert gov.proving.revoked == 0 and gov.trust.trusted().covers(looper)
    socks.looping[looper] = 1
    clock.advance(1)
    gov.tick()
    assert gov.proving.revoked == 1 and looper not in enf.delivering and not gov.trust.trusted().covers(looper)
    assert gov.trust.trusted().covers(sender) and sender in enf.delivering
    assert enf.held_off == {looper: REVOKED_FOR}  # the kernel does not prove it again meanwhile
    unproven = [e for e in gov.store.events_about([looper]) if e.kind == "unproven"]
    assert [e.reason for e in unproven] == [UNPROVEN_LOOP_REASON]
    assert not [e for e in gov.store.events_about([sender]) if e.kind == "unproven"]


def test_in_a_wave_a_crowd_the_kernel_proved_reaches_the_proven_sets_after_a_probation(tmp_path: Path) -> None:
    """No log followed: a crowd's proof by the kernel's count (its 250 "queued") waits in a set of its own; the daemon
    trusts it at once but moves it to the proven sets, which pass the gate and the budget, only after PROBATION
    uncut (the lab's deliverers and quitters held the MTA past the budget when it went in at once). A crowd cut
    meanwhile loses its proof and never gets there."""
    gov, socks, enf, clock, _dns = make(tmp_path, {}, {"postfix_log": ""})
    gov.start()
    relay, bot = Prefix.parse("198.51.100.70"), Prefix.parse("198.51.100.71")
    assert gov.handle({"cmd": "wave", "action": "on", "duration": "10m"})["ok"]
    enf.crowd_delivering |= {relay, bot}
    clock.advance(3)
    gov.tick()
    assert gov.trust is not None and gov.trust.trusted().covers(relay) and gov.trust.trusted().covers(bot)
    assert not enf.log_proven and gov.proving.withheld == 2
    socks.sources = {bot: SockCounts(held=1, established=1, syn_recv=0, idle=1, max_idle_ms=4_000)}  # silent: cut
    clock.advance(1)
    gov.tick()
    assert bot not in enf.crowd_delivering and enf.held_off.get(bot) == REVOKED_FOR
    socks.sources = {}
    for _ in range(4):
        clock.advance(2)
        gov.tick()
    assert relay in enf.log_proven and relay not in enf.crowd_delivering  # promoted, out of the pending set
    assert bot not in enf.log_proven and not gov.trust.trusted().covers(bot)
    assert gov.proving.withheld == 0


def test_in_a_wave_a_crowds_first_proof_reaches_the_kernel_after_a_probation_or_the_waves_end(tmp_path: Path) -> None:
    """The lab's quitters: a source that came as a crowd (several connections at once) delivers and quits during the
    wave, then holds its other sessions. Its trust is learned, but the kernel's gate and budget do not pass it until
    it has been through a probation uncut, or the wave is over; a sender proven by its only connection passes at
    once."""
    log = tmp_path / "mail.log"
    log.write_text("")
    gov, socks, enf, clock, _dns = make(tmp_path, {}, {"postfix_log": str(log)})
    gov.start()
    crowd, lone, held, knock = (Prefix.parse(f"198.51.100.{n}") for n in (66, 67, 68, 69))
    enf.crowd = {crowd}  # the kernel marked its first contacts in the wave a crowd

    def deliver(qid: str, client: str) -> None:
        stamp = datetime.fromtimestamp(clock(), UTC).isoformat()
        log_delivery(log, stamp, qid, client)

    assert gov.handle({"cmd": "wave", "action": "on", "duration": "1m"})["ok"]
    # ... and this one was seen holding two sessions at once (its connections came before the wave was declared)
    socks.sources = {
        held: SockCounts(held=2, established=2, syn_recv=0, idle=0, max_idle_ms=0),
        # a sender's second message knocking while its first is answered: no crowd
        knock: SockCounts(held=2, established=1, syn_recv=1, idle=0, max_idle_ms=0),
    }
    gov.tick()
    socks.sources = {}
    deliver("4F2Xk81qZ5z9sWb", str(crowd))
    deliver("4F2Xk81qZ5z9sWc", str(lone))
    deliver("4F2Xk81qZ5z9sWd", str(held))
    deliver("4F2Xk81qZ5z9sWf", str(knock))
    clock.advance(0.5)
    gov.tick()
    assert gov.trust is not None and gov.trust.trusted().covers(crowd) and gov.trust.trusted().covers(lone)
    assert {lone, knock} <= enf.log_proven.keys() and crowd not in enf.log_proven and held not in enf.log_proven
    assert reports.status(gov)["trust"]["withheld"] == 2  # `govern status` says so
    clock.advance(PROBATION - 1)
    gov.tick()
    assert crowd not in enf.log_proven and held not in enf.log_proven  # on probation
    # A crowd that is cut meanwhile loses its proof (govern.core.proof): it never reaches the kernel.
    assert gov.trust is not None
    gov.trust.revoke([held], clock(), 3600)
    clock.advance(1)
    gov.tick()
    assert crowd in enf.log_proven and enf.log_proven[crowd] > 6 * 86400  # the rest of its trust
    assert held not in enf.log_proven and reports.status(gov)["trust"]["withheld"] == 0
    # Through its probation uncut, its later deliveries in the wave go in at once, not on probation again (a busy
    # relay first proven in the wave delivers again and again).
    enf.log_proven.clear()
    deliver("4F2Xk81qZ5z9sWe", str(crowd))
    clock.advance(0.5)
    gov.tick()
    assert crowd in enf.log_proven and reports.status(gov)["trust"]["withheld"] == 0
    # The wave's end releases what is still on probation.
    late = Prefix.parse("198.51.100.70")
    enf.crowd.add(late)
    deliver("4F2Xk81qZ5z9sWg", str(late))
    clock.advance(0.5)
    gov.tick()
    assert reports.status(gov)["trust"]["withheld"] == 1 and late not in enf.log_proven
    assert gov.handle({"cmd": "wave", "action": "off"})["ok"]
    clock.advance(1)
    gov.tick()
    assert late in enf.log_proven


def test_a_crowd_first_proven_as_the_pressure_began_is_on_probation_until_the_pressure_is_over(tmp_path: Path) -> None:
    """The lab's quitters deliver and QUIT in the flood's first second, before the tick that sees the flood: their
    proof reached the kernel at once, and their silent second sessions passed the budget. The first tick under
    pressure takes the proof of the sources holding several sessions that were first proven since shortly before it
    out of the kernel (held off from the kernel's own count) and out of the set the decision core trusts, until the
    pressure is over; one cut meanwhile loses it for good. Neither the probation's time nor deliveries meanwhile
    bring it back. A relay known for longer, a lone sender and an allowlisted source keep theirs."""
    log = tmp_path / "mail.log"
    log.write_text("")
    gov, socks, enf, clock, _dns = make(tmp_path, {"cidrs": [str(PARTNER)]}, {"postfix_log": str(log)})
    gov.start()
    relay, quitter, silent, lone = (Prefix.parse(f"198.51.100.{n}") for n in (7, 66, 67, 68))

    def deliver(qid: str, client: str) -> None:
        stamp = datetime.fromtimestamp(clock(), UTC).isoformat()
        log_delivery(log, stamp, qid, client)

    deliver("4F2Xk81qZ5z9sWa", str(relay))
    gov.tick()
    clock.advance(10)  # the flood's first second, before a tick has seen it
    for qid, who in (("4F2Xk81qZ5z9sWb", quitter), ("4F2Xk81qZ5z9sWc", silent), ("4F2Xk81qZ5z9sWd", lone)):
        deliver(qid, str(who))
    deliver("4F2Xk81qZ5z9sWe", str(PARTNER))
    clock.advance(0.5)
    gov.tick()
    assert {relay, quitter, silent, lone, PARTNER} <= enf.log_proven.keys()  # calm: in at once
    two = SockCounts(held=2, established=2, syn_recv=0, idle=0, max_idle_ms=0)
    socks.sources = {p: two for p in (relay, quitter, silent, PARTNER)}
    socks.sources[lone] = SockCounts(held=1, established=1, syn_recv=0, idle=0, max_idle_ms=0)
    assert gov.handle({"cmd": "wave", "action": "on", "duration": "10m"})["ok"]
    clock.advance(0.5)
    gov.tick()
    assert quitter not in enf.log_proven and silent not in enf.log_proven
    # The kernel does not prove them again meanwhile, whatever their next dialogue.
    assert enf.held_off == {quitter: REVOKED_FOR, silent: REVOKED_FOR}
    assert {relay, lone, PARTNER} <= enf.log_proven.keys()
    assert reports.status(gov)["trust"]["withheld"] == 2
    # Strangers to the decision core meanwhile, as to the kernel's budget: the wave sheds what their proof let in.
    assert quitter not in gov.trusted() and silent not in gov.trusted() and relay in gov.trusted()
    assert gov.handle({"cmd": "why", "addr": str(quitter)})["why"]["standing"]["probation"] == {"until": None}
    # One holds its sessions silently and is cut: its proof goes for good.
    socks.sources = {silent: SockCounts(held=2, established=2, syn_recv=0, idle=2, max_idle_ms=4_000)}
    clock.advance(1)
    gov.tick()
    assert gov.trust is not None and not gov.trust.trusted().covers(silent)
    socks.sources = {}
    for n in range(int(PROBATION) + 2):  # a bot delivers spam as easily as a relay mail
        deliver(f"4F2Xk81qZ5z9sX{n}", str(quitter))
        clock.advance(1)
        gov.tick()
    assert quitter not in enf.log_proven and quitter not in gov.trusted()
    assert reports.status(gov)["trust"]["withheld"] == 1
    assert gov.handle({"cmd": "wave", "action": "off"})["ok"]
    clock.advance(1)
    gov.tick()
    assert quitter in enf.log_proven and enf.log_proven[quitter] > 6 * 86400  # the rest of its trust
    assert quitter in gov.trusted() and silent not in enf.log_proven
    assert reports.status(gov)["trust"]["withheld"] == 0


def test_a_crowd_back_from_its_probation_is_recalled_once_seen_holding_several_sessions(tmp_path: Path) -> None:
    """A crowd to the kernel's first contacts, proven in the wave, gets its proof after the probation if it was not
    cut meanwhile: the budget may have kept its other connections out. Seen holding several sessions once back, it
    is recalled until the pressure is over (the lab's quitters came back this way and held the MTA)."""
    log = tmp_path / "mail.log"
    log.write_text("")
    gov, socks, enf, clock, _dns = make(tmp_path, {}, {"postfix_log": str(log)})
    gov.start()
    bot = Prefix.parse("198.51.100.66")
    enf.crowd = {bot}
    assert gov.handle({"cmd": "wave", "action": "on", "duration": "10m"})["ok"]
    gov.tick()
    log_delivery(log, datetime.fromtimestamp(clock(), UTC).isoformat(), "4F2Xk81qZ5z9sWb", str(bot))
    clock.advance(0.5)
    gov.tick()
    assert bot not in enf.log_proven and gov.proving.probation(bot) == clock() + PROBATION
    for _ in range(int(PROBATION) + 1):
        clock.advance(1)
        gov.tick()
    assert bot in enf.log_proven and gov.proving.probation(bot) is None  # back: nothing cut it
    socks.sources = {bot: SockCounts(held=2, established=2, syn_recv=0, idle=0, max_idle_ms=0)}
    clock.advance(1)
    gov.tick()
    assert bot not in enf.log_proven and bot not in gov.trusted() and enf.held_off == {bot: REVOKED_FOR}
    assert gov.proving.probation(bot) == math.inf


def test_a_postfix_started_after_govern_is_found_and_its_log_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Boot order: govern may start before Postfix. While "auto" has found no log, the daemon looks again every
    10 s; once found, the log is followed and the kernel's count of replies goes off."""
    import govern.autos

    log = tmp_path / "mail.log"
    log.write_text("")
    found: list[tuple[str, str]] = [("", "no Postfix process holds a protected port")]
    monkeypatch.setattr(govern.autos, "postfix_log", lambda held, proc: found[-1])
    gov, _socks, _enf, clock, _dns = make(tmp_path, {})
    gov.start()
    st = reports.status(gov)["trust"]
    assert st["postfix_log"] == "" and st["from_sessions"] is True
    assert st["postfix_log_basis"] == "no Postfix process holds a protected port"
    found.append((str(log), "maillog_file in /etc/postfix/main.cf"))
    gov.tick()
    clock.advance(10)
    gov.tick()
    st = reports.status(gov)["trust"]
    assert st["postfix_log"] == str(log) and st["from_sessions"] is False
    assert gov.config.firewall().proof is False  # the ruleset made again without the count


def test_a_reload_keeps_resolved_hosts(tmp_path: Path) -> None:
    gov, _socks, enf, _clock, dns = make(tmp_path, {"hosts": ["relay.partner.example"]})
    dns.set("relay.partner.example", "A", "192.0.2.1")
    gov.start()
    dns.fail("relay.partner.example", "A")
    new = config.from_mapping(
        {
            "allow": {"hosts": ["relay.partner.example"], "cidrs": ["192.0.2.200"]},
            "daemon": {"state_dir": str(tmp_path / "state")},
        }
    )
    gov.reload(new)
    assert enf.allow == {Prefix.parse("192.0.2.1"), Prefix.parse("192.0.2.200")}
