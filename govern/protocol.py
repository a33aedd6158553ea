"""The control protocol's requests and replies: one frozen dataclass per request, which the CLI builds and the daemon
parses from the same definitions, and the three shapes of a reply.

A request on the wire is a JSON object: {"cmd": NAME, field: value, ...}. `parse` checks every field (type, range,
no unknown ones) and raises UsageError naming the one that is wrong, so a malformed request gets a clear refusal
and never reaches the daemon's logic. Constructing a request checks it the same way, so the CLI refuses what the
daemon would, before it asks. A reply is {"ok": true, ...}, or {"ok": false, "error": TEXT} with "refused": true
when the daemon declined a well-formed request (the CLI exits 2) rather than failed at it (exit 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar

from govern.addr import Prefix
from govern.durations import format_duration, parse_duration
from govern.errors import UsageError, shown

# How long a manual action may last: a wave switched on by hand from 10 s to a week, a block from 1 s to a year.
WAVE_FOR = (10.0, 7 * 86400.0)
BLOCK_FOR = (1.0, 365 * 86400.0)
MAX_TEXT = 500  # a reason or a note: one line for the log and `govern list`
MAX_TOP = 10_000


def _duration(name: str, text: str, bounds: tuple[float, float]) -> float | None:
    """The seconds `text` names ("" for the default: None), within `bounds`."""
    if not text:
        return None
    if len(text) > 40:
        raise UsageError(f"{name}: {shown(text)} is not a duration")
    try:
        seconds = parse_duration(text)
    except (ValueError, OverflowError) as exc:
        raise UsageError(f"{name}: {exc}") from None
    lo, hi = bounds
    if not lo <= seconds <= hi:
        raise UsageError(f"{name}: must be between {format_duration(lo)} and {format_duration(hi)}, got {text!r}")
    return seconds


def _prefix(name: str, text: str) -> Prefix:
    if len(text) > 64:
        raise UsageError(f"{name}: {shown(text)} is too long to be an address or prefix")
    try:
        return Prefix.parse(text)
    except (UsageError, ValueError) as exc:
        raise UsageError(f"{name}: {exc}") from None


def _text(name: str, text: str) -> None:
    """A reason or a note is shown in `govern list`, `govern why` and the log: one line, no control characters (a
    newline would forge a line, an escape sequence would drive the operator's terminal)."""
    if len(text) > MAX_TEXT or any(c < " " or c == "\x7f" for c in text):
        raise UsageError(f"{name}: one line of at most {MAX_TEXT} printable characters")


@dataclass(frozen=True, slots=True)
class Ping:
    CMD: ClassVar[str] = "ping"


@dataclass(frozen=True, slots=True)
class Status:
    CMD: ClassVar[str] = "status"
    top: int = 10  # the most prolific sources to show

    def __post_init__(self) -> None:
        if not 0 <= self.top <= MAX_TOP:
            raise UsageError(f"top: must be between 0 and {MAX_TOP}, got {self.top}")


@dataclass(frozen=True, slots=True)
class ListBlocks:
    CMD: ClassVar[str] = "list"


@dataclass(frozen=True, slots=True)
class _OnPrefix:
    """A request about one address or prefix (`prefix` as the operator wrote it; `source` parsed)."""

    prefix: str

    def __post_init__(self) -> None:
        _prefix("prefix", self.prefix)

    @property
    def source(self) -> Prefix:
        return _prefix("prefix", self.prefix)


@dataclass(frozen=True, slots=True)
class Block(_OnPrefix):
    CMD: ClassVar[str] = "block"
    duration: str = ""  # "" : block.duration
    reason: str = ""

    def __post_init__(self) -> None:
        _OnPrefix.__post_init__(self)
        _duration("duration", self.duration, BLOCK_FOR)
        _text("reason", self.reason)

    @property
    def seconds(self) -> float | None:
        return _duration("duration", self.duration, BLOCK_FOR)


@dataclass(frozen=True, slots=True)
class Unblock(_OnPrefix):
    CMD: ClassVar[str] = "unblock"


@dataclass(frozen=True, slots=True)
class Allow(_OnPrefix):
    CMD: ClassVar[str] = "allow"
    remove: bool = False
    note: str = ""
    force: bool = False  # allowlist a prefix wider than `[guard]` allows

    def __post_init__(self) -> None:
        _OnPrefix.__post_init__(self)
        _text("note", self.note)


WAVE_ACTIONS = ("on", "off", "status")


@dataclass(frozen=True, slots=True)
class Wave:
    CMD: ClassVar[str] = "wave"
    action: str
    duration: str = ""  # "on" only; "": modes.wave_duration

    def __post_init__(self) -> None:
        if self.action not in WAVE_ACTIONS:
            raise UsageError(f"action: must be one of {', '.join(WAVE_ACTIONS)}, got {shown(self.action)}")
        if self.duration and self.action != "on":
            raise UsageError(f"duration: only 'wave on' takes one, not 'wave {self.action}'")
        _duration("duration", self.duration, WAVE_FOR)

    @property
    def seconds(self) -> float | None:
        return _duration("duration", self.duration, WAVE_FOR)


@dataclass(frozen=True, slots=True)
class Export:
    CMD: ClassVar[str] = "export"


@dataclass(frozen=True, slots=True)
class Allowlist:
    CMD: ClassVar[str] = "allowlist"


@dataclass(frozen=True, slots=True)
class Why:
    CMD: ClassVar[str] = "why"
    addr: str  # checked by the daemon against its prefix lengths (govern.why.subject)


@dataclass(frozen=True, slots=True)
class Teardown:
    CMD: ClassVar[str] = "teardown"


Request = Ping | Status | ListBlocks | Block | Unblock | Allow | Wave | Export | Allowlist | Why | Teardown
KINDS: dict[str, type[Request]] = {
    k.CMD: k for k in (Ping, Status, ListBlocks, Block, Unblock, Allow, Wave, Export, Allowlist, Why, Teardown)
}
# What a field's JSON value must be, by its annotation (the dataclasses' annotations are strings here).
_JSON_TYPES: dict[str, type] = {"str": str, "int": int, "bool": bool}


def to_wire(req: Request) -> dict[str, Any]:
    """The request as the JSON object sent on the socket."""
    return {"cmd": req.CMD, **{f.name: getattr(req, f.name) for f in fields(req)}}


def parse(body: Mapping[str, Any]) -> Request:
    """The typed request a JSON object names; UsageError naming what is wrong (an unknown command or field, a
    missing one, a value of the wrong type or out of range)."""
    cmd = body.get("cmd")
    kind = KINDS.get(cmd) if isinstance(cmd, str) else None
    if kind is None:
        raise UsageError(f"unknown request {shown(cmd)}; known: {', '.join(KINDS)}")
    known = {f.name: f for f in fields(kind)}
    extra = sorted(map(str, set(body) - set(known) - {"cmd"}))
    if extra:
        takes = f"it takes {', '.join(map(repr, known))}" if known else "it takes none"
        named = ", ".join(map(shown, extra[:3])) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        raise UsageError(f"{cmd}: unexpected field(s) {named}; {takes}")
    values: dict[str, Any] = {}
    for name, f in known.items():
        if name not in body or body[name] is None:
            continue  # the field's default, or a TypeError below for a required one
        want = _JSON_TYPES[str(f.type)]
        v = body[name]
        # JSON has no separate bool: True is not a count, and 1 is not a yes.
        if not isinstance(v, want) or (want is int and isinstance(v, bool)):
            raise UsageError(f"{cmd}: {name} must be a {want.__name__}, got {type(v).__name__}")
        values[name] = v
    missing = [n for n, f in known.items() if n not in values and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise UsageError(f"{cmd}: missing field(s) {', '.join(map(repr, missing))}")
    return kind(**values)


def ok(**fields_: Any) -> dict[str, Any]:
    return {"ok": True, **fields_}


def refused(error: str) -> dict[str, Any]:
    """A well-formed request the daemon declines: the operator's to fix (the CLI exits 2)."""
    return {"ok": False, "error": error, "refused": True}


def failed(error: str) -> dict[str, Any]:
    """A request the daemon could not carry out (the kernel refused, an error while explaining): exit 1."""
    return {"ok": False, "error": error}
