"""The DNS edge: a `Resolver` answers one query with its records and TTL, or raises `DnsTempError` when no answer
could be had (timeout, SERVFAIL, no server). A name that does not exist or has no records of the type is an empty
answer, not an error: SPF counts those as void lookups, and a hostname source keeps its last good answer on either.

`DnsPython` is the real implementation (dnspython); `govern.fakes.FakeResolver` stands in for it in tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

RecordType = Literal["A", "AAAA", "TXT", "MX"]
NEGATIVE_TTL = 300.0  # how long an empty answer is trusted when the server gave no SOA to say


@dataclass(frozen=True)
class Answer:
    """Records as text: A/AAAA an address, TXT its strings joined, MX the exchange names by preference."""

    records: tuple[str, ...]
    ttl: float

    @property
    def void(self) -> bool:
        return not self.records


class DnsTempError(Exception):
    """No answer could be had for now; try again later."""


class Resolver(Protocol):
    def query(self, name: str, rdtype: RecordType) -> Answer: ...


class DnsPython:
    """Queries through dnspython with the system's resolv.conf. `timeout` bounds one query, retries included."""

    def __init__(self, timeout: float = 2.0, *, nameservers: tuple[str, ...] = (), port: int = 53) -> None:
        self.timeout = timeout
        self.nameservers = nameservers  # empty: those of /etc/resolv.conf
        self.port = port

    def query(self, name: str, rdtype: RecordType) -> Answer:
        import dns.exception
        import dns.resolver

        try:
            # A fresh resolver per query picks up resolv.conf changes; its cost is nothing next to a DNS round trip.
            res = dns.resolver.Resolver(configure=not self.nameservers)
            if self.nameservers:
                res.nameservers = list(self.nameservers)
            res.port = self.port
            ans = res.resolve(name, rdtype, lifetime=self.timeout, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            return Answer((), NEGATIVE_TTL)
        except (dns.resolver.NoResolverConfiguration, dns.resolver.NoNameservers) as exc:
            raise DnsTempError(f"{name} {rdtype}: {exc}") from None
        except dns.exception.Timeout:
            raise DnsTempError(f"{name} {rdtype}: no answer within {self.timeout:g}s") from None
        except dns.exception.DNSException as exc:
            raise DnsTempError(f"{name} {rdtype}: {exc}") from None
        if ans.rrset is None:
            return Answer((), NEGATIVE_TTL)
        ttl = float(ans.rrset.ttl)
        if rdtype == "TXT":
            return Answer(tuple(b"".join(r.strings).decode("utf-8", "replace") for r in ans.rrset), ttl)
        if rdtype == "MX":
            by_pref = sorted(ans.rrset, key=lambda r: r.preference)
            return Answer(tuple(r.exchange.to_text(omit_final_dot=True).lower() for r in by_pref), ttl)
        return Answer(tuple(r.address for r in ans.rrset), ttl)
