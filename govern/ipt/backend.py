"""The iptables+ipset backend: owns chain GOVERN (govern.ipt.rules) and the `govern-*` sets, keeps the truth of
its block and throttle sets in memory, and commits each plan as one `ipset restore` batch.

The same contract as govern.nft.backend.NftBackend (tests/kernel/test_backend_contract.py): the sets are read back
only at start-up, to reconcile with the durable state.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from govern.addr import Prefix
from govern.ipt import ipset, rules
from govern.ipt.netlink import MAX_TIMEOUT_S, IpsetNetlink, Op
from govern.model import Action, ActionKind, FirewallSpec, Plan, State
from govern.setops import set_changes

log = logging.getLogger("govern.ipt")
KINDS = ("block", "throttle", "tight")


def _set(kind: str, p: Prefix) -> str:
    return rules.set_names(p.version)[kind]


def _seconds(seconds: float) -> int:
    return min(max(int(seconds), 1), MAX_TIMEOUT_S)


def _add(name: str, p: Prefix, seconds: float) -> str:
    return f"add {name} {p} timeout {_seconds(seconds)}"


class IptBackend:
    name = "iptables"

    def __init__(self, *, enforce: bool = True) -> None:
        self.enforce = enforce
        self.held: dict[str, set[Prefix]] = {rules.set_names(v)[k]: set() for k in KINDS for v in (4, 6)}
        self.allow: dict[str, set[Prefix]] = {rules.set_names(v)["allow"]: set() for v in (4, 6)}
        self.ports: frozenset[int] = frozenset()
        self.made: Shape | None = None  # the chains' and sets' shape as setup left it (`_shape`)
        # Element changes after set-up: netlink, no process per plan (a process is ~1-3 ms, govern/ipt/netlink.py).
        self.nl = IpsetNetlink()

    def setup(self, spec: FirewallSpec, allow: Sequence[Prefix], state: State, now: float) -> Plan:
        """Create or converge the sets and chain, load the allowlist, restore `state`; adopt what the sets held."""
        self.ports = frozenset(spec.ports)
        ipset.restore(converge(rules.ipset_create(spec), ipset.headers()))
        rules.install(spec, enforce=self.enforce)
        self.allow = {name: {e.prefix for e in ipset.save(name)} for name in self.allow}
        self.set_allow(allow)
        normal = {p: t for p, t in state.throttles.items() if not t.tight}
        tight = {p: t for p, t in state.throttles.items() if t.tight}
        lines: list[str] = []
        adopted: list[Action] = []
        for kind, wanted in (("block", state.blocks), ("throttle", normal), ("tight", tight)):
            for v in (4, 6):
                name = rules.set_names(v)[kind]
                in_kernel = {e.prefix: e.timeout_s for e in ipset.save(name)}
                self.held[name] = set(in_kernel)
                for p, entry in wanted.items():
                    if p.version == v and p not in in_kernel and entry.until > now:
                        lines.append(_add(name, p, entry.until - now))
                        self.held[name].add(p)
                for p, left in in_kernel.items():
                    if p not in wanted:
                        akind = ActionKind.BLOCK if kind == "block" else ActionKind.THROTTLE
                        why = "found in the kernel at start-up"
                        adopted.append(Action(akind, p, why, until=now + left, tight=kind == "tight"))
        ipset.restore(lines)
        self.made = _shape()
        log.info("restored %d elements into ipset, adopted %d found there", len(lines), len(adopted))
        return Plan(tuple(adopted))

    def set_allow(self, allow: Sequence[Prefix]) -> None:
        """Replace the allow sets' contents in one batch (only the difference is sent)."""
        wanted = {rules.set_names(v)["allow"]: {p for p in allow if p.version == v} for v in (4, 6)}
        lines = [f"del {s} {p}" for s in wanted for p in sorted(self.allow[s] - wanted[s])]
        lines += [f"add {s} {p}" for s in wanted for p in sorted(wanted[s] - self.allow[s])]
        ipset.restore(lines)
        self.allow = wanted

    def apply(self, plan: Plan, now: float) -> None:
        ch = set_changes(plan, now, self.held, _set)
        # `-exist`'s meaning: a delete of an element that lapsed a moment ago is harmless, a re-add replaces the
        # timeout.
        ops = [Op(False, op.set, op.prefix) for op in ch.drops]
        ops += [Op(True, op.set, op.prefix, _seconds(op.seconds)) for op in ch.adds]
        self.nl.apply(ops)
        ch.merge_into(self.held)

    def proven(self) -> Sequence[tuple[Prefix, float]]:
        # Kernel-side proof, the wave's gate and the slot budget are nftables features; with iptables, trust comes
        # from the Postfix log only (docs/iptables.md).
        return ()

    def crowd_proven(self) -> Sequence[tuple[Prefix, float]]:
        return ()  # no wave's gate, no crowds (docs/iptables.md)

    def prove(self, sources: Mapping[Prefix, float]) -> None:
        return None  # no gate and no budget to pass (docs/iptables.md)

    def unprove(self, sources: Sequence[Prefix], seconds: float) -> None:
        return None

    def crowds(self, among: Iterable[Prefix]) -> frozenset[Prefix]:
        return frozenset()  # no wave's gate, no first contacts (docs/iptables.md)

    def attempts(self) -> int | None:
        return None  # only the accept queues are read between ticks (docs/iptables.md)

    def slotted(self) -> int | None:
        return None  # no budget (docs/iptables.md)

    def syn_counts_unchanged(self) -> bool:
        return False  # no counter to tell (attempts, above)

    def syn_counts(self) -> Mapping[Prefix, int]:
        # Every tick: over netlink, not an `ipset save` process per set (docs/benchmarks.md, "iptables backend").
        out: dict[Prefix, int] = {}
        for v in (4, 6):
            for e in self.nl.elements(rules.set_names(v)["seen"]):
                out[e.prefix] = out.get(e.prefix, 0) + e.packets
        return out

    def end_sessions(self, prefixes: Sequence[Prefix]) -> int:
        from govern.conntrack import forget

        return forget(prefixes, self.ports)

    def unavailable(self) -> Mapping[str, str]:
        return {}

    def changed(self) -> str | None:
        if self.made is None:
            return None
        now = _shape(self.nl.names())  # every tick: the names over netlink, not an `ipset list -n` process
        if now == self.made:
            return None
        gone = set(self.made[0]) - set(now[0])
        if gone:
            return "ipset(s) " + ", ".join(sorted(gone)) + " gone"
        return f"chain {rules.CHAIN} or its jump was changed" if now[1] != self.made[1] else "the ipsets were changed"

    def teardown(self) -> bool:
        self.made = None
        found = rules.remove()
        # Sets can be destroyed only once no rule refers to them, hence after the chain.
        ours = [n for n in ipset.names() if n.startswith(rules.PREFIX)]
        ipset.restore([f"destroy {n}" for n in ours])
        for held in self.held.values():
            held.clear()
        return found or bool(ours)

    def close(self) -> None:
        self.nl.close()


