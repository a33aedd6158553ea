"""The learned-trust edge: `Trust` fed from the Postfix log (when `trust.postfix_log` is set) and from whatever the
daemon reports itself, expired as time passes. The daemon calls `refresh(now)` between ticks and hands
`trusted()` to the decision core."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from govern.addr import Prefix, PrefixSet
from govern.allow.postfix import DeliveryParser, LogFollower
from govern.allow.spec import TrustSpec
from govern.allow.trust import Trust


class TrustSources:
    def __init__(self, spec: TrustSpec) -> None:
        self.follower: LogFollower | None = None
        self.parser = DeliveryParser()
        self.learned_from_log = 0
        # Source groups the log saw deliver since the daemon last took them, each with when its trust runs out: for
        # the kernel's proven sets, which the wave's gate and the slot budget read.
        self._delivered: dict[Prefix, float] = {}
        # Source groups whose proof was revoked, each until when nothing proves it again (govern.core.proof).
        self._revoked: dict[Prefix, float] = {}
        self.trust = Trust(spec.learn_for, v4_len=spec.v4_len, v6_len=spec.v6_len)
        self.configure(spec)

    def configure(self, spec: TrustSpec) -> None:
        """Take a (re)loaded config's section; what was learned stays, under the new lifetime and grouping."""
        self.factor = spec.factor
        if (spec.learn_for, spec.v4_len, spec.v6_len) != (self.trust.learn_for, self.trust.v4_len, self.trust.v6_len):
            old = self.trust
            self.trust = Trust(spec.learn_for, v4_len=spec.v4_len, v6_len=spec.v6_len)
            for source in old.trusted():
                until = old.until(source)
                if until is not None:
                    self.trust.learn(source, until - old.learn_for, until - old.learn_for)
        path = spec.postfix_log
        if self.follower is not None and self.follower.path != path:
            self.follower.close()
            self.follower = None
        if path and self.follower is None:
            self.follower = LogFollower(path)

    def learn(self, address: Prefix, now: float, at: float | None = None) -> bool:
        """A completed delivery the daemon saw itself, at `at` (default now)."""
        if self._held_off(self.trust.key(address), now):
            return False
        return self.trust.learn(address, now if at is None else at, now)

    def first(self, key: Prefix) -> float | None:
        """When a trusted source group first proved itself (since it was last untrusted); None: not trusted."""
        return self.trust.first(key)

    def revoke(self, keys: Sequence[Prefix], now: float, hold_off: float) -> None:
        """Take these source groups' trust away, and learn none of them again for `hold_off` seconds."""
        for key in keys:
            self.trust.revoke(key)
            self._revoked[key] = now + hold_off
            self._delivered.pop(key, None)

    def _held_off(self, key: Prefix, now: float) -> bool:
        until = self._revoked.get(key)
        if until is None:
            return False
        if until > now:
            return True
        del self._revoked[key]
        return False

    def learn_until(self, source: Prefix, until: float, now: float) -> bool:
        """Trust another host of the fleet learned, lasting until `until` (never longer than this host's own
        `learn_for` from now)."""
        return self.trust.learn(source, min(until, now + self.trust.learn_for) - self.trust.learn_for, now)

    def refresh(self, now: float) -> bool:
        """Read what the log gained since the last call and expire old trust; True when the trusted set changed."""
        changed = False
        if self.follower is not None:
            for line in self.follower.lines():
                if (got := self.parser.feed(line, now)) is not None:
                    self.learned_from_log += 1
                    key = self.trust.key(got[0])
                    if self._held_off(key, now):
                        continue
                    changed |= self.trust.learn(got[0], got[1], now)
                    if (until := self.trust.until(key)) is not None:
                        self._delivered[key] = until
        return self.trust.expire(now) or changed

    def take_delivered(self) -> dict[Prefix, float]:
        """The source groups the log saw deliver since the last call, each with when its trust runs out."""
        out, self._delivered = self._delivered, {}
        return out

    def trusted(self) -> PrefixSet:
        return self.trust.trusted()

    def until(self, source: Prefix) -> float | None:
        """When a trusted source group's trust lapses (None: not trusted)."""
        return self.trust.until(source)

    def status(self) -> dict[str, Any]:
        return {
            "trusted": len(self.trust),
            "factor": self.factor,
            "postfix_log": self.follower.path if self.follower else "",
            "log_error": self.follower.error if self.follower else "",
            "deliveries_learned": self.learned_from_log,
            "awaiting_queue": len(self.parser),
            "revoked": len(self._revoked),
        }

    def close(self) -> None:
        if self.follower is not None:
            self.follower.close()
