"""Learned trust, pure: the sources that completed a delivery recently, each trusted until `learn_for` after its last
one. Kept per source group (IPv4 /32, IPv6 /64 by default), the unit the decision core counts and limits, so a
lookup is one `PrefixSet.covers`. No clock: the caller passes the times.

Memory is bounded: past `max_sources`, the source whose last delivery is oldest is forgotten first.
"""

from __future__ import annotations

import ipaddress

from govern.addr import Prefix, PrefixSet, group_key


class Trust:
    def __init__(self, learn_for: float, *, v4_len: int = 32, v6_len: int = 64, max_sources: int = 200_000) -> None:
        self.learn_for = learn_for
        self.v4_len = v4_len
        self.v6_len = v6_len
        self.max_sources = max_sources
        # source -> until; insertion order is the order of last deliveries (re-learning moves a source to the end),
        # so expiry and eviction both take from the front.
        self._until: dict[Prefix, float] = {}
        self._first: dict[Prefix, float] = {}  # source -> its first proof since it was last untrusted
        self._set: PrefixSet | None = None

    def learn(self, address: Prefix, at: float, now: float) -> bool:
        """Record a completed delivery from `address` at `at`; True when its source was not trusted before."""
        until = at + self.learn_for
        key = self.key(address)
        old = self._until.get(key)
        # Most calls re-report a proof already learned (the kernel's proven set is read whole every 10 s): the
        # cheap answer first, before the address is looked at.
        if old is not None and old >= until:
            return False
        if until <= now or (old is None and _never_learned(address)):
            return False
        self._until.pop(key, None)
        self._until[key] = until
        if old is None:
            self._first[key] = at
            self._set = None
            while len(self._until) > self.max_sources:
                self._forget(next(iter(self._until)))
        return old is None

    def _forget(self, key: Prefix) -> None:
        del self._until[key]
        self._first.pop(key, None)

    def first(self, key: Prefix) -> float | None:
        """When a trusted source group first proved itself (since it was last untrusted); None: not trusted."""
        return self._first.get(key)

    def revoke(self, key: Prefix) -> bool:
        """Forget a source group's trust now; True when it had any."""
        if key not in self._until:
            return False
        self._forget(key)
        self._set = None
        return True

    def key(self, address: Prefix) -> Prefix:
        """The source group trust is kept for."""
        return group_key(address, self.v4_len, self.v6_len)

    def expire(self, now: float) -> bool:
        """Forget sources whose trust ran out; True when any went."""
        gone = [p for p, until in self._until.items() if until <= now]
        for p in gone:
            self._forget(p)
        if gone:
            self._set = None
        return bool(gone)

    def trusted(self) -> PrefixSet:
        if self._set is None:
            self._set = PrefixSet(self._until)
        return self._set

    def until(self, source: Prefix) -> float | None:
        return self._until.get(source)

    def __len__(self) -> int:
        return len(self._until)


def _never_learned(address: Prefix) -> bool:
    """Loopback is the MTA talking to itself (content filters, local submission): it says nothing about a peer."""
    ip = ipaddress.ip_address(address.value if address.version == 4 else address.value.to_bytes(16, "big"))
    return ip.is_loopback or ip.is_unspecified