def converge(creates: Sequence[str], have: Mapping[str, tuple[str, ...]]) -> list[str]:
    """`ipset restore` lines that make each set of `creates`: created where missing, kept where it is as asked,
    and where it exists in another form (an earlier version's, e.g. its element limit), made anew beside it, filled
    with its elements and timeouts, and swapped in for it (`swap` is atomic: the rules never see a set missing or
    empty, and no block is lifted)."""
    out: list[str] = []
    for line in creates:
        name = line.split()[1]
        header = have.get(name)
        if header is None or not ipset.differs(line, header):
            out.append(line)
            continue
        new = f"{name}-new"
        out += [f"destroy {new}"] if new in have else []
        out.append(line.replace(f"create {name} ", f"create {new} ", 1))
        out += [_add(new, e.prefix, e.timeout_s) if e.timeout_s else f"add {new} {e.prefix}" for e in ipset.save(name)]
        out += [f"swap {name} {new}", f"destroy {new}"]
        log.info("ipset %s made anew as asked (%s), its elements kept", name, " ".join(line.split()[2:]))
    return out


Shape = tuple[tuple[str, ...], tuple[object, ...]]


def _shape(names: Sequence[str] | None = None) -> Shape:
    """The govern-* sets there are (of `names`, or as `ipset list -n` says), and chain GOVERN's rules and jump in
    each family."""
    every = ipset.names() if names is None else names
    return tuple(sorted(n for n in every if n.startswith(rules.PREFIX))), rules.shape()


def teardown_all() -> bool:
    """Remove chain GOVERN and the govern-* sets without a running backend (`govern teardown`)."""
    backend = IptBackend()
    try:
        return backend.teardown()
    finally:
        backend.close()
