"""Reason classes: the free text of a block, throttle or tarpit ("holds 30 connections, 28 idle (limit 20)") and of a
mode change, reduced to a small fixed set of words a metric may carry as a label (govern.metrics). The text names
addresses and numbers; a label that carried it would make a new time series for every source.

The classes follow the sentences govern.core.decide, govern.core.aggregate, govern.core.modes and the backends'
start-up adoption write; tests/unit/test_metrics.py holds each of those sentences to a class other than "other".
"""

from __future__ import annotations

from govern.model import ModeState

# Why a source is blocked, throttled or tarpitted.
MANUAL = "manual"  # the operator's `govern block`
CONNECTIONS = "connections"  # over the concurrent-connection limit (throttled, then blocked if still over)
RATE = "rate"  # over the new-connections-a-minute limit
STALLING = "stalling"  # its sessions cut for want of progress again and again in one wave
WAVE_TOP = "wave_top"  # among the wave's most prolific sources, blocked at once
AGGREGATE = "aggregate"  # a prefix blocked whole because many of its sources were
HAMMERING = "hammering"  # a block extended: the source kept trying while blocked
NEARING = "nearing"  # tarpitted: nearing a limit, some sessions silent, while the host is under pressure
ADOPTED = "adopted"  # found in the kernel at start-up, unknown to the store (a crash between two commits)
FLEET = "fleet"  # decided by another host of the fleet (govern.core.fleet), applied here
OTHER = "other"
REASONS = (MANUAL, CONNECTIONS, RATE, STALLING, WAVE_TOP, AGGREGATE, HAMMERING, NEARING, ADOPTED, FLEET, OTHER)
# The classes each kind of entry can have (an extended block keeps the extension's reason); anything else is OTHER.
BLOCK_REASONS = (MANUAL, CONNECTIONS, RATE, STALLING, WAVE_TOP, AGGREGATE, HAMMERING, ADOPTED, FLEET, OTHER)
THROTTLE_REASONS = (CONNECTIONS, RATE, ADOPTED, OTHER)
TARPIT_REASONS = (NEARING, OTHER)

# Why the host is in its mode.
MODE_NONE = "none"  # as first started: nothing has moved the mode yet
MODE_PRESSURE = "pressure"  # the pressure figures reached a threshold (or renewed a wave)
MODE_OPERATOR = "operator"  # `govern wave on` / `govern wave off`
MODE_TIMER = "timer"  # a wave's timer ran out
MODE_CALM = "calm"  # pressure stayed low for `modes.calm_for`: one mode down
MODE_CAUSES = (MODE_NONE, MODE_PRESSURE, MODE_OPERATOR, MODE_TIMER, MODE_CALM, OTHER)

# The phrases of govern.core.modes.measure's figures, any of which names a pressure reason.
_PRESSURE_PHRASES = (
    "accept queue",
    "dropped at a full listen queue",
    "half-open connections",
    "new connections/s",
    "held silent by",
)


def reason_class(reason: str, manual: bool = False) -> str:
    """The class of a block's, throttle's or tarpit's reason; the first limit named wins when several are."""
    if manual or reason.startswith("manual:"):
        return MANUAL
    if reason.startswith("fleet:"):
        return FLEET
    if reason.startswith("found in the kernel"):
        return ADOPTED
    if reason.startswith("wave: among the"):
        return WAVE_TOP
    if reason.startswith("cut "):
        return STALLING
    if reason.startswith("still hammering"):
        return HAMMERING
    if " sources of " in reason and " blocked" in reason:
        return AGGREGATE
    if reason.startswith("holds ") and "under pressure" in reason.split(";", 1)[0]:
        return NEARING
    if reason.startswith("holds "):
        return CONNECTIONS
    if reason.startswith("opened "):
        return RATE
    return OTHER


def mode_cause(m: ModeState) -> str:
    """Why the host is in mode `m`, as one of MODE_CAUSES."""
    r = m.reason
    if m.manual or r.startswith("switched "):
        return MODE_OPERATOR
    if not r:
        return MODE_NONE
    if r.startswith("wave timer ran out"):
        return MODE_TIMER
    if r.startswith("calm for"):
        return MODE_CALM
    if any(p in r for p in _PRESSURE_PHRASES):
        return MODE_PRESSURE
    return OTHER


def family(version: int) -> str:
    return "ipv4" if version == 4 else "ipv6"
