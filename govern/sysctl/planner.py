"""The pure sysctl planner: from what the host must carry (expected sessions, memory) and the values read from the
kernel, a target for every key govern touches, with its reason and what stands in the way.

No I/O here. Two rules hold for every plan and are tested as properties:
- sizes only go up: a size target is never below the value read, so a value the operator set higher is kept;
- only the wave profile lowers anything (SYN-ACK retries, FIN timeout, conntrack's half-open timeouts), and only
  down to its configured value; it also switches tcp_abort_on_overflow on, and the base profile never touches it.
docs/sysctl.md explains every key and formula.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

BASE = "base"
WAVE = "wave"

SOMAXCONN = "net.core.somaxconn"
SYN_BACKLOG = "net.ipv4.tcp_max_syn_backlog"
SYNCOOKIES = "net.ipv4.tcp_syncookies"
NETDEV_BACKLOG = "net.core.netdev_max_backlog"
CONNTRACK_MAX = "net.netfilter.nf_conntrack_max"
CONNTRACK_BUCKETS = "net.netfilter.nf_conntrack_buckets"
SYNACK_RETRIES = "net.ipv4.tcp_synack_retries"
FIN_TIMEOUT = "net.ipv4.tcp_fin_timeout"
MAX_ORPHANS = "net.ipv4.tcp_max_orphans"
CT_SYN_SENT = "net.netfilter.nf_conntrack_tcp_timeout_syn_sent"
CT_SYN_RECV = "net.netfilter.nf_conntrack_tcp_timeout_syn_recv"
ABORT_OVERFLOW = "net.ipv4.tcp_abort_on_overflow"

# Key -> whether each network namespace has its own copy (measured on kernel 6.x; see docs/sysctl.md).
PER_NAMESPACE: dict[str, bool] = {
    SOMAXCONN: True,
    SYN_BACKLOG: True,
    SYNCOOKIES: True,
    NETDEV_BACKLOG: False,
    CONNTRACK_MAX: False,
    CONNTRACK_BUCKETS: False,
    SYNACK_RETRIES: True,
    FIN_TIMEOUT: True,
    MAX_ORPHANS: False,
    CT_SYN_SENT: True,
    CT_SYN_RECV: True,
    ABORT_OVERFLOW: True,
}
KEYS: tuple[str, ...] = tuple(PER_NAMESPACE)
WAVE_KEYS: frozenset[str] = frozenset(
    {SYNCOOKIES, SYNACK_RETRIES, FIN_TIMEOUT, CT_SYN_SENT, CT_SYN_RECV, ABORT_OVERFLOW}
)

# Kernels before 4.x kept a listener's backlog in 16 bits; larger values buy nothing an MX needs.
SOMAXCONN_CAP = 65535
CONNTRACK_ENTRY_BYTES = 320  # struct nf_conn plus its hash node, rounded up (slabtop: nf_conntrack ~ 256-320 B)
ORPHAN_BYTES = 64 * 1024  # the kernel's own worst case for one orphaned socket (ip-sysctl.rst)


class Access(StrEnum):
    """What the reader found at a key's place."""

    WRITABLE = "writable"
    READ_ONLY = "read-only"
    ABSENT = "absent"


class Status(StrEnum):
    """What the plan does with a key."""

    CHANGE = "change"
    KEEP = "keep"
    ABSENT = "absent"
    READ_ONLY = "read-only"
    NOT_IN_NAMESPACE = "not-in-namespace"
    UNREADABLE = "unreadable"
    EXCLUDED = "excluded"


@dataclass(frozen=True)
class Reading:
    """One key as read from the kernel: its text (None when absent) and whether it can be written."""

    raw: str | None
    access: Access
    where: str = ""  # the file it was read from, for messages

    @staticmethod
    def absent() -> Reading:
        return Reading(None, Access.ABSENT)


@dataclass(frozen=True)
class Expectations:
    """What the host must carry, from the [sysctl] config section."""

    sessions: int  # expected peak concurrent SMTP sessions
    memory_bytes: int
    wave_synack_retries: int = 2
    wave_fin_timeout: int = 15
    wave_conntrack_half_open: int = 5
    wave_abort_on_overflow: bool = True
    exclude: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Item:
    """One key of a plan: current -> target, why, and which profile sets it."""

    key: str
    current: int | None
    target: int | None
    status: Status
    reason: str
    profile: str = BASE

    def to_dict(self) -> dict[str, object]:
        return {
            "key": self.key,
            "current": self.current,
            "target": self.target,
            "status": self.status.value,
            "profile": self.profile,
            "reason": self.reason,
        }


