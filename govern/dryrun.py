"""The dry-run backend: wraps a real backend for observing (its kernel-side counters still run) and logs every
plan instead of enforcing it. The daemon keeps the would-be state in memory only, so a dry run shows the whole
ladder (throttle, then block, then expiry) as it would have happened, without touching the durable store."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from govern.addr import Prefix
from govern.config import Config
from govern.edges import Enforcer
from govern.model import Plan, State

log = logging.getLogger("govern.dryrun")


class DryRun:
    def __init__(self, inner: Enforcer) -> None:
        self.inner = inner
        self.name = f"dry-run ({inner.name})"
        self.logged: list[str] = []

    def setup(self, config: Config, allow: Sequence[Prefix], state: State, now: float) -> Plan:
        self.inner.setup(config, allow, State(), now)
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

    def proven(self) -> Sequence[Prefix]:
        return self.inner.proven()

    def syn_counts(self) -> Mapping[Prefix, int]:
        return self.inner.syn_counts()

    def end_sessions(self, prefixes: Sequence[Prefix]) -> int:
        return 0

    def teardown(self) -> bool:
        return self.inner.teardown()

    def close(self) -> None:
        self.inner.close()
