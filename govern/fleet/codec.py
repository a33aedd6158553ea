"""A fleet decision and its Redis form: the fields of one stream entry (also the member of the active sorted set),
signed with HMAC-SHA256 over a canonical encoding of every field under the fleet's shared key.

Pure: no I/O and no clock (`now` is given). Whoever can write to Redis but does not hold the key cannot make an
entry that verifies; what `verify` refuses it names, for one log line (docs/fleet.md, "Threat model").
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from govern.addr import Prefix
from govern.errors import AddressError

VERSION: Final = "1"
KINDS: Final = ("block", "trust", "unblock")
# The fields an entry holds besides its signature, in the order they are signed.
FIELDS: Final = ("v", "kind", "prefix", "reason", "until", "offences", "origin", "id", "at")
SIG: Final = "sig"
DOMAIN: Final = b"govern-fleet-decision\n"  # an HMAC made with the key for anything else never verifies here
MAX_REASON: Final = 500
MAX_ORIGIN: Final = 64
MAX_ID: Final = 64
MAX_OFFENCES: Final = 1_000_000
MAX_AHEAD: Final = 366 * 86400.0  # no block lasts longer than a year (block.max_duration's cap)
MAX_SKEW: Final = 300.0  # an entry published this far in the future of our clock is refused


class Rejected(ValueError):
    """An entry that is not a decision of the fleet's: the reason is one line for the log."""


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision a host shares: block `prefix` until `until` (epoch seconds, wall clock) for `reason`; trust it;
    or lift the blocks of it decided before `at` (an operator's unblock, kept until the longest block it may lift
    would have lapsed). `origin` is the deciding host's `fleet.name`, `id` unique per decision, `at` when it was
    published."""

    kind: str
    prefix: Prefix
    reason: str
    until: float
    offences: int
    origin: str
    id: str
    at: float


def new(kind: str, prefix: Prefix, reason: str, until: float, offences: int, origin: str, at: float) -> Decision:
    """A decision of this host's, with a fresh id, its times as signed (to the millisecond) and its reason made
    fit to sign (one line, at most MAX_REASON characters)."""
    clean = "".join(c if c.isprintable() else " " for c in reason)[:MAX_REASON]
    return Decision(kind, prefix, clean, round(until, 3), offences, origin, uuid.uuid4().hex, round(at, 3))


def _number(x: float) -> str:
    """A time as signed: milliseconds, so a float's representation never makes two hosts disagree."""
    return f"{x:.3f}"


def fields_of(d: Decision) -> dict[str, str]:
    """The unsigned fields of `d`, as text (Redis keeps bytes)."""
    return {
        "v": VERSION,
        "kind": d.kind,
        "prefix": str(d.prefix),
        "reason": d.reason,
        "until": _number(d.until),
        "offences": str(d.offences),
        "origin": d.origin,
        "id": d.id,
        "at": _number(d.at),
    }


def canonical(fields: Mapping[str, str]) -> bytes:
    """What is signed: the domain, then every field in FIELDS order as a JSON array (each value escaped and
    delimited, so no two different entries encode alike)."""
    return DOMAIN + json.dumps([fields[k] for k in FIELDS], ensure_ascii=True, separators=(",", ":")).encode()


def sign(fields: Mapping[str, str], key: bytes) -> str:
    return hmac.new(key, canonical(fields), hashlib.sha256).hexdigest()


def encode(d: Decision, key: bytes) -> dict[str, str]:
    """The stream entry's fields of `d`, signed."""
    _check(d)
    f = fields_of(d)
    f[SIG] = sign(f, key)
    return f


def member(fields: Mapping[str, str]) -> str:
    """The active sorted set's member for an entry: the same fields, as one JSON object."""
    return json.dumps(dict(fields), ensure_ascii=True, sort_keys=True, separators=(",", ":"))


def from_member(text: str | bytes) -> dict[str, str]:
    """The fields of a sorted-set member; Rejected if it is not a JSON object of strings."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise Rejected("not a JSON object") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in obj.items()):
        raise Rejected("not a JSON object of strings")
    return obj


def _text(raw: Mapping[bytes, bytes] | Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in raw.items():
        try:
            ks = k.decode() if isinstance(k, bytes) else k
            vs = v.decode() if isinstance(v, bytes) else v
        except UnicodeDecodeError:
            raise Rejected("a field is not UTF-8") from None
        out[ks] = vs
    return out


def verify(raw: Mapping[bytes, bytes] | Mapping[str, str], key: bytes, now: float) -> Decision:
    """The decision an entry carries, or Rejected naming why not: unsigned, a signature that does not verify
    (tampered, or signed with another key), malformed, or expired."""
    fields = _text(raw)
    sig = fields.get(SIG)
    if not sig:
        raise Rejected("unsigned")
    if fields.get("v") != VERSION:
        raise Rejected(f"version {str(fields.get('v'))[:8]!r}, not {VERSION}")
    missing = [k for k in FIELDS if k not in fields]
    if missing:
        raise Rejected(f"no field {', '.join(missing)}")
    extra = sorted(set(fields) - set(FIELDS) - {SIG})
    if extra:
        raise Rejected(f"unknown field {extra[0][:20]!r}")
    if not hmac.compare_digest(sign(fields, key), sig):  # before anything else is believed
        raise Rejected("bad signature")
    d = _decision(fields)
    if d.until <= now:
        raise Rejected(f"expired {now - d.until:.0f}s ago")
    if d.at > now + MAX_SKEW:
        raise Rejected(f"published {d.at - now:.0f}s in the future")
    return d


def _decision(f: Mapping[str, str]) -> Decision:
    """The typed decision of signed fields; Rejected if a field is out of shape (a signer can be wrong too)."""
    try:
        prefix = Prefix.parse(f["prefix"], strict=True)
    except AddressError as exc:
        raise Rejected(f"prefix: {exc}") from None
    try:
        until, at = float(f["until"]), float(f["at"])
        offences = int(f["offences"])
    except ValueError:
        raise Rejected("until, at or offences is not a number") from None
    d = Decision(f["kind"], prefix, f["reason"], until, offences, f["origin"], f["id"], at)
    try:
        _check(d)
    except ValueError as exc:
        raise Rejected(str(exc)) from None
    return d


def _check(d: Decision) -> None:
    if d.kind not in KINDS:
        raise ValueError(f"kind {d.kind[:20]!r} is not one of {', '.join(KINDS)}")
    if not d.reason.isprintable() or len(d.reason) > MAX_REASON:
        raise ValueError(f"reason: at most {MAX_REASON} printable characters")
    if not _name(d.origin, MAX_ORIGIN):
        raise ValueError("origin: not a host name")
    if not _name(d.id, MAX_ID):
        raise ValueError("id: not an id")
    if not (math.isfinite(d.until) and math.isfinite(d.at)) or d.until - d.at > MAX_AHEAD or d.at < 0:
        raise ValueError("until or at out of range")
    if not 0 <= d.offences <= MAX_OFFENCES:
        raise ValueError("offences out of range")


def _name(s: str, limit: int) -> bool:
    return 0 < len(s) <= limit and s.isascii() and all(c.isalnum() or c in "-._" for c in s)
