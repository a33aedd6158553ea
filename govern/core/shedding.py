"""The slot budget's shedding in a wave: which sessions of strangers (and of sources proven only during the wave)
to end so that the MTA's slots the budget gives strangers turn over. Shedding judges nothing: it never throttles or
blocks, and a session that advances towards a message is never taken.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import chain

from govern.addr import Prefix
from govern.core.policy import Policy
from govern.model import Cut, Snapshot, SourceStats, State, holding


def shed(
    snap: Snapshot, state: State, policy: Policy, acted_on: set[Prefix], holders: frozenset[Prefix] = frozenset()
) -> list[Cut]:
    """In a wave, while strangers (neither allowlisted nor trusted) hold more sessions than the slot budget: end the
    sessions that have not got past the greeting (still waiting in the accept queue for it, or given nothing but it
    and not advancing for `cut.shed_after`) of the strangers holding the most, two or more each, until what they held
    covers the excess; if that is not enough, also those given nothing but the greeting of the ones holding one
    (silent for `cut.shed_single_after`). A source holding one session that tried several connections within the
    last minute (the others refused by the full accept queue, or ended) counts among the many. Where the kernel
    says how many connections hold its slots (`slotted`), the strangers' sessions beyond that count are over the
    budget too, however few: the kernel counts only what was made in the wave, and a flood fills the rest at once.
    A session past the greeting (the server answered a command) is left to the cuts: a slow MTA pausing between
    its commands is never shed; but the `holders` holding several while the kernel counts fewer lose any session
    that has not advanced for the wait, for nothing else ends one that advances now and then. While the kernel
    counts fewer sessions than strangers hold, the `holders` (the strangers that held sessions when the wave
    began) are shed first: the sessions it does not count are theirs, and
    shedding another source's would only free counted slots for the flood's next connections, while the uncounted
    ones held the MTA until their cut (`cut.wave_idle_after`; traced in the lab: 3 over the budget for 1.3 s).

    The kernel's budget only counts connections made during the wave; those the flood opened before it fill the MTA
    and its accept queue, and would each get the greeting and a cut's wait (`cut.wave_idle_after`) before they go,
    round after round. A source with several sessions none of which answers is a flood's pattern, never a sender's
    that delivers: a sender the host has never seen opens one, and waits its turn in the queue; one that answers
    the greeting at once is never shed. Sources cut for no progress in this plan, or acted on, are left to that.
    Shedding judges nothing: the source is neither throttled nor blocked for it. Each shed also takes the sessions
    that loop without a message (govern.model.loops, `cut.loop_replies`, and `cut.loop_after`), and with no session
    over the budget but the budget full, those alone (`looping`); and so do the loops of the sources proven only
    during the wave (`young_loops`).
    """
    total = snap.totals.established if snap.totals is not None else sum(s.established for s in snap.sources.values())
    full = snap.slotted is not None and snap.slotted >= policy.slot_budget - policy.slot_crowds  # see looping
    if total <= policy.slot_budget and (snap.slotted is None or total <= snap.slotted) and not full:
        return []
    strangers: list[tuple[int, Prefix]] = []
    singles: list[Prefix] = []
    # A flood's source whose second SYN the full accept queue dropped holds one session, like a sender's; its
    # attempts tell them apart. A sender never seen opens one connection; one that delivered is trusted.
    restless: list[tuple[int, Prefix]] = []
    held = 0
    for p, s in strangers_holding(snap, policy):
        held += s.established
        if p in acted_on or p in state.blocks:
            continue
        if s.established >= 2:
            strangers.append((s.established, p))
        elif s.new_per_minute >= 2:
            restless.append((s.new_per_minute, p))
        else:
            singles.append(p)
    excess = held - policy.slot_budget
    if snap.slotted is not None:
        # The kernel counts only the connections made in the wave, and a flood fills what it counts at once: the
        # sessions it does not count (made before the wave) are all over the budget, however few they are.
        excess = max(excess, held - snap.slotted)
    if excess <= 0:
        if not full:
            return []
        return looping([p for _, p in chain(strangers, restless)] + singles, policy) + young_loops(
            snap, policy, acted_on
        )
    first = holders if snap.slotted is not None and held > snap.slotted else frozenset()
    strangers.sort(key=lambda r: (r[1] not in first, -r[0], r[1].version, r[1].value))
    restless.sort(key=lambda r: (r[1] not in first, -r[0], r[1].version, r[1].value))
    singles.sort(key=lambda p: p not in first)
    # A real client answers the greeting within a round trip. A slow MTA that pauses a second or two first keeps its
    # only session; several sessions none of which answers are a flood's pattern. The cut adds the silence
    # postscreen asks for before its banner.
    many_ms, lone_ms = (int(t * 1000) for t in policy.shed_after)
    loop, stale = policy.loop_replies, int(policy.loop_after * 1000)
    why = f"strangers hold {held} sessions, over the slot budget of {policy.slot_budget}, during a wave"
    out: list[Cut] = []
    for n, p in strangers:
        if excess <= 0:
            break
        # A holder's sessions are the ones the kernel does not count, and the flood's ones that advance (a command
        # every second or two, each answered: the lab's loopers) would hold the MTA outside the budget for the
        # whole wave: any of them that has not advanced for the wait goes, past the greeting too. Several sessions
        # that pause so are a flood's pattern; a source's only one is never shed so.
        past = p in first
        what = "not advancing, opened before the wave" if past else "not answering the greeting"
        said = f"{n} sessions {what} while {why}"
        out.append(Cut(p, many_ms, said, shed=True, queued=True, past=past, loops=loop, stale_ms=stale))
        excess -= n
    for tried, p in restless:
        if excess <= 0:
            break
        one = f"its session not answering the greeting, of {tried} connections tried in a minute, while {why}"
        out.append(Cut(p, many_ms, one, shed=True, queued=True, loops=loop, stale_ms=stale))
        excess -= 1
    if excess > 0:
        # Which single sessions are silent since the greeting, or loop without a message, only the socket shows:
        # the cut asks each. Tried and not kept: asking the sessions opened before the wave after three replies:
        # the lab's slow MTA, a stranger over IPv6 that does not pipeline, lost its message in the pause before
        # its body (four replies: EHLO, MAIL, RCPT and DATA's 354).
        # A holder's session still in the accept queue was opened before the wave too: behind loops the MTA
        # serves, a flood's sessions, each served for a loop's time in its turn (the lab's lone-loopers: within the
        # budget after two loops' times, 23 s, with them queued there). So it goes in a look that finds loops among
        # the ones served; a sender whose first connection waits among them loses it before our greeting, and its
        # MTA tries again. Tried and not kept: taking them in any look, which cost a first contact of the flood's
        # first half second (the slow MTA's, once) in six scenarios without loops (/tmp/m-gov26).
        lone = f"its session not answering the greeting, or looping with no message, while {why}"
        out.extend(Cut(p, lone_ms, lone, shed=True, loops=loop, stale_ms=stale, behind=p in first) for p in singles)
    return out + young_loops(snap, policy, acted_on)


def looping(strangers: Sequence[Prefix], policy: Policy) -> list[Cut]:
    """In a wave, while strangers' connections fill the slot budget (the kernel counts as many as it holds, but for
    the crowds' part of the first contacts' lane, which a swarm of one connection a source leaves empty once it has
    arrived, and which is then all a never-seen sender finds), and no session is over it: the strangers' sessions
    that loop, their server having answered `cut.loop_replies` commands while the client sent no message
    (govern.model.loops), or greeted `cut.loop_after` ago with no message yet and keeping the server waiting
    (govern.model.no_message: a loop at any pace, in TLS too), are shed, so that the budget's lanes turn over. A
    session that advances is never cut for want of progress, and one that advances without ever delivering (a
    recipient every 2 s: the lab's lone-loopers, one session a source) held the first contacts' lane for the whole
    flood. Only the loops go (the cut's wait of 0 asks nothing else of a session); shedding judges nothing."""
    why = f"its session looping with no message while strangers fill the slot budget of {policy.slot_budget}"
    return _loop_cuts(strangers, policy, why)


def _loop_cuts(sources: Sequence[Prefix], policy: Policy, why: str, unproves: bool = False) -> list[Cut]:
    """The sheds that ask only the loop's questions (a wait of 0), for each of `sources`; none when both are off."""
    if not (policy.loop_replies or policy.loop_after):
        return []
    stale = int(policy.loop_after * 1000)
    return [Cut(p, 0, why, shed=True, loops=policy.loop_replies, stale_ms=stale, unproves=unproves) for p in sources]


def strangers_holding(snap: Snapshot, policy: Policy) -> Iterator[tuple[Prefix, SourceStats]]:
    """The sources holding established sessions that are neither trusted nor allowlisted: what the slot budget
    counts, and what shedding chooses from."""
    trusted = snap.trusted
    for p, s in holding(snap.sources).items():
        if s.established and p not in trusted and not policy.allow.intersects(p):
            yield p, s


# Why a source proven during the wave loses a looping session, and its proof with it (govern.core.proof).
YOUNG_LOOP_REASON = "its session looping with no message after its proof in the wave, while strangers fill the budget"


def young_loops(snap: Snapshot, policy: Policy, acted_on: set[Prefix]) -> list[Cut]:
    """The loops of the sources whose proof is the wave's own (`Snapshot.young`), while the slot budget is full or
    strangers hold more than it. The kernel's count of replies proves a source after the banner and three positive
    answers, and a loop of accepted recipients (the lab's slow talkers, against an MTA whose log govern does not
    follow) gets them in its first second, then passed the budget as trusted and held its slot for the whole wave
    (a lone looper was shed or not by a race: whether the daemon's read of the kernel's proofs came before its
    sixth reply). Trust bought
    during the wave buys no patience for silence (govern.core.decide) and none for a loop either: the same
    questions as `looping`, and a session that went takes the source's proof (`Cut.unproves`). A sender that
    delivered has sent its message's bytes, so its session is no loop."""
    young = sorted(snap.young, key=lambda q: (q.version, q.value, q.length))
    asked = [p for p in young if p not in acted_on and _established(snap, p) and not policy.allow.intersects(p)]
    return _loop_cuts(asked, policy, YOUNG_LOOP_REASON, unproves=True)


def _established(snap: Snapshot, p: Prefix) -> bool:
    s = snap.sources.get(p)
    return s is not None and s.established > 0
