"""The tarpit: the kernel slows the MX's replies to chosen sources, so impatient bots give up or fall out of
sequence while real MTAs still deliver (docs/tarpit.md).

Public API:
- `TcTarpit(shape, v4_len=, v6_len=)`: the real edge (govern.edges.Tarpit); `govern.wiring.tarpit(config)` builds it.
- `Shape(delay, buckets, leaf)`: how long each reply waits and over how many buckets sources are spread.
- `capabilities()`: what this kernel offers (qdiscs, classifiers, nftables), and the mechanism that follows.
- `teardown_nft()`: remove the tarpit's nftables objects without a running edge.
"""

from __future__ import annotations

from govern.tarpit.probe import Capabilities, capabilities
from govern.tarpit.shape import Leaf, Shape
from govern.tarpit.tc import TcTarpit, teardown_nft

__all__ = ["Capabilities", "Leaf", "Shape", "TcTarpit", "capabilities", "teardown_nft"]
