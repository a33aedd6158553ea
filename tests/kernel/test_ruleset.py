"""Table inet govern in the kernel: the ruleset converges in place (another port list replaces the ports, the sets
keep their elements, so a reload never lifts a block); each block, throttle and tight throttle goes to the part of
its kind its prefix length calls for (hosts and IPv6 /64s in hash sets, other prefixes in interval sets) and is
enforced there; a table of the shape before that split (one interval set per kind and family) converges without
losing a block; and the per-tick check lists the table only when the ruleset generation moved on past govern's
own transactions."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from govern import config
from govern.addr import Prefix
from govern.model import Action, ActionKind, Block, FirewallSpec, Plan, State, Throttle
from govern.nft import backend as backend_module
from govern.nft.backend import NftBackend, shape
from govern.nft.libnft import Nft
from govern.nft.netlink import ElemOp, NftNetlink
from govern.nft.ruleset import INTERVAL_SETS, KINDS, part, parts, ruleset
from tests.kernel.daemon_harness import nft_set, nft_set_part
from tests.kernel.test_backend_contract import passes
from tests.netns import Lab, Netns, new_name, sh

P = Prefix.parse
HOST4, HOST6, NET64, NET24 = P("198.18.0.7"), P("2001:db8:bad:1::7"), P("2001:db8:bad:2::/64"), P("198.18.1.0/24")
# Each kind of prefix, the set it goes to, and an address inside it.
PLACES = (
    (HOST4, "block4h", "198.18.0.7"),
    (HOST6, "block6h", "2001:db8:bad:1::7"),
    (NET64, "block6n", "2001:db8:bad:2::99"),
    (NET24, "block4", "198.18.1.200"),
)


def spec() -> FirewallSpec:
    return config.from_mapping({"protect": {"ports": [25]}}).firewall()


def where(lab: Lab, p: Prefix, kind: str = "block") -> set[str]:
    """The sets of `kind` whose listing (the nft CLI's) holds `p`."""
    return {name for v in (4, 6) for name in parts(kind, v) if str(p) in nft_set_part(lab.mx, name)}


def test_reapplying_with_other_ports_replaces_them_and_keeps_blocks() -> None:
    ns = Netns(new_name("rs"))
    sh("ip", "netns", "add", ns.name)
    try:
        with ns.entered():
            nft, nl = Nft(), NftNetlink()
        try:
            nft.run(ruleset(config.from_mapping({}).firewall()))
            nl.commit([ElemOp(True, "block4", Prefix.parse("198.18.0.0/24"), 600_000)], interval_sets=INTERVAL_SETS)
            for ports in ([25, 2525], [587], [25, 465, 587]):
                nft.run(ruleset(config.from_mapping({"protect": {"ports": ports}}).firewall()))
                out = json.loads(ns.sh("nft", "-j", "list", "set", "inet", "govern", "ports"))
                assert sorted(out["nftables"][1]["set"]["elem"]) == sorted(ports)
                assert "198.18.0.0/24" in ns.sh("nft", "list", "set", "inet", "govern", "block4")
        finally:
            nl.close()
            nft.close()
    finally:
        sh("ip", "netns", "del", ns.name, check=False)


def test_each_prefix_length_lands_in_its_set_and_is_dropped_until_released(served: Lab) -> None:
    lab, now = served, time.time()
    with lab.mx.entered():
        backend = NftBackend()
    try:
        backend.setup(spec(), [], State(), now)
        backend.apply(Plan(tuple(Action(ActionKind.BLOCK, p, "test", until=now + 600) for p, _s, _a in PLACES)), now)
        for p, name, addr in PLACES:
            assert part("block", p) == name
            assert where(lab, p) == {name}, p
            assert p in backend.held[name]
            assert not passes(lab, addr), f"{p} in {name} was not dropped"
        assert passes(lab, "198.18.0.8") and passes(lab, "2001:db8:bad:1::8") and passes(lab, "2001:db8:bad:3::1")
        # Throttles and tight throttles go to the same parts of their own kinds.
        backend.apply(
            Plan(
                (
                    Action(ActionKind.THROTTLE, P("198.51.100.9"), "test", until=now + 600),
                    Action(ActionKind.THROTTLE, P("2001:db8:51::/64"), "test", until=now + 600, tight=True),
                )
            ),
            now,
        )
        assert where(lab, P("198.51.100.9"), "throttle") == {"throttle4h"}
        assert where(lab, P("2001:db8:51::/64"), "tight") == {"tight6n"}
        # Released one by one: each part lets its source through again, the others stay dropped.
        for i, (p, name, addr) in enumerate(PLACES):
            backend.apply(Plan((Action(ActionKind.UNBLOCK, p, "test"),)), now)
            assert where(lab, p) == set() and p not in backend.held[name]
            assert passes(lab, addr), f"{p} still dropped after its release"
            assert all(not passes(lab, a) for _p, _n, a in PLACES[i + 1 :])
    finally:
        backend.close()


def test_each_part_lets_its_elements_lapse(served: Lab) -> None:
    """The kernel's own timeouts, in hash and interval sets alike (the hash sets' garbage collection runs once a
    minute: a lapsed element is out of the lookups at once all the same)."""
    lab, now = served, time.time()
    with lab.mx.entered():
        backend = NftBackend()
    try:
        backend.setup(spec(), [], State(), now)
        backend.apply(Plan(tuple(Action(ActionKind.BLOCK, p, "test", until=now + 2) for p, _s, _a in PLACES)), now)
        assert all(not passes(lab, a) for _p, _n, a in PLACES)
        time.sleep(2.5)
        for p, _name, addr in PLACES:
            assert where(lab, p) == set(), p
            assert passes(lab, addr), f"{p} still dropped after its block lapsed"
    finally:
        backend.close()


OLD_SHAPE = """
table inet govern {
    set ports { type inet_service; elements = { 25 }; }
    set allow4 { type ipv4_addr; flags interval; }
    set allow6 { type ipv6_addr; flags interval; }
    set block4 { type ipv4_addr; flags interval,timeout; }
    set block6 { type ipv6_addr; flags interval,timeout; }
    set throttle4 { type ipv4_addr; flags interval,timeout; }
    set throttle6 { type ipv6_addr; flags interval,timeout; }
    set tight4 { type ipv4_addr; flags interval,timeout; }
    set tight6 { type ipv6_addr; flags interval,timeout; }
    set gate4 { type ipv4_addr; flags interval,timeout; }
    set gate6 { type ipv6_addr; flags interval,timeout; }
    set rate4 { type ipv4_addr; size 262144; flags dynamic,timeout; timeout 2m; }
    set rate6 { type ipv6_addr; size 262144; flags dynamic,timeout; timeout 2m; }
    chain guard {
        type filter hook prerouting priority raw; policy accept;
        tcp dport @ports fib daddr type local ip saddr @allow4 return
        tcp dport @ports fib daddr type local ip6 saddr @allow6 return
        tcp dport @ports fib daddr type local ip saddr @block4 drop
        tcp dport @ports fib daddr type local ip6 saddr @block6 drop
        tcp dport @ports tcp flags syn / syn,ack fib daddr type local ip saddr @throttle4 update @rate4 \\
            { ip saddr limit rate over 20/minute burst 5 packets } drop
    }
}
"""


def test_a_table_of_the_shape_before_the_split_converges_and_keeps_every_block(served: Lab, tmp_path: Path) -> None:
    """A daemon upgraded in place: its old table held every block of a family in one interval set. The new
    ruleset's rules match every part from its first transaction on, and setup moves each element to its own part
    in one more, its time left kept (or the state's, where the state has it); none is ever unenforced."""
    lab, now = served, time.time()
    path = tmp_path / "old.nft"
    path.write_text(OLD_SHAPE)
    lab.mx.sh("nft", "-f", str(path))
    old = [
        ElemOp(True, "block4", HOST4, 600_000),
        ElemOp(True, "block4", NET24, 600_000),
        ElemOp(True, "block6", HOST6, 600_000),
        ElemOp(True, "block6", NET64, 300_000),
        ElemOp(True, "block6", P("2001:db8:bad:100::/56"), 600_000),
        ElemOp(True, "throttle4", P("198.51.100.9"), 600_000),
        ElemOp(True, "tight6", P("2001:db8:51::/64"), 600_000),
    ]
    with lab.mx.entered(), NftNetlink() as nl:
        nl.commit(old, interval_sets=INTERVAL_SETS)
    assert all(not passes(lab, a) for _p, _n, a in PLACES)
    # The state knows the /64 with more time left than the kernel, and not the IPv4 host (adopted from the kernel).
    state = State()
    state.blocks = {
        p: Block(p, "test", since=now, until=now + 3600, offences=1)
        for p in (HOST6, NET64, NET24, P("2001:db8:bad:100::/56"))
    }
    state.throttles = {P("198.51.100.9"): Throttle(P("198.51.100.9"), "test", since=now, until=now + 600)}
    with lab.mx.entered():
        backend = NftBackend()
    try:
        adopted = backend.setup(spec(), [], state, now)
        assert {(a.kind, a.prefix) for a in adopted.actions} == {
            (ActionKind.BLOCK, HOST4),
            (ActionKind.THROTTLE, P("2001:db8:51::/64")),
        }
        for p, name, addr in PLACES:
            assert where(lab, p) == {name}, p
            assert not passes(lab, addr), f"{p} was not dropped after the upgrade"
        assert where(lab, P("2001:db8:bad:100::/56")) == {"block6"}
        assert where(lab, P("198.51.100.9"), "throttle") == {"throttle4h"}
        assert where(lab, P("2001:db8:51::/64"), "tight") == {"tight6n"}
        assert nft_set(lab.mx, "block4") == {"198.18.0.7", "198.18.1.0/24"}
        with lab.mx.entered(), NftNetlink() as nl:
            left = {e.prefix: e.expires_ms for e in nl.dump_set("block6n")}
            kept = {e.prefix: e.expires_ms for e in nl.dump_set("block4h")}
        assert left[P("2001:db8:bad:2::")] > 3_000_000  # the state's hour, not the kernel's five minutes
        assert 590_000 < kept[HOST4] <= 600_000  # the kernel's time left, for one the state did not know
        assert {name: held for name, held in backend.held.items() if held} == {
            "block4h": {HOST4},
            "block4": {NET24},
            "block6h": {HOST6},
            "block6n": {NET64},
            "block6": {P("2001:db8:bad:100::/56")},
            "throttle4h": {P("198.51.100.9")},
            "tight6n": {P("2001:db8:51::/64")},
        }
        assert backend.changed() is None
    finally:
        backend.close()


def test_the_check_lists_the_table_only_after_someone_elses_transaction(
    served: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab, now = served, time.time()
    listed: list[str] = []

    def counted(nft: Nft) -> str:
        listed.append(made := shape(nft))
        return made

    monkeypatch.setattr(backend_module, "shape", counted)
    with lab.mx.entered():
        backend = NftBackend()
    try:
        backend.setup(spec(), [], State(), now)
        listed.clear()
        # govern's own transactions move the generation on one by one: no listing.
        for i in range(5):
            backend.apply(
                Plan((Action(ActionKind.BLOCK, Prefix(4, HOST4.value + i, 32), "test", until=now + 60),)), now
            )
            backend.set_allow([P("192.0.2.0/24")] if i % 2 else [])
            assert backend.changed() is None
        assert listed == []
        # Another's transaction elsewhere: one listing, the table is as made, and the generation is caught up.
        lab.mx.sh("nft", "add", "table", "ip", "someone_else")
        assert backend.changed() is None and backend.changed() is None
        assert len(listed) == 1
        # Another's transaction between two of govern's: seen too.
        backend.apply(Plan((Action(ActionKind.BLOCK, NET24, "test", until=now + 60),)), now)
        lab.mx.sh("nft", "add", "table", "ip", "someone_else_again")
        backend.apply(Plan((Action(ActionKind.UNBLOCK, NET24, "test"),)), now)
        assert backend.changed() is None
        assert len(listed) == 2
        # A change to govern's own table: seen, however it came.
        lab.mx.sh("nft", "delete", "rule", "inet", "govern", "guard", "handle", first_handle(lab))
        assert backend.changed() == "table inet govern was changed (its sets, chains or rules)"
    finally:
        backend.close()


def first_handle(lab: Lab) -> str:
    out = json.loads(lab.mx.sh("nft", "-j", "-a", "list", "chain", "inet", "govern", "guard"))
    return str(next(o["rule"]["handle"] for o in out["nftables"] if "rule" in o))


def test_every_kind_has_a_part_for_each_prefix_length() -> None:
    for kind in KINDS:
        assert part(kind, P("198.18.0.1")) == f"{kind}4h"
        assert part(kind, P("198.18.0.0/31")) == f"{kind}4"
        assert part(kind, P("2001:db8::1")) == f"{kind}6h"
        assert part(kind, P("2001:db8::/64")) == f"{kind}6n"
        assert part(kind, P("2001:db8::/63")) == part(kind, P("2001:db8::/65")) == f"{kind}6"
        assert {part(kind, p) for p in (P("1.0.0.0/8"), P("1.2.3.4"))} <= set(parts(kind, 4))


def test_a_large_table_of_the_old_shape_converges(served: Lab, tmp_path: Path) -> None:
    """150k blocks to move at start-up, hosts and /64s in turn: one transaction of 300k element changes, grouped
    by set (one message per op would make 300k acks, more than the socket's receive buffer holds)."""
    lab, now = served, time.time()
    path = tmp_path / "old.nft"
    path.write_text(OLD_SHAPE)
    lab.mx.sh("nft", "-f", str(path))
    hosts = [Prefix(4, P("10.0.0.0").value + i, 32) for i in range(120_000)] + [HOST4]
    nets = [Prefix(6, P("2001:db8:100::").value + (i << 64), 64) for i in range(30_000)]
    with lab.mx.entered(), NftNetlink() as nl:
        nl.commit([ElemOp(True, f"block{p.version}", p, 600_000) for p in hosts + nets], interval_sets=INTERVAL_SETS)
    state = State()
    state.blocks = {p: Block(p, "test", since=now, until=now + 600, offences=1) for p in hosts + nets}
    with lab.mx.entered():
        backend = NftBackend()
    try:
        assert backend.setup(spec(), [], state, now).actions == ()
        assert {name: len(held) for name, held in backend.held.items() if held} == {
            "block4h": len(hosts),
            "block6n": len(nets),
        }
        with lab.mx.entered(), NftNetlink() as nl:
            assert nl.dump_set("block4") == [] and nl.dump_set("block6") == []
            assert len(nl.dump_set("block4h")) == len(hosts) and len(nl.dump_set("block6n")) == len(nets)
        assert not passes(lab, str(HOST4))
    finally:
        backend.close()