def pow2ceil(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def pow2floor(n: int) -> int:
    return 1 if n <= 1 else 1 << (n.bit_length() - 1)


def _clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, v))


# A rule: (current value, expectations, targets planned so far) -> (target, reason).
Rule = Callable[[int, Expectations, Mapping[str, int]], tuple[int, str]]


def _up(cur: int, wanted: int, why: str) -> tuple[int, str]:
    if cur >= wanted:
        return cur, f"{why}; {cur} already >= {wanted}, never lowered"
    return wanted, why


def _somaxconn(cur: int, e: Expectations, _: Mapping[str, int]) -> tuple[int, str]:
    want = _clamp(pow2ceil(e.sessions), 4096, SOMAXCONN_CAP)
    return _up(cur, want, f"accept queue room for a whole peak of {e.sessions} sessions while the MTA catches up")


def _syn_backlog(cur: int, e: Expectations, _: Mapping[str, int]) -> tuple[int, str]:
    want = _clamp(pow2ceil(2 * e.sessions), 4096, 262144)
    return _up(cur, want, f"half-open handshakes for twice the peak ({2 * e.sessions}) before SYN cookies take over")


def _syncookies(cur: int, e: Expectations, _: Mapping[str, int]) -> tuple[int, str]:
    if cur >= 1:
        return cur, "SYN cookies already on when the SYN queue overflows"
    return 1, "SYN cookies when the SYN queue overflows: a SYN flood cannot shut out real senders"


def _netdev(cur: int, e: Expectations, _: Mapping[str, int]) -> tuple[int, str]:
    want = _clamp(pow2ceil(4 * e.sessions), 4096, 65536)
    return _up(cur, want, "per-CPU input queue: absorbs a flood's packet bursts instead of dropping at the device")


