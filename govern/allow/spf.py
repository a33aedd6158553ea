"""Pure expansion of a trusted domain's SPF record (RFC 7208) into the prefixes it authorises to send.

`expand(domain, lookup)` follows include: and redirect=, takes ip4:/ip6: as written and resolves a: and mx: through
`lookup` (a `Resolver.query`, so tests pass a fake). It never evaluates for one client address, so it walks every
term, and enforces the RFC's limits on the whole walk: at most 10 DNS-querying terms (include, a, mx, ptr, exists,
redirect), at most 2 void lookups, at most 10 exchanges per mx. Breaking a limit, a loop, a missing or duplicate
record or a syntax error is a permanent error (`SpfError`), as it would be for a receiver checking SPF; a DNS
failure is a temporary one. Either way the caller keeps the last good set.

Only pass terms (`+`, the default) allow anything: `-`, `~` and `?` terms add nothing. `+all`, prefixes shorter
than /8 (IPv4) or /16 (IPv6), ptr, exists and macro names cannot be turned into a safe list of prefixes: they are
skipped with a note.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from govern.addr import Prefix
from govern.allow.dns import Answer, DnsTempError, RecordType
from govern.errors import AddressError

Lookup = Callable[[str, RecordType], Answer]

MAX_LOOKUPS = 10
MAX_VOIDS = 2
MAX_MX = 10
MIN_LENGTH = {4: 8, 6: 16}


class SpfError(Exception):
    """The record set cannot be expanded; `temporary` when DNS failed rather than the records being wrong."""

    def __init__(self, message: str, *, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


@dataclass(frozen=True)
class SpfResult:
    domain: str
    prefixes: tuple[tuple[Prefix, str], ...]  # each prefix with the chain of terms it came from
    notes: tuple[str, ...]  # terms skipped, and why
    lookups: int  # DNS-querying terms counted against MAX_LOOKUPS
    voids: int
    ttl: float  # the smallest TTL among the answers used: when to look again


@dataclass
class _Walk:
    lookup: Lookup
    max_lookups: int
    max_voids: int
    lookups: int = 0
    voids: int = 0
    ttl: float = float("inf")
    found: dict[Prefix, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def count(self, term: str, where: str) -> None:
        self.lookups += 1
        if self.lookups > self.max_lookups:
            raise SpfError(f"{where}: {term}: more than {self.max_lookups} DNS-querying terms (RFC 7208 4.6.4)")

    def query(self, name: str, rdtype: RecordType, *, counted: bool = True) -> Answer:
        try:
            ans = self.lookup(name, rdtype)
        except DnsTempError as exc:
            raise SpfError(f"DNS failed: {exc}", temporary=True) from None
        self.ttl = min(self.ttl, ans.ttl)
        if counted and ans.void:
            self.void(name)
        return ans

    def void(self, name: str) -> None:
        self.voids += 1
        if self.voids > self.max_voids:
            raise SpfError(f"{name}: more than {self.max_voids} void lookups (RFC 7208 4.6.4)")

    def add(self, p: Prefix, via: str, passing: bool) -> None:
        if not passing:
            return
        if p.length < MIN_LENGTH[p.version]:
            self.notes.append(f"{via}: {p} skipped: shorter than /{MIN_LENGTH[p.version]}")
            return
        self.found.setdefault(p, via)


def expand(domain: str, lookup: Lookup, *, max_lookups: int = MAX_LOOKUPS, max_voids: int = MAX_VOIDS) -> SpfResult:
    """Every prefix `domain`'s SPF record passes, or SpfError."""
    walk = _Walk(lookup, max_lookups, max_voids)
    name = domain.lower().removesuffix(".")
    _check(walk, name, (name,), f"spf {name}", passing=True, top=True)
    return SpfResult(
        domain=name,
        prefixes=tuple(sorted(walk.found.items())),
        notes=tuple(walk.notes),
        lookups=walk.lookups,
        voids=walk.voids,
        ttl=walk.ttl,
    )


def record_of(domain: str, answer: Answer) -> str | None:
    """The one v=spf1 record among a name's TXT records, None if there is none; SpfError if there are several."""
    found = [r for r in answer.records if r.lower() == "v=spf1" or r.lower().startswith("v=spf1 ")]
    if len(found) > 1:
        raise SpfError(f"{domain}: {len(found)} SPF records (RFC 7208 4.5 allows one)")
    return found[0] if found else None


