"""The Governor: one governed host's state, policy and edges (chosen in govern.wiring), its observe -> decide ->
act tick, the control requests it answers between ticks, and reload. govern.process runs it as a daemon.

A failing component does not stop the daemon: the failure is counted, logged and shown in `govern status`, and
the next tick tries again. Blocks already in the kernel keep their own timeouts meanwhile.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from govern import autos, requests
from govern.addr import Prefix, PrefixSet
from govern.allow.learning import TrustSources
from govern.allow.sources import AllowSources, policy_with
from govern.autos import MtaView
from govern.config import Config
from govern.core.decide import (
    decide,
    forget_offenders,
    reconcile,
    release_allowlisted,
    sessions_to_end,
)
from govern.core.fleet import Refusal, Remote, fleet_blocks, fleet_trust, fleet_unblocks, superseded
from govern.core.modes import budget_fill, queues_call
from govern.core.policy import Policy
from govern.core.reasons import family, reason_class
from govern.edges import Counters, Enforcer, FleetLink, SocketSource, StateStore, Tarpit
from govern.errors import GovernError, StoreError
from govern.fleet import codec
from govern.health import Health
from govern.keeping import Keeper
from govern.model import PUNITIVE, ActionKind, Cut, ListenerStats, Mode, ModeState, Plan, Snapshot, State
from govern.observe.observer import CALM_READS, PRESSED_READS, Observer
from govern.phases import PhaseClock
from govern.proving import Proving
from govern.sysctl.edges import SysctlProfiles
from govern.sysctl.manager import Report
from govern.wiring import is_dry_run

log = logging.getLogger("govern")
MAINTENANCE_EVERY = 600.0
EVENTS_KEPT = 30 * 86400.0
# How often an "auto" that found nothing looks again for Postfix and postscreen (govern.autos.found_since).
LOOK_EVERY = 10.0
# The shortest window between two reads of the connection counter that gives a rate (a shorter one is noise).
MIN_POLL_WINDOW = 0.05
ALLOW_WAIT_AT_START = 5.0  # seconds the start waits for the first resolution of allowlisted hostnames and SPF


# Upper bounds (seconds) of the tick-duration histogram's buckets: a tick is budgeted `daemon.tick` (1 s) or
# `daemon.wave_tick` (500 ms); a 20k-socket scan takes 40 ms (docs/benchmarks.md).
TICK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class TickTimes:
    """How long the ticks since start took, as a histogram's buckets (the last counts what exceeds every bound):
    one addition a tick, read by govern.metrics at scrape time."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(TICK_BUCKETS) + 1))
    seconds: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(TICK_BUCKETS, seconds)] += 1
        self.seconds += seconds


