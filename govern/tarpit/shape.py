"""What the tarpit puts in the kernel, as data: the tc objects per interface, govern's handles for them, the
nftables text that steers packets into them, and the judgement on an interface's existing root qdisc. Pure.

How a reply is slowed (docs/tarpit.md has the measurements behind each choice):
- nftables (table `inet govern`, chain `tarpit`, output hook) sets `meta priority` on the server's SYN-ACK and
  on every segment that ends a reply (PSH) or the session (FIN), from a protected port to a source in
  `tarpit4`/`tarpit6`. HTB classifies a packet whose priority names one of its classes straight into that class,
  so no tc filter is needed (this kernel has neither the `fw` classifier nor netem).
- Each bucket is an HTB class whose rate and `mpu` make every packet cost `delay` seconds of tokens: the SYN-ACK
  leaves at once, the banner waits `delay` behind it, and each further reply waits `delay` behind the previous
  one. Pure ACKs are not marked, so a client's DATA still flows at line rate.
- Sources are spread over `buckets` classes by a hash of their group prefix (kernel jhash), so one busy bot
  delays only the sources that share its bucket.
- Where the host has netem, one class with a netem leaf delays each marked packet by `delay` on its own, with no
  sharing between sources at all.
- Unmarked traffic goes to a pass class as fast as the link allows.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import Enum

# The ownership marker: the root qdisc govern adds is HTB with this major ("GV" in ASCII); every class and leaf
# below it is govern's too. govern changes or removes an interface's root qdisc only when it carries this handle.
ROOT_MAJOR = 0x4756
ROOT_HANDLE = ROOT_MAJOR << 16
PASS_CLASS = ROOT_HANDLE | 0x1
BUCKET_BASE = 0x100  # bucket i is class 4756:(100 + i)
LEAF_MAJOR_BASE = 0x4800  # leaves: 4801: under the pass class, (4802 + i): under bucket i
MAX_BUCKETS = 256
# Every marked packet is charged at least this many bytes: one full Ethernet frame, so a reply costs `delay`
# whatever its size (up to one MTU; a larger one costs proportionally more).
MPU = 1514
# Pass class: as fast as any link an MX has; HTB needs some rate.
PASS_RATE_BYTES = 50_000_000_000
# A reply queued longer than an MTA's five-minute command timeout is useless: drop it, TCP sends it again.
MAX_QUEUE_SECONDS = 300.0
PASS_LIMIT_MIN = 1000

TABLE = "govern"
FAMILY = "inet"
CHAIN = "tarpit"
# The tarpit's own objects in table `inet govern` (nft_text); the enforcer's shape check leaves them out.
NFT_NAMES = frozenset({CHAIN, "tarpit4", "tarpit6"})
SETS = ("tarpit4", "tarpit6")
INTERVAL_SETS = frozenset({"tarpit4", "tarpit6"})
# Marked: the SYN-ACK (so even the first reply of an idle bucket waits behind one packet), the last segment of
# each reply (PSH), and FIN. Not marked: pure ACKs, so a client's upload is not slowed.
MARKED = "tcp flags & (syn | psh | fin) != 0"


def handle_str(h: int) -> str:
    return f"{h >> 16:x}:{h & 0xFFFF:x}"


def bucket_class(i: int) -> int:
    return ROOT_HANDLE | (BUCKET_BASE + i)


def leaf_handle(class_id: int) -> int:
    minor = class_id & 0xFFFF
    return (LEAF_MAJOR_BASE + (1 if minor == 1 else minor - BUCKET_BASE + 2)) << 16


class Leaf(Enum):
    RATE = "htb-mpu"  # HTB class rate + mpu: a fixed cost per packet, shared within a bucket
    NETEM = "netem"  # a netem leaf: a fixed delay per packet, shared with no one


@dataclass(frozen=True)
class Shape:
    """The tarpit's parameters: how long each reply waits, and over how many buckets sources are spread."""

    delay: float = 2.0
    buckets: int = 64
    leaf: Leaf = Leaf.RATE

    def __post_init__(self) -> None:
        if not 0.05 <= self.delay <= 60:
            raise ValueError(f"tarpit delay must be between 50ms and 60s, got {self.delay}")
        if not 1 <= self.buckets <= MAX_BUCKETS:
            raise ValueError(f"tarpit buckets must be between 1 and {MAX_BUCKETS}, got {self.buckets}")

    @property
    def classes(self) -> int:
        """Slow classes per interface: netem delays each packet on its own, so one is enough."""
        return 1 if self.leaf is Leaf.NETEM else self.buckets

    @property
    def rate_bytes(self) -> int:
        """Bytes per second of a bucket, so that one MPU-sized packet costs `delay`."""
        return max(1, round(MPU / self.delay))

    @property
    def queue_limit(self) -> int:
        """Packets a bucket may hold: no more than five minutes' worth."""
        return max(1, int(MAX_QUEUE_SECONDS / self.delay))


