"""The configuration: its schema with an embedded default for every key, loading and validation, and the
`Policy` the pure core is given.

A config file only overrides what it names. Every error names the file, the key and the problem; a config that
fails validation is never partly used.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from govern.addr import Prefix, PrefixSet
from govern.allow import files as allow_files
from govern.allow.names import domains
from govern.allow.spec import AllowSpec, TrustSpec
from govern.checks import items
from govern.checks import typename as _typename
from govern.core.policy import ModePolicy, Policy
from govern.durations import format_duration, parse_duration
from govern.errors import AddressError, ConfigError, shown
from govern.model import FirewallSpec
from govern.readfile import read_regular, size_text

DEFAULT_PATH = "/etc/govern/govern.toml"

# What a config may hold (docs/configuration.md, "Limits"): generous for any real config, and small enough that a
# malformed or hostile file is refused at once instead of exhausting memory, the stack or the CPU.
MAX_CONFIG_BYTES = 1 << 20
MAX_ALLOW_FILE_BYTES = allow_files.MAX_BYTES
MAX_DEPTH = 4  # the file, a section, a key's list, an item: nothing of govern's nests deeper
MAX_ITEMS = 10_000  # per list; longer allowlists belong in allow.files
MAX_STRING = 4096  # PATH_MAX: no value of govern's is longer
MAX_KEY = 64
MAX_FLOAT_TEXT = 40  # characters of a float as written
INT_RANGE = (-(1 << 63), (1 << 63) - 1)  # TOML's integers are 64-bit
# Where a state directory or a socket cannot live: the kernel's own file systems.
VIRTUAL_FS = ("/proc", "/sys", "/dev")
SUN_PATH_MAX = 107  # AF_UNIX's sun_path is 108 bytes, the last one its NUL


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected a whole number, got {_typename(v)}")
        if not lo <= v <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {v}")
        return v

    return check


def _duration(lo: float, hi: float) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        s = parse_duration(v)
        if not lo <= s <= hi:
            raise ValueError(f"must be between {format_duration(lo)} and {format_duration(hi)}, got {shown(v)}")
        return s

    return check


def _duration_or_off(lo: float, hi: float) -> Callable[[Any], float]:
    """A duration between lo and hi, or 0 ("0", "0s", "off"): off."""
    inner = _duration(lo, hi)

    def check(v: Any) -> float:
        if v in (0, "0", "0s", "off"):
            return 0.0
        return inner(v)

    return check


def _ratio(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"expected a number between 0 and 1, got {_typename(v)}")
    if not 0 < v <= 1:
        raise ValueError(f"must be more than 0 and at most 1, got {v}")
    return float(v)


_share = _ratio


def _share0(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"expected a number between 0 and 1, got {_typename(v)}")
    if not 0 <= v < 1:
        raise ValueError(f"must be at least 0 and less than 1, got {v}")
    return float(v)


def _budget(v: Any) -> int | str:
    """`wave.slot_budget`: "auto", or a number of slots (0: no budget)."""
    if v == "auto":
        return "auto"
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f'expected "auto" or a whole number of slots, got {_typename(v)}')
    if not 0 <= v <= 10_000_000:
        raise ValueError(f"must be between 0 and 10000000, got {v}")
    return v


def _greet_wait(v: Any) -> float | str:
    """`cut.greet_wait`: "auto" (postscreen's default wait when postscreen holds the port, else none) or a duration."""
    if v == "auto":
        return "auto"
    if v == 0 or v == "0s":
        return 0.0
    return _duration(0, 300)(v)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {_typename(v)}")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"expected a non-empty string, got {_typename(v)}")
    return v


def _abs_path(v: Any) -> str:
    s = _str(v)
    if not s.startswith("/"):
        raise ValueError(f"expected an absolute path, got {shown(s)}")
    if "\0" in s:
        raise ValueError("a path cannot contain a NUL character")
    if not s.isprintable():  # a newline or an escape would forge lines in the log and in `config show`
        raise ValueError(f"{shown(s)} contains a control character")
    try:
        raw = os.fsencode(s)
    except UnicodeEncodeError:
        raise ValueError(f"{shown(s)} cannot be encoded as a file name") from None
    if len(raw) >= 4096:
        raise ValueError("a path must be shorter than 4096 bytes (PATH_MAX)")
    return s


def _outside_virtual_fs(s: str) -> str:
    """A path that lies outside /proc, /sys and /dev, where no file of govern's can be created."""
    real = os.path.realpath(s)
    for top in VIRTUAL_FS:
        if real == top or real.startswith(top + "/"):
            raise ValueError(f"{shown(s)} is under {top}, a kernel file system where govern cannot keep files")
    return s


def _state_dir(v: Any) -> str:
    return _outside_virtual_fs(_abs_path(v))


def _socket_path(v: Any) -> str:
    s = _outside_virtual_fs(_abs_path(v))
    if len(os.fsencode(s)) > SUN_PATH_MAX:
        raise ValueError(f"a unix socket's path is at most {SUN_PATH_MAX} bytes, got {len(os.fsencode(s))}")
    if s.endswith("/"):
        raise ValueError(f"expected the socket's file name, got the directory {shown(s)}")
    return s


def _abs_path_or_off(v: Any) -> str:
    if v == "":
        return ""
    return _abs_path(v)


def _log_path(v: Any) -> str:
    """`trust.postfix_log`: "auto" (the running Postfix's log), an absolute path, or "" (off)."""
    return "auto" if v == "auto" else _abs_path_or_off(v)


def _bool_or_auto(v: Any) -> bool | str:
    if v == "auto":
        return "auto"
    if not isinstance(v, bool):
        raise ValueError(f'expected "auto", true or false, got {_typename(v)}')
    return v


def _ports(v: Any) -> tuple[int, ...]:
    if isinstance(v, list) and not v:
        raise ValueError("expected a non-empty list of TCP ports, e.g. [25, 465, 587]")
    return items(v, "TCP ports, e.g. [25, 465, 587]", _port, twice=lambda p: f"port {p} is listed twice")


def _port(p: Any) -> int:
    if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535:
        raise ValueError(f"{shown(p)} is not a TCP port (1-65535)")
    return p


def _cidrs(v: Any) -> tuple[Prefix, ...]:
    return items(v, "addresses or prefixes", _cidr)


def _cidr(item: Any) -> Prefix:
    if not isinstance(item, str):
        raise ValueError(f"expected an address string, got {_typename(item)}")
    try:
        return Prefix.parse(item, strict=True)
    except AddressError as exc:
        raise ValueError(str(exc)) from None


def _paths(v: Any) -> tuple[str, ...]:
    return items(v, "file paths", _abs_path)


def _ifnames(v: Any) -> tuple[str, ...]:
    return items(v, "interface names", _ifname, twice=lambda name: f"interface {name} is listed twice")


def _ifname(item: Any) -> str:
    # The kernel's rule for a name: 1-15 bytes, no '/', ':' or whitespace.
    if (
        not isinstance(item, str)
        or not item.isprintable()
        or not 0 < len(item.encode()) < 16
        or any(c in item for c in "/: ")
    ):
        raise ValueError(f"{shown(item)} is not an interface name")
    return item


def _choice(*allowed: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        s = _str(v)
        if s not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}; got {shown(v)}")
        return s

    return check


def _level(v: Any) -> str:
    s = _str(v).lower()
    if s not in ("debug", "info", "warning", "error"):
        raise ValueError(f"expected one of debug, info, warning, error; got {shown(v)}")
    return s


def _sysctl_keys(v: Any) -> frozenset[str]:
    from govern.sysctl.planner import KEYS

    def known(item: Any) -> str:
        if item not in KEYS:
            raise ValueError(f"{shown(item)} is not a key govern tunes (known: {', '.join(KEYS)})")
        return str(item)

    return frozenset(items(v, "sysctl names", known))


def _listen_or_off(v: Any) -> str:
    """'' (off), 'HOST:PORT' or '[V6]:PORT'."""
    if v == "":
        return ""
    s = _str(v)
    host, sep, port = s.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:8025 or [::1]:8025), got {shown(s)}")
    try:
        Prefix.parse(host.strip("[]"), strict=True)
    except AddressError:
        raise ValueError(f"{shown(host)} is not an IP address; govern listens on an address, not a name") from None
    return s