class Governor:
    """One governed host: the state, the policy, and the edges it acts through."""

    def __init__(
        self,
        config: Config,
        store: StateStore,
        sockets: SocketSource,
        enforcer: Enforcer,
        counters: Counters,
        clock: Callable[[], float] = time.time,
        sysctl: SysctlProfiles | None = None,
        allow: AllowSources | None = None,
        trust: TrustSources | None = None,
        tarpit: Tarpit | None = None,
        own_addresses: Callable[[], Sequence[Prefix]] = tuple,
        fleet: FleetLink | None = None,
        make_fleet: Callable[[Config], FleetLink | None] | None = None,
    ) -> None:
        self.config = config
        self.sockets = sockets
        self.enforcer = enforcer
        self.clock = clock
        self.sysctl = sysctl
        self.tarpit = tarpit
        self.tarpit_unsupported: str | None = tarpit.supported() if tarpit is not None else "no tarpit edge"
        self.health = Health()
        # Dynamic allowlist and learned trust (govern.allow); None keeps the config's allowlist as read at load.
        self.allow = allow
        self.trust = trust
        self._looked = 0.0
        self.proving = Proving(trust, enforcer, self.health)
        # A dry run's store starts from a clean slate and keeps nothing (govern.dryrun): the would-be state is here.
        self.state: State = store.load()
        self.extra_allow = store.allowed()
        # This host's addresses, which no block may cover (govern.core.guard): read at start and at each reload.
        self.own_addresses = own_addresses
        self.own = PrefixSet()
        self.policy: Policy = self.make_policy()
        self.phases = PhaseClock()
        self.observer = Observer(
            sockets, enforcer.syn_counts, counters, self.phases, enforcer.slotted, enforcer.syn_counts_unchanged
        )
        self.snapshot: Snapshot | None = None
        self.started = clock()
        self.last_tick_ms = 0.0
        self.ticks = 0
        self.ended_sessions = 0
        self.cut_sessions = 0
        self.forgotten_conntrack = 0
        self.totals: dict[str, int] = {}
        self._maintained = self.started
        self.keeper = Keeper(store, self.health)  # the store in step with the kernel, through its faults
        self.mta = MtaView()  # what the config's "auto"s found of the MTA (govern.autos)
        self._attempts_read: tuple[float, int] | None = None  # (when, the kernel's count) at the last poll
        self._attempts_peak = 0.0  # the highest rate read between ticks since the last snapshot
        self._calm_ticks = 0  # calm ticks left that may reuse the last scan of the sockets (0: scan on the next)
        self._pressed = False  # a call between ticks: the next tick reads the SYN counts whatever they cost
        self.tick_times = TickTimes()
        # Punitive actions taken since start by (kind, reason class, family): bounded labels for govern.metrics.
        self.acted: Counter[tuple[str, str, str]] = Counter()
        # Held by the thread that changes anything here (govern.process's loop, around each tick, request and
        # reload); other threads (govern.metrics) take it only to copy what they read, so never see half a tick.
        self.lock = threading.Lock()
        self.metrics: dict[str, str] = {"state": "off"}  # the Prometheus endpoint as `govern status` shows it
        # The fleet's shared decisions (govern.fleet; docs/fleet.md): None unless `fleet.url`.
        self.fleet = fleet
        self.make_fleet = make_fleet  # a reload's new [fleet] (govern.wiring.fleet_link); None: kept as started
        self.fleet_applied = 0  # other hosts' blocks applied here
        self.fleet_refused = 0  # ... and refused by this host's own rules
        self.fleet_unblocked = 0  # blocks lifted here on another host's operator's word
        self.fleet_trusted = 0  # other hosts' learned trust taken in
        self._fleet_trust: set[Prefix] = set()  # source groups trusted on the fleet's word: never published again
        self._trust_shared: frozenset[Prefix] = frozenset()  # the trusted set as last shared

    @property
    def interval(self) -> float:
        """Seconds to the next tick: shorter in a wave, where each tick's cuts and shedding free the MTA's slots
        (a flood fills them in well under a second), and the cost of a tick is paid only while it lasts."""
        d = self.config["daemon"]
        return float(d["wave_tick"] if self.state.mode.mode is Mode.WAVE else d["tick"])

    def _rescan(self) -> bool:
        """Whether this tick walks the sockets: every tick under pressure, after a tick that acted (its blocks ended
        sessions) and after a reload; in normal mode every `daemon.calm_scan_every` ticks, for the walk is most of a
        tick's cost (docs/benchmarks.md) and nothing in normal mode is judged by a socket's state to the second:
        a flood is seen between ticks by the accept queues and the SYN counters, which tick at once."""
        if self.state.mode.mode is not Mode.NORMAL or self._calm_ticks <= 0:
            self._calm_ticks = self.config["daemon"]["calm_scan_every"] - 1
            return True
        self._calm_ticks -= 1
        return False

    def pressing(self) -> bool:
        """Between ticks: whether the accept queues, the new connections the kernel counted since the last look, or
        the slot budget's fill already call for a higher mode (govern.core.modes.queues_call), so the main loop
        ticks now. The highest such rate goes into the next snapshot. A failed read is no reason to tick early: the
        tick reads everything anyway."""
        now = self.clock()
        try:
            count = self.enforcer.attempts()
        except GovernError:
            count = None
        if count is not None:
            last = self._attempts_read
            self._attempts_read = (now, count)
            # A count that went back is a table made again: no rate from it.
            if last is not None and now - last[0] >= MIN_POLL_WINDOW and count >= last[1]:
                rate = (count - last[1]) / (now - last[0])
                self._attempts_peak = max(self._attempts_peak, rate)
        try:
            listeners = self.sockets.listeners(self.policy.ports)
        except GovernError:
            listeners = []
        try:
            slotted = self.enforcer.slotted()
        except GovernError:
            slotted = None
        fill = budget_fill(slotted, self.policy.slot_budget)
        # The highest rate since the last tick, not this read's alone: a call the main loop held back (too soon
        # after a tick) still stands at the next read, when the flood may have slowed down.
        calls = queues_call(listeners, self.state.mode, self.policy.modes, now, self._attempts_peak, fill)
        if calls:
            self._calm_ticks = 0  # the tick it calls for sees the sockets as they are
            self._pressed = True  # and the SYN counts
        return calls

    @property
    def dry_run(self) -> bool:
        """Whether the edges are govern.dryrun's: for what the daemon says, never for what it does."""
        return is_dry_run(self.config)

    def start(self) -> None:
        now = self.clock()
        self._read_own()
        if self.allow is not None:  # the first tick already sees hostnames and SPF, unless DNS is slow
            self.allow.refresh(now)
            self.allow.wait(ALLOW_WAIT_AT_START)
            self.allow.refresh(now)
            self.policy = self.make_policy()
        self.config = self._read_mta(self.config)
        if self.trust is not None:  # the log "auto" found
            self.trust.configure(self.config.trust_section())
        self.policy = self.make_policy()
        self.converge(now)
        self.tarpit_start(now)
        self.sysctl_start()
        if self.fleet is not None:  # last: what the fleet hands over meets the converged kernel objects
            self.fleet.start()

    def converge(self, now: float) -> None:
        """Make the firewall's kernel objects as the config says, with the state's blocks and throttles in them;
        adopt what the kernel held that the state did not know (a crash between the kernel's commit and the
        store's), except what the store last recorded as unblocked (a crash between an unblock's two commits: an
        operator's unblock is never undone); then lift what the allowlist and the guard forbid."""
        adopted = self.enforcer.setup(self.config.firewall(), self.policy.allow.members(), self.state, now)
        for feature, why in self.enforcer.unavailable().items():  # asked for, cannot start: never silent
            log.warning("%s off: %s", feature, why)
            self.health.fail(feature, GovernError(why))
        stale: set[Prefix] = set()
        if adopted:
            try:
                stale = self.store.unblocked_last(a.prefix for a in adopted.actions if a.kind is ActionKind.BLOCK)
            except StoreError as exc:
                self.keeper.failed(exc, now)
        adopt, lift = reconcile(adopted, stale)
        self._commit_recorded(adopt, now)
        if lift:
            log.warning("%d block(s) found in the kernel were unblocked before a crash: lifted again", len(stale))
            self.execute(lift, now)
        self.execute(release_allowlisted(self.state, self.policy), now)

    def _check_kernel(self, now: float) -> None:
        """Someone else's hands on govern's kernel objects (`nft flush ruleset`, a firewall reload, a detached XDP
        program): made again, with every block and throttle in them, within the tick that sees it."""
        try:
            what = self.enforcer.changed()
        except GovernError as exc:
            self.health.fail("kernel-check", exc)
            return
        if what is None:
            return
        self.health.fail("kernel-changed", GovernError(f"{what} by someone else; restored"))
        try:
            self.converge(now)
        except GovernError as exc:
            self.health.fail("act", exc)
            return
        self.tarpit_start(now)  # its chain and sets share the table

    def tarpit_start(self, now: float) -> None:
        """Build the tarpit's tc tree and restore the tarpits the state holds (a dry run builds nothing)."""
        if self.tarpit is None:
            return
        if self.tarpit_unsupported is not None:
            if self.config["tarpit"]["enabled"]:  # a feature asked for that cannot start is never silent
                log.warning("tarpit off: %s", self.tarpit_unsupported)
            return
        try:
            self.tarpit.setup(self.policy.ports, self.config["tarpit"]["interfaces"])
            live = {p: t.until - now for p, t in self.state.tarpits.items() if t.until > now}
            if live:
                self.tarpit.apply(live, [])
        except GovernError as exc:
            self.tarpit_unsupported = str(exc)
            self.policy = self.make_policy()
            self.health.fail("tarpit", exc)

    # -- sysctls (govern.sysctl; docs/sysctl.md) ------------------------------------------------------------

    def sysctl_start(self) -> None:
        """Restore what a crashed run left, apply the base profile if configured, and warn about listeners whose
        own backlog caps their queue. A dry run's sysctls only log their plan (govern.dryrun)."""
        if self.sysctl is None:
            return
        try:
            recovered = self.sysctl.recover()
            if recovered.written:
                log.warning("sysctl: put back %d value(s) from the journal of the last run", len(recovered.written))
            if self.config["sysctl"]["apply_at_start"]:
                self._sysctl_failures(self.sysctl.apply())
            if self.state.mode.mode is Mode.WAVE:  # a wave that outlived a restart
                self._sysctl_failures(self.sysctl.enter_wave())
            self._backlog_warnings()
        except GovernError as exc:
            self.health.fail("sysctl", exc)

    def sysctl_stop(self, *, teardown: bool = False) -> None:
        """On teardown, or on shutdown if configured, restore every key; otherwise only end a wave, which never
        outlives the daemon."""
        if self.sysctl is None:
            return
        try:
            if teardown or self.config["sysctl"]["restore_at_shutdown"]:
                self._sysctl_failures(self.sysctl.restore())
            else:
                self._sysctl_failures(self.sysctl.leave_wave())
        except GovernError as exc:
            self.health.fail("sysctl", exc)

    def _sysctl_failures(self, report: Report) -> None:
        for o in report.failed:
            self.health.fail("sysctl", GovernError(o.line()))

    def _backlog_warnings(self) -> None:
        from govern.sysctl import backlog

        assert self.sysctl is not None
        listeners = self.sockets.listeners(self.policy.ports)
        for line in backlog.plan_warnings(listeners, self.sysctl.plan()):
            log.warning("%s", line)

    # -- the loop -----------------------------------------------------------------------------------------

    def tick(self) -> Plan:
        t0 = time.perf_counter()
        laps = self.phases
        laps.start()
        now = self.clock()
        self.catch_up(now)
        self._check_kernel(now)
        self.refresh_sources(now)
        laps.lap("upkeep")
        # Before deciding: a source the fleet blocked is not judged again here (and not published twice).
        self._from_fleet(now)
        laps.lap("fleet")
        # The last snapshot goes before the next one is read and made: nothing in the tick reads it meanwhile (the
        # other threads wait for the lock the tick holds), and at a million sources its columns (17 B a source) on
        # top of the tick's own were the peak's margin over the target (docs/benchmarks.md, "Memory"). A tick whose
        # observation fails therefore leaves no snapshot, rather than the last one, stale.
        self.snapshot = None
        walk = self._rescan()
        # A call between ticks reads the counts at once; otherwise a dear read may wait, less under pressure.
        pace = None if self._pressed else CALM_READS if self.state.mode.mode is Mode.NORMAL else PRESSED_READS
        self._pressed = False
        try:
            self.snapshot = self.observer.snapshot(self.policy, now, self.trusted(), rescan=walk, pace=pace)
        except GovernError as exc:
            self.health.fail("observe", exc)
            return Plan()
        if self._attempts_peak:
            self.snapshot = replace(self.snapshot, attempts_peak=self._attempts_peak)
            self._attempts_peak = 0.0
        self.snapshot = self.proving.with_young(self.snapshot, self.state.mode)
        walked = walk and self.config["daemon"]["calm_scan_every"] > 1
        self.proving.take_kernel(now, self.state.mode, self.config["trust"]["from_sessions"], walked)
        if now - self._looked >= LOOK_EVERY:
            self._looked = now
            self._look_for_postfix()
        laps.lap("learn")
        for k, v in self.snapshot.counters.items():
            self.totals[k] = self.totals.get(k, 0) + v
        plan = decide(self.snapshot, self.state, self.policy, now)
        laps.lap("decide")
        self.execute(plan, now)
        # In the mode just decided: the tick that first sees a flood already puts the proof its crowds gained in
        # its first second back on probation (govern.proving.recall).
        self.proving.note_crowds(self.snapshot, self.state.mode, now, self.policy.allow)
        laps.lap("act")
        self._share_trust(now)
        if now - self._maintained >= MAINTENANCE_EVERY:
            self._maintain(now)
        laps.lap("maintain")
        self.ticks += 1
        took = time.perf_counter() - t0
        self.last_tick_ms = took * 1000
        self.tick_times.observe(took)
        return plan

    def execute(self, plan: Plan, now: float, *, durable: bool = False, share: bool = True) -> bool:
        """Apply a plan: store and kernel in step, then end the sessions of newly blocked sources. A dry run's edges
        (govern.dryrun) log what they would do and change nothing.

        An operator's decision is `durable`: it is in the store before the kernel, or nowhere (StoreError, nothing
        changed). govern's own decisions never wait on the store: when it cannot be written they are enforced and
        held in memory, and written whole when it can be again (`catch_up`); a crash meanwhile leaves them in the
        kernel, where the next start adopts them.

        Once committed, the plan's blocks are shared with the fleet, unless `share` is off (blocks applied from the
        fleet: a host never publishes again what it applied)."""
        if not plan:
            return True
        self._calm_ticks = 0  # what it blocks loses its sessions: the next tick sees the sockets as they are
        kernel = functools.partial(self._kernel, plan, now)  # one plan's kernel commit, handed to the keeper
        if durable:
            if not self.keeper.commit_durable(plan, now, kernel, self.state):
                return False
        elif (plan.actions or plan.mode is not None or plan.forget) and not self.keeper.commit(plan, now, kernel):
            # A plan of cuts alone (and a wave's holders) changes no kernel state and nothing the store keeps: in a
            # wave whose budget is full every tick has one (the loops' question, govern.core.decide.looping), and a
            # store transaction for it each half second was work for nothing.
            return False
        previous = self.state.mode
        # What an operator's unblock lifts here lasted until: the fleet keeps the unblock as long.
        lifted = {
            a.prefix: self.state.blocks[a.prefix].until
            for a in plan.actions
            if a.kind is ActionKind.UNBLOCK and a.manual and a.prefix in self.state.blocks
        }
        self.state.record(plan, now)
        if share and self.fleet is not None:
            self._to_fleet(plan, now, lifted)
        if not self.dry_run:  # the dry-run firewall logged each as "dry run: would ..."
            for a in plan.actions:
                log.info("%s", a.describe())
        for a in plan.actions:
            if a.kind in PUNITIVE:
                self.acted[(a.kind.value, reason_class(a.reason, a.manual), family(a.prefix.version))] += 1
        blocked = sessions_to_end(plan, self.policy)
        if blocked:
            try:
                self.ended_sessions += self.sockets.destroy(blocked, self.policy.ports)
                self.forgotten_conntrack += self.enforcer.end_sessions(blocked)
            except GovernError as exc:
                self.health.fail("end-sessions", exc)
        # After the blocks' own sessions are gone, so each ended session is counted once, under its cause.
        if plan.cuts:
            try:
                idle = {c.prefix: c.idle_ms for c in plan.cuts if not c.shed}
                shed = {c.prefix: c.shedding() for c in plan.cuts if c.shed}
                greet = int(self.policy.greet_floor * 1000)
                ended = self.sockets.cut(idle, self.policy.ports, shed, greet, self.policy.pregreet_cut)
            except GovernError as exc:
                self.health.fail("cut-sessions", exc)
            else:
                self.cut_sessions += sum(ended.values())
                # A shed asks each single session's socket: only the sources that lost one are events, and only
                # they lose their proof for it.
                done = tuple(c for c in plan.cuts if not c.shed or ended.get(c.prefix))
                self._note_cuts(done, now)
                self.proving.revoke(done, self.state.mode, now, self.store)
        # The mode's sysctls after the cuts: a wave switches tcp_abort_on_overflow on, which resets a handshake
        # that meets a full accept queue, an allowlisted relay's too; the wave's first shedding empties the queue
        # the flood filled, so the switch comes once it has (the lab saw the trusted relay reset once, 0.2 s into
        # a flood).
        if plan.mode is not None and plan.mode.mode is not previous.mode:
            self._mode_changed(previous, plan.mode)
        return True

    # -- the fleet (govern.fleet; docs/fleet.md) -----------------------------------------------------------------

    def _to_fleet(self, plan: Plan, now: float, lifted: Mapping[Prefix, float]) -> None:
        """Queue this host's committed blocks, and its operator's unblocks, for the fleet (the link's thread sends
        them; this never waits). An unblock is kept as long as the longest block it may lift elsewhere."""
        assert self.fleet is not None
        if self.dry_run or "blocks" not in self.config["fleet"]["share"]:
            return
        name = self.fleet.name
        out = [
            codec.new("block", a.prefix, a.reason, a.until, a.offences, name, now)
            for a in plan.actions
            if a.kind in (ActionKind.BLOCK, ActionKind.EXTEND)
        ]
        longest = now + self.policy.max_block_duration
        out += [
            codec.new("unblock", a.prefix, "unblocked by the operator", max(longest, lifted[a.prefix]), 0, name, now)
            for a in plan.actions
            if a.kind is ActionKind.UNBLOCK and a.manual and a.prefix in lifted
        ]
        if out:
            self.fleet.publish(out)

    def _from_fleet(self, now: float) -> None:
        """Apply what the other hosts decided since the last tick, through this host's own rules: the allowlist,
        its own addresses and `[guard]` always win; a refusal is a log line."""
        if self.fleet is None:
            return
        got = self.fleet.drain()
        if not got:
            return
        remote = {
            kind: [Remote(d.prefix, d.reason, d.until, d.offences, d.origin, d.at) for d in got if d.kind == kind]
            for kind in codec.KINDS
        }
        trust, unblocks = remote["trust"], remote["unblock"]
        plan, refused = fleet_blocks(superseded(remote["block"], unblocks), self.state, self.policy, now)
        taken: tuple[Remote, ...] = ()
        refused_trust: tuple[Refusal, ...] = ()
        if trust and self.trust is not None:
            taken, refused_trust = fleet_trust(trust, self.policy, now)
        for what, refusals in (("block", refused), ("trust", refused_trust)):
            for r in refusals:
                self.fleet_refused += 1
                log.warning("fleet: refused %s's %s of %s: %s", r.decision.origin, what, r.decision.prefix, r.why)
        if plan and self.execute(plan, now, share=False):
            self.fleet_applied += sum(1 for a in plan.actions if a.kind in (ActionKind.BLOCK, ActionKind.EXTEND))
        lift = fleet_unblocks(unblocks, self.state)
        if lift and self.execute(lift, now, share=False):
            self.fleet_unblocked += sum(1 for a in lift.actions if a.kind is ActionKind.UNBLOCK)
        for t in taken:
            assert self.trust is not None
            if self.trust.learn_until(t.prefix, t.until, now):
                self._fleet_trust.add(t.prefix)
                self.fleet_trusted += 1

    def _share_trust(self, now: float) -> None:
        """Queue the source groups this host trusts since the last tick for the fleet (those it learned itself:
        never what it took from the fleet)."""
        if self.fleet is None or self.trust is None or self.dry_run or "trust" not in self.config["fleet"]["share"]:
            return
        current = self.trusted()
        if current is self._trust_shared:
            return
        previous, self._trust_shared = self._trust_shared, current
        self._fleet_trust &= current  # what lapsed here is forgotten here too
        new = [p for p in current - previous if p not in self._fleet_trust]
        decisions = []
        for p in new:
            until = self.trust.until(p)
            if until is not None and until > now:
                decisions.append(codec.new("trust", p, "completed a delivery", until, 0, self.fleet.name, now))
        if decisions:
            self.fleet.publish(decisions)

    def fleet_status(self) -> dict[str, Any]:
        """The fleet as `govern status` and the metrics show it."""
        if self.fleet is None:
            return {"state": "off"}
        return {
            **self.fleet.state().to_dict(),
            "name": self.fleet.name,
            "applied": self.fleet_applied,
            "unblocked": self.fleet_unblocked,
            "trusted": self.fleet_trusted,
            "refused_here": self.fleet_refused,
        }

    def _kernel(self, plan: Plan, now: float) -> None:
        self.enforcer.apply(plan, now)
        self._apply_tarpits(plan, now)

    @property
    def store(self) -> StateStore:
        """The durable store; the keeper holds it (govern.keeping), so every write goes through its faults' rules."""
        return self.keeper.store

    @store.setter
    def store(self, store: StateStore) -> None:
        self.keeper.store = store

    @property
    def store_behind(self) -> float | None:
        """Since when the store has not been written (govern.keeping), None while it is up to date."""
        return self.keeper.behind

    def catch_up(self, now: float) -> bool:
        return self.keeper.catch_up(self.state, now)

    def _note_cuts(self, cuts: tuple[Cut, ...], now: float) -> None:
        """Each source a plan cut sessions of is an event of its own ("cut", with the reason), for `govern why`:
        cuts change no kernel state, so the store has no other trace of them."""
        try:
            for kind, shed in (("cut", False), ("shed", True)):
                noted = [(c.prefix, c.reason) for c in cuts if c.shed is shed]
                if noted:
                    self.store.note(kind, noted, now)
        except GovernError as exc:
            self.health.fail("store", exc)

    def _apply_tarpits(self, plan: Plan, now: float) -> None:
        """The tarpit's own transaction (its sets and the HTB tree it feeds); after the enforcer's, so a refused
        tarpit leaves blocks in force and the store behind the kernel, which the next tick's plan mends."""
        add = {a.prefix: a.until - now for a in plan.actions if a.kind is ActionKind.TARPIT}
        drop = [a.prefix for a in plan.actions if a.kind is ActionKind.UNTARPIT]
        if (add or drop) and self.tarpit is not None and self.tarpit_unsupported is None:
            self.tarpit.apply(add, drop)

    def _read_mta(self, config: Config) -> Config:
        """`config` with what it leaves to the MTA resolved (govern.autos)."""
        config, self.mta = autos.resolve(config, self._listeners(frozenset(config["protect"]["ports"])))
        return config

    def _look_for_postfix(self) -> None:
        """What "auto" did not find yet, looked for again; when found, the whole config is resolved again (the
        pregreet wait changes the cuts and the budget's size; a log found turns the kernel's count off)."""
        found = autos.found_since(self.config, self.mta, lambda: self._listeners(self.policy.ports))
        for line in found:
            log.warning("%s", line)
        if found:
            self.reload(self.config)

    def _mode_changed(self, old: ModeState, new: ModeState) -> None:
        until = f" until {time.strftime('%H:%M:%S', time.localtime(new.until))}" if new.until else ""
        dry = "dry run: " if self.dry_run else ""
        log.warning("%smode %s -> %s%s: %s", dry, old.mode, new.mode, until, new.reason)
        if (new.mode is Mode.WAVE) != (old.mode is Mode.WAVE):
            self._sysctl_wave(new.mode is Mode.WAVE)

    def _sysctl_wave(self, on: bool) -> None:
        """The sysctl wave profile follows the mode (SYN cookies on, fewer SYN-ACK retries, shorter FIN timeout)."""
        if self.sysctl is None:
            return
        try:
            self._sysctl_failures(self.sysctl.enter_wave() if on else self.sysctl.leave_wave())
        except GovernError as exc:
            self.health.fail("sysctl", exc)

    def _commit_recorded(self, plan: Plan, now: float) -> None:
        """Record what changes no kernel state (what the kernel already holds; offences forgotten)."""
        if not plan:
            return
        self.keeper.record(plan, now)
        self.state.record(plan, now)

    def _maintain(self, now: float) -> None:
        self._maintained = now
        self._commit_recorded(forget_offenders(self.state, self.policy, now), now)
        try:
            self.store.trim_events(now - EVENTS_KEPT)
        except StoreError as exc:
            self.health.fail("store", exc)

    # -- allowlist sources and learned trust (govern.allow) ------------------------------------------------------

    def make_policy(self) -> Policy:
        pol = (
            self.config.policy(self.extra_allow)
            if self.allow is None
            else policy_with(self.config, self.allow, self.extra_allow)
        )
        pol = replace(pol, own=self.own)
        # A host whose kernel cannot tarpit: the core never asks for it (status says why).
        return pol if self.tarpit_unsupported is None else replace(pol, tarpit_max=0)

    def _read_own(self) -> None:
        """This host's addresses, for the guard; the last ones read stay if they cannot be read now."""
        try:
            self.own = PrefixSet(self.own_addresses())
        except GovernError as exc:
            self.health.fail("own-addresses", exc)

    def refresh_sources(self, now: float) -> None:
        """Between ticks: take allowlist changes (files, DNS finished in the background) and learned trust.

        Cheap when nothing changed: a stat() per allowlist file and a read of what the Postfix log gained.
        """
        if self.allow is not None:
            try:
                changed = self.allow.refresh(now)
            except Exception as exc:  # a failing source must not stop the loop; the last allowlist stays
                self.health.fail("allow-sources", exc)
                changed = False
            if changed:
                self.policy = self.make_policy()
                self.enforcer.set_allow(self.policy.allow.members())
                self.execute(release_allowlisted(self.state, self.policy), now)
        self.proving.take_log(now, self.state.mode)

    def _listeners(self, ports: frozenset[int]) -> tuple[ListenerStats, ...]:
        """The protected ports' listeners; none (and health told) when the kernel cannot be read now."""
        try:
            return tuple(self.sockets.listeners(ports))
        except GovernError as exc:
            self.health.fail("observe", exc)
            return ()

    def trusted(self) -> frozenset[Prefix]:
        """The learned-trust set for the core (govern.proving)."""
        return self.proving.trusted()

    def close_sources(self) -> None:
        if self.allow is not None:
            self.allow.close()
        if self.trust is not None:
            self.trust.close()
        if self.fleet is not None:
            self.fleet.close()

    # -- reload -------------------------------------------------------------------------------------------

    def reload(self, new: Config) -> None:
        """Switch to a validated config: converge the kernel objects, then release newly allowlisted sources."""
        now = self.clock()
        # First what can fail (the key file is read again): a refused reload changes nothing.
        link = self.make_fleet(new) if self.make_fleet is not None and new is not self.config else self.fleet
        new = self._read_mta(new)
        self.config = new
        self._swap_fleet(link)
        self._read_own()
        if self.allow is not None:
            self.allow.configure(new.allow_section())
            self.allow.refresh(now)
        if self.trust is not None:
            self.trust.configure(new.trust_section())
        self.policy = self.make_policy()
        self.converge(now)
        self._calm_ticks = 0  # the ports or the grouping may have changed: the next tick scans
        log.info("reloaded config from %s", new.path or "embedded defaults")

    def _swap_fleet(self, link: FleetLink | None) -> None:
        """A reload's [fleet]: the running link kept if nothing of it changed, else closed and the new one started,
        with what the old had not sent yet."""
        old = self.fleet
        if (link.settings if link is not None else None) == (old.settings if old is not None else None):
            return
        if old is not None:
            old.close()
        self.fleet = link
        if link is None:
            log.warning("fleet: off after the reload; this host enforces alone")
            return
        if old is not None:
            link.publish(old.unsent())
        link.start()
        log.warning("fleet: the reload changed [fleet]: now %s", link.name)

    # -- requests from the CLI (govern.requests) ----------------------------------------------------------------

    def handle(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """One request from the control socket (govern.requests)."""
        return requests.handle(self, body)

    def last_act_error(self) -> str:
        return self.health.last_error.get("act", "unknown error")


# -- wiring and the process ---------------------------------------------------------------------------------
