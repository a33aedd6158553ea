"""Choosing the firewall backend and the XDP fast path from `[backend]` (docs/configuration.md), and removing every
kernel object govern makes when no daemon runs (`govern teardown`; a running daemon removes its own)."""

from __future__ import annotations

from pathlib import Path

from govern.config import Config
from govern.edges import Enforcer
from govern.errors import ConfigError

DEFAULT_OBJECT = Path(__file__).resolve().parents[1] / "bpf" / "govern_xdp.o"


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