FLEET_KINDS = ("blocks", "trust")


def _fleet_url(v: Any) -> str:
    """'' (off), or a Redis URL govern.fleet.url takes: redis://, rediss:// (TLS), unix:// (a socket's path),
    redis+cluster:// or redis+sentinel:// (and their rediss+ forms)."""
    if v == "":
        return ""
    s = _str(v)
    from govern.fleet.url import parse

    parse(s)
    return s


def _host_name(v: Any) -> str:
    """`fleet.name`: '' (this host's name) or a name other hosts see on the blocks it shares."""
    if v == "":
        return ""
    s = _str(v)
    if len(s) > 64 or not all(c.isalnum() or c in "-._" for c in s) or not s.isascii():
        raise ValueError(f"expected up to 64 letters, digits, '-', '.' or '_', got {shown(s)}")
    return s


def _fleet_kinds(v: Any) -> tuple[str, ...]:
    def known(item: Any) -> str:
        if item not in FLEET_KINDS:
            raise ValueError(f"{shown(item)} is not something a fleet shares (known: {', '.join(FLEET_KINDS)})")
        return str(item)

    return items(v, "kinds of decision", known, twice=lambda k: f"{k} is listed twice")


def _namespace(v: Any) -> str:
    s = _str(v)
    if len(s) > 64 or not s.isascii() or not all(c.isalnum() or c in "-._:" for c in s):
        raise ValueError(f"expected up to 64 letters, digits, '-', '.', '_' or ':', got {shown(s)}")
    return s


@dataclass(frozen=True)
class Key:
    default: Any
    check: Callable[[Any], Any]
    doc: str


