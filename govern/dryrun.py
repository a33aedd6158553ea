"""A dry run, edge by edge: each wraps a real edge, passes its observing through (the firewall's kernel-side
counters still run, sockets are still read) and does nothing that changes the host or the durable state. The
firewall logs every plan instead of enforcing it; the store starts from a clean slate and keeps nothing; sessions
are never ended; the tarpit is never built; sysctls are never written (their plan is logged). The Governor runs the
same code either way, so a dry run shows the whole ladder (throttle, then block, then expiry) as it would have
happened; govern.wiring chooses these where `daemon.dry_run` (or `backend.firewall = "dry-run"`) says so."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence

from govern.addr import Prefix, PrefixSet
from govern.edges import Enforcer, SocketSource, StateStore, Tarpit
from govern.errors import RefusedError
from govern.model import Event, FirewallSpec, ListenerStats, Plan, Scan, ScanOptions, SessionInfo, Shed, State
from govern.sysctl.edges import SysctlProfiles
from govern.sysctl.manager import Drift, Report
from govern.sysctl.planner import Item

log = logging.getLogger("govern.dryrun")


class DryRun:
    def __init__(self, inner: Enforcer) -> None:
        self.inner = inner
        self.name = f"dry-run ({inner.name})"
        self.logged: list[str] = []

    def setup(self, spec: FirewallSpec, allow: Sequence[Prefix], state: State, now: float) -> Plan:
        self.inner.setup(spec, allow, State(), now)
        return Plan()

    def set_allow(self, allow: Sequence[Prefix]) -> None:
        self.inner.set_allow(allow)

    def apply(self, plan: Plan, now: float) -> None:
        lines = [f"dry run: would {a.describe()}" for a in plan.actions]
        lines += [f"dry run: would cut the idle sessions of {c.prefix}: {c.reason}" for c in plan.cuts]
        if plan.mode is not None:
            lines.append(f"dry run: mode {plan.mode.mode}: {plan.mode.reason}")
        for line in lines:
            self.logged.append(line)
            log.info("%s", line)

    def proven(self) -> Sequence[tuple[Prefix, float]]:
        return self.inner.proven()

    def crowd_proven(self) -> Sequence[tuple[Prefix, float]]:
        return self.inner.crowd_proven()

    def prove(self, sources: Mapping[Prefix, float]) -> None:
        self.inner.prove(sources)  # lets senders pass, as the allowlist does: nothing punitive

    def unprove(self, sources: Sequence[Prefix], seconds: float) -> None:
        for p in sources:
            line = f"dry run: would take {p} out of the proven sets"
            self.logged.append(line)
            log.info("%s", line)

    def crowds(self, among: Iterable[Prefix]) -> frozenset[Prefix]:
        return self.inner.crowds(among)

    def syn_counts(self) -> Mapping[Prefix, int]:
        return self.inner.syn_counts()

    def syn_counts_unchanged(self) -> bool:
        return self.inner.syn_counts_unchanged()

    def attempts(self) -> int | None:
        return self.inner.attempts()

    def slotted(self) -> int | None:
        return self.inner.slotted()

    def changed(self) -> str | None:
        return self.inner.changed()

    def unavailable(self) -> Mapping[str, str]:
        return self.inner.unavailable()

    def end_sessions(self, prefixes: Sequence[Prefix]) -> int:
        return 0

    def teardown(self) -> bool:
        return self.inner.teardown()

    def close(self) -> None:
        self.inner.close()


class DryRunStore:
    """The durable store, read but never written: the would-be state lives in memory only (a clean slate at start,
    so the dry run neither acts on nor alters what an enforcing run left), and the allowlist's additions are read."""

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner

    def load(self) -> State:
        return State()

    @contextlib.contextmanager
    def pending(self, plan: Plan, now: float) -> Iterator[None]:
        yield

    def save(self, plan: Plan, now: float) -> None:
        pass

    def replace(self, state: State, now: float) -> None:
        pass

    def unblocked_last(self, prefixes: Iterable[Prefix]) -> set[Prefix]:
        return set()

    def trim_events(self, before: float) -> None:
        pass

    def events(self, limit: int = 50) -> list[Event]:
        return self.inner.events(limit)

    def note(self, kind: str, entries: Iterable[tuple[Prefix, str]], now: float) -> None:
        pass

    def events_about(self, prefixes: Sequence[Prefix], limit: int = 20) -> list[Event]:
        return self.inner.events_about(prefixes, limit)

    def allowed(self) -> tuple[Prefix, ...]:
        return self.inner.allowed()

    def allow(self, prefix: Prefix, now: float, note: str = "") -> None:
        raise RefusedError("dry run: the allowlist is not changed; add it to the config instead")

    def disallow(self, prefix: Prefix) -> bool:
        raise RefusedError("dry run: the allowlist is not changed; remove it from the config instead")

    def close(self) -> None:
        self.inner.close()


