"""The allowlist and trust edges' own sections of the config, typed (built by govern.config.Config): what each
reads of the config, and nothing else."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from govern.addr import Prefix


@dataclass(frozen=True)
class AllowSpec:
    cidrs: tuple[Prefix, ...]
    files: tuple[str, ...]
    hosts: tuple[str, ...]
    spf_domains: tuple[str, ...]
    refresh: float  # seconds: hostnames, SPF and the MTA's networks are read again at least this often
    min_refresh: float  # and at most this often, however short a DNS TTL
    mta_networks: bool
    guard: Mapping[str, int]  # `[guard]`: the widest prefix an entry may be (govern.config.too_wide_to_allow)


@dataclass(frozen=True)
class TrustSpec:
    learn_for: float  # seconds a delivery keeps its source trusted
    factor: int
    postfix_log: str  # "" : none
    v4_len: int
    v6_len: int