SCHEMA: dict[str, dict[str, Key]] = {
    "protect": {
        "ports": Key([25, 465, 587], _ports, "TCP ports govern watches and protects; its rules match nothing else"),
        "ipv4_prefix": Key(32, _int(8, 32), "IPv4 sources are counted and blocked per prefix of this length"),
        "ipv6_prefix": Key(64, _int(16, 128), "IPv6 sources are counted and blocked per prefix of this length"),
    },
    "allow": {
        "cidrs": Key([], _cidrs, "addresses or prefixes govern never throttles or blocks"),
        "files": Key([], _paths, "files with one address or prefix per line; '#' starts a comment"),
        # -- dynamic allowlist sources (govern.allow)
        "hosts": Key([], domains("hostnames"), "hostnames whose A and AAAA addresses are allowlisted"),
        "spf_domains": Key([], domains("domains"), "domains whose SPF record's sending ranges are allowlisted"),
        "mta_networks": Key(True, _bool, "the MTA's own relays (Postfix's mynetworks) are allowlisted"),
        "refresh": Key("1h", _duration(60, 7 * 86400), "hostnames and SPF are resolved again at least this often"),
        "min_refresh": Key("5m", _duration(10, 7 * 86400), "and at most this often, however short their DNS TTL"),
    },
    "trust": {
        "learn_for": Key("7d", _duration(60, 365 * 86400), "a source that completed a delivery is trusted this long"),
        "factor": Key(4, _int(1, 1000), "a trusted source's limits are multiplied by this"),
        "postfix_log": Key(
            "auto",
            _log_path,
            "Postfix log to learn completed deliveries from; auto: the log of the Postfix holding a protected port "
            "(its maillog_file, else /var/log/mail.log); empty: off",
        ),
        "from_sessions": Key(
            "auto",
            _bool_or_auto,
            "the kernel counts the MTA's replies as proof (a dialogue, not a delivery); auto: only where no Postfix "
            "log is followed",
        ),
    },
    "limits": {
        "max_connections_per_source": Key(20, _int(1, 1_000_000), "concurrent sockets on protected ports, per source"),
        "max_new_per_minute": Key(60, _int(1, 10_000_000), "new connections per source per minute"),
        "idle_after": Key("10s", _duration(0.1, 86400.0), "server waiting this long on a silent client: idle"),
    },
    "throttle": {
        "rate_per_minute": Key(20, _int(1, 1_000_000), "new connections a throttled source may open per minute"),
        "burst": Key(5, _int(1, 1_000_000), "connections a throttled source may open at once before its rate applies"),
        "duration": Key("10m", _duration(1, 30 * 86400), "how long a throttle lasts unless the source is blocked"),
        "escalate_after": Key("5s", _duration(0, 86400), "a throttled source still over a limit this long is blocked"),
    },
    "block": {
        "duration": Key("10m", _duration(1, 365 * 86400), "first block; each repeat offence doubles it"),
        "max_duration": Key("24h", _duration(1, 365 * 86400), "the longest automatic block"),
        "forget_after": Key("7d", _duration(1, 365 * 86400), "offences older than this no longer lengthen blocks"),
        "end_sessions": Key(True, _bool, "destroy a blocked source's sockets and conntrack entries at once"),
    },
    "modes": {
        "auto": Key(True, _bool, "enter elevated and wave modes by themselves when the host is under pressure"),
        "elevated_queue_fill": Key(0.5, _ratio, "a listener's accept queue this full (share of its backlog): elevated"),
        "wave_queue_fill": Key(0.9, _ratio, "a listener's accept queue this full: wave"),
        "elevated_listen_drops": Key(10, _int(1, 10_000_000), "connections the kernel dropped at a full queue, per s"),
        "wave_listen_drops": Key(100, _int(1, 10_000_000), "listen drops per second that start a wave"),
        "elevated_syn_recv": Key(256, _int(1, 10_000_000), "half-open connections (SYN_RECV) that mean elevated"),
        "wave_syn_recv": Key(2048, _int(1, 10_000_000), "half-open connections that start a wave"),
        "elevated_attempts": Key(300, _int(1, 100_000_000), "new connections a second from non-allowlisted sources"),
        "wave_attempts": Key(1500, _int(1, 100_000_000), "new connections a second that start a wave"),
        "elevated_idle_share": Key(0.5, _ratio, "share of sessions idle and held by non-allowlisted sources: elevated"),
        "wave_idle_share": Key(0.8, _ratio, "share of sessions idle and held by non-allowlisted sources: wave"),
        "elevated_budget_fill": Key(0.8, _ratio, "share of the slot budget strangers hold that means elevated"),
        "wave_budget_fill": Key(1.0, _ratio, "share of the slot budget strangers hold that starts a wave"),
        "min_sessions": Key(20, _int(1, 10_000_000), "fewer sessions than this never count as idle pressure"),
        "exit_ratio": Key(0.5, _ratio, "a mode holds while pressure stays above its entry thresholds times this"),
        "calm_for": Key("1m", _duration(1, 86400), "pressure below what holds a mode this long: one mode down"),
        "wave_duration": Key("30m", _duration(10, 7 * 86400), "a wave ends by itself after this unless renewed"),
    },
    "wave": {
        "top_n": Key(50, _int(0, 1_000_000), "in a wave, this many of the most prolific sources are blocked at once"),
        "max_connections_per_source": Key(10, _int(1, 1_000_000), "concurrent sockets per source during a wave"),
        "max_new_per_minute": Key(30, _int(1, 10_000_000), "new connections per source per minute during a wave"),
        "throttle_rate_per_minute": Key(4, _int(1, 1_000_000), "new connections a source throttled in a wave may open"),
        "throttle_burst": Key(2, _int(1, 1_000_000), "connections such a source may open at once"),
        "slot_budget": Key("auto", _budget, "MTA slots strangers may hold; auto: budget_share of the MTA's"),
        "budget_before_wave": Key(
            True, _bool, "before a wave the slot budget caps strangers too, and a full budget calls the wave"
        ),
        "budget_share": Key(0.6, _share, "share of the MTA's slots (its listen backlog) strangers get with auto"),
        "newcomer_share": Key(0.34, _share0, "share of the budget kept for sources first seen in the wave"),
        "mta_slots": Key(0, _int(0, 10_000_000), "the MTA's slots (processes); 0: read its listener's backlog"),
        "gate_rate_per_second": Key(0, _int(0, 1_000_000), "new connections a second from strangers; 0: no gate"),
        "gate_burst": Key(20, _int(1, 1_000_000), "such connections let through at once before that rate applies"),
    },
    "cut": {
        "enabled": Key(True, _bool, "under pressure, end sessions that do not advance (silent, dripping, babbling)"),
        "elevated_idle_after": Key("30s", _duration(1, 86400), "no progress this long in elevated mode: cut"),
        "wave_idle_after": Key("3s", _duration(1, 86400), "no progress this long during a wave: the session is cut"),
        "shed_after": Key(
            "1s",
            _duration(0.1, 60),
            "over the budget in a wave, a session of a stranger holding several"
            " silent this long after the greeting alone is shed",
        ),
        "shed_single_after": Key(
            "2s", _duration(0.1, 60), "the same for a stranger's only session (a slow MTA's pause)"
        ),
        "loop_replies": Key(
            6,
            _int(0, 1000),
            "in a wave while strangers fill the slot budget, a stranger's session whose server answered this many"
            " commands with no message from its client is shed (0: never)",
        ),
        "loop_after": Key(
            "10s",
            _duration_or_off(1, 3600),
            "the same for a stranger's session greeted this long ago whose client sent no message and keeps the server"
            " waiting, whatever its pace or encryption (0: never)",
        ),
        "block_after": Key(2, _int(1, 1000), "a stranger cut this many times in one wave is blocked"),
        "greet_wait": Key("auto", _greet_wait, "silence the MTA asks before its banner (postscreen); auto: detect"),
        "pregreet": Key(
            "auto",
            _choice("auto", "cut", "wait"),
            "a client talking during that wait: cut like any stalled one, or wait; auto: cut where postscreen"
            " enforces its pregreet test (postscreen_greet_action enforce or drop)",
        ),
    },
    "guard": {
        "ipv4_widest": Key(16, _int(8, 32), "no block, throttle or tarpit covers an IPv4 prefix wider than this"),
        "ipv6_widest": Key(32, _int(16, 128), "no block, throttle or tarpit covers an IPv6 prefix wider than this"),
        "allow_ipv4_widest": Key(
            8, _int(1, 32), "no allowlist entry wider than this IPv4 prefix (govern allow --force)"
        ),
        "allow_ipv6_widest": Key(16, _int(1, 128), "no allowlist entry wider than this IPv6 prefix (same)"),
    },
    "aggregate": {
        "enabled": Key(True, _bool, "block a whole prefix when many of its addresses are blocked"),
        "ipv4_prefix": Key(24, _int(8, 31), "IPv4 blocks are gathered into prefixes of this length"),
        "ipv4_min_blocked": Key(8, _int(2, 1 << 24), "blocked addresses in one such prefix that block all of it"),
        "ipv6_prefix": Key(48, _int(16, 127), "IPv6 blocks are gathered into prefixes of this length"),
        "ipv6_min_blocked": Key(8, _int(2, 1 << 24), "blocked sources in one such prefix that block all of it"),
    },
    "tarpit": {
        "enabled": Key(True, _bool, "under pressure, slow the replies to sources nearing a limit"),
        "duration": Key("10m", _duration(1, 86400), "how long a source stays tarpitted"),
        "max_sources": Key(200, _int(0, 100_000), "at most this many sources tarpitted at once"),
        "delay": Key("2s", _duration(0.05, 60), "each reply to a tarpitted source waits this long behind the last"),
        "buckets": Key(64, _int(1, 256), "tarpitted sources share this many queues, spread by a hash of the source"),
        "interfaces": Key([], _ifnames, "interfaces whose replies are slowed; empty: every non-loopback interface"),
    },
    "export": {
        "local_prefixes": Key([], _cidrs, "never exported, besides the host's own addresses (read from the kernel)"),
        "destinations": Key([], _cidrs, "our MX addresses a FlowSpec rule matches; empty: the host's global ones"),
        "max_entries": Key(1000, _int(1, 1_000_000), "at most this many prefixes are exported"),
        "min_ipv4_prefix": Key(16, _int(8, 32), "no IPv4 prefix wider than this length is exported"),
        "min_ipv6_prefix": Key(32, _int(16, 128), "no IPv6 prefix wider than this length is exported"),
        "min_age": Key("5m", _duration(1, 30 * 86400), "a block is exported once it has lasted this long, or"),
        "min_offences": Key(2, _int(1, 1_000_000), "once its source has this many offences"),
        "aggregate": Key(True, _bool, "merge adjacent exported prefixes into their common prefix"),
        "rate_limit": Key(0, _int(0, 1 << 40), "FlowSpec action: 0 discards, else rate-limit to this many bytes/s"),
        "poll": Key("1s", _duration(0.1, 60), "how often `govern export --follow` asks the daemon for the blocks"),
        "listen": Key("", _listen_or_off, "HOST:PORT the daemon serves the pull feed on; empty: no feed"),
        "token_file": Key("", _abs_path_or_off, "file holding the feed's bearer token (mode 0600)"),
    },
    # -- the Prometheus endpoint (govern.metrics, docs/metrics.md)
    "metrics": {
        "listen": Key("", _listen_or_off, "HOST:PORT the daemon serves Prometheus /metrics on; empty: off"),
    },
    # -- the fleet: decisions shared with other MX hosts through Redis (govern.fleet, docs/fleet.md)
    "fleet": {
        "url": Key("", _fleet_url, "the Redis decisions are shared through (redis://, rediss://, unix://); empty: off"),
        "name": Key("", _host_name, "this host's name on the decisions it shares; empty: the hostname"),
        "key_file": Key("", _abs_path_or_off, "the fleet's shared secret that signs every decision (root's, 0600)"),
        "share": Key(["blocks"], _fleet_kinds, "what this host publishes to the fleet: blocks, trust"),
        "accept": Key(["blocks"], _fleet_kinds, "what this host applies of what others publish: blocks, trust"),
        "namespace": Key("govern", _namespace, "prefix of the Redis keys: fleets sharing one Redis each take one"),
    },
    "daemon": {
        "tick": Key("1s", _duration(0.1, 60), "how often govern observes, decides and acts"),
        "wave_tick": Key("500ms", _duration(0.1, 60), "how often in a wave: cuts and shedding answer a flood sooner"),
        "calm_scan_every": Key(
            3, _int(1, 60), "in normal mode, walk the sockets every this many ticks (every tick under pressure)"
        ),
        "queue_poll": Key(
            "250ms", _duration_or_off(0.05, 10), "how often the accept queues are read between ticks; 0: never"
        ),
        "state_dir": Key("/var/lib/govern", _state_dir, "durable state: active blocks, throttles, events"),
        "socket": Key("/run/govern/govern.sock", _socket_path, "root-only control socket the CLI talks to"),
        "dry_run": Key(False, _bool, "log every plan instead of enforcing it (counting still runs in the kernel)"),
        "log_level": Key("info", _level, "debug, info, warning or error"),
    },
    # -- backend selection (govern.wiring): which firewall enforces, and the XDP fast path in front of it
    "backend": {
        "firewall": Key("nftables", _choice("nftables", "iptables", "dry-run"), "nftables, iptables or dry-run"),
        "xdp": Key(False, _bool, "also drop blocked sources in XDP, before the kernel builds a packet buffer"),
        "xdp_interfaces": Key([], _ifnames, "interfaces the XDP program is attached to"),
        "xdp_pin_root": Key("/sys/fs/bpf/govern", _abs_path, "where the XDP program's maps are pinned (bpffs)"),
        "xdp_object": Key("", _abs_path_or_off, "the compiled XDP object; empty: the one the package carries"),
        "socket_scan": Key(
            "auto",
            _choice("auto", "sock_diag"),
            "auto: each tick's socket scan through the BPF socket iterator where it loads, else sock_diag; sock_diag",
        ),
    },
    "sysctl": {
        "expected_sessions": Key(2000, _int(1, 10_000_000), "peak concurrent SMTP sessions the host must carry"),
        "memory_mb": Key(0, _int(0, 1 << 30), "memory the sizes may count on, in MiB; 0 reads MemTotal"),
        "apply_at_start": Key(True, _bool, "the daemon applies the base profile when it starts"),
        "restore_at_shutdown": Key(False, _bool, "the daemon puts every sysctl back when it stops"),
        "wave_synack_retries": Key(2, _int(1, 5), "SYN-ACK retries during a wave (lowered only, never raised)"),
        "wave_fin_timeout": Key(15, _int(1, 60), "FIN_WAIT_2 timeout in seconds during a wave (lowered only)"),
        "wave_conntrack_half_open": Key(5, _int(1, 120), "conntrack's SYN_SENT/SYN_RECV timeouts during a wave, s"),
        "wave_abort_on_overflow": Key(True, _bool, "reset handshakes a full accept queue cannot take, during a wave"),
        "exclude": Key([], _sysctl_keys, "sysctls govern must leave alone"),
        "root": Key("/proc/sys", _abs_path, "where sysctls are read and written (tests point it elsewhere)"),
        "modules_root": Key("/sys/module", _abs_path, "where module parameters (nf_conntrack hashsize) live"),
    },
}


