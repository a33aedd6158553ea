"""govern.core.proof: in a wave, a source proven during the wave (or just before it) and cut for want of progress
loses its proof; proof from before the wave, sheds and other modes take nothing away."""

from __future__ import annotations

from govern.addr import Prefix
from govern.allow.learning import TrustSources
from govern.allow.spec import TrustSpec
from govern.allow.trust import Trust
from govern.core.proof import (
    PRESSURE_LEAD,
    UNPROVEN_LOOP_REASON,
    UNPROVEN_REASON,
    YOUNG_BEFORE_WAVE,
    proof_lost,
    recalled,
    withheld,
    young,
)
from govern.model import Cut, Mode, ModeState

WAVE = ModeState(Mode.WAVE, since=10_000.0)
BOT, RELAY, EDGE, STRANGER = (Prefix.parse(f"198.51.100.{n}") for n in (1, 2, 3, 4))
FIRST = {BOT: 10_005.0, RELAY: 9_000.0, EDGE: 10_000.0 - YOUNG_BEFORE_WAVE}


def cut(p: Prefix, shed: bool = False) -> Cut:
    return Cut(p, 3000, "silent", shed=shed)


def test_in_a_wave_only_proof_younger_than_the_wave_goes_with_a_cut() -> None:
    cuts = [cut(BOT), cut(RELAY), cut(EDGE), cut(STRANGER)]
    assert proof_lost(cuts, FIRST.get, WAVE) == {BOT: UNPROVEN_REASON, EDGE: UNPROVEN_REASON}
    assert proof_lost([cut(BOT, shed=True)], FIRST.get, WAVE) == {}  # a shed judges nothing the source did
    assert proof_lost(cuts, FIRST.get, ModeState(Mode.ELEVATED, since=10_000.0)) == {}


def test_a_young_sources_loop_shed_takes_its_proof_with_the_loops_reason() -> None:
    def loop(p: Prefix) -> Cut:
        return Cut(p, 0, "looping", shed=True, loops=6, unproves=True)

    assert proof_lost([loop(BOT), loop(RELAY)], FIRST.get, WAVE) == {BOT: UNPROVEN_LOOP_REASON}  # RELAY: proven before
    assert proof_lost([loop(BOT)], FIRST.get, ModeState(Mode.ELEVATED, since=10_000.0)) == {}


def test_in_a_wave_a_crowds_young_proof_is_withheld_from_the_kernel() -> None:
    crowds = {BOT, RELAY}
    assert withheld([BOT, RELAY, EDGE], FIRST.get, WAVE, crowds) == {BOT}  # RELAY: proven before; EDGE: no crowd
    assert withheld([BOT], FIRST.get, WAVE, set()) == set()
    assert withheld([BOT], FIRST.get, ModeState(Mode.ELEVATED, since=10_000.0), crowds) == set()


def test_a_crowd_first_proven_as_the_pressure_began_is_recalled_and_one_known_before_is_not() -> None:
    pressed = 10_004.0
    first = {BOT: 10_003.5, RELAY: 9_000.0, EDGE: pressed - PRESSURE_LEAD, STRANGER: pressed - PRESSURE_LEAD - 0.1}
    assert recalled([BOT, RELAY, EDGE, STRANGER], first.get, pressed) == {BOT, EDGE}
    assert recalled([Prefix.parse("198.51.100.9")], first.get, pressed) == frozenset()  # not trusted at all


def test_trust_remembers_the_first_proof_and_forgets_it_with_the_trust() -> None:
    t = Trust(3600)
    t.learn(BOT, 100, 100)
    t.learn(BOT, 200, 200)
    assert t.first(BOT) == 100 and t.until(BOT) == 3800
    assert t.revoke(BOT) and t.first(BOT) is None and not t.trusted().covers(BOT) and not t.revoke(BOT)
    t.learn(BOT, 300, 300)
    assert t.first(BOT) == 300  # proven anew
    t.expire(3900)
    assert t.first(BOT) is None


def test_a_revoked_source_is_not_proven_again_while_held_off(tmp_path: object) -> None:
    ts = TrustSources(TrustSpec(3600, 4, "", 32, 64))
    assert ts.learn(BOT, 100)
    ts.revoke([BOT], 100, hold_off=600)
    assert not ts.trusted().covers(BOT)
    assert not ts.learn(BOT, 200) and not ts.trusted().covers(BOT)  # held off
    assert ts.learn(BOT, 701) and ts.trusted().covers(BOT)  # the hold-off over


def test_young_trust_is_the_waves_own() -> None:
    assert young([BOT, RELAY, EDGE, STRANGER], FIRST.get, WAVE) == {BOT, EDGE}
    assert young([BOT], FIRST.get, ModeState(Mode.NORMAL)) == frozenset()
