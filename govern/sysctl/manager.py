"""The sysctl manager the daemon and the CLI hold: plans from the live values, applies a profile through the journal,
enters and leaves the wave, verifies, restores, and recovers from a journal left by a crash.

Order of every change: original value into the journal (durable), then the kernel. A key whose value already is
the target is not written. A key that fails is reported in the `Report` and forgotten by the journal; the others
go on: one unsupported key never stops the rest, and never raises.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from govern.errors import KernelError, RefusedError
from govern.sysctl.edges import Sysctls
from govern.sysctl.journal import Entry, Journal, Record
from govern.sysctl.planner import (
    BASE,
    KEYS,
    WAVE,
    Access,
    Expectations,
    Item,
    Reading,
    Status,
    changes,
    plan,
)

log = logging.getLogger("govern.sysctl")


@dataclass(frozen=True)
class Outcome:
    """What happened to one key: `done` is wrote, unchanged, absent or failed."""

    key: str
    before: str | None
    after: str | None
    done: str
    message: str = ""

    def line(self) -> str:
        if self.done == "wrote":
            return f"{self.key}: {self.before} -> {self.after}"
        if self.done == "unchanged":
            return f"{self.key}: already {self.after}"
        if self.done == "absent":
            return f"{self.key}: absent now, nothing to put back"
        return f"{self.key}: FAILED: {self.message}"


@dataclass(frozen=True)
class Report:
    what: str
    outcomes: tuple[Outcome, ...] = ()

    @property
    def failed(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if o.done == "failed")

    @property
    def written(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if o.done == "wrote")

    def lines(self) -> list[str]:
        return [o.line() for o in self.outcomes]


@dataclass(frozen=True)
class Drift:
    """A key whose live value is not what the plan wants."""

    key: str
    live: int | None
    expected: int | None
    profile: str

    def line(self) -> str:
        return f"{self.key}: live {self.live}, planned {self.expected} ({self.profile})"


class SysctlManager:
    """One host's (one network namespace's) sysctls under govern's care."""

    def __init__(self, fs: Sysctls, journal: Journal, expect: Expectations) -> None:
        self.fs = fs
        self.journal = journal
        self.expect = expect

    # -- reading and planning -----------------------------------------------------------------------------

    def readings(self) -> dict[str, Reading]:
        return {k: self.fs.read(k) for k in KEYS}

    def plan(self, *, wave: bool = False) -> tuple[Item, ...]:
        return plan(self.readings(), self.expect, in_initial_namespace=self.fs.in_initial_namespace(), wave=wave)

    def profiles(self) -> list[str]:
        """The profiles the journal says are in force. A read: no lock (the journal is replaced whole by a rename,
        so it reads as one version or the other) and no write (one from an earlier boot counts as none here; the
        next change drops it), so `govern sysctl plan` and `verify` work as any user and leave no file behind."""
        rec = self._record(drop_stale=False)
        return list(rec.profiles) if rec else []

    # -- changes --------------------------------------------------------------------------------------------

    def apply(self) -> Report:
        """Apply the base profile (raise sizes, SYN cookies on)."""
        return self._apply(BASE)

    def enter_wave(self) -> Report:
        """Layer the wave profile on top of whatever is in force: SYN cookies on, fewer SYN-ACK retries, a shorter
        FIN timeout. The ride-the-wave mode calls this on entering a wave."""
        return self._apply(WAVE)

    def leave_wave(self) -> Report:
        """Undo only the wave: its keys go back to the base targets if the base set them, else to the originals."""
        with self.journal.locked():
            rec = self._record()
            if rec is None:
                return Report("leave wave")
            outcomes: list[Outcome] = []
            for key, e in list(rec.keys.items()):
                if e.wave is None:
                    continue
                o = self._put(key, e.base if e.base is not None else e.original)
                outcomes.append(o)
                if o.done != "failed":
                    e.wave = None
                    if e.base is None:
                        del rec.keys[key]
            if not any(e.wave is not None for e in rec.keys.values()) and WAVE in rec.profiles:
                rec.profiles.remove(WAVE)
            self.journal.save(rec)
        return self._logged(Report("leave wave", tuple(outcomes)))

    def restore(self, what: str = "restore") -> Report:
        """Put every key govern changed back to its original value, newest change first, and empty the journal."""
        with self.journal.locked():
            rec = self._record()
            if rec is None:
                return Report(what)
            outcomes: list[Outcome] = []
            for key in reversed(list(rec.keys)):
                o = self._put(key, rec.keys[key].original)
                outcomes.append(o)
                if o.done != "failed":
                    del rec.keys[key]
            if not rec.keys:
                rec.profiles.clear()
            self.journal.save(rec)
        return self._logged(Report(what, tuple(outcomes)))

    def recover(self) -> Report:
        """At start: a journal left behind (a crash, or a stop that kept the tuning) is restored before anything
        else, so every plan starts from the operator's own values."""
        return self.restore("recover")

    def verify(self) -> tuple[Drift, ...]:
        """Keys whose live value differs from the base plan (and the wave's, while a wave is in force)."""
        wave = WAVE in self.profiles()
        return tuple(
            Drift(i.key, i.current, i.target, i.profile) for i in self.plan(wave=wave) if i.status is Status.CHANGE
        )

    # -- internals ------------------------------------------------------------------------------------------

    def _apply(self, profile: str) -> Report:
        with self.journal.locked():
            boot, netns = self.fs.where()
            rec = self._record() or Record(boot=boot, netns=netns)
            readings = self.readings()
            items = plan(
                readings, self.expect, in_initial_namespace=self.fs.in_initial_namespace(), wave=profile == WAVE
            )
            todo = changes(items, profile)
            undo: dict[str, tuple[str | None, bool]] = {}  # key -> (the profile's previous value, entry is new)
            for it in todo:
                e = rec.keys.get(it.key)
                if e is None:
                    e = rec.keys[it.key] = Entry(original=readings[it.key].raw or "")
                    undo[it.key] = (None, True)
                else:
                    undo[it.key] = (getattr(e, profile), False)
                setattr(e, profile, str(it.target))
            if profile not in rec.profiles:
                rec.profiles.append(profile)
            self.journal.save(rec)  # the originals are on disk before the first write
            outcomes: list[Outcome] = []
            for it in todo:
                before = readings[it.key].raw
                try:
                    self.fs.write(it.key, str(it.target))
                except KernelError as exc:
                    outcomes.append(Outcome(it.key, before, str(it.target), "failed", str(exc)))
                    prev, new = undo[it.key]
                    if new:
                        del rec.keys[it.key]
                    else:
                        setattr(rec.keys[it.key], profile, prev)
                    continue
                outcomes.append(Outcome(it.key, before, str(it.target), "wrote"))
            if any(o.done == "failed" for o in outcomes):
                self.journal.save(rec)
        return self._logged(Report(f"apply {profile}", tuple(outcomes)))

    def _record(self, *, drop_stale: bool = True) -> Record | None:
        """The journal, if it belongs here. One from an earlier boot is dropped (with `drop_stale`; else only
        ignored): a reboot already reset every key."""
        rec = self.journal.load()
        if rec is None:
            return None
        boot, netns = self.fs.where()
        if rec.boot and boot and rec.boot != boot:
            if drop_stale:
                log.warning("sysctl journal %s is from an earlier boot; the kernel reset every key, dropping it", boot)
                self.journal.save(Record(boot=boot, netns=netns))
            return None
        if rec.netns and netns and rec.netns != netns:
            raise RefusedError(
                f"the sysctl journal {self.journal.path} belongs to network namespace {rec.netns}, "
                f"this is {netns}: run govern there (ip netns exec ...)"
            )
        return rec

    def _put(self, key: str, value: str) -> Outcome:
        r = self.fs.read(key)
        if r.access is Access.ABSENT:
            return Outcome(key, None, value, "absent")
        if r.raw == value:
            return Outcome(key, r.raw, value, "unchanged")
        try:
            self.fs.write(key, value)
        except KernelError as exc:
            return Outcome(key, r.raw, value, "failed", str(exc))
        return Outcome(key, r.raw, value, "wrote")

    @staticmethod
    def _logged(rep: Report) -> Report:
        for o in rep.outcomes:
            if o.done == "failed":
                log.error("sysctl %s: %s", rep.what, o.line())
            elif o.done == "wrote":
                log.info("sysctl %s: %s", rep.what, o.line())
        return rep