@dataclass(frozen=True)
class Config:
    """The effective configuration: every key's value after defaults, file and validation."""

    values: Mapping[str, Mapping[str, Any]]  # section -> key -> validated value
    raw: Mapping[str, Mapping[str, Any]]  # section -> key -> value as written (or default), for `config show`
    path: str | None  # the file it came from, None for the embedded defaults
    allow_from_files: tuple[Prefix, ...] = ()

    def __getitem__(self, section: str) -> Mapping[str, Any]:
        return self.values[section]

    def firewall(self) -> FirewallSpec:
        """The firewall edges' section: only what their kernel objects are made from."""
        protect, thr, wave = self["protect"], self["throttle"], self["wave"]
        return FirewallSpec(
            ports=tuple(protect["ports"]),
            v4_len=protect["ipv4_prefix"],
            v6_len=protect["ipv6_prefix"],
            throttle_rate=thr["rate_per_minute"],
            throttle_burst=thr["burst"],
            tight_rate=wave["throttle_rate_per_minute"],
            tight_burst=wave["throttle_burst"],
            gate_rate=wave["gate_rate_per_second"],
            gate_burst=wave["gate_burst"],
            slot_budget=wave["slot_budget"],
            budget_share=wave["budget_share"],
            newcomer_share=wave["newcomer_share"],
            proof=self["trust"]["from_sessions"] is not False,  # unresolved "auto": counted, as before the MTA is read
            budget_before_wave=wave["budget_before_wave"],
        )

    def allow_section(self) -> AllowSpec:
        """The allowlist edge's section (govern.allow.sources)."""
        a = self["allow"]
        return AllowSpec(
            cidrs=tuple(a["cidrs"]),
            files=tuple(a["files"]),
            hosts=tuple(a["hosts"]),
            spf_domains=tuple(a["spf_domains"]),
            refresh=a["refresh"],
            min_refresh=a["min_refresh"],
            mta_networks=a["mta_networks"],
            guard=dict(self["guard"]),
        )

    def trust_section(self) -> TrustSpec:
        """The learned-trust edge's section (govern.allow.learning)."""
        t, pro = self["trust"], self["protect"]
        log = "" if t["postfix_log"] == "auto" else t["postfix_log"]  # unresolved: nothing followed yet
        return TrustSpec(t["learn_for"], t["factor"], log, pro["ipv4_prefix"], pro["ipv6_prefix"])

    def allowlist(self) -> tuple[Prefix, ...]:
        return tuple(self.values["allow"]["cidrs"]) + self.allow_from_files

    def policy(self, extra_allow: tuple[Prefix, ...] = ()) -> Policy:
        lim, thr, blk, pro = self["limits"], self["throttle"], self["block"], self["protect"]
        md, wv, cut, agg = self["modes"], self["wave"], self["cut"], self["aggregate"]
        return Policy(
            ports=frozenset(pro["ports"]),
            v4_len=pro["ipv4_prefix"],
            v6_len=pro["ipv6_prefix"],
            allow=PrefixSet(self.allowlist() + extra_allow),
            widest={4: self["guard"]["ipv4_widest"], 6: self["guard"]["ipv6_widest"]},
            max_connections=lim["max_connections_per_source"],
            max_new_per_minute=lim["max_new_per_minute"],
            idle_after=lim["idle_after"],
            throttle_duration=thr["duration"],
            escalate_after=thr["escalate_after"],
            block_duration=blk["duration"],
            max_block_duration=blk["max_duration"],
            forget_after=blk["forget_after"],
            modes=ModePolicy(
                auto=md["auto"],
                queue_fill=(md["elevated_queue_fill"], md["wave_queue_fill"]),
                listen_drops=(md["elevated_listen_drops"], md["wave_listen_drops"]),
                syn_recv=(md["elevated_syn_recv"], md["wave_syn_recv"]),
                attempts=(md["elevated_attempts"], md["wave_attempts"]),
                idle_share=(md["elevated_idle_share"], md["wave_idle_share"]),
                budget_fill=(md["elevated_budget_fill"], md["wave_budget_fill"]),
                min_sessions=md["min_sessions"],
                exit_ratio=md["exit_ratio"],
                calm_for=md["calm_for"],
                wave_duration=md["wave_duration"],
            ),
            wave_top_n=wv["top_n"],
            wave_max_connections=wv["max_connections_per_source"],
            wave_max_new_per_minute=wv["max_new_per_minute"],
            cut_idle_after=_cut_after(cut) if cut["enabled"] else None,
            greet_floor=_greet_floor(cut),
            pregreet_cut=cut["pregreet"] == "cut",
            shed_after=(cut["shed_after"], cut["shed_single_after"]),
            loop_replies=cut["loop_replies"],
            loop_after=cut["loop_after"],
            end_sessions=blk["end_sessions"],
            cut_block_after=cut["block_after"],
            trust_factor=self["trust"]["factor"],
            tarpit_duration=self["tarpit"]["duration"],
            tarpit_max=self["tarpit"]["max_sources"] if self["tarpit"]["enabled"] else 0,
            slot_budget=_enforced_budget(self),
            slot_crowds=_crowds_part(self),
            aggregate={
                4: (agg["ipv4_prefix"], agg["ipv4_min_blocked"]),
                6: (agg["ipv6_prefix"], agg["ipv6_min_blocked"]),
            }
            if agg["enabled"]
            else {},
        )

    def to_toml(self) -> str:
        # The path in the comment escaped as a value is: a newline in it would end the comment.
        lines = [f"# effective config ({_toml_value(self.path) if self.path else 'embedded defaults'})"]
        for section, keys in SCHEMA.items():
            lines.append(f"\n[{section}]")
            for key, spec in keys.items():
                lines.append(f"{key} = {_toml_value(self.raw[section][key])}  # {spec.doc}")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {s: dict(k) for s, k in self.raw.items()}


