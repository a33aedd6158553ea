"""The counting set in shards (govern.nft.ruleset): each family's new connections are counted in one of
SEEN_SHARDS sets, picked by a hash of the very key the count is kept under, and nothing else reads them."""

from __future__ import annotations

import re

import pytest

from govern import config
from govern.nft.ruleset import SEEN_SHARDS, SEEN_SIZE, ruleset, seen_sets


def rules(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if m := re.match(r"add rule inet govern (\S+) (.*)", line):
            out.setdefault(m[1], []).append(m[2])
    return out


@pytest.mark.parametrize("enforce", [True, False])
@pytest.mark.parametrize(("v4", "v6"), [(32, 64), (28, 56)])
def test_each_source_is_counted_in_the_one_shard_its_key_hashes_to(enforce: bool, v4: int, v6: int) -> None:
    spec = config.from_mapping({"protect": {"ipv4_prefix": v4, "ipv6_prefix": v6}}).firewall()
    chains = rules(ruleset(spec, enforce=enforce))
    mask6 = "ffff:ffff:ffff:ffff::" if v6 == 64 else "ffff:ffff:ffff:ff00::"
    keys = {4: "ip saddr" if v4 == 32 else "ip saddr & 255.255.255.240", 6: f"ip6 saddr & {mask6}"}
    for v in (4, 6):
        names = seen_sets(v)
        assert len(set(names)) == SEEN_SHARDS
        # Each shard's chain counts in its own set only, under the family's key.
        for i, name in enumerate(names):
            assert chains[f"count{v}_{i}"] == [f"update @{name} {{ {keys[v]} counter }}"]
        # One rule sends each new connection to a shard, by a hash of that same key, and counts it once in all.
        (dispatch,) = [r for r in chains["guard"] if "vmap" in r and f"count{v}_0" in r]
        assert f"jhash {keys[v]} mod {SEEN_SHARDS} seed " in dispatch and "counter name attempts" in dispatch
        targets = re.findall(r"(\d+) : jump (count\d_\d+)", dispatch)
        assert sorted(targets, key=lambda t: int(t[0])) == [(str(i), f"count{v}_{i}") for i in range(SEEN_SHARDS)]
    # No other rule looks a source up in a counting set: a lookup that finds an element would count it again.
    outside = [r for c, rs in chains.items() if not c.startswith("count") for r in rs if "@seen" in r]
    assert outside == []


def test_the_shards_hold_what_the_one_set_held() -> None:
    text = ruleset(config.from_mapping({}).firewall())
    names = {name for v in (4, 6) for name in seen_sets(v)}
    declared = re.finditer(r"add set inet govern (seen[46]_\d+) \{ type [^;]+; size (\d+);", text)
    sizes = [int(m[2]) for m in declared if m[1] in names]
    assert len(sizes) == 2 * SEEN_SHARDS and sum(sizes) == 2 * SEEN_SIZE
    # A table made before the shards loses its one counting set per family once no rule uses it, and so does one
    # made before these shards its four.
    assert "delete set inet govern seen4\n" in text and "delete set inet govern seen6\n" in text
    old = [f"seen{v}_{i}" for v in (4, 6) for i in range(4)]
    assert not names & set(old)
    assert all(f"delete set inet govern {name}\n" in text for name in old)
