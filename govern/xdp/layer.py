"""The XDP fast path in front of a firewall backend: an Enforcer that hands every plan to the firewall and mirrors
its blocks and the allowlist into the XDP program's maps, so a blocked source's packets to the protected ports are
dropped before the kernel builds a packet buffer. Throttles stay with the firewall (XDP has no per-source rate
state here). New-connection counts come from the XDP program, which sees a blocked source's SYNs the firewall
behind it no longer does.

Each block in the maps carries its expiry (CLOCK_MONOTONIC, compared with bpf_ktime_get_ns by the program), so a
block lapses in XDP by itself if the daemon dies, as it does in the firewall's sets. See docs/xdp.md.

XDP is a fast path in front of a firewall that already protects: when it cannot start (no bpf filesystem, a driver
or kernel that refuses the program, a missing capability) the firewall goes on alone, and `unavailable` says why
for the log, `govern status` and the metrics. Each `setup` (start, reload, repair) tries again.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence

from govern.addr import Prefix
from govern.edges import Enforcer
from govern.errors import GovernError
from govern.model import ActionKind, FirewallSpec, Plan, State
from govern.xdp.loader import XdpProgram, attached, detach_all, unpin


class XdpLayer:
    def __init__(self, inner: Enforcer, program: Callable[[], XdpProgram], ifaces: Sequence[str], pin_root: str):
        self.inner = inner
        self.name = f"xdp+{inner.name}"
        self._make = program
        self.ifaces = tuple(ifaces)
        self.pin_root = pin_root
        self.prog: XdpProgram | None = None
        self.off: str | None = None
        self.v4_len, self.v6_len = 32, 64

    def setup(self, spec: FirewallSpec, allow: Sequence[Prefix], state: State, now: float) -> Plan:
        adopted = self.inner.setup(spec, allow, state, now)
        self.v4_len, self.v6_len = spec.v4_len, spec.v6_len
        self._drop()  # a reload, or objects restored after someone removed them
        try:
            self._start(spec, allow, state, adopted, now)
        except (GovernError, OSError) as exc:
            self._drop()
            # A program left attached (by an earlier run, or before the failure) would go on dropping from maps
            # nobody updates: an operator's unblock would not reach it.
            with contextlib.suppress(GovernError, OSError):
                detach_all(self.ifaces)
            self.off = str(exc) if isinstance(exc, GovernError) else f"{exc.strerror}: {exc.filename}"
            self.name = self.inner.name
        else:
            self.off = None
            self.name = f"xdp+{self.inner.name}"
        return adopted

    def _start(self, spec: FirewallSpec, allow: Sequence[Prefix], state: State, adopted: Plan, now: float) -> None:
        self.prog = prog = self._make()
        prog.set_ports(spec.ports)
        self.set_allow(allow)
        wanted = {p: b.until - now for p, b in state.blocks.items() if b.until > now}
        wanted |= {a.prefix: a.until - now for a in adopted.actions if a.kind is ActionKind.BLOCK}
        prog.tidy()
        held = prog.prefixes("block")
        # Every wanted block is written again: its time left comes from the state, whatever the map held.
        prog.update("block", wanted, held - set(wanted))
        prog.detach()
        prog.attach(self.ifaces)

    def _drop(self) -> None:
        if self.prog is not None:
            self.prog.close()
            self.prog = None

    def unavailable(self) -> Mapping[str, str]:
        return {**self.inner.unavailable(), **({"xdp": self.off} if self.off is not None else {})}

    def set_allow(self, allow: Sequence[Prefix]) -> None:
        self.inner.set_allow(allow)
        if self.prog is not None:
            held, wanted = self.prog.prefixes("allow"), set(allow)
            self.prog.update("allow", wanted - held, held - wanted)

    def apply(self, plan: Plan, now: float) -> None:
        self.inner.apply(plan, now)  # the firewall first: if it refuses the plan, XDP changes nothing either
        if self.prog is None:
            return
        add = {a.prefix: a.until - now for a in plan.actions if a.kind in (ActionKind.BLOCK, ActionKind.EXTEND)}
        remove = [a.prefix for a in plan.actions if a.kind is ActionKind.UNBLOCK]
        self.prog.update("block", add, remove)

    def proven(self) -> Sequence[tuple[Prefix, float]]:
        return self.inner.proven()

    def crowd_proven(self) -> Sequence[tuple[Prefix, float]]:
        return self.inner.crowd_proven()

    def prove(self, sources: Mapping[Prefix, float]) -> None:
        self.inner.prove(sources)

    def unprove(self, sources: Sequence[Prefix], seconds: float) -> None:
        self.inner.unprove(sources, seconds)

    def crowds(self, among: Iterable[Prefix]) -> frozenset[Prefix]:
        return self.inner.crowds(among)

    def attempts(self) -> int | None:
        return self.inner.attempts()

    def slotted(self) -> int | None:
        return self.inner.slotted()

    def syn_counts_unchanged(self) -> bool:
        # The program counts the SYNs it drops too, which the table's counter never sees.
        return self.prog is None and self.inner.syn_counts_unchanged()

    def syn_counts(self) -> Mapping[Prefix, int]:
        if self.prog is None:
            return self.inner.syn_counts()
        return self.prog.syn_counts(self.v4_len, self.v6_len)

    def end_sessions(self, prefixes: Sequence[Prefix]) -> int:
        return self.inner.end_sessions(prefixes)

    def changed(self) -> str | None:
        inner = self.inner.changed()
        if inner is not None or self.prog is None:
            return inner
        gone = [name for name, idx in zip(self.ifaces, self.prog.ifindexes, strict=False) if not attached(idx)]
        if gone:
            return "the XDP program was detached from " + ", ".join(gone)
        if not os.path.isdir(self.pin_root):
            return f"the XDP maps' pins under {self.pin_root} were removed"
        return None

    def teardown(self) -> bool:
        found = self.inner.teardown()
        # By interface, not through a loaded program: `govern teardown` runs in a process that never loaded one.
        detached = detach_all(self.ifaces)
        if self.prog is not None:
            self.prog.ifindexes.clear()
        return unpin(self.pin_root) or detached or found

    def close(self) -> None:
        if self.prog is not None:
            self.prog.close()  # the program stays attached and its maps pinned: blocks hold across a restart
        self.inner.close()
