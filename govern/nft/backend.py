"""The nftables backend: owns table `inet govern`, keeps the truth of its block and throttle sets in memory, and
commits each plan as one netlink transaction.

The sets are never listed in the hot path: what they hold is known from what was committed, and the kernel is
read back only once, at start-up, to reconcile with the durable state. Each block or throttle goes to the part of
its kind that its prefix length calls for (govern.nft.ruleset.part: hosts and IPv6 /64s in hash sets, other
prefixes in interval sets); an element found at start-up in another part (a table of the shape before the split,
where the interval sets held everything) is moved to its own in the same transaction, so none is ever unenforced.

Whether someone else changed the table is asked of the kernel's ruleset generation first: it moves on with every
committed transaction, anyone's, and the table's shape is listed only when it moved on by more than govern's own
commits.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import operator
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from govern.addr import Prefix, group_key
from govern.keys import Counted
from govern.model import Action, ActionKind, FirewallSpec, Mode, ModeState, Plan, State
from govern.nft.libnft import Nft
from govern.nft.netlink import ElemOp, NftNetlink
from govern.nft.ruleset import (
    ATTEMPTS,
    FAMILY,
    INTERVAL_SETS,
    KINDS,
    PROVEN_TIMEOUT_S,
    SLOT_SETS,
    TABLE,
    part,
    parts,
    ruleset,
    seen_sets,
    slot_sets,
    stored,
)
from govern.setops import set_changes
from govern.tarpit.shape import NFT_NAMES as TARPIT_NAMES

log = logging.getLogger("govern.nft")

# An address no connection comes from: the element each new counting shard is made with and loses at once.
_NOBODY = {4: Prefix.parse("0.0.0.0"), 6: Prefix.parse("::")}


class NftBackend:
    name = "nftables"

    def __init__(self, *, enforce: bool = True) -> None:
        self.enforce = enforce
        self.nft = Nft()
        self.nl = NftNetlink(table=TABLE)
        self.held: dict[str, set[Prefix]] = {name: set() for k in KINDS for v in (4, 6) for name in parts(k, v)}
        self.allow: dict[str, set[Prefix]] = {"allow4": set(), "allow6": set()}
        self.v4_len, self.v6_len = 32, 64
        self.ports: frozenset[int] = frozenset()
        self.budget_sets: tuple[str, ...] = ()  # the slot budget's sets, where it is in force
        self.made: str | None = None  # the table's shape as setup left it (`shape`)
        # The ruleset generation at which the table was last known to be as `made` says: the one govern's own
        # commits since then have moved on, one by one (None: unknown, check the shape).
        self.generation: int | None = None
        # The `attempts` counter as it stood just before the last read of the counting sets (None: no read since
        # the table was made), for `syn_counts_unchanged`.
        self._counted_at: int | None = None
        self._same_until = 0.0  # time.monotonic() at which an element of the last read may time out

    # -- start-up -------------------------------------------------------------------------------------------

    def setup(self, spec: FirewallSpec, allow: Sequence[Prefix], state: State, now: float) -> Plan:
        """Create or converge the table, load the allowlist, and restore `state` into the kernel.

        Returns the blocks and throttles found in the kernel that the state did not know (after a crash between
        kernel commit and store write, or a lost state directory), as a plan for the caller to record.
        """
        self.v4_len, self.v6_len = spec.v4_len, spec.v6_len
        self.ports = frozenset(spec.ports)
        sizes = slot_sets(spec, self.enforce)
        have = self._declared()
        resize = [name for name in SLOT_SETS if name in have and have[name] != sizes.get(name)]
        self.nft.run(ruleset(spec, enforce=self.enforce, resize=resize))
        # A counting shard made now starts with a hash table sized for the whole shard, which each dump walks
        # whole; removing an element shrinks it to fit (govern/nft/ruleset.py, SEEN_SHARDS).
        made = [(name, _NOBODY[v]) for v in (4, 6) for name in seen_sets(v) if name not in have]
        self._commit([ElemOp(add, name, nobody) for name, nobody in made for add in (True, False)])
        self.budget_sets = tuple(sizes)
        self._counted_at = None
        self.allow = {name: {e.prefix for e in self.nl.dump_set(name)} for name in ("allow4", "allow6")}
        self.set_allow(allow)
        adopted: list[Action] = []
        ops: list[ElemOp] = []
        moves: list[ElemOp] = []
        normal = {p: t for p, t in state.throttles.items() if not t.tight}
        tight = {p: t for p, t in state.throttles.items() if t.tight}
        sets = (("block", state.blocks), ("throttle", normal), ("tight", tight))
        for kind, wanted in sets:
            for v in (4, 6):
                in_kernel: dict[Prefix, int] = {}  # prefix -> ms left (0: no timeout)
                for name in parts(kind, v):
                    held = self.held[name] = set()
                    for e in self.nl.dump_set(name):
                        p = stored(name, e.prefix)
                        in_kernel[p] = e.expires_ms
                        home = part(kind, p)
                        if home == name:
                            held.add(p)
                            continue
                        # In another part than its own (a table of the shape before the split): moved there, its
                        # time left kept unless the state has its own.
                        moves.append(ElemOp(False, name, p))
                        entry = wanted.get(p)
                        left = _ms(entry.until - now) if entry is not None and entry.until > now else e.expires_ms
                        moves.append(ElemOp(True, home, p, left))
                for p, entry in wanted.items():
                    if p.version == v and p not in in_kernel and entry.until > now:
                        ops.append(ElemOp(True, part(kind, p), p, _ms(entry.until - now)))
                for p, left in in_kernel.items():
                    if p not in wanted:
                        akind = ActionKind.BLOCK if kind == "block" else ActionKind.THROTTLE
                        why = "found in the kernel at start-up"
                        adopted.append(Action(akind, p, why, until=now + left / 1000, tight=kind == "tight"))
        for op in ops + moves:
            if op.add:
                self.held[op.set].add(op.prefix)
        restored = len(ops)
        # The wave's gate as the durable mode says: open unless a wave outlived the restart. Moves first: each is
        # a delete from an interval set and an add to a hash set, never into an interval set where it could overlap.
        self._commit(moves + ops + _gate_ops(state.mode, now))
        self.generation = self.nl.generation()
        self.made = shape(self.nft)
        if moves:
            log.info("moved %d elements to the set their prefix length belongs in", len(moves) // 2)
        log.info("restored %d elements into the kernel, adopted %d found there", restored, len(adopted))
        return Plan(tuple(adopted))

    def unavailable(self) -> Mapping[str, str]:
        return {}

    def changed(self) -> str | None:
        if self.made is None:
            return None
        # Unchanged generation: no transaction since the table was last seen as made, so nothing to list.
        generation = self.nl.generation()
        if generation == self.generation:
            return None
        now = shape(self.nft)
        if now == self.made:
            self.generation = generation  # read before the listing: a commit after it moves it on again
            return None
        return "table inet govern is gone" if not now else "table inet govern was changed (its sets, chains or rules)"

    def _commit(self, ops: Sequence[ElemOp]) -> None:
        """One transaction of govern's own. The generation it makes is still the table as made when it follows
        the one known so: anything else means another transaction came in between, and the next check lists.

        The ops go grouped by set (a stable sort: each set's own in their order, releases before adds), since a
        message carries one set's run and each message is acked: ops alternating between sets (a plan blocking
        hosts and /64s in turn, a start-up moving 100k elements from one part to another) would otherwise make a
        message, and an ack, per op, and 200k acks overflow the socket's receive buffer."""
        ops = sorted(ops, key=_set_name)
        made = self.nl.commit(ops, interval_sets=INTERVAL_SETS, missing_ok=True)
        if made is not None and self.generation is not None:
            self.generation = made if made == _after(self.generation) else None

    def _declared(self) -> dict[str, int | None]:
        """govern's sets in the kernel, by name, with their declared size (None: unbounded).

        From the terse `list ruleset`, without elements: `list tables` and `list set` make nft 1.0.6 fetch every
        element of the table first (0.35 s beside 100k blocks)."""
        return {
            body["name"]: body.get("size")
            for item in self.nft.json("list ruleset", terse=True).get("nftables", [])
            if (body := item.get("set")) and body.get("family") == FAMILY and body.get("table") == TABLE
        }

    def set_allow(self, allow: Sequence[Prefix]) -> None:
        """Replace the allow sets' contents in one transaction (only the difference is sent)."""
        wanted = {f"allow{v}": set(collapse([p for p in allow if p.version == v])) for v in (4, 6)}
        # Deletes first: a merged prefix may replace elements it now covers, and intervals must never overlap.
        ops = [ElemOp(False, s, p) for s in wanted for p in sorted(self.allow[s] - wanted[s])]
        ops += [ElemOp(True, s, p) for s in wanted for p in sorted(wanted[s] - self.allow[s])]
        self._commit(ops)
        self.allow = wanted

    # -- every tick ---------------------------------------------------------------------------------------

    def apply(self, plan: Plan, now: float) -> None:
        ch = set_changes(plan, now, self.held, part)
        drops = [ElemOp(False, op.set, op.prefix) for op in ch.drops]
        adds = [ElemOp(True, op.set, op.prefix, _ms(op.seconds)) for op in ch.adds]
        if plan.mode is not None:
            gate = _gate_ops(plan.mode, now)
            drops += [op for op in gate if not op.add]
            adds += [op for op in gate if op.add]
        # Releases first (govern.setops). Deletes tolerate absence, since an element may have lapsed in the kernel
        # a moment ago.
        self._commit(drops + adds)
        # Merged only once the kernel accepted the transaction: copying the held sets per plan would cost
        # O(blocks) every tick.
        ch.merge_into(self.held)

    def prove(self, sources: Mapping[Prefix, float]) -> None:
        """The kernel's own proof and the log's share a set: the gate and the budget pass either.

        Each element is deleted and added again in the one transaction: a kernel before 6.10 keeps an element's
        timeout when it is added again, and a busy relay the log proves at every delivery would drop out of the set
        `learn_for` after its first one."""
        live = [(p, s) for p, s in sources.items() if s > 0]
        ops = [ElemOp(False, f"proven{p.version}", p) for p, _ in live]
        # A crowd's proof on probation (`crowd_proven`) is promoted by this: it leaves the pending set.
        ops += [ElemOp(False, f"provenc{p.version}", p) for p, _ in live]
        self._commit(ops + [ElemOp(True, f"proven{p.version}", p, _ms(s)) for p, s in live])

    def unprove(self, sources: Sequence[Prefix], seconds: float) -> None:
        # Deletes tolerate absence (an element may have lapsed a moment ago). The hold-off in the same transaction:
        # the source's next dialogue would prove it again in the kernel, whatever the daemon's trust says.
        ops = [ElemOp(False, f"{name}{p.version}", p) for p in sources for name in ("proven", "provenc", "unproven")]
        self._commit(ops + [ElemOp(True, f"unproven{p.version}", p, _ms(seconds)) for p in sources])

    def crowds(self, among: Iterable[Prefix]) -> frozenset[Prefix]:
        # One look-up a source: a tick asks about the few that just delivered, where a dump of the crowd sets reads
        # every swarm's source (38 ms, twice a second, in the lab's full flood: 7% of a core).
        return frozenset(p for p in among if self.nl.holds(f"crowd{p.version}", p))

    def proven(self) -> list[tuple[Prefix, float]]:
        """Sources the MTA answered a whole dialogue (set proven4/proven6, filled by the kernel), as source groups,
        each with the seconds since its last proof: each proof starts the element's timeout again."""
        return self._proven("proven")

    def crowd_proven(self) -> list[tuple[Prefix, float]]:
        """The crowds the kernel proved in a wave (provenc4/provenc6), pending the daemon's probation."""
        return self._proven("provenc")

    def _proven(self, kind: str) -> list[tuple[Prefix, float]]:
        out = []
        for name in (f"{kind}4", f"{kind}6"):
            for e in self.nl.dump_set(name):
                ago = max(PROVEN_TIMEOUT_S - e.expires_ms / 1000, 0.0) if e.expires_ms else 0.0
                out.append((group_key(e.prefix, self.v4_len, self.v6_len), ago))
        return out

    def syn_counts(self) -> Counted:
        # Read before the dump: a SYN counted between the two is in this dump and moves the counter past the mark,
        # so the next tick reads again; one counted after it moves the counter too.
        mark = self.nl.counter_packets(ATTEMPTS)
        began = time.monotonic()
        # As columns: the rate window takes them as they are (govern.keys.Counted; docs/benchmarks.md, "Memory").
        reads = [self.nl.count_columns(seen_sets(v), v, plen) for v, plen in ((4, self.v4_len), (6, self.v6_len))]
        counts = Counted.concat([r.counts for r in reads])
        # The time left is as the kernel found it during the dump, which began after `began`: the first element
        # can only time out later than this.
        left = [r.soonest_ms for r in reads if r.soonest_ms is not None]
        self._same_until = began + min(left) / 1000 if left else math.inf
        self._counted_at = mark
        return counts

    def syn_counts_unchanged(self) -> bool:
        # The counter counts in the rule that sends each new connection to its shard's count (govern/nft/ruleset.py),
        # so while it stands still no element's counter has moved; and until the first element read times out,
        # none has gone either (docs/benchmarks.md, "Whole daemon": a flood's hundred thousand sources held for
        # their two minutes cost no read while nothing new comes).
        return (
            self._counted_at is not None
            and time.monotonic() < self._same_until
            and self.nl.counter_packets(ATTEMPTS) == self._counted_at
        )

    def attempts(self) -> int | None:
        return self.nl.counter_packets(ATTEMPTS)

    def slotted(self) -> int | None:
        if not self.budget_sets:
            return None
        return sum(self.nl.count_elements(name) for name in self.budget_sets)

    def end_sessions(self, prefixes: Sequence[Prefix]) -> int:
        from govern.conntrack import forget

        return forget(prefixes, self.ports)

    # -- teardown -------------------------------------------------------------------------------------------

    def teardown(self) -> bool:
        self.made = self.generation = None
        self.budget_sets = ()
        if not delete_table(self.nft):
            return False
        for v in self.held.values():
            v.clear()
        return True

    def close(self) -> None:
        self.nl.close()
        self.nft.close()