def _enforced_budget(config: Config) -> int:
    """The slot budget the nftables backend enforces in a wave, once the daemon has resolved "auto" from the MTA; 0
    where there is none (other backends, an unresolved "auto")."""
    b = config["wave"]["slot_budget"]
    return b if isinstance(b, int) and config["backend"]["firewall"] == "nftables" else 0


def _crowds_part(config: Config) -> int:
    """The crowds' part of the enforced budget's first contacts' lane (govern.nft.ruleset.first_contact_lanes)."""
    from govern.nft.ruleset import budget_lanes, first_contact_lanes

    return first_contact_lanes(budget_lanes(_enforced_budget(config), config["wave"]["newcomer_share"])[1])[1]


def _greet_floor(cut: Mapping[str, Any]) -> float:
    """The silence the MTA itself asks before its banner (postscreen's pregreet wait) plus a second: a client that
    waits as it is told is never cut for it. An unresolved "auto" (nothing has looked at the MTA yet) asks for none."""
    greet = cut["greet_wait"]
    return greet + 1.0 if isinstance(greet, float) and greet > 0 else 0.0


def _cut_after(cut: Mapping[str, Any]) -> tuple[float, float]:
    """The cut thresholds; the greeting's floor applies on top, to sessions in postscreen's pregreet wait only."""
    return cut["elevated_idle_after"], cut["wave_idle_after"]