def _check(walk: _Walk, domain: str, chain: tuple[str, ...], via: str, *, passing: bool, top: bool = False) -> None:
    record = record_of(domain, walk.query(domain, "TXT", counted=not top))
    if record is None:
        raise SpfError(f"{domain}: no SPF record" + ("" if top else f" (reached by {via})"))
    redirect: str | None = None
    saw_all = False
    for term in record.split()[1:]:
        name, sep, value = term.partition("=")
        if sep and ":" not in name and "/" not in name:  # a modifier: name=value
            if name.lower() == "redirect":
                if redirect is not None:
                    raise SpfError(f"{domain}: redirect= given twice")
                redirect = value
            continue  # exp= and unknown modifiers change nothing here (RFC 7208 6)
        qualifier = term[0] if term[0] in "+-~?" else "+"
        mech, arg, cidr = _parts(term.lstrip("+-~?"), domain)
        here = f"{via} > {term}"
        ok = passing and qualifier == "+"
        if mech == "all":
            if ok:
                walk.notes.append(f"{here}: skipped: it would allow every address")
            saw_all = True
            break  # nothing after all is ever evaluated, and it overrides redirect=
        if mech in ("ip4", "ip6"):
            _ip(walk, mech, arg, domain, here, ok)
        elif mech == "include":
            walk.count(term, domain)
            target = _target(arg, domain, term, required=True)
            if target is None:
                walk.notes.append(f"{here}: skipped: macros cannot be expanded without a client")
                continue
            if target in chain:
                raise SpfError(f"{domain}: {term}: include loop ({' > '.join((*chain, target))})")
            _check(walk, target, (*chain, target), here, passing=ok)
        elif mech in ("a", "mx"):
            walk.count(term, domain)
            target = _target(arg, domain, term, required=False)
            if target is None:
                walk.notes.append(f"{here}: skipped: macros cannot be expanded without a client")
                continue
            hosts = [target]
            if mech == "mx":
                hosts = [h for h in walk.query(target, "MX").records if h not in ("", ".")]
                if len(hosts) > MAX_MX:
                    raise SpfError(f"{domain}: {term}: {len(hosts)} MX hosts (RFC 7208 4.6.4 allows {MAX_MX})")
            for host in hosts:
                _addresses(walk, host, cidr, here, ok, counted=mech == "a")
        elif mech in ("ptr", "exists"):
            walk.count(term, domain)
            walk.notes.append(f"{here}: skipped: {mech} depends on the client and cannot be listed")
        else:
            raise SpfError(f"{domain}: {term}: unknown mechanism")
    if redirect is not None and not saw_all:
        walk.count(f"redirect={redirect}", domain)
        target = _target(redirect, domain, f"redirect={redirect}", required=True)
        if target is None:
            walk.notes.append(f"{via} redirect={redirect}: skipped: macros cannot be expanded without a client")
            return
        if target in chain:
            raise SpfError(f"{domain}: redirect={redirect}: loop ({' > '.join((*chain, target))})")
        _check(walk, target, (*chain, target), f"{via} > redirect={redirect}", passing=passing)


_DUAL_CIDR = re.compile(r"^(?:/(\d{1,2}))?(?://(\d{1,3}))?$")


def _parts(body: str, domain: str) -> tuple[str, str, tuple[int, int]]:
    """A mechanism's name, its argument and, for a and mx, its dual cidr-length (`a:host/24//64`)."""
    head, _, arg = body.partition(":")
    mech, cidr_text = head.lower(), ""
    if mech.split("/", 1)[0] in ("a", "mx"):
        if "/" in mech:
            mech, cidr_text = mech.split("/", 1)[0], mech[mech.index("/") :]
        elif "/" in arg:
            arg, cidr_text = arg[: arg.index("/")], arg[arg.index("/") :]
    if not cidr_text:
        return mech, arg, (32, 128)
    m = _DUAL_CIDR.match(cidr_text)
    c4 = int(m.group(1) or 32) if m else -1
    c6 = int(m.group(2) or 128) if m else -1
    if not (0 <= c4 <= 32 and 0 <= c6 <= 128):
        raise SpfError(f"{domain}: {body}: bad cidr length")
    return mech, arg, (c4, c6)


def _target(arg: str, domain: str, term: str, *, required: bool) -> str | None:
    """The domain a term names (the current one if it names none); None when it uses macros."""
    if not arg:
        if required:
            raise SpfError(f"{domain}: {term}: needs a domain")
        return domain
    if "%" in arg:
        return None
    return arg.lower().removesuffix(".")


def _ip(walk: _Walk, mech: str, arg: str, domain: str, here: str, ok: bool) -> None:
    try:
        p = Prefix.parse(arg)
    except AddressError:
        raise SpfError(f"{domain}: {mech}:{arg}: not an address or prefix") from None
    if p.version != int(mech[-1]):
        raise SpfError(f"{domain}: {mech}:{arg}: not an IPv{mech[-1]} address")
    walk.add(p, here, ok)


def _addresses(walk: _Walk, host: str, cidr: tuple[int, int], here: str, ok: bool, *, counted: bool) -> None:
    # Both families are asked for because any client may come; one empty family is normal, so only a host with
    # neither counts as a void lookup.
    v4 = walk.query(host, "A", counted=False)
    v6 = walk.query(host, "AAAA", counted=False)
    if counted and v4.void and v6.void:
        walk.void(host)
    for addr in (*v4.records, *v6.records):
        try:
            p = Prefix.parse(addr)
        except AddressError:
            continue
        length = cidr[0] if p.version == 4 else cidr[1]
        walk.add(Prefix.parse(f"{addr}/{length}"), f"{here} ({host})", ok)