_EVERYONE = (Prefix(4, 0, 0), Prefix(6, 0, 0))
_GROUPS_STALE = 1 << 16  # keys gone from a counting set that its cache of sources may keep
# A NamedTuple's constructor is a Python function; map(_new, repeat(Prefix), tuples) builds the same objects in C.
_new = cast(Callable[[type[Any], tuple[int, ...]], Any], tuple.__new__)


def _gate_ops(mode: ModeState, now: float) -> list[ElemOp]:
    """Close the gate (0.0.0.0/0 and ::/0 in gate4/gate6, lapsing with the wave's timer) or open it."""
    if mode.mode is Mode.WAVE and mode.until > now:
        return [ElemOp(True, f"gate{p.version}", p, _ms(mode.until - now)) for p in _EVERYONE]
    return [ElemOp(False, f"gate{p.version}", p) for p in _EVERYONE]


_set_name = operator.attrgetter("set")


def _after(generation: int) -> int:
    """The generation the kernel's next commit makes (a u32 that skips 0 when it wraps)."""
    return (generation + 1) & 0xFFFFFFFF or 1


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 1000)


def collapse(prefixes: Sequence[Prefix]) -> list[Prefix]:
    """Merge overlapping and adjacent prefixes of one family: an interval set refuses overlapping elements."""
    nets = [ipaddress.ip_network(str(p)) for p in prefixes]
    merged: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]
    if all(n.version == 4 for n in nets):
        merged = ipaddress.collapse_addresses([n for n in nets if isinstance(n, ipaddress.IPv4Network)])
    else:
        merged = ipaddress.collapse_addresses([n for n in nets if isinstance(n, ipaddress.IPv6Network)])
    return [Prefix(n.version, int(n.network_address), n.prefixlen) for n in merged]