class DryRunSockets:
    """Sockets read as ever; no session is ended."""

    def __init__(self, inner: SocketSource) -> None:
        self.inner = inner

    @property
    def scanner(self) -> str:
        return self.inner.scanner

    def scan(self, opts: ScanOptions) -> Scan:
        return self.inner.scan(opts)

    def listeners(self, ports: frozenset[int]) -> Sequence[ListenerStats]:
        return self.inner.listeners(ports)

    def destroy(self, prefixes: Sequence[Prefix], ports: frozenset[int]) -> int:
        return 0

    def cut(
        self,
        idle_ms: Mapping[Prefix, int],
        ports: frozenset[int],
        shed: Mapping[Prefix, Shed] | None = None,
        greet_ms: int = 0,
        pregreet_cut: bool = False,
    ) -> Mapping[Prefix, int]:
        return {}

    def sessions(self, prefix: Prefix | PrefixSet, ports: frozenset[int]) -> Sequence[SessionInfo]:
        return self.inner.sessions(prefix, ports)


class DryRunTarpit:
    """The tarpit as it would be (its support is the real one's); never built, never fed."""

    def __init__(self, inner: Tarpit) -> None:
        self.inner = inner
        self.name = f"dry-run ({inner.name})"

    def supported(self) -> str | None:
        return self.inner.supported()

    def setup(self, ports: frozenset[int], ifaces: Sequence[str] = ()) -> None:
        pass

    def apply(self, add: Mapping[Prefix, float], remove: Sequence[Prefix]) -> None:
        pass

    def tarpitted(self) -> frozenset[Prefix]:
        return frozenset()

    def teardown(self) -> bool:
        return self.inner.teardown()  # `govern teardown` removes what an enforcing run left, dry run or not

    def close(self) -> None:
        self.inner.close()


class DryRunSysctls:
    """The sysctl profiles planned and logged, never written."""

    def __init__(self, inner: SysctlProfiles) -> None:
        self.inner = inner

    def plan(self, *, wave: bool = False) -> tuple[Item, ...]:
        return self.inner.plan(wave=wave)

    def profiles(self) -> list[str]:
        return self.inner.profiles()

    def _logged(self, what: str, wave: bool = False) -> Report:
        for item in self.inner.plan(wave=wave):
            log.info("dry run: sysctl %s %s -> %s (%s)", item.key, item.current, item.target, item.status)
        return Report(what)

    def recover(self) -> Report:
        return Report("recover")

    def apply(self) -> Report:
        return self._logged("apply")

    def enter_wave(self) -> Report:
        return self._logged("wave", wave=True)

    def leave_wave(self) -> Report:
        return Report("leave wave")

    def restore(self, what: str = "restore") -> Report:
        return Report(what)

    def verify(self) -> tuple[Drift, ...]:
        return ()  # a dry run applies no profile, so no key can drift from one
