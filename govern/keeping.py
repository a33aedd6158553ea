"""The durable store kept in step with the kernel, through the store's faults (docs/faults.md).

govern's own decisions go to the kernel inside the store's transaction (the store never claims what the kernel
refused) and never wait on the store: when it cannot be written (a full disk), they are enforced and held in memory,
and the whole state is written again every STORE_RETRY_EVERY seconds until it takes (`catch_up`). An operator's
decision is `durable`: in the store before the kernel, or nowhere."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from govern.edges import StateStore
from govern.errors import GovernError, StoreError
from govern.health import Health
from govern.model import Plan, State

log = logging.getLogger("govern")
STORE_RETRY_EVERY = 10.0  # while the store cannot be written: seconds between attempts to write the whole state


class Keeper:
    def __init__(self, store: StateStore, health: Health) -> None:
        self.store = store
        self.health = health
        # Since when the store has not been written: the state in memory is the truth meanwhile.
        self.behind: float | None = None
        self._tried = 0.0

    def commit(self, plan: Plan, now: float, kernel: Callable[[], None]) -> bool:
        """govern's own plan: the kernel's commit inside the store's transaction; a store that fails is caught up
        later. False (and the `act` failure counted) when the kernel refused; nothing changed then."""
        applied = False
        try:
            if self.behind is not None:
                kernel()
                return True
            with self.store.pending(plan, now):
                kernel()
                applied = True
        except StoreError as exc:
            self.failed(exc, now)
            if not applied:
                return self.commit(plan, now, kernel)
        except GovernError as exc:
            self.health.fail("act", exc)
            return False
        return True

    def commit_durable(self, plan: Plan, now: float, kernel: Callable[[], None], state: State) -> bool:
        """An operator's plan: in the store, then the kernel; StoreError (nothing changed) when the store cannot
        take it, False when the kernel refused it (the store is put back to `state`, which never recorded it)."""
        if not self.catch_up(state, now, force=True):
            why = self.health.last_error.get("store", "unknown error")
            raise StoreError(f"the state store cannot be written ({why}): nothing was changed")
        try:
            self.store.save(plan, now)
        except StoreError as exc:
            self.failed(exc, now)
            raise StoreError(f"the state store cannot be written ({exc}): nothing was changed") from None
        try:
            kernel()
        except GovernError as exc:
            self.health.fail("act", exc)
            self.behind = now
            self.catch_up(state, now, force=True)
            return False
        return True

    def record(self, plan: Plan, now: float) -> None:
        """What changes no kernel state (what the kernel already holds; offences forgotten): into the store when
        it can be written; memory has it either way."""
        if self.behind is None:
            try:
                self.store.save(plan, now)
            except StoreError as exc:
                self.failed(exc, now)

    def failed(self, exc: StoreError, now: float) -> None:
        self.health.fail("store", exc)
        if self.behind is None:
            self.behind = self._tried = now
            log.warning(
                "the state store cannot be written: govern keeps enforcing and holds its decisions in memory, and "
                "writes them when it can (every %.0f s); operators' block, unblock, allow and wave requests are "
                "refused until then",
                STORE_RETRY_EVERY,
            )

    def catch_up(self, state: State, now: float, *, force: bool = False) -> bool:
        """Write the whole state to a store that missed writes; whether the store is up to date."""
        if self.behind is None:
            return True
        if not force and now - self._tried < STORE_RETRY_EVERY:
            return False
        self._tried = now
        try:
            self.store.replace(state, now)
        except StoreError as exc:
            self.health.fail("store", exc)
            return False
        log.warning(
            "the state store is written again: %d blocks and %d throttles held in memory since %s are in it",
            len(state.blocks),
            len(state.throttles),
            time.strftime("%H:%M:%S", time.localtime(self.behind)),
        )
        self.behind = None
        return True
