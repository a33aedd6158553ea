"""The decision core's view of the config: what `decide` and its helpers judge by, in the units they compute with.

The config loader (govern.config) builds a Policy from the operator's file; nothing here reads a file or knows TOML.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from govern.addr import PrefixSet


@dataclass(frozen=True)
class ModePolicy:
    """When the host is under pressure: each threshold as (elevated, wave)."""

    auto: bool = True
    queue_fill: tuple[float, float] = (0.5, 0.9)
    listen_drops: tuple[int, int] = (10, 100)  # per second
    syn_recv: tuple[int, int] = (256, 2048)
    attempts: tuple[int, int] = (300, 1500)  # per second
    idle_share: tuple[float, float] = (0.5, 0.8)
    budget_fill: tuple[float, float] = (0.8, 1.0)  # share of the slot budget strangers hold
    min_sessions: int = 20
    exit_ratio: float = 0.5
    calm_for: float = 60.0
    wave_duration: float = 1800.0


@dataclass(frozen=True)
class Policy:
    """What the pure decision core needs of the config, in the units it computes with (seconds, counts)."""

    ports: frozenset[int]
    v4_len: int
    v6_len: int
    allow: PrefixSet
    max_connections: int
    max_new_per_minute: int
    idle_after: float
    throttle_duration: float
    escalate_after: float
    block_duration: float
    max_block_duration: float
    forget_after: float
    modes: ModePolicy = field(default_factory=ModePolicy)
    wave_top_n: int = 50
    wave_max_connections: int = 10
    wave_max_new_per_minute: int = 30
    cut_idle_after: tuple[float, float] | None = (30.0, 3.0)  # (elevated, wave) no progress; None: never cut
    cut_block_after: int = 2  # a stranger cut this many times in one wave is blocked
    aggregate: Mapping[int, tuple[int, int]] = field(default_factory=dict)  # version -> (prefix length, min blocked)
    trust_factor: int = 1  # limits are this many times higher for sources that delivered recently
    tarpit_duration: float = 600.0
    tarpit_max: int = 0  # 0: no tarpit (disabled, or the host cannot)
    slot_budget: int = 0  # sessions strangers may hold in a wave (the kernel's slot budget); 0: none enforced
    slot_crowds: int = 0  # ... of which the crowds' part of the first contacts' lane (govern.nft.ruleset)
    end_sessions: bool = True  # a newly blocked source's open sessions are ended, not only its new connections
    greet_floor: float = 0.0  # no session is cut or shed sooner after the greeting (postscreen's pregreet wait + 1 s)
    # ... but one whose client talked during that wait: postscreen enforces its pregreet test, and the session is
    # lost already (postscreen answers it nothing but rejections).
    pregreet_cut: bool = False
    # Over the budget, a session given only the greeting and silent this long is shed: (a source holding several,
    # a source's only one).
    shed_after: tuple[float, float] = (1.0, 2.0)
    # In a wave, a stranger's session whose server answered this many commands while its client sent no message is
    # shed (govern.model.loops) while strangers hold more than the budget or fill it; 0: never.
    loop_replies: int = 6
    # ... and, in the same cases, one greeted this long ago (seconds) whose client sent no message and keeps the server
    # waiting, whatever its pace or encryption (govern.model.no_message); 0: never.
    loop_after: float = 10.0
    # govern.core.guard: nothing punished is wider than this per IP version, nor covers one of `own` (this host's
    # addresses, filled in by the daemon) or loopback.
    widest: Mapping[int, int] = field(default_factory=lambda: {4: 16, 6: 32})
    own: PrefixSet = field(default_factory=PrefixSet)