@dataclass(frozen=True)
class ClassSpec:
    class_id: int
    rate_bytes: int
    mpu: int
    leaf_kind: str  # "pfifo" or "netem"
    leaf_handle: int
    leaf_limit: int
    leaf_delay_us: int = 0


def classes(shape: Shape, txqlen: int) -> list[ClassSpec]:
    """Every class (and its leaf) of govern's HTB on an interface, the pass class first."""
    out = [ClassSpec(PASS_CLASS, PASS_RATE_BYTES, 0, "pfifo", leaf_handle(PASS_CLASS), max(txqlen, PASS_LIMIT_MIN))]
    for i in range(shape.classes):
        cid = bucket_class(i)
        if shape.leaf is Leaf.NETEM:
            # The class only carries marked packets; its rate is a formality, the netem leaf does the waiting.
            limit = max(PASS_LIMIT_MIN, shape.queue_limit)
            out.append(ClassSpec(cid, PASS_RATE_BYTES, 0, "netem", leaf_handle(cid), limit, round(shape.delay * 1e6)))
        else:
            out.append(ClassSpec(cid, shape.rate_bytes, MPU, "pfifo", leaf_handle(cid), shape.queue_limit))
    return out


class RootVerdict(Enum):
    OURS = "ours"  # govern's HTB: converge it
    DEFAULT = "default"  # the kernel's own (handle 0: noqueue, pfifo_fast, mq, ...): replace, restored on teardown
    FOREIGN = "foreign"  # the operator's: never touched


def judge_root(kind: str | None, handle: int) -> RootVerdict:
    """Whose is an interface's root qdisc? The kernel attaches its defaults with handle 0; any qdisc a person or a
    tool adds gets a non-zero handle (tc picks 8001: and up when none is given)."""
    if kind is None or handle == 0:
        return RootVerdict.DEFAULT
    if kind == "htb" and handle == ROOT_HANDLE:
        return RootVerdict.OURS
    return RootVerdict.FOREIGN


def _mask(version: int, length: int) -> str:
    zero = "0.0.0.0" if version == 4 else "::"
    return str(ipaddress.ip_network(f"{zero}/{length}").netmask)


def nft_text(shape: Shape, ports: frozenset[int], *, v4_len: int = 32, v6_len: int = 64) -> str:
    """The tarpit's part of table `inet govern`: its sets and its chain, replaced whole on each call; the sets keep
    their elements. The allow sets are declared exactly as the enforcer's ruleset declares them, so either may come
    first; allowlisted destinations are never marked, whatever the tarpit sets hold."""
    if not ports:
        raise ValueError("the tarpit needs at least one protected port")
    plist = ", ".join(str(p) for p in sorted(ports))
    t = f"{FAMILY} {TABLE}"
    lines = [
        f"add table {t}",
        f"add set {t} allow4 {{ type ipv4_addr; flags interval; }}",
        f"add set {t} allow6 {{ type ipv6_addr; flags interval; }}",
        f"add set {t} tarpit4 {{ type ipv4_addr; flags interval,timeout; }}",
        f"add set {t} tarpit6 {{ type ipv6_addr; flags interval,timeout; }}",
        f"add chain {t} {CHAIN} {{ type filter hook output priority filter; policy accept; }}",
        f"flush chain {t} {CHAIN}",
    ]
    for version, length, addr in ((4, v4_len, "ip daddr"), (6, v6_len, "ip6 daddr")):
        match = f"tcp sport {{ {plist} }} {MARKED}"
        bits = 32 if version == 4 else 128
        if shape.classes == 1:
            target = handle_str(bucket_class(0))
        else:
            key = addr if length >= bits else f"{addr} & {_mask(version, length)}"
            target = f"jhash {key} mod {shape.classes} offset {bucket_class(0):#x}"
        lines.append(f"add rule {t} {CHAIN} {match} {addr} @allow{version} return")
        lines.append(f"add rule {t} {CHAIN} {match} {addr} @tarpit{version} meta priority set {target}")
    return "\n".join(lines) + "\n"