def with_override(config: Config, section: str, key: str, value: Any, *, resolved: bool = False) -> Config:
    """The same config with one key replaced by a value from the command line (validated like the file's), or,
    with `resolved`, an "auto" the daemon worked out: the value changes, what `config show` prints does not."""
    values = {s: dict(k) for s, k in config.values.items()}
    raw = {s: dict(k) for s, k in config.raw.items()}
    values[section][key] = SCHEMA[section][key].check(value)
    if not resolved:
        raw[section][key] = value
    return Config(values=values, raw=raw, path=config.path, allow_from_files=config.allow_from_files)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        # JSON's string escapes are TOML's, except that TOML refuses a raw DEL too.
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return str(v)


def read_allow_file(path: str, *, key: str = "allow.files") -> tuple[Prefix, ...]:
    """One address or prefix per line, '#' comments; errors name the file and line."""
    raw = read_regular(path, MAX_ALLOW_FILE_BYTES, key=key)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", path=path, key=key) from None
    return tuple(e.prefix for e in allow_files.parse_allow_text(text, path))


class _FloatTooLong(Exception):
    pass


def _float(text: str) -> float:
    """tomllib's float hook: a float written with more characters than any config needs is refused before Python
    spends time on it."""
    if len(text) > MAX_FLOAT_TEXT:
        raise _FloatTooLong(text)
    return float(text)


