"""The allowlist edge: the effective allowlist from every source the config names, kept current between ticks.

Sources: `allow.cidrs` (fixed), `allow.files` (re-read when they change, govern.allow.files), `allow.hosts` (A and
AAAA) and `allow.spf_domains` (govern.allow.spf). A hostname or SPF domain is resolved again when its TTL runs out,
clamped to [`allow.min_refresh`, `allow.refresh`]; a failure keeps its last good prefixes and retries after
`min_refresh`.

DNS runs on an executor (one worker thread in the daemon), never on the daemon's loop: an SPF walk may take dozens
of queries, and at 2 s each that would stall ticks for a minute. `refresh(now)` only submits due work and collects
finished work, so it costs a few stat() calls when nothing is due. Tests pass an inline executor and a fake resolver.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field, replace
from typing import Any

from govern.addr import Prefix, PrefixSet
from govern.allow.dns import DnsTempError, Resolver
from govern.allow.entries import AllowEntry, by_prefix
from govern.allow.files import WatchedFile, within_guard
from govern.allow.mta import SOURCE as MTA_SOURCE
from govern.allow.mta import postconf_mynetworks as mta_networks
from govern.allow.mta import read as mta_read
from govern.allow.spec import AllowSpec
from govern.allow.spf import SpfError, expand
from govern.config import Config, too_wide_to_allow
from govern.core.policy import Policy
from govern.errors import AddressError

log = logging.getLogger("govern")


@dataclass(frozen=True)
class Outcome:
    """One resolution of a hostname or SPF domain: entries, or None with the error that kept the old ones."""

    entries: tuple[AllowEntry, ...] | None
    ttl: float
    error: str = ""
    notes: tuple[str, ...] = ()


def resolve_host(resolver: Resolver, name: str) -> Outcome:
    try:
        answers = [resolver.query(name, "A"), resolver.query(name, "AAAA")]
    except DnsTempError as exc:
        return Outcome(None, 0.0, f"host {name}: {exc}")
    entries = []
    for a in answers:
        for addr in a.records:
            try:
                entries.append(AllowEntry(Prefix.parse(addr), f"host {name}"))
            except AddressError:
                continue
    if not entries:
        return Outcome(None, 0.0, f"host {name}: resolves to no address")
    return Outcome(tuple(entries), min(a.ttl for a in answers if a.records))


def resolve_spf(resolver: Resolver, name: str) -> Outcome:
    try:
        res = expand(name, resolver.query)
    except SpfError as exc:
        return Outcome(None, 0.0, f"spf {name}: {exc}")
    return Outcome(tuple(AllowEntry(p, via) for p, via in res.prefixes), res.ttl, notes=res.notes)


@dataclass
class DnsSource:
    """A hostname or SPF domain and what it last resolved to."""

    kind: str  # "host" or "spf"
    name: str
    entries: tuple[AllowEntry, ...] = ()
    notes: tuple[str, ...] = ()
    error: str = ""
    last_ok: float | None = None
    next_at: float = 0.0
    pending: futures.Future[Outcome] | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return f"{self.kind} {self.name}"


class AllowSources:
    """The effective allowlist with provenance. Not thread-safe: the daemon's loop is its only caller."""

    def __init__(
        self,
        spec: AllowSpec,
        resolver: Resolver,
        executor: futures.Executor,
        mta: Callable[[], str | None] = lambda: None,
    ) -> None:
        """`mta` reads the MTA's mynetworks (govern.allow.mta; None: no MTA), real in `from_config`."""
        self.resolver = resolver
        self.executor = executor
        self.files: list[WatchedFile] = []
        self.dns: list[DnsSource] = []
        self._current: frozenset[Prefix] = frozenset()
        self.mta: Sequence[AllowEntry] = ()
        self.mta_notes: list[str] = []
        self.read_mta = mta
        self.configure(spec)

    def configure(self, spec: AllowSpec) -> None:
        """Take a (re)loaded config's section: sources it still names keep their last good content and schedule."""
        self.cidrs = tuple(AllowEntry(p, "allow.cidrs") for p in spec.cidrs)
        self.mta_networks = spec.mta_networks
        self._mta_at = float("-inf")  # read again now: a reload may follow a change to the MTA's config
        self.min_refresh = spec.min_refresh
        self.max_refresh = spec.refresh
        # Every entry from a file or DNS passes the guard loading applies to the config's (govern.config).
        guard = dict(spec.guard)
        self.too_wide: Callable[[Prefix], str | None] = lambda p: too_wide_to_allow(p, guard)
        old_files = {f.path: f for f in self.files}
        self.files = [old_files.get(path) or WatchedFile(path) for path in spec.files]
        for f in self.files:
            f.judge_by(self.too_wide)
        old_dns = {d.key: d for d in self.dns}
        wanted = [("host", h) for h in spec.hosts] + [("spf", d) for d in spec.spf_domains]
        self.dns = [old_dns.get(f"{k} {n}") or DnsSource(k, n) for k, n in wanted]
        for gone in set(old_dns) - {d.key for d in self.dns}:
            if (fut := old_dns[gone].pending) is not None:
                fut.cancel()

    # -- between ticks ----------------------------------------------------------------------------------------

    def refresh(self, now: float) -> bool:
        """Re-read changed files, collect finished DNS work and start what is due. True when the prefix set changed."""
        for f in self.files:
            before = f.error
            f.check()
            if f.error and f.error != before:
                log.warning("allowlist file: %s (%d entries in force)", f.error, len(f.entries))
        if now - self._mta_at >= self.max_refresh:
            self._mta_at = now
            self._read_mta()
        self._collect(now)
        for d in self.dns:
            if d.pending is None and now >= d.next_at:
                job: Callable[[Resolver, str], Outcome] = resolve_host if d.kind == "host" else resolve_spf
                d.pending = self.executor.submit(job, self.resolver, d.name)
        self._collect(now)  # an inline executor (tests) has already finished
        new = frozenset(e.prefix for e in self.entries())
        changed, self._current = new != self._current, new
        return changed

    def _read_mta(self) -> None:
        if not self.mta_networks:
            self.mta, self.mta_notes = (), []
            return
        mta, notes = mta_read(self.too_wide, self.read_mta)
        for note in set(notes) - set(self.mta_notes):
            log.warning("allowlist %s", note)
        self.mta, self.mta_notes = mta, notes

    def wait(self, timeout: float) -> None:
        """Give DNS work in flight up to `timeout` seconds to finish (at start, so the first tick sees it)."""
        pending = [d.pending for d in self.dns if d.pending is not None]
        if pending:
            futures.wait(pending, timeout=timeout)

    def _collect(self, now: float) -> None:
        for d in self.dns:
            fut = d.pending
            if fut is None or not fut.done():
                continue
            d.pending = None
            try:
                out = fut.result()
            except Exception as exc:  # a bug in a job must not stop the daemon; it shows as the source's error
                out = Outcome(None, 0.0, f"{d.key}: {type(exc).__name__}: {exc}")
            self._take(d, out, now)

    def _take(self, d: DnsSource, out: Outcome, now: float) -> None:
        if out.entries is None:
            if out.error != d.error:
                log.warning("allowlist %s (keeping its %d previous entries)", out.error, len(d.entries))
            d.error = out.error
            d.next_at = now + self.min_refresh
            return
        if d.error:
            log.info("allowlist %s resolves again", d.key)
        entries, skipped = within_guard(out.entries, self.too_wide)
        for why in set(skipped) - set(d.notes):
            log.warning("allowlist %s", why)
        d.entries, d.notes, d.error, d.last_ok = entries, out.notes + tuple(skipped), "", now
        d.next_at = now + min(max(out.ttl, self.min_refresh), self.max_refresh)

    # -- what it holds ----------------------------------------------------------------------------------------

    def entries(self) -> tuple[AllowEntry, ...]:
        out = list(self.cidrs) + list(self.mta)
        for f in self.files:
            out.extend(f.entries)
        for d in self.dns:
            out.extend(d.entries)
        return tuple(out)

    def prefixes(self) -> tuple[Prefix, ...]:
        return tuple(sorted({e.prefix for e in self.entries()}))

    def errors(self) -> dict[str, str]:
        out = {f"file {f.path}": f.error for f in self.files if f.error}
        out.update({d.key: d.error for d in self.dns if d.error})
        return out

    def status(self) -> list[dict[str, Any]]:
        """One row per source for `govern status`."""
        rows: list[dict[str, Any]] = [{"source": "allow.cidrs", "prefixes": len(self.cidrs), "error": ""}]
        if self.mta_networks:
            rows.append({"source": MTA_SOURCE, "prefixes": len(self.mta), "error": "", "notes": self.mta_notes})
        rows += [{"source": f"file {f.path}", "prefixes": len(f.entries), "error": f.error} for f in self.files]
        rows += [
            {
                "source": d.key,
                "prefixes": len(d.entries),
                "error": d.error,
                "notes": list(d.notes),
                "last_ok": d.last_ok,
                "next_refresh": d.next_at,
            }
            for d in self.dns
        ]
        return rows

    def listing(self) -> list[dict[str, Any]]:
        """Every allowlisted prefix with its sources, for `govern list`."""
        return [
            {"kind": "allow", "prefix": str(p), "sources": list(s)}
            for p, s in sorted(by_prefix(self.entries()).items())
        ]

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def policy_with(config: Config, sources: AllowSources, extra_allow: tuple[Prefix, ...] = ()) -> Policy:
    """The config's policy with the live allowlist in place of the one read at load (files may have changed since)."""
    return replace(config.policy(extra_allow), allow=PrefixSet(sources.prefixes() + extra_allow))


def from_config(config: Config, timeout: float = 2.0) -> AllowSources:
    """The real edge: dnspython with `timeout` per query, on one worker thread."""
    from govern.allow.dns import DnsPython

    pool = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="govern-dns")
    return AllowSources(config.allow_section(), DnsPython(timeout), pool, mta_networks)
