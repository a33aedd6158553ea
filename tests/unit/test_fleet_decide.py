"""Other hosts' blocks through this host's rules (govern.core.fleet), and the Governor's fleet wiring with a fake
link: its own blocks are published, the others' applied with their origin, never published again, and refused
where this host's allowlist, own addresses or guard say so."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from govern import config, reports
from govern.addr import Prefix, PrefixSet
from govern.allow.learning import TrustSources
from govern.core.fleet import Remote, fleet_blocks, fleet_reason, fleet_trust, fleet_unblocks, from_fleet, superseded
from govern.core.policy import Policy
from govern.daemon import Governor
from govern.fakes import FakeClock, FakeCounters, FakeEnforcer, FakeFleet, FakeSockets
from govern.fleet import codec
from govern.fleet.link import LinkState
from govern.model import ActionKind, Block, State
from govern.store import Store

NOW = 1_700_000_000.0
MX = Prefix.parse("203.0.113.25")
BOT = Prefix.parse("198.18.0.7")


def policy() -> Policy:
    pol = config.from_mapping({"allow": {"cidrs": ["192.0.2.0/24"]}}).policy()
    return replace(pol, own=PrefixSet([MX]))


def remote(prefix: str, until: float = NOW + 600, origin: str = "mx1", offences: int = 1) -> Remote:
    return Remote(Prefix.parse(prefix), "opened 300 connections", until, offences, origin)


def test_a_remote_block_becomes_a_block_naming_its_origin() -> None:
    plan, refused = fleet_blocks([remote("198.18.0.7/32")], State(), policy(), NOW)
    assert refused == ()
    (a,) = plan.actions
    assert (a.kind, a.prefix, a.until, a.offences, a.manual) == (ActionKind.BLOCK, BOT, NOW + 600, 1, False)
    assert a.reason == "fleet:mx1: opened 300 connections"
    assert from_fleet(a.reason) == "mx1" and from_fleet("manual: fleet: x") is None


def test_this_hosts_rules_always_win() -> None:
    plan, refused = fleet_blocks(
        [remote("192.0.2.0/28"), remote("203.0.113.0/24"), remote("198.0.0.0/8"), remote("127.0.0.1/32")],
        State(),
        policy(),
        NOW,
    )
    assert not plan
    whys = [r.why for r in refused]
    assert "allowlisted" in whys[0] or any("allowlisted" in w for w in whys)
    assert any("an address of this host" in w for w in whys)
    assert any("guard.ipv4_widest" in w for w in whys)
    assert any("loopback" in w for w in whys)
    assert len(refused) == 4


def test_held_as_long_or_inside_a_wider_block_is_nothing_to_do() -> None:
    state = State(blocks={BOT: Block(BOT, "mine", NOW, NOW + 900, 1)})
    plan, _ = fleet_blocks([remote("198.18.0.7/32")], state, policy(), NOW)
    assert not plan
    wide = Prefix.parse("198.18.0.0/24")
    state = State(blocks={wide: Block(wide, "mine", NOW, NOW + 60, 1)})
    plan, _ = fleet_blocks([remote("198.18.0.7/32")], state, policy(), NOW)
    assert not plan
    plan, _ = fleet_blocks([remote("198.18.0.7/32", until=NOW - 1)], State(), policy(), NOW)
    assert not plan


def test_longer_is_an_extension_and_wider_replaces_what_it_covers() -> None:
    state = State(blocks={BOT: Block(BOT, "mine", NOW, NOW + 60, 1)})
    plan, _ = fleet_blocks([remote("198.18.0.7/32")], state, policy(), NOW)
    assert [(a.kind, a.until) for a in plan.actions] == [(ActionKind.EXTEND, NOW + 600)]
    state = State(blocks={BOT: Block(BOT, "mine", NOW, NOW + 9000, 3)})
    plan, _ = fleet_blocks([remote("198.18.0.0/24"), remote("198.18.0.9/32")], state, policy(), NOW)
    kinds = [(a.kind, str(a.prefix)) for a in plan.actions]
    assert kinds == [(ActionKind.UNBLOCK, "198.18.0.7"), (ActionKind.BLOCK, "198.18.0.0/24")]
    assert plan.actions[-1].until == NOW + 9000  # as long as the longest block it replaces
    assert plan.actions[-1].offences == 1


def make(
    tmp_path: Path, fleet: FakeFleet, share: tuple[str, ...] = ("blocks",)
) -> tuple[Governor, FakeEnforcer, FakeClock]:
    cfg = config.from_mapping(
        {
            "allow": {"cidrs": ["192.0.2.0/24"]},
            "daemon": {"state_dir": str(tmp_path / "state")},
            "modes": {"auto": False},
            "fleet": {"share": list(share)},
        }
    )
    enf, clock = FakeEnforcer(), FakeClock(NOW)
    store = Store(cfg["daemon"]["state_dir"])
    trust = TrustSources(cfg.trust_section())
    gov = Governor(cfg, store, FakeSockets(), enf, FakeCounters(), clock=clock, trust=trust, fleet=fleet)
    gov.start()
    return gov, enf, clock


def test_the_governor_publishes_its_own_and_applies_the_others_once(tmp_path: Path) -> None:
    fleet = FakeFleet(name="mx2")
    gov, enf, _ = make(tmp_path, fleet)
    assert fleet.started
    reply = gov.handle({"cmd": "block", "prefix": "198.18.0.1", "duration": "1h", "reason": "seen in a flood"})
    assert reply["ok"], reply
    (mine,) = fleet.published
    assert (mine.kind, str(mine.prefix), mine.origin) == ("block", "198.18.0.1", "mx2")
    assert mine.reason == "manual: seen in a flood" and mine.until == NOW + 3600
    fleet.incoming = [
        codec.new("block", BOT, "opened 300 connections", NOW + 600, 2, "mx1", NOW),
        codec.new("block", Prefix.parse("192.0.2.10"), "opened 300 connections", NOW + 600, 2, "mx1", NOW),
    ]
    gov.tick()
    assert BOT in enf.blocks and Prefix.parse("192.0.2.10") not in enf.blocks
    assert gov.state.blocks[BOT].reason == fleet_reason("mx1", "opened 300 connections")
    assert len(fleet.published) == 1  # what it applied is never published again
    (entry,) = [e for e in reports.entries(gov.state) if e["prefix"] == str(BOT)]
    assert entry["from"] == "mx1"
    st = reports.status(gov)
    assert st["fleet"]["applied"] == 1 and st["fleet"]["refused_here"] == 1 and st["fleet"]["name"] == "mx2"
    assert st["blocks_by_reason"]["fleet"] == 1
    gov.close_sources()
    assert fleet.closed


def test_status_says_when_the_fleet_is_down(tmp_path: Path) -> None:
    from govern.cli import _fleet_line

    fleet = FakeFleet(name="mx2", link=LinkState("down", NOW, "Connection refused"))
    gov, _, _ = make(tmp_path, fleet)
    line = _fleet_line(reports.status(gov)["fleet"])
    assert line.startswith("FLEET DOWN since") and "Connection refused" in line and "enforcing alone" in line
    assert _fleet_line({"state": "off"}) == "fleet: off"


def test_trust_from_the_fleet_is_per_source_group_only() -> None:
    taken, refused = fleet_trust(
        [remote("198.51.100.7/32"), remote("198.51.100.0/24"), remote("203.0.113.25/32"), remote("127.0.0.1/32")],
        policy(),
        NOW,
    )
    assert [str(r.prefix) for r in taken] == ["198.51.100.7"]
    assert ["not a source group" in r.why for r in refused] == [True, False, False]
    assert "an address of this host" in refused[1].why and "loopback" in refused[2].why


def test_the_governor_shares_the_trust_it_learned_and_takes_the_others_once(tmp_path: Path) -> None:
    fleet = FakeFleet(name="mx2")
    gov, _, clock = make(tmp_path, fleet, share=("blocks", "trust"))
    assert gov.trust is not None
    mine, theirs = Prefix.parse("198.51.100.7"), Prefix.parse("198.51.100.8")
    gov.trust.learn(mine, NOW)
    fleet.incoming = [codec.new("trust", theirs, "completed a delivery", NOW + 3600, 0, "mx1", NOW)]
    gov.tick()
    assert theirs in gov.trusted() and mine in gov.trusted()
    assert [(d.kind, d.prefix, d.origin) for d in fleet.published] == [("trust", mine, "mx2")]
    clock.advance(1)
    gov.tick()
    assert len(fleet.published) == 1  # neither shared again, nor the fleet's trust shared at all
    assert reports.status(gov)["fleet"]["trusted"] == 1


def test_trust_is_not_shared_unless_asked(tmp_path: Path) -> None:
    fleet = FakeFleet(name="mx2")
    gov, _, _ = make(tmp_path, fleet)
    assert gov.trust is not None
    gov.trust.learn(Prefix.parse("198.51.100.7"), NOW)
    gov.tick()
    assert fleet.published == []


def test_an_unblock_lifts_blocks_decided_before_it_and_keeps_later_ones() -> None:
    older, newer = Prefix.parse("198.18.0.7"), Prefix.parse("198.18.0.8")
    state = State()
    state.blocks[older] = Block(older, "opened 300 connections", NOW - 100, NOW + 600, 1)
    state.blocks[newer] = Block(newer, "opened 300 connections", NOW + 5, NOW + 600, 1)
    unblocks = [
        Remote(older, "unblocked by the operator", NOW + 86400, 0, "mx1", at=NOW),
        Remote(newer, "unblocked by the operator", NOW + 86400, 0, "mx1", at=NOW),
    ]
    (a,) = fleet_unblocks(unblocks, state).actions
    assert (a.kind, a.prefix, a.reason) == (ActionKind.UNBLOCK, older, "fleet:mx1: unblocked by the operator")


def test_within_one_batch_the_last_word_on_a_prefix_counts() -> None:
    def at(kind_at: float, prefix: str = "198.18.0.7/32") -> Remote:
        return Remote(Prefix.parse(prefix), "r", NOW + 600, 1, "mx1", at=kind_at)

    blocks = [at(NOW - 10), at(NOW + 10, "198.18.0.8/32"), at(NOW + 10, "198.18.0.9/32")]
    unblocks = [at(NOW), at(NOW - 5, "198.18.0.9/32")]
    kept = superseded(blocks, unblocks)
    assert [str(b.prefix) for b in kept] == ["198.18.0.8", "198.18.0.9"]


def test_an_operators_unblock_is_shared_and_another_hosts_lifts_here(tmp_path: Path) -> None:
    fleet = FakeFleet(name="mx2")
    gov, enf, clock = make(tmp_path, fleet)
    assert gov.handle({"cmd": "block", "prefix": "198.18.0.1", "duration": "3d"})["ok"]
    assert gov.handle({"cmd": "unblock", "prefix": "198.18.0.1"})["ok"]
    block, unblock = fleet.published
    assert (unblock.kind, str(unblock.prefix), unblock.origin) == ("unblock", "198.18.0.1", "mx2")
    # Kept as long as the block it lifted could last anywhere: here, the operator's 3 days.
    assert unblock.until == block.until == NOW + 3 * 86400
    # Another host's operator unblocks a source this host blocked on its own before, and one it took from the fleet.
    clock.advance(10)
    fleet.incoming = [codec.new("block", BOT, "opened 300 connections", clock() + 600, 1, "mx1", clock() - 1)]
    gov.tick()
    assert BOT in enf.blocks
    clock.advance(10)
    fleet.incoming = [codec.new("unblock", BOT, "unblocked by the operator", clock() + 86400, 0, "mx1", clock())]
    gov.tick()
    assert BOT not in enf.blocks and BOT not in gov.state.blocks
    assert reports.status(gov)["fleet"]["unblocked"] == 1
    assert len(fleet.published) == 2  # the fleet's unblock is not shared again
    # A block and the unblock that lifted it, read together (a host catching up): it stays lifted.
    clock.advance(10)
    fleet.incoming = [
        codec.new("block", BOT, "opened 300 connections", clock() + 600, 1, "mx3", clock() - 5),
        codec.new("unblock", BOT, "unblocked by the operator", clock() + 86400, 0, "mx1", clock() - 2),
    ]
    gov.tick()
    assert BOT not in enf.blocks


def test_an_automatic_release_is_not_shared(tmp_path: Path) -> None:
    fleet = FakeFleet(name="mx2")
    gov, _, clock = make(tmp_path, fleet)
    assert gov.handle({"cmd": "block", "prefix": "198.18.0.1", "duration": "1m"})["ok"]
    clock.advance(120)
    gov.tick()
    assert not gov.state.blocks
    assert [d.kind for d in fleet.published] == ["block"]


def test_a_reload_replaces_the_link_only_when_fleet_changes_and_hands_over_what_was_unsent(tmp_path: Path) -> None:
    made: list[FakeFleet] = []

    def make_fleet(cfg: config.Config) -> FakeFleet | None:
        url = cfg["fleet"]["url"]
        link = FakeFleet(name="mx2", settings=(url,)) if url else None
        made.extend([link] if link else [])
        return link

    first = FakeFleet(name="mx2", settings=("redis://a",))
    gov, _, _ = make(tmp_path, first)
    gov.make_fleet = make_fleet
    same = replace_fleet_url(gov.config, "redis://a")
    gov.reload(same)
    assert gov.fleet is first and first.state() == first.link  # kept, not replaced
    assert not closed(first)
    first.pending = [codec.new("block", BOT, "r", NOW + 60, 1, "mx2", NOW)]
    gov.reload(replace_fleet_url(gov.config, "redis://b"))
    assert closed(first) and gov.fleet is made[-1] and made[-1].started
    assert [d.prefix for d in made[-1].published] == [BOT]
    gov.reload(replace_fleet_url(gov.config, ""))
    assert link_of(gov) is None and closed(made[-1])


def link_of(gov: Governor) -> object:
    return gov.fleet  # read afresh, as closed() below


def closed(link: FakeFleet) -> bool:
    return link.closed  # read afresh: a reload closes the link behind the test's back


def replace_fleet_url(cfg: config.Config, url: str) -> config.Config:
    # The key file is not read: the fake factory stands in for wiring.fleet_link, which reads it.
    return config.with_override(cfg, "fleet", "url", url)