def shape(nft: Nft) -> str:
    """Table inet govern without its elements, counters or handles, as one string ("" when there is none): what
    changes only when the table itself is changed. `list ruleset` and not `list table`: terse, it leaves set
    elements in the kernel (1.5 ms beside 100k blocks); `list table` fetches them all (nft 1.0.6: 0.5 s)."""
    listed = nft.json("list ruleset", terse=True).get("nftables", [])
    ours = []
    for item in listed:
        kind, body = next(iter(item.items()))
        if kind == "metainfo" or body.get("family") != FAMILY or body.get("table", body.get("name")) != TABLE:
            continue
        if body.get("chain", body.get("name")) in TARPIT_NAMES:  # the tarpit's part of the table: its own
            continue
        ours.append({kind: _stripped(body)})
    return json.dumps(ours, sort_keys=True) if ours else ""


def _stripped(v: Any) -> Any:
    """Without what the kernel changes by itself: handles, and counters' figures."""
    if isinstance(v, dict):
        return {k: ("counter" if k == "counter" else _stripped(x)) for k, x in v.items() if k != "handle"}
    if isinstance(v, list):
        return [_stripped(x) for x in v]
    return v


def delete_table(nft: Nft) -> bool:
    """Remove table inet govern if it is there; whether it was."""
    if (FAMILY, TABLE) not in nft.tables():
        return False
    nft.run(f"delete table {FAMILY} {TABLE}\n")
    return True


def teardown_table() -> bool:
    """Remove table inet govern without a running backend (used by `govern teardown` when no daemon runs)."""
    nft = Nft()
    try:
        return delete_table(nft)
    finally:
        nft.close()
