"""The real tarpit: govern's HTB tree on each chosen interface (pyroute2, rtnetlink) and the tarpit sets and chain
in table `inet govern` (libnftables for the chain, raw nfnetlink for the set elements).

Ownership: on an interface govern touches only a root qdisc it added itself (HTB, handle 4756:, see
govern.tarpit.shape). It replaces a root qdisc only when it is the kernel's default (handle 0); an operator's own
root qdisc makes `setup` refuse, naming the interface, before anything is changed. Teardown deletes govern's root
qdisc, and the kernel puts its default back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from govern.addr import Prefix
from govern.errors import KernelError, RefusedError, UsageError
from govern.nft.libnft import Nft
from govern.nft.netlink import ElemOp, NftNetlink
from govern.tarpit import shape as sh
from govern.tarpit.probe import capabilities

log = logging.getLogger("govern.tarpit")

IFF_LOOPBACK = 0x8


@contextmanager
def _kernel(what: str) -> Iterator[None]:
    """Translate pyroute2's netlink errors into KernelError, once, here."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        yield
    except NetlinkError as exc:
        raise KernelError(f"tc: {what}: {exc.args[1] if len(exc.args) > 1 else exc}", exc.code) from None


class TcTarpit:
    """Slows the server's replies to tarpitted sources on every chosen interface (see govern.tarpit.shape)."""

    name = "tc"

    def __init__(self, shape: sh.Shape | None = None, *, v4_len: int = 32, v6_len: int = 64) -> None:
        self.shape = shape or sh.Shape()
        self.v4_len, self.v6_len = v4_len, v6_len
        self.ifaces: tuple[str, ...] = ()
        self.held: set[Prefix] = set()
        self._ipr: Any = None
        self._nl: NftNetlink | None = None

    # -- edges to the kernel ------------------------------------------------------------------------------------

    @property
    def ipr(self) -> Any:
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute()
        return self._ipr

    @property
    def nl(self) -> NftNetlink:
        if self._nl is None:
            self._nl = NftNetlink(table=sh.TABLE)
        return self._nl

    def supported(self) -> str | None:
        """None when this host can tarpit with this shape, else why not."""
        caps = capabilities()
        if caps.mechanism is None:
            return caps.reason
        if self.shape.leaf is sh.Leaf.NETEM and not caps.netem:
            return "this kernel has no netem qdisc (sch_netem); use the htb-mpu leaf"
        return None

    def interfaces(self) -> dict[str, int]:
        """Name -> index of every non-loopback interface in this network namespace."""
        with _kernel("listing interfaces"):
            links = self.ipr.get_links()
        return {ln.get_attr("IFLA_IFNAME"): ln["index"] for ln in links if not ln["flags"] & IFF_LOOPBACK}

    def _root(self, index: int) -> tuple[str | None, int]:
        with _kernel("listing qdiscs"):
            qdiscs = self.ipr.get_qdiscs(index)
        for q in qdiscs:
            if q["parent"] == 0xFFFFFFFF:
                return q.get_attr("TCA_KIND"), q["handle"]
        return None, 0

    def _txqlen(self, index: int) -> int:
        with _kernel("reading an interface"):
            link = self.ipr.get_links(index)[0]
        return int(link.get_attr("IFLA_TXQLEN") or 0)

    # -- the Tarpit edge ---------------------------------------------------------------------------------------

    def setup(self, ports: frozenset[int], ifaces: Sequence[str] = ()) -> None:
        """Put govern's HTB on `ifaces` (all non-loopback interfaces if empty) and the tarpit chain in nftables.

        Refuses, changing nothing, if an interface is unknown or has a root qdisc that is not the kernel's default
        or govern's own. Re-running it converges: govern's tree is rebuilt with the current shape; the tarpit sets
        keep their elements.
        """
        if not ports:
            raise UsageError("tarpit: no protected ports given")
        known = self.interfaces()
        names = list(ifaces) or sorted(known)
        if not names:
            raise RefusedError("tarpit: this host has no interface besides loopback")
        missing = [n for n in names if n not in known]
        if missing:
            raise UsageError(f"tarpit: no interface named {', '.join(missing)} (have: {', '.join(sorted(known))})")
        verdicts = {n: self._root(known[n]) for n in names}
        foreign = [
            f"{n} (root qdisc {kind} {sh.handle_str(h)})"
            for n, (kind, h) in verdicts.items()
            if sh.judge_root(kind, h) is sh.RootVerdict.FOREIGN
        ]
        if foreign:
            raise RefusedError(
                f"tarpit: {', '.join(foreign)} has the operator's own traffic control; govern will not replace it. "
                "Leave it out of [tarpit] interfaces"
            )
        done: list[tuple[str, int, sh.RootVerdict]] = []
        try:
            for n in names:
                kind, h = verdicts[n]
                self._build(known[n], sh.judge_root(kind, h))
                done.append((n, known[n], sh.judge_root(kind, h)))
            text = sh.nft_text(self.shape, ports, v4_len=self.v4_len, v6_len=self.v6_len)
            nft = Nft()
            try:
                nft.run(text)
            finally:
                nft.close()
        except BaseException:
            # Interfaces that had the kernel's default get it back; ours stay (rebuilt or not, they are ours).
            for _, index, verdict in done:
                if verdict is sh.RootVerdict.DEFAULT:
                    self._drop_root(index)
            raise
        self.ifaces = tuple(names)
        log.info("tarpit on %s: %s, %d class(es), %.2fs per reply", ", ".join(names), self.shape.leaf.value,
                 self.shape.classes, self.shape.delay)  # fmt: skip

    def _build(self, index: int, verdict: sh.RootVerdict) -> None:
        if verdict is sh.RootVerdict.OURS:
            # Rebuilding beats diffing classes: it happens at start-up only, and costs at most the packets queued
            # in the tarpit (TCP sends them again).
            self._drop_root(index)
        txqlen = self._txqlen(index)
        with _kernel(f"adding govern's htb root qdisc on interface {index}"):
            self.ipr.tc("replace", "htb", index, sh.ROOT_HANDLE, default=sh.PASS_CLASS & 0xFFFF)
        for c in sh.classes(self.shape, txqlen):
            with _kernel(f"adding class {sh.handle_str(c.class_id)}"):
                rate = c.rate_bytes  # bytes per second
                burst = 1 if c.mpu else max(c.rate_bytes // 1000, 64 * 1024)
                self.ipr.tc(
                    "add-class", "htb", index, c.class_id, parent=sh.ROOT_HANDLE, rate=rate, ceil=rate,
                    burst=burst, cburst=burst, mpu=c.mpu, quantum=sh.MPU if c.mpu else 200_000,
                )  # fmt: skip
            with _kernel(f"adding leaf {sh.handle_str(c.leaf_handle)}"):
                if c.leaf_kind == "netem":
                    self.ipr.tc("add", "netem", index, c.leaf_handle, parent=c.class_id, delay=c.leaf_delay_us,
                                limit=c.leaf_limit)  # fmt: skip
                else:
                    self.ipr.tc("add", "pfifo", index, c.leaf_handle, parent=c.class_id, limit=c.leaf_limit)

    def _drop_root(self, index: int) -> bool:
        kind, h = self._root(index)
        if sh.judge_root(kind, h) is not sh.RootVerdict.OURS:
            return False
        with _kernel(f"removing govern's root qdisc from interface {index}"):
            self.ipr.tc("del", index=index, handle=sh.ROOT_HANDLE, parent=0xFFFFFFFF)
        return True

    def apply(self, add: Mapping[Prefix, float], remove: Sequence[Prefix]) -> None:
        """Tarpit the sources in `add` for the given number of seconds each (re-adding refreshes the kernel-side
        timeout, so the tarpit lapses by itself if govern dies) and release those in `remove`: one transaction."""
        ops = [ElemOp(False, f"tarpit{p.version}", p) for p in sorted(set(remove) & self.held)]
        ops += [ElemOp(True, f"tarpit{p.version}", p, max(1000, round(s * 1000))) for p, s in sorted(add.items())]
        self.nl.commit(ops, interval_sets=sh.INTERVAL_SETS, missing_ok=True)
        self.held -= set(remove)
        self.held |= set(add)

    def tarpitted(self) -> frozenset[Prefix]:
        return frozenset(self.held)

    def teardown(self) -> bool:
        """Remove govern's root qdisc from every interface that has it, and the tarpit's chain and sets."""
        removed = False
        for index in self.interfaces().values():
            removed |= self._drop_root(index)
        removed |= teardown_nft()
        self.held.clear()
        return removed

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        if self._nl is not None:
            self._nl.close()
            self._nl = None


def teardown_nft() -> bool:
    """Remove the tarpit's chain and sets from table `inet govern`, and the table too if nothing else is left in
    it (the enforcer was never set up). True if anything was removed."""
    nft = Nft()
    try:
        if (sh.FAMILY, sh.TABLE) not in nft.tables():
            return False
        items = nft.json(f"list table {sh.FAMILY} {sh.TABLE}").get("nftables", [])
        chains = {i["chain"]["name"] for i in items if "chain" in i}
        sets = {i["set"]["name"] for i in items if "set" in i}
        t = f"{sh.FAMILY} {sh.TABLE}"
        cmds = [f"delete chain {t} {sh.CHAIN}"] if sh.CHAIN in chains else []
        cmds += [f"delete set {t} {s}" for s in sh.SETS if s in sets]
        if chains <= {sh.CHAIN} and sets <= {*sh.SETS, "allow4", "allow6"}:
            cmds = [f"delete table {t}"]
        if cmds:
            nft.run("\n".join(cmds) + "\n")
        return bool(cmds)
    finally:
        nft.close()
