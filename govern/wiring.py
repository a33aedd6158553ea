"""The one place real implementations are chosen: the daemon's edges from a config (the firewall backend and the
XDP fast path from `[backend]`, sock_diag, /proc counters, the sysctl manager, the tarpit, the allowlist's sources
and learned trust), the Governor wired from them, and the removal of every kernel object govern makes when no
daemon runs (`govern teardown`; a running daemon removes its own). Tests wire fakes (govern.fakes) instead."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from govern.addr import Prefix
from govern.config import Config
from govern.edges import Enforcer, FleetLink, SocketSource
from govern.errors import ConfigError

if TYPE_CHECKING:
    from govern.daemon import Governor
    from govern.observe.sockdiag import SockDiag
    from govern.store import Store
    from govern.sysctl.manager import SysctlManager
    from govern.tarpit import Leaf, TcTarpit

# The XDP object the package carries (bpf/Makefile's `ship`: built from bpf/govern_xdp.c), so an installed govern
# needs no compiler; `backend.xdp_object` names another.
DEFAULT_OBJECT = Path(__file__).resolve().parent / "xdp" / "govern_xdp.o"


def is_dry_run(config: Config) -> bool:
    return bool(config["daemon"]["dry_run"]) or config["backend"]["firewall"] == "dry-run"


def xdp_object(config: Config) -> str:
    return config["backend"]["xdp_object"] or str(DEFAULT_OBJECT)


def enforcer(config: Config) -> Enforcer:
    """The Enforcer `[backend]` asks for: nftables, iptables or a dry run, with the XDP layer in front if wanted."""
    from govern.dryrun import DryRun
    from govern.ipt.backend import IptBackend
    from govern.nft.backend import NftBackend

    b = config["backend"]
    dry = is_dry_run(config)
    firewall: Enforcer = IptBackend(enforce=not dry) if b["firewall"] == "iptables" else NftBackend(enforce=not dry)
    if dry:
        return DryRun(firewall)
    if not b["xdp"]:
        return firewall
    if not b["xdp_interfaces"]:
        raise ConfigError("xdp is on but no interface is given to attach it to", path=config.path, key="backend")
    from govern.xdp.layer import XdpLayer
    from govern.xdp.loader import XdpProgram

    obj, root = xdp_object(config), b["xdp_pin_root"]
    return XdpLayer(firewall, lambda: XdpProgram(obj, root), b["xdp_interfaces"], root)


def sockets() -> SockDiag:
    """The kernel's sockets, through sock_diag (the CLI's look at the listeners)."""
    from govern.observe.sockdiag import SockDiag

    return SockDiag()


def observed_sockets(config: Config) -> SocketSource:
    """The daemon's sockets: each tick's scan through the BPF socket iterator where it loads (`backend.socket_scan`
    "auto"), else sock_diag."""
    if config["backend"]["socket_scan"] == "sock_diag":
        diag = sockets()
        diag.scanner = "sock_diag (backend.socket_scan)"
        return diag
    from govern.observe.sockiter import IteratedSockets

    return IteratedSockets(sockets())


def sysctl_manager(config: Config) -> SysctlManager:
    """The real sysctl edge for a config: the daemon's, and the CLI's when it acts without the daemon."""
    from govern.sysctl.journal import Journal
    from govern.sysctl.manager import SysctlManager
    from govern.sysctl.planner import Expectations
    from govern.sysctl.procsys import ProcSys, mem_total

    sc = config["sysctl"]
    expect = Expectations(
        sessions=sc["expected_sessions"],
        memory_bytes=sc["memory_mb"] * 1024 * 1024 or mem_total(),
        wave_synack_retries=sc["wave_synack_retries"],
        wave_fin_timeout=sc["wave_fin_timeout"],
        wave_conntrack_half_open=sc["wave_conntrack_half_open"],
        wave_abort_on_overflow=sc["wave_abort_on_overflow"],
        exclude=sc["exclude"],
    )
    return SysctlManager(ProcSys(sc["root"], sc["modules_root"]), Journal(config["daemon"]["state_dir"]), expect)


def tarpit(config: Config, *, leaf: Leaf | None = None) -> TcTarpit:
    """The real tarpit as the config describes it; the leaf is netem where the kernel has it unless given."""
    from govern.tarpit import Leaf, Shape, TcTarpit, capabilities

    t = config["tarpit"]
    if leaf is None:
        leaf = capabilities().mechanism or Leaf.RATE
    shape = Shape(delay=t["delay"], buckets=t["buckets"], leaf=leaf)
    return TcTarpit(shape, v4_len=config["protect"]["ipv4_prefix"], v6_len=config["protect"]["ipv6_prefix"])


def governor(config: Config, store: Store) -> Governor:
    """The daemon's Governor with every real edge the config asks for; in a dry run, each wrapped to observe only
    (govern.dryrun)."""
    from govern.allow.learning import TrustSources
    from govern.allow.sources import from_config as allow_sources
    from govern.daemon import Governor
    from govern.dryrun import DryRunSockets, DryRunStore, DryRunSysctls, DryRunTarpit
    from govern.edges import StateStore, Tarpit
    from govern.observe.netstat import ProcNetstat
    from govern.sysctl.edges import SysctlProfiles

    durable: StateStore = store
    diag: SocketSource = observed_sockets(config)
    sysctls: SysctlProfiles = sysctl_manager(config)
    pit: Tarpit = tarpit(config)
    if is_dry_run(config):
        durable, diag, sysctls, pit = DryRunStore(store), DryRunSockets(diag), DryRunSysctls(sysctls), DryRunTarpit(pit)
    return Governor(
        config,
        durable,
        diag,
        enforcer(config),
        ProcNetstat(),
        sysctl=sysctls,
        allow=allow_sources(config),
        trust=TrustSources(config.trust_section()),
        tarpit=pit,
        own_addresses=own_addresses,
        fleet=fleet_link(config),
        make_fleet=fleet_link,
    )


def fleet_link(config: Config) -> FleetLink | None:
    """The fleet's Redis link (govern.fleet.link) when `fleet.url` is set, else None. The key is read again here,
    as the daemon starts: what `config check` accepted may have changed since."""
    import socket

    from govern.fleet.codec import MAX_ORIGIN
    from govern.fleet.key import read_key
    from govern.fleet.link import RedisLink

    f = config["fleet"]
    if not f["url"]:
        return None
    name = f["name"] or socket.gethostname()
    if not 0 < len(name) <= MAX_ORIGIN or not all(c.isascii() and (c.isalnum() or c in "-._") for c in name):
        raise ConfigError(
            f"the hostname {name[:40]!r} is not a fleet name: set one", path=config.path, key="fleet.name"
        )
    # An operator's unblock travels with the blocks it lifts.
    kinds = {"blocks": ("block", "unblock"), "trust": ("trust",)}
    accept = tuple(kind for k in f["accept"] for kind in kinds[k])
    return RedisLink(f["url"], read_key(f["key_file"], config=config.path), name, f["namespace"], accept)


def own_addresses() -> tuple[Prefix, ...]:
    """Every address of this host (no block may cover one: govern.core.guard)."""
    from govern.export.local import host_addresses

    return host_addresses()[0]


def teardown_offline(config: Config) -> list[str]:
    """Without a daemon, remove every kernel object govern makes but its sysctls: the tarpit's queues, table inet
    govern, the iptables chain and sets, the XDP program and pins. What was removed, one line each."""
    from govern.ipt.backend import teardown_all
    from govern.nft.backend import teardown_table
    from govern.tarpit import TcTarpit
    from govern.xdp.loader import detach_all, unpin

    done = []
    tarpit = TcTarpit()
    try:
        if tarpit.teardown():
            done.append("removed the tarpit's queues")
    finally:
        tarpit.close()
    if teardown_table():
        done.append("removed table inet govern")
    # Only where iptables is the configured firewall: even looking at the raw table loads iptable_raw, which hooks
    # legacy xtables into every packet of a host that never used it.
    if config["backend"]["firewall"] == "iptables" and teardown_all():
        done.append("removed iptables chain GOVERN and the govern-* ipsets")
    b = config["backend"]
    if b["xdp_interfaces"] and detach_all(b["xdp_interfaces"]):
        done.append(f"detached XDP from {', '.join(b['xdp_interfaces'])}")
    if unpin(b["xdp_pin_root"]):
        done.append(f"unpinned {b['xdp_pin_root']}")
    return done
