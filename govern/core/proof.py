"""Proof lost: which sources lose the proof that lets them pass the wave's gate and the slot budget.

A source proves itself by delivering (the MTA's log says a message of its was queued), and a bot can deliver too:
the lab's `deliverers` queue a short spam message, then hold the session silently, proven, past the budget. A
legitimate sender that has delivered quits, sends its next message, or keeps a cached connection idle a couple of
seconds (Postfix: smtp_connection_cache_time_limit, 2 s); it is not cut for silence. So in a wave, a source whose
sessions are cut for want of progress, and whose first proof came during the wave (or just before it: the flood's
first second comes before the first tick that sees it), loses its proof, and nothing proves it again for
`REVOKED_FOR`: its next connections are a stranger's again, held to the budget, and a second cut blocks it. Proof
from before the wave is not taken away: a known relay's session that idles past the wave's patience is cut, as any.
Until it is cut, such a source gets no more patience for silence than a stranger (`young`). The kernel's count of
replies proves a source without a message (the banner and three positive answers), so a loop of accepted commands
proves itself; such a source's session that loops with no message is shed and takes its proof
(govern.core.shedding.young_loops).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence, Set

from govern.addr import Prefix
from govern.model import Cut, Mode, ModeState

# Proof this long before the wave began still counts as the wave's own: the flood's bots prove themselves in its
# first seconds, before the tick that declares the wave.
YOUNG_BEFORE_WAVE = 60.0
# Proof this long before the pressure began (the first tick that saw the flood) is the flood's own: that tick comes a
# second after the flood's first SYNs at most, and a flood ramps up over its first seconds. A relay the host has known
# for longer is never taken for one of its bots (the lab's known relays are proven 10 s before its flood).
PRESSURE_LEAD = 5.0
# How long nothing proves a source that lost its proof again: longer than a wave lasts on its own.
REVOKED_FOR = 3600.0
UNPROVEN_REASON = "proven during a wave, then its session held without progress until cut"
UNPROVEN_LOOP_REASON = "proven during a wave, then its session kept the server answering with no message until cut"


FirstProof = Callable[[Prefix], float | None]


def young(sources: Iterable[Prefix], first_proof: FirstProof, mode: ModeState) -> frozenset[Prefix]:
    """Of these sources, those whose trust is the wave's own (first proven since shortly before it began): their
    silence is judged as a stranger's, for a legitimate sender that has just delivered does not fall silent."""
    if mode.mode is not Mode.WAVE:
        return frozenset()
    return _proven_since(sources, first_proof, mode.since - YOUNG_BEFORE_WAVE)


def _proven_since(sources: Iterable[Prefix], first_proof: FirstProof, since: float) -> frozenset[Prefix]:
    """Of these sources, those trusted and first proven at `since` or later."""
    return frozenset(p for p in sources if (first := first_proof(p)) is not None and first >= since)


def withheld(delivered: Iterable[Prefix], first_proof: FirstProof, mode: ModeState, crowds: Set[Prefix]) -> set[Prefix]:
    """Of the sources the log saw deliver, those the kernel's gate and budget must not pass yet: in a wave, the
    crowds (sources that opened several connections at once as first contacts, as a swarm's do, or were seen
    holding several sessions at once under pressure) whose trust is the wave's own. The lab's `quitters` deliver and
    QUIT once per connection, then hold: proven at once, their next connections passed the budget until each was
    cut, and held the MTA (bots over the budget until 15 s, known relays' p95 2.5 s; 8 s and 2.1 s withheld). A
    sender proven by its only connection passes at once (its next message must not wait in the lanes the flood
    holds); a crowd's proof reaches the kernel after a probation (govern.proving.PROBATION) in which it was not
    cut, or when the wave is over."""
    if mode.mode is not Mode.WAVE or not crowds:
        return set()
    return {p for p in young(delivered, first_proof, mode) if p in crowds}


def recalled(crowds: Iterable[Prefix], first_proof: FirstProof, pressed_since: float) -> frozenset[Prefix]:
    """Of the sources seen holding several sessions at once under pressure, those whose trust came with the
    pressure (first proven since PRESSURE_LEAD before it began): their proof goes back on probation. The lab's
    quitters deliver and QUIT in the flood's first second, before a tick has seen it or a wave can withhold a proof
    (`withheld`), and their silent second sessions then passed the budget as proven, until each was cut: smtpd full
    for 10 s, the known relays' p95 3.9-5.1 s, their unproven sessions within the budget only 12-30 s into the
    flood."""
    return _proven_since(crowds, first_proof, pressed_since - PRESSURE_LEAD)


def proof_lost(cuts: Sequence[Cut], first_proof: FirstProof, mode: ModeState) -> dict[Prefix, str]:
    """The cut sources whose proof goes, each with why: in a wave, those whose trust is the wave's own, cut for
    silence, or shed for a loop (`Cut.unproves`; the caller passes only the sheds that ended a session)."""
    judged = [c for c in cuts if not c.shed or c.unproves]
    lost = young((c.prefix for c in judged), first_proof, mode)
    return {c.prefix: UNPROVEN_LOOP_REASON if c.unproves else UNPROVEN_REASON for c in judged if c.prefix in lost}