def parse_toml(raw: bytes, path: str) -> dict[str, Any]:
    """The TOML document in `raw`, or ConfigError with one line saying what is wrong."""
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"is larger than {size_text(MAX_CONFIG_BYTES)}", path=path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", path=path) from None
    try:
        return tomllib.loads(text, parse_float=_float)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=path) from None
    except RecursionError:  # tomllib recurses once per level: the stack ends long before MAX_DEPTH matters
        raise ConfigError(f"not a config: nested deeper than {MAX_DEPTH} levels", path=path) from None
    except _FloatTooLong as exc:
        raise ConfigError(
            f"a number is longer than {MAX_FLOAT_TEXT} characters: {shown(str(exc))}", path=path
        ) from None
    except ValueError:  # int() refuses a whole number of more than 4300 digits
        raise ConfigError(f"a whole number is out of range {INT_RANGE[0]}..{INT_RANGE[1]}", path=path) from None


def load(path: str | None = None) -> Config:
    """Load and validate a config. `path` None means the default path if it exists, else embedded defaults."""
    explicit = path is not None
    chosen = path or DEFAULT_PATH
    data: dict[str, Any] = {}
    if explicit or os.path.exists(chosen):
        data = parse_toml(read_regular(chosen, MAX_CONFIG_BYTES), chosen)
    config = from_mapping(data, path=chosen if data or explicit else None)
    _check_socket_place(config["daemon"]["socket"], config.path)
    return config


def _check_socket_place(sock: str, path: str | None) -> None:
    """What `govern run` would refuse about the control socket's place on disk, refused by `config check` too: an
    existing directory others may write (govern.control.unsafe_directory), or something other than a socket
    already at its path."""
    from govern.control import unsafe_directory  # the daemon's rule, from the daemon's module

    directory = os.path.dirname(sock)
    why = unsafe_directory(directory) if os.path.lexists(directory) else None
    try:
        mode: int | None = os.lstat(sock).st_mode
    except OSError:  # absent, or not ours to look at: the daemon finds out
        mode = None
    if why is None and mode is not None and not stat.S_ISSOCK(mode):
        why = f"{sock} exists and is not a socket; govern will not replace it"
    if why:
        raise ConfigError(why, path=path, key="daemon.socket")


def _check_shape(data: Mapping[str, Any], path: str | None) -> None:
    """Refuse what no config of govern's holds before any key is judged: nesting deeper than MAX_DEPTH, lists
    longer than MAX_ITEMS, strings and keys longer than MAX_STRING and MAX_KEY, integers beyond 64 bits. Iterative,
    so that a deep structure cannot exhaust the stack here either."""
    todo: list[tuple[Any, str, int]] = [(data, "", 0)]
    while todo:
        v, where, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise ConfigError(f"nested deeper than {MAX_DEPTH} levels", path=path, key=where)
        if isinstance(v, Mapping):
            for k, item in v.items():
                if not isinstance(k, str):
                    raise ConfigError(f"a key must be a string, got {_typename(k)}", path=path, key=where or None)
                if len(k) > MAX_KEY or not k.isprintable():  # a key is quoted in errors: one short line
                    name = f"{where}.{shown(k)}" if where else shown(k)
                    raise ConfigError(f"a key is at most {MAX_KEY} printable characters", path=path, key=name)
                todo.append((item, f"{where}.{k}" if where else k, depth + 1))
        elif isinstance(v, list):
            if len(v) > MAX_ITEMS:
                hint = " (a long allowlist belongs in allow.files)" if where.startswith("allow.") else ""
                raise ConfigError(f"a list of at most {MAX_ITEMS} items, got {len(v)}{hint}", path=path, key=where)
            todo.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(v))
        elif isinstance(v, str) and len(v) > MAX_STRING:
            raise ConfigError(f"a string of at most {MAX_STRING} characters, got {len(v)}", path=path, key=where)
        elif isinstance(v, int) and not isinstance(v, bool) and not INT_RANGE[0] <= v <= INT_RANGE[1]:
            raise ConfigError(f"a whole number out of range {INT_RANGE[0]}..{INT_RANGE[1]}", path=path, key=where)


