"""The tarpit: the kernel slows the MX's replies to chosen sources, so impatient bots give up or fall out of
sequence while real MTAs still deliver (docs/tarpit.md).

Public API:
- `TcTarpit(shape, v4_len=, v6_len=)`: the real edge (govern.edges.Tarpit); `from_config(config)` builds it.
- `Shape(delay, buckets, leaf)`: how long each reply waits and over how many buckets sources are spread.
- `capabilities()`: what this kernel offers (qdiscs, classifiers, nftables), and the mechanism that follows.
- `teardown_nft()`: remove the tarpit's nftables objects without a running edge.
"""

from __future__ import annotations

from govern.config import Config
from govern.tarpit.probe import Capabilities, capabilities
from govern.tarpit.shape import Leaf, Shape
from govern.tarpit.tc import TcTarpit, teardown_nft

__all__ = ["Capabilities", "Leaf", "Shape", "TcTarpit", "capabilities", "from_config", "teardown_nft"]


def from_config(config: Config, *, leaf: Leaf | None = None) -> TcTarpit:
    """The real tarpit as the config describes it; the leaf is netem where the kernel has it unless given."""
    t = config["tarpit"]
    if leaf is None:
        leaf = capabilities().mechanism or Leaf.RATE
    shape = Shape(delay=t["delay"], buckets=t["buckets"], leaf=leaf)
    return TcTarpit(shape, v4_len=config["protect"]["ipv4_prefix"], v6_len=config["protect"]["ipv6_prefix"])
