"""The daemon's side of proof: deliveries the Postfix log records go into the kernel's proven sets (which the wave's
gate and the slot budget read), the kernel's own proofs into learned trust, the wave's young proofs into the
snapshot, and a proof lost in a wave out of both (govern.core.proof judges; this moves what it judged).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace

from govern.addr import Prefix, PrefixSet
from govern.allow.learning import TrustSources
from govern.core.proof import REVOKED_FOR, proof_lost, recalled, withheld, young
from govern.edges import Enforcer, StateStore
from govern.errors import GovernError
from govern.health import Health
from govern.model import Cut, Mode, ModeState, Snapshot, holding

log = logging.getLogger("govern")

# How often the kernel's proven sets are read into learned trust: a dump of a bounded set; sooner in a wave, where
# a sender that delivered must be trusted before its next connection can be taken for the flood's.
LEARN_EVERY = 10.0
WAVE_LEARN_EVERY = 2.0
# How long a source seen holding several sessions at once under pressure counts as a crowd: as long as the kernel's
# crowd sets remember one (SEEN_TIMEOUT).
CROWD_FOR = 120.0
# How long a crowd's first proof in a wave waits before it reaches the kernel, unless the source is cut meanwhile (and
# loses its proof, govern.core.proof): a bot that proves itself and then holds its other sessions is cut within a
# wave's cut threshold (3 s) and a tick of its hold; a busy relay first proven in the wave is not, and passes the
# budget again once this is over.
PROBATION = 8.0


class Proving:
    def __init__(self, trust: TrustSources | None, enforcer: Enforcer, health: Health) -> None:
        self.trust = trust
        self.enforcer = enforcer
        self.health = health
        self.revoked = 0  # sources that lost their proof in a wave
        self._learned: float | None = None  # the last read of the kernel's proven sets; the first waits for nothing
        self._trusted_from: PrefixSet | None = None
        self._trusted_now: frozenset[Prefix] = frozenset()
        # Crowds the log proved during the wave, each with when its trust runs out and when its probation ends: for
        # the kernel then (or at the wave's end), unless it lost its trust meanwhile.
        self._withheld: dict[Prefix, tuple[float, float]] = {}
        # Crowds whose probation ended in this wave, uncut: their later deliveries in the wave go in at once (a busy
        # relay first proven in the wave delivers again and again; each was put on probation anew and logged).
        self._released: set[Prefix] = set()
        # Sources seen holding several sessions at once under pressure, each with when last: crowds, as the kernel's
        # first contacts in a wave mark them, but also those whose connections came before the wave was declared
        # (the lab's quitters, whose first sessions proved them in the flood's first second).
        self._crowded: dict[Prefix, float] = {}
        self._pruned = 0.0
        # When the host came under pressure (the first tick out of normal mode; None in calm), and the crowds whose
        # proof was put back on probation since (govern.core.proof.recalled): once each, until the calm.
        self._pressed_since: float | None = None
        self._recalled: set[Prefix] = set()
        # Of those, the ones still on probation: strangers to the decision core as to the kernel's budget, so the
        # wave sheds the sessions their proof let in before it went (the flood's first second filled the MTA and
        # its accept queue with them, and each then waited for its cut).
        self._on_recall: set[Prefix] = set()
        self._allow = PrefixSet(())  # the allowlist as the last tick had it (note_crowds), for `recall`
        self._less: frozenset[Prefix] | None = None
        self._members: frozenset[Prefix] = frozenset()

    def take_log(self, now: float, mode: ModeState) -> None:
        """What the Postfix log gained: its deliveries pass the gate and the budget as the kernel's own proof does,
        but a crowd's first proof in a wave only after a probation, or once the wave is over
        (govern.core.proof.withheld)."""
        if self.trust is None:
            return
        try:
            self.trust.refresh(now)
            delivered = self.trust.take_delivered()
            for p in [p for p in delivered if p in self._on_recall]:
                # Recalled: a delivery is no pass until the pressure is over (`recall`).
                self._withheld[p] = (delivered.pop(p), self._withheld[p][1])
            fresh = young(delivered, self.trust.first, mode) if delivered else frozenset()
            if fresh:
                # The kernel's crowd sets are asked only about young proofs the daemon's own sight does not settle.
                seen = self._crowded.keys()
                crowds = seen if fresh <= seen else self.enforcer.crowds(fresh - seen) | seen
                held = withheld(fresh, self.trust.first, mode, crowds) - self._released
                put = sum(p not in self._withheld for p in held)
                for p in held:
                    until = delivered.pop(p)
                    self._withheld[p] = (until, self._withheld.get(p, (until, now + PROBATION))[1])
                # The crowds the daemon saw holding several sessions at once are recalled (`recall`): out of the
                # decision core's trust too, until the pressure is over.
                holding = [p for p in held if p in self._crowded and p not in self._on_recall]
                if holding and self._pressed_since is not None:
                    self.recall(holding, now)
                if put:
                    log.info("proof kept from the kernel for %g s (crowds): %d sources", PROBATION, put)
            # Probation ends with the pressure: a crowd put back on probation as the flood began serves it before
            # the wave as much as in it.
            over = mode.mode is Mode.NORMAL
            if over:
                self._released.clear()
            if self._withheld:
                trust = self.trust
                done = [
                    p
                    for p, (_, ends) in self._withheld.items()
                    if over or (ends <= now and (p not in self._on_recall or trust.until(p) is None))
                ]
                for p in done:  # still trusted: not revoked, not lapsed
                    until = self._withheld.pop(p)[0]
                    self._on_recall.discard(p)
                    if self.trust.until(p) is not None:
                        delivered[p] = max(until, delivered.get(p, until))
                        if not over:
                            self._released.add(p)
            if delivered:
                self.enforcer.prove({p: until - now for p, until in delivered.items() if until > now})
        except Exception as exc:
            self.health.fail("trust", exc)

    def take_kernel(self, now: float, mode: ModeState, counted: bool, walked: bool = False) -> None:
        """The sources the kernel proved by its count of replies (`counted`: trust.from_sessions), each from its
        last proof; read every LEARN_EVERY seconds (WAVE_LEARN_EVERY in a wave). In normal mode a read that falls
        due on a tick that `walked` every socket waits for the next tick that does not, for one interval at most: the
        two together made the slowest tick at 100k sessions (the read's 66-98 ms on the walk's 160-180,
        docs/benchmarks.md). The daemon says `walked` only when some normal ticks do not walk."""
        every = LEARN_EVERY if mode.mode is Mode.NORMAL else WAVE_LEARN_EVERY
        if self.trust is None or not counted:
            return
        if self._learned is not None:
            if now - self._learned < every:
                return
            # At most one interval late: after a tick that acted every tick walks, and a run of them must not
            # starve it.
            if walked and mode.mode is Mode.NORMAL and now - self._learned < 2 * every:
                return
        self._learned = now
        try:
            for p, ago in self.enforcer.proven():
                self.trust.learn(p, now, now - ago)
            self._on_probation(self.trust, self.enforcer.crowd_proven(), now)
        except GovernError as exc:
            self.health.fail("trust", exc)

    def _on_probation(self, trust: TrustSources, crowds: Sequence[tuple[Prefix, float]], now: float) -> None:
        """The crowds the kernel proved in a wave (its count of replies) are trusted at once, but reach the proven
        sets, which pass the gate and the budget, only after the probation a crowd's proof by the log gets
        (`take_log` releases both): the lab's deliverers and quitters, against a govern that follows no log, were
        proven by their 250 "queued" and held the MTA past the budget for the whole flood (bots 34-54 against 30,
        never within it; 1.4 s and 25.9 s with the log's probation). A crowd whose probation already ended uncut in
        this wave goes in at once."""
        promote: dict[Prefix, float] = {}
        put = 0
        for p, ago in crowds:
            trust.learn(p, now, now - ago)
            until = trust.until(p)
            if until is None:  # held off: its proof was revoked in this wave
                continue
            if p in self._released:
                promote[p] = until - now
            elif p not in self._withheld:
                self._withheld[p] = (until, now + PROBATION)
                put += 1
        if put:
            log.info("proof kept from the kernel for %g s (crowds the kernel proved): %d sources", PROBATION, put)
        if promote:
            self.enforcer.prove(promote)

    def probation(self, p: Prefix) -> float | None:
        """A source whose proof is on probation: when its probation is over (infinity: a recalled crowd's, with the
        pressure); None if not on probation."""
        if p not in self._withheld:
            return None
        return math.inf if p in self._on_recall else self._withheld[p][1]

    @property
    def withheld(self) -> int:
        """Crowds whose proof is on probation, out of the kernel's proven sets: withheld in the wave, or recalled."""
        return len(self._withheld)

    def note_crowds(self, snapshot: Snapshot, mode: ModeState, now: float, allow: PrefixSet) -> None:
        """After the tick's decision, in its mode: remember the sources holding several sessions at once while the
        host is under pressure (a pass over the snapshot's sources, which the decision core makes anyway in those
        modes), and put back on probation the proof of those among them first proven as the pressure began
        (`recall`). Established sessions only: a never-seen sender's second message, knocking while its first is
        still being answered, is no crowd (the matrix lost one such sender in eight scenarios when the knock
        counted)."""
        if self.trust is None:
            return
        if mode.mode is Mode.NORMAL:
            self._pressed_since = None
            self._recalled.clear()
            return
        if self._pressed_since is None:
            self._pressed_since = now
        self._allow = allow
        trusted = snapshot.trusted
        proven_crowds = []
        # The sources holding sockets only: the snapshot's others are the counted sources' rows, a flood's worth of
        # them, whose records iterating makes one by one (2.8 ms a thousand: a wave's tick 0.3 s at 100,000).
        for p, s in holding(snapshot.sources).items():
            if s.established >= 2:
                self._crowded[p] = now
                if p in trusted and p not in self._recalled:
                    proven_crowds.append(p)
        if proven_crowds:
            self.recall(proven_crowds, now)
        if now - self._pruned >= CROWD_FOR / 4:
            self._pruned = now
            for p in [p for p, t in self._crowded.items() if t < now - CROWD_FOR]:
                del self._crowded[p]

    def recall(self, crowds: Sequence[Prefix], now: float) -> None:
        """The proof of the crowds first proven as the pressure began leaves the kernel, and the daemon's trusted set
        the decision core reads, until the pressure is over (govern.core.proof.recalled): their next connections
        count against the budget, the wave sheds the sessions their proof let in before it went, and a cut meanwhile
        takes the proof for good. Not back after a probation's 8 s, nor for deliveries meanwhile: the lab's quitters,
        back after 8 s uncut (the budget had kept them out), or after three deliveries each (a bot sends spam as
        easily as a relay mail), held the MTA again (their sessions 78-91 at the flood's end, against a budget of
        30)."""
        assert self.trust is not None and self._pressed_since is not None
        trust = self.trust
        # A crowd whose proof is on a probation of its time (a crowd to the kernel's first contacts), or whose
        # probation ended uncut in this wave, is recalled too once seen holding several sessions: a bot the budget
        # kept out through its 8 s came back proven and held the MTA (the lab's quitters, sessions 80-88 against a
        # budget of 30 from 16 s into the flood to its end, in run after run).
        back = [
            p
            for p in recalled(crowds, trust.first, self._pressed_since)
            if p not in self._on_recall and not self._allow.intersects(p)
        ]
        self._recalled.update(crowds)
        if not back:
            return
        try:
            # The hold-off keeps the kernel's count of replies from proving it again meanwhile; the daemon's proof at
            # the pressure's end goes in whatever it says.
            self.enforcer.unprove(back, REVOKED_FOR)
        except GovernError as exc:
            self.health.fail("trust", exc)
            return
        for p in back:
            until = trust.until(p)
            if until is not None:
                self._withheld[p] = (until, self._withheld.get(p, (until, now + PROBATION))[1])
                self._on_recall.add(p)
        self._released.difference_update(back)
        more = f" and {len(back) - 10} more" if len(back) > 10 else ""
        log.info(
            "proof on probation until the pressure is over (proven as it began or during it, then seen holding "
            "several sessions at once): %s%s",
            ", ".join(map(str, back[:10])),
            more,
        )

    def with_young(self, snapshot: Snapshot, mode: ModeState) -> Snapshot:
        """In a wave, the snapshot names the trusted sources it holds sessions of that were proven only lately."""
        if self.trust is None or mode.mode is not Mode.WAVE or not snapshot.trusted:
            return snapshot
        fresh = young((p for p in snapshot.sources if p in snapshot.trusted), self.trust.first, mode)
        return replace(snapshot, young=fresh) if fresh else snapshot

    def revoke(self, cuts: Sequence[Cut], mode: ModeState, now: float, store: StateStore) -> None:
        """In a wave, the cut sources that proved themselves during it lose their proof, in the kernel too, and the
        store has an event for `govern why`."""
        if self.trust is None:
            return
        why = proof_lost(cuts, self.trust.first, mode)
        if not why:
            return
        lost = list(why)
        self.trust.revoke(lost, now, REVOKED_FOR)
        self._released.difference_update(lost)
        self._on_recall.difference_update(lost)
        self.revoked += len(lost)
        for reason in sorted(set(why.values())):
            of = [p for p in lost if why[p] == reason]
            more = f" and {len(of) - 10} more" if len(of) > 10 else ""
            log.info("proof revoked (%s): %s%s", reason, ", ".join(map(str, of[:10])), more)
        try:
            self.enforcer.unprove(lost, REVOKED_FOR)
        except GovernError as exc:
            self.health.fail("trust", exc)
        try:
            store.note("unproven", list(why.items()), now)
        except GovernError as exc:
            self.health.fail("store", exc)

    def trusted(self) -> frozenset[Prefix]:
        """The learned-trust set for the core, rebuilt only when the trust edge's set or the recalled changed; the
        sources whose proof is on probation after a recall are not in it."""
        if self.trust is None:
            return frozenset()
        current = self.trust.trusted()
        recalled = frozenset(self._on_recall)
        if current is not self._trusted_from:
            self._trusted_from, self._members = current, frozenset(current.members())
            self._less = None
        if recalled != self._less:
            self._less = recalled
            self._trusted_now = self._members - recalled if recalled else self._members
        return self._trusted_now
