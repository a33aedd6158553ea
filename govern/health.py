"""What failed in the daemon, by component (act, store, observe, kernel-changed, ...): counted and its last error
kept for `govern status` and the metrics, and logged once per failure."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger("govern")


@dataclass
class Health:
    failures: dict[str, int] = field(default_factory=dict)
    last_error: dict[str, str] = field(default_factory=dict)

    def fail(self, component: str, exc: BaseException) -> None:
        self.failures[component] = self.failures.get(component, 0) + 1
        self.last_error[component] = str(exc)
        log.error("%s failed: %s", component, exc)