def from_mapping(data: Mapping[str, Any], path: str | None = None) -> Config:
    _check_shape(data, path)
    values: dict[str, dict[str, Any]] = {}
    raw: dict[str, dict[str, Any]] = {}
    for section, value in data.items():
        if section not in SCHEMA:
            raise ConfigError(f"unknown section (known: {', '.join(SCHEMA)})", path=path, key=f"[{section}]")
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected a table, got {_typename(value)}", path=path, key=section)
        for key in value:
            if key not in SCHEMA[section]:
                known = ", ".join(SCHEMA[section])
                raise ConfigError(f"unknown key (known in [{section}]: {known})", path=path, key=f"{section}.{key}")
    for section, keys in SCHEMA.items():
        given = data.get(section, {})
        values[section], raw[section] = {}, {}
        for key, spec in keys.items():
            v = given.get(key, spec.default)
            try:
                values[section][key] = spec.check(v)
            except ValueError as exc:
                raise ConfigError(str(exc), path=path, key=f"{section}.{key}") from None
            raw[section][key] = v
    _cross_check(values, path)
    from_files: list[Prefix] = []
    for i, f in enumerate(values["allow"]["files"]):
        for p in read_allow_file(f, key=f"allow.files[{i}]"):
            why = too_wide_to_allow(p, values["guard"])
            if why:
                raise ConfigError(why, path=f, key=f"allow.files[{i}]")
            from_files.append(p)
    return Config(values=values, raw=raw, path=path, allow_from_files=tuple(from_files))


def too_wide_to_allow(p: Prefix, guard: Mapping[str, Any]) -> str | None:
    """Why `p` is too wide an allowlist entry (`guard.allow_ipv4_widest` / `allow_ipv6_widest`), or None."""
    limit = guard[f"allow_ipv{p.version}_widest"]
    if p.length >= limit:
        return None
    return (
        f"{p} is wider than /{limit} (guard.allow_ipv{p.version}_widest): it would allowlist that much of the Internet"
    )


def _cross_check(v: Mapping[str, Mapping[str, Any]], path: str | None) -> None:
    if v["block"]["duration"] > v["block"]["max_duration"]:
        raise ConfigError("must not be shorter than block.duration", path=path, key="block.max_duration")
    if v["allow"]["min_refresh"] > v["allow"]["refresh"]:
        raise ConfigError("must not be longer than allow.refresh", path=path, key="allow.min_refresh")
    for p in v["allow"]["cidrs"]:
        if p.length == 0:
            raise ConfigError(f"{p} would allow every address", path=path, key="allow.cidrs")
        why = too_wide_to_allow(p, v["guard"])
        if why:
            raise ConfigError(why, path=path, key="allow.cidrs")
    for name in ("queue_fill", "listen_drops", "syn_recv", "attempts", "idle_share", "budget_fill"):
        if v["modes"][f"elevated_{name}"] > v["modes"][f"wave_{name}"]:
            raise ConfigError(f"must not be below modes.elevated_{name}", path=path, key=f"modes.wave_{name}")
    if v["cut"]["wave_idle_after"] > v["cut"]["elevated_idle_after"]:
        raise ConfigError("must not be longer than cut.elevated_idle_after", path=path, key="cut.wave_idle_after")
    b = v["backend"]
    # The XDP program is loaded after the firewall's table is made: what would fail there is refused here first.
    if b["xdp"] and not b["xdp_interfaces"]:
        raise ConfigError(
            "xdp is on but no interface is given to attach it to", path=path, key="backend.xdp_interfaces"
        )
    if b["xdp"] and b["xdp_object"] and not os.path.isfile(b["xdp_object"]):
        raise ConfigError(
            f"{b['xdp_object']} is not a file: build it with `make -C bpf`", path=path, key="backend.xdp_object"
        )
    if v["export"]["listen"] and not v["export"]["token_file"]:
        raise ConfigError("the feed needs a bearer token: set export.token_file", path=path, key="export.listen")
    if v["fleet"]["url"]:
        if not v["fleet"]["key_file"]:
            raise ConfigError("a fleet signs every decision: set fleet.key_file", path=path, key="fleet.url")
        from govern.fleet.key import read_key

        read_key(v["fleet"]["key_file"], config=path)
    if v["metrics"]["listen"] and v["metrics"]["listen"] == v["export"]["listen"]:
        raise ConfigError(
            "the export feed listens there already; give each its own port", path=path, key="metrics.listen"
        )
    for fam in ("ipv4", "ipv6"):
        if v["aggregate"][f"{fam}_prefix"] >= v["protect"][f"{fam}_prefix"]:
            raise ConfigError(
                f"must be shorter than protect.{fam}_prefix ({v['protect'][f'{fam}_prefix']})",
                path=path,
                key=f"aggregate.{fam}_prefix",
            )
