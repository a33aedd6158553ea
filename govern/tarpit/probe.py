"""What this kernel offers a tarpit, found by trying: qdiscs and classifiers are added to the loopback interface of
a throwaway network namespace (made by one thread, gone with it), so probing never touches the host's own
interfaces or firewall. Needs root (CAP_SYS_ADMIN for the namespace, CAP_NET_ADMIN inside it).
"""

from __future__ import annotations

import ctypes
import functools
import threading
from dataclasses import dataclass, field
from typing import Any

from govern.tarpit.shape import Leaf

CLONE_NEWNET = 0x40000000
QDISCS = ("htb", "netem", "tbf", "fq", "fq_codel", "sfq")
CLASSIFIERS = ("u32", "fw", "basic", "flower", "matchall")
# pyroute2 insists on some parameters for these kinds.
_QDISC_ARGS: dict[str, dict[str, Any]] = {"htb": {"default": 0}, "tbf": {"rate": "1mbit", "burst": 1600, "limit": 3000}}


@dataclass(frozen=True)
class Capabilities:
    """Which tc objects the kernel accepted, whether nftables can steer a packet by priority, and the tarpit
    mechanism that follows (None, with the reason, when there is none)."""

    qdiscs: frozenset[str] = frozenset()
    classifiers: frozenset[str] = frozenset()
    nft_priority: bool = False
    errors: tuple[str, ...] = field(default=())

    @property
    def netem(self) -> bool:
        return "netem" in self.qdiscs

    @property
    def mechanism(self) -> Leaf | None:
        if "htb" not in self.qdiscs or not self.nft_priority:
            return None
        return Leaf.NETEM if self.netem else Leaf.RATE

    @property
    def reason(self) -> str | None:
        if self.mechanism is not None:
            return None
        missing = [w for w, ok in (("htb qdisc", "htb" in self.qdiscs), ("nftables", self.nft_priority)) if not ok]
        why = "; ".join(self.errors)
        return f"this kernel has no {' and no '.join(missing)} for the tarpit" + (f" ({why})" if why else "")


def _try_qdisc(ipr: Any, kind: str) -> bool:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        ipr.tc("add", kind, 1, 0x10000, **_QDISC_ARGS.get(kind, {}))
    except NetlinkError:
        return False
    ipr.tc("del", index=1, handle=0x10000, parent=0xFFFFFFFF)
    return True


def _try_classifier(ipr: Any, kind: str) -> bool:
    from pyroute2.netlink.exceptions import NetlinkError

    ipr.tc("add", "htb", 1, 0x10000, default=0)
    try:
        kw: dict[str, Any] = {"keys": ["0x0/0x0+0"], "target": 0x10001} if kind == "u32" else {}
        ipr.tc("add-filter", kind, 1, parent=0x10000, prio=1, protocol=0x0003, **kw)
        return True
    except NetlinkError:
        return False
    finally:
        ipr.tc("del", index=1, handle=0x10000, parent=0xFFFFFFFF)


def _try_nft() -> bool:
    from govern.errors import KernelError
    from govern.nft.libnft import Nft

    try:
        nft = Nft()
    except KernelError:
        return False
    try:
        nft.run(
            "add table inet probe\n"
            "add chain inet probe out { type filter hook output priority filter; }\n"
            "add rule inet probe out tcp sport 25 meta priority set jhash ip daddr mod 2 offset 0x47560100\n"
        )
        return True
    except KernelError:
        return False
    finally:
        nft.close()


def _probe(out: list[Capabilities]) -> None:
    try:
        _probe_here(out)
    except Exception as exc:  # a probe that breaks means "nothing known to work", not a crash
        out.append(Capabilities(errors=(f"probe failed: {exc}",)))


def _probe_here(out: list[Capabilities]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    # A thread's network namespace is its own: this one leaves the rest of the process where it was, and the
    # namespace disappears when the thread ends.
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        out.append(Capabilities(errors=(f"cannot make a probe namespace: errno {err}; govern needs root",)))
        return
    from pyroute2 import IPRoute

    ipr = IPRoute()
    try:
        qdiscs = frozenset(k for k in QDISCS if _try_qdisc(ipr, k))
        classifiers = frozenset(k for k in CLASSIFIERS if "htb" in qdiscs and _try_classifier(ipr, k))
    finally:
        ipr.close()
    out.append(Capabilities(qdiscs, classifiers, _try_nft()))


@functools.cache
def capabilities() -> Capabilities:
    """Probe once per process: the kernel's features do not change while it runs."""
    out: list[Capabilities] = []
    t = threading.Thread(target=_probe, args=(out,), name="govern-tarpit-probe")
    t.start()
    t.join()
    return out[0] if out else Capabilities(errors=("the probe failed",))