def _conntrack_max(cur: int, e: Expectations, _: Mapping[str, int]) -> tuple[int, str]:
    cap = pow2floor(max(e.memory_bytes // 32 // CONNTRACK_ENTRY_BYTES, 1))
    want = min(max(pow2ceil(64 * e.sessions), 65536), cap)
    why = f"64 entries per expected session (SYN_RECV and TIME_WAIT outlive sessions), at most 1/32 of memory ({cap})"
    return _up(cur, want, why)


def _conntrack_buckets(cur: int, e: Expectations, planned: Mapping[str, int]) -> tuple[int, str]:
    entries = planned.get(CONNTRACK_MAX) or _conntrack_max(0, e, planned)[0]
    return _up(cur, pow2ceil(entries), f"one hash bucket (8 bytes) per conntrack entry ({entries}): short chains")


def _max_orphans(cur: int, e: Expectations, _: Mapping[str, int]) -> tuple[int, str]:
    cap = pow2floor(max(e.memory_bytes // 4 // ORPHAN_BYTES, 1))
    want = min(max(pow2ceil(8 * e.sessions), 16384), cap)
    return _up(
        cur, want, f"sessions ended at once leave orphans: 8 per expected session, at most 1/4 of memory ({cap})"
    )


def _keep_outside_wave(cur: int, e: Expectations, _: Mapping[str, int]) -> tuple[int, str]:
    return cur, "lowered only in the wave profile"


def _synrecv_seconds(retries: int) -> int:
    """How long a half-open connection holds its slot: the SYN-ACK timer starts at 1 s, doubles, caps at 120 s."""
    return sum(min(1 << i, 120) for i in range(min(retries, 255) + 1))


def _synack_wave(cur: int, e: Expectations, _: Mapping[str, int]) -> tuple[int, str]:
    want = e.wave_synack_retries
    if cur <= want:
        return cur, f"wave: {cur} SYN-ACK retries already <= {want}"
    return want, f"wave: a spoofed SYN holds its slot ~{_synrecv_seconds(want)}s, not ~{_synrecv_seconds(cur)}s"


def _fin_wave(cur: int, e: Expectations, _: Mapping[str, int]) -> tuple[int, str]:
    want = e.wave_fin_timeout
    if cur <= want:
        return cur, f"wave: FIN timeout {cur}s already <= {want}s"
    return want, f"wave: orphaned FIN_WAIT_2 sockets of ended sessions go after {want}s, not {cur}s"


def _half_open_wave(cur: int, e: Expectations, _: Mapping[str, int]) -> tuple[int, str]:
    want = e.wave_conntrack_half_open
    if cur <= want:
        return cur, f"wave: conntrack forgets half-open connections after {cur}s already"
    return want, (
        f"wave: a connection that never completes (a SYN the full accept queue dropped, a client gone) leaves "
        f"conntrack, and the slot budget's count, after {want}s, not {cur}s"
    )


def _abort_wave(cur: int, e: Expectations, _: Mapping[str, int]) -> tuple[int, str]:
    if cur or not e.wave_abort_on_overflow:
        return cur, "wave: left as it is" if not cur else "wave: a full accept queue already resets the handshake"
    return 1, (
        "wave: a handshake the full accept queue cannot take is reset, not left to lapse in silence: the slot "
        "budget sees the reset and frees its slot at once"
    )


def _syncookies_wave(cur: int, e: Expectations, planned: Mapping[str, int]) -> tuple[int, str]:
    target, why = _syncookies(cur, e, planned)
    return target, "wave: " + why


BASE_RULES: dict[str, Rule] = {
    SOMAXCONN: _somaxconn,
    SYN_BACKLOG: _syn_backlog,
    SYNCOOKIES: _syncookies,
    NETDEV_BACKLOG: _netdev,
    CONNTRACK_MAX: _conntrack_max,
    CONNTRACK_BUCKETS: _conntrack_buckets,
    SYNACK_RETRIES: _keep_outside_wave,
    FIN_TIMEOUT: _keep_outside_wave,
    MAX_ORPHANS: _max_orphans,
    CT_SYN_SENT: _keep_outside_wave,
    CT_SYN_RECV: _keep_outside_wave,
    ABORT_OVERFLOW: lambda cur, _e, _p: (cur, "switched on in the wave profile only"),
}
WAVE_RULES: dict[str, Rule] = {
    SYNCOOKIES: _syncookies_wave,
    SYNACK_RETRIES: _synack_wave,
    FIN_TIMEOUT: _fin_wave,
    CT_SYN_SENT: _half_open_wave,
    CT_SYN_RECV: _half_open_wave,
    ABORT_OVERFLOW: _abort_wave,
}


def parse_value(raw: str | None) -> int | None:
    """A single-integer sysctl's value, or None if the text is not one."""
    if raw is None:
        return None
    try:
        return int(raw.strip())
    except ValueError:
        return None


def plan(
    readings: Mapping[str, Reading], expect: Expectations, *, in_initial_namespace: bool, wave: bool = False
) -> tuple[Item, ...]:
    """Every key govern knows, in a fixed order. With `wave`, the wave profile's targets are layered on the base."""
    planned: dict[str, int] = {}
    items: list[Item] = []
    for key in KEYS:
        profile = WAVE if wave and key in WAVE_RULES else BASE
        rule = WAVE_RULES[key] if profile == WAVE else BASE_RULES[key]
        items.append(
            _one(key, readings.get(key, Reading.absent()), expect, in_initial_namespace, rule, profile, planned)
        )
    return tuple(items)


def _one(
    key: str,
    r: Reading,
    expect: Expectations,
    initial: bool,
    rule: Rule,
    profile: str,
    planned: dict[str, int],
) -> Item:
    if key in expect.exclude:
        return Item(key, parse_value(r.raw), None, Status.EXCLUDED, "excluded by sysctl.exclude", profile)
    global_key = not PER_NAMESPACE[key]
    if r.access is Access.ABSENT:
        if global_key and not initial:
            why = "host-wide key, absent inside this network namespace: set it from the host"
            return Item(key, None, None, Status.NOT_IN_NAMESPACE, why, profile)
        return Item(key, None, None, Status.ABSENT, _absent_reason(key), profile)
    cur = parse_value(r.raw)
    if cur is None:
        return Item(key, None, None, Status.UNREADABLE, f"not a whole number: {r.raw!r}", profile)
    target, why = rule(cur, expect, planned)
    planned[key] = target
    if r.access is Access.READ_ONLY:
        where = (
            "host-wide: only the initial network namespace may set it" if global_key and not initial else "read-only"
        )
        want = f"; would be {target}" if target != cur else ""
        return Item(key, cur, target, Status.READ_ONLY, f"{where}{want} ({why})", profile)
    return Item(key, cur, target, Status.CHANGE if target != cur else Status.KEEP, why, profile)


def _absent_reason(key: str) -> str:
    if key.startswith("net.netfilter."):
        return "nf_conntrack is not loaded: no connection tracking to size"
    return "this kernel has no such key"


def changes(items: tuple[Item, ...], profile: str) -> tuple[Item, ...]:
    """The items a profile writes."""
    return tuple(i for i in items if i.status is Status.CHANGE and i.profile == profile)
