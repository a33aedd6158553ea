"""The guard (govern.core.guard): no block, throttle or tarpit covers loopback, this host's own addresses or more of
the address space than `[guard]` allows, whether the operator asks for it or the core decides it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from govern import config, protocol
from govern.addr import Prefix, PrefixSet
from govern.core.decide import PUNISH, decide, manual_block
from govern.core.policy import Policy
from govern.daemon import Governor
from govern.errors import ConfigError, RefusedError
from govern.fakes import FakeClock, FakeCounters, FakeEnforcer, FakeSockets
from govern.model import Mode, ModeState, Snapshot, SourceStats, State
from govern.store import Store

NOW = 1_000_000.0
MX = Prefix.parse("203.0.113.25")


def policy(**sections: dict[str, object]) -> Policy:
    pol = config.from_mapping({"allow": {"cidrs": ["192.0.2.0/24"]}, **sections}).policy()
    return replace(pol, own=PrefixSet([MX, Prefix.parse("2001:db8:25::25")]))


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("0.0.0.0/0", "is allowlisted"),  # the allowlist's own rule comes first
        ("::/0", "covers loopback"),
        ("0.0.0.0/1", "covers loopback"),
        ("64.0.0.0/2", "covers loopback"),
        ("200.0.0.0/5", "covers 203.0.113.25, an address of this host"),
        ("127.0.0.1", "covers loopback (127.0.0.0/8)"),
        ("127.0.0.0/8", "covers loopback"),
        ("::1", "covers loopback (::1)"),
        ("203.0.113.25", "an address of this host"),
        ("203.0.113.0/24", "covers 203.0.113.25, an address of this host"),
        ("2001:db8:25::/48", "an address of this host"),
        ("::ffff:203.0.113.25", "an address of this host"),  # the mapped form is the IPv4 address
        ("198.0.0.0/8", "wider than /16 (guard.ipv4_widest)"),
        ("2a00::/24", "wider than /32 (guard.ipv6_widest)"),
    ],
)
def test_a_manual_block_that_would_hit_this_host_or_too_much_is_refused_naming_the_rule(text: str, rule: str) -> None:
    with pytest.raises(RefusedError) as err:
        manual_block(Prefix.parse(text), State(), policy(), NOW, 600, "typo")
    assert rule in str(err.value)


def test_the_limits_are_the_operators() -> None:
    assert manual_block(Prefix.parse("198.51.0.0/16"), State(), policy(), NOW, 600, "swarm").actions
    with pytest.raises(RefusedError, match="wider than /24"):
        manual_block(Prefix.parse("198.51.0.0/16"), State(), policy(guard={"ipv4_widest": 24}), NOW, 600, "x")


hogs = st.builds(SourceStats, held=st.integers(0, 500), established=st.integers(0, 500), idle=st.integers(0, 500),
                 max_idle_ms=st.integers(0, 600_000), new_per_minute=st.integers(0, 10_000))  # fmt: skip
forbidden = st.sampled_from(
    [Prefix.parse(t) for t in ("127.0.0.1", "::1", "203.0.113.25", "2001:db8:25::/64", "127.0.0.5")]
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(forbidden, hogs, min_size=1), st.sampled_from(list(Mode)))
def test_the_core_never_punishes_or_cuts_this_host_however_it_behaves(
    sources: dict[Prefix, SourceStats], mode: Mode
) -> None:
    state = State(mode=ModeState(mode, NOW - 5, NOW + 100 if mode is Mode.WAVE else 0.0))
    pol = policy(wave={"slot_budget": 1}, aggregate={"ipv4_min_blocked": 2})
    plan = decide(Snapshot(taken_at=NOW, interval=1.0, sources=sources), state, pol, NOW)
    assert not [a for a in plan.actions if a.kind in PUNISH]
    assert not plan.cuts


def blocked_after_escalation(pol: Policy, bots: dict[Prefix, SourceStats]) -> set[Prefix]:
    state = State()
    for t in (NOW, NOW + pol.escalate_after + 1):  # throttled, then blocked once escalate_after has passed
        plan = decide(Snapshot(taken_at=t, interval=1.0, sources=bots), state, pol, t)
        state.record(plan, t)
    return set(state.blocks)


def test_an_aggregate_wider_than_the_guard_allows_is_not_made_and_its_members_stay_blocked() -> None:
    # Eight blocked /32s in one /12 would be gathered into the /12; the guard allows nothing wider than /16.
    bots = {Prefix.parse(f"198.16.{i}.1"): SourceStats(held=300, established=300) for i in range(8)}
    agg: dict[str, object] = {"ipv4_prefix": 12, "ipv4_min_blocked": 2}
    assert blocked_after_escalation(policy(aggregate=agg, modes={"auto": False}), bots) == set(bots)
    wide = policy(aggregate=agg, modes={"auto": False}, guard={"ipv4_widest": 8})
    assert blocked_after_escalation(wide, bots) == {Prefix.parse("198.16.0.0/12")}


def test_the_daemon_refuses_a_block_of_everything_and_of_its_own_address(tmp_path: Path) -> None:
    cfg = config.from_mapping({"daemon": {"state_dir": str(tmp_path / "state")}, "modes": {"auto": False}})
    enf = FakeEnforcer()
    gov = Governor(cfg, Store(cfg["daemon"]["state_dir"]), FakeSockets(), enf, FakeCounters(), clock=FakeClock(),
                   own_addresses=lambda: (MX,))  # fmt: skip
    gov.start()
    for text, rule in (("0.0.0.0/1", "covers loopback"), ("203.0.113.0/24", "an address of this host")):
        r = gov.handle(protocol.to_wire(protocol.Block(text)))
        assert r["refused"] and rule in r["error"], r
    assert not enf.blocks


@pytest.mark.parametrize(
    "data",
    [
        {"allow": {"cidrs": ["0.0.0.0/1", "128.0.0.0/1"]}},
        {"allow": {"cidrs": ["2000::/3"]}},
        {"allow": {"cidrs": ["10.0.0.0/16"]}, "guard": {"allow_ipv4_widest": 24}},
    ],
)
def test_a_config_allowlist_wider_than_the_guard_allows_is_refused_at_load(data: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=r"allow.cidrs.*wider than /\d+ \(guard.allow_ipv[46]_widest\)"):
        config.from_mapping(data)


def test_an_allow_file_entry_wider_than_the_guard_allows_is_refused_at_load(tmp_path: Path) -> None:
    f = tmp_path / "partners.txt"
    f.write_text("198.51.100.0/24\n64.0.0.0/2  # half of a half\n")
    with pytest.raises(ConfigError, match=r"64\.0\.0\.0/2 is wider than /8"):
        config.from_mapping({"allow": {"files": [str(f)]}})
    f.write_text("198.51.100.0/24\n10.0.0.0/8\n")
    assert len(config.from_mapping({"allow": {"files": [str(f)]}}).allowlist()) == 2


def test_govern_allow_of_a_wide_prefix_needs_force(tmp_path: Path) -> None:
    cfg = config.from_mapping({"daemon": {"state_dir": str(tmp_path / "state")}, "modes": {"auto": False}})
    gov = Governor(cfg, Store(cfg["daemon"]["state_dir"]), FakeSockets(), FakeEnforcer(), FakeCounters(),
                   clock=FakeClock())  # fmt: skip
    gov.start()
    r = gov.handle(protocol.to_wire(protocol.Allow("0.0.0.0/1")))
    assert r["refused"] and "wider than /8 (guard.allow_ipv4_widest)" in r["error"] and "--force" in r["error"]
    assert not gov.store.allowed()
    r = gov.handle(protocol.to_wire(protocol.Allow("::/0", force=True)))
    assert r["refused"] and "would allow every address, --force or not" in r["error"]
    r = gov.handle(protocol.to_wire(protocol.Allow("10.0.0.0/7", force=True)))
    assert r["ok"] and gov.store.allowed() == (Prefix.parse("10.0.0.0/7"),)


def test_blocks_the_guard_forbids_are_lifted_when_the_state_comes_back(tmp_path: Path) -> None:
    # A store from before the guard (or a config that narrowed it since) holds a block of the whole /8, one of this
    # host's own address and a throttle of loopback: the daemon lifts them at start, naming the rule.
    from govern.model import Action, ActionKind, Plan

    state_dir = str(tmp_path / "state")
    store = Store(state_dir)
    old = [("198.0.0.0/8", ActionKind.BLOCK), ("203.0.113.25", ActionKind.BLOCK), ("127.0.0.1", ActionKind.THROTTLE),
           ("198.51.100.7", ActionKind.BLOCK)]  # fmt: skip
    store.save(Plan(tuple(Action(k, Prefix.parse(p), "old", until=NOW + 3600) for p, k in old)), NOW)
    store.close()
    cfg = config.from_mapping({"daemon": {"state_dir": state_dir}, "modes": {"auto": False}})
    enf = FakeEnforcer()
    gov = Governor(cfg, Store(state_dir), FakeSockets(), enf, FakeCounters(), clock=FakeClock(NOW),
                   own_addresses=lambda: (MX,))  # fmt: skip
    gov.start()
    assert set(gov.state.blocks) == {Prefix.parse("198.51.100.7")} and not gov.state.throttles
    reasons = {e.prefix: e.reason for e in gov.store.events(20) if e.kind in ("unblock", "unthrottle")}
    assert "wider than /16 (guard.ipv4_widest)" in reasons["198.0.0.0/8"]
    assert "an address of this host" in reasons["203.0.113.25"]
    assert "covers loopback" in reasons["127.0.0.1"]
