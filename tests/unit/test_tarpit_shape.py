"""The pure part of the tarpit: handles and ownership, the cost of a reply, the nftables text, its config keys."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from govern.addr import Prefix
from govern.config import from_mapping
from govern.errors import ConfigError, KernelError
from govern.fakes import FakeTarpit
from govern.tarpit.shape import (
    MPU,
    PASS_CLASS,
    ROOT_HANDLE,
    ROOT_MAJOR,
    Leaf,
    RootVerdict,
    Shape,
    bucket_class,
    classes,
    judge_root,
    nft_text,
)

shapes = st.builds(
    Shape,
    delay=st.floats(min_value=0.05, max_value=60),
    buckets=st.integers(min_value=1, max_value=256),
    leaf=st.sampled_from(Leaf),
)
port_sets = st.frozensets(st.integers(min_value=1, max_value=65535), min_size=1, max_size=8)


@pytest.mark.parametrize(
    ("kind", "handle", "verdict"),
    [
        (None, 0, RootVerdict.DEFAULT),
        ("noqueue", 0, RootVerdict.DEFAULT),
        ("mq", 0, RootVerdict.DEFAULT),
        ("pfifo_fast", 0, RootVerdict.DEFAULT),
        ("htb", ROOT_HANDLE, RootVerdict.OURS),
        ("htb", 0x10000, RootVerdict.FOREIGN),
        ("tbf", ROOT_HANDLE, RootVerdict.FOREIGN),
        ("fq_codel", 0x80010000, RootVerdict.FOREIGN),
    ],
)
def test_only_the_kernels_default_or_our_own_root_is_ours_to_touch(
    kind: str | None, handle: int, verdict: RootVerdict
) -> None:
    assert judge_root(kind, handle) is verdict


@given(shapes, st.integers(min_value=0, max_value=100_000))
def test_every_object_is_under_our_root_and_distinct(shape: Shape, txqlen: int) -> None:
    specs = classes(shape, txqlen)
    assert len(specs) == shape.classes + 1 and specs[0].class_id == PASS_CLASS
    ids = [c.class_id for c in specs]
    leaves = [c.leaf_handle for c in specs]
    assert len(set(ids)) == len(ids) and len(set(leaves)) == len(leaves)
    assert all(i >> 16 == ROOT_MAJOR and i != ROOT_HANDLE for i in ids)
    assert not set(leaves) & {ROOT_HANDLE, *ids}
    assert all(h & 0xFFFF == 0 and h >> 16 != ROOT_MAJOR for h in leaves)
    # The classes nftables can name (offset .. offset + mod - 1) are exactly the buckets.
    assert ids[1:] == [bucket_class(i) for i in range(shape.classes)]


@given(st.floats(min_value=0.05, max_value=60))
def test_a_full_size_reply_costs_the_delay_and_a_queue_holds_at_most_five_minutes(delay: float) -> None:
    shape = Shape(delay=delay)
    assert MPU / shape.rate_bytes == pytest.approx(delay, rel=0.02)
    assert shape.queue_limit * delay <= 300 + delay
    slow = [c for c in classes(shape, 1000) if c.class_id != PASS_CLASS]
    assert all(c.mpu == MPU and c.rate_bytes == shape.rate_bytes for c in slow)


def test_netem_uses_one_class_that_delays_each_packet() -> None:
    shape = Shape(delay=2.5, buckets=64, leaf=Leaf.NETEM)
    (_, slow) = classes(shape, 1000)
    assert slow.leaf_kind == "netem" and slow.leaf_delay_us == 2_500_000 and slow.mpu == 0
    assert "meta priority set 4756:100" in nft_text(shape, frozenset({25}))
    assert "jhash" not in nft_text(shape, frozenset({25}))


@given(shapes, port_sets, st.integers(min_value=8, max_value=32), st.integers(min_value=16, max_value=128))
def test_every_rule_matches_only_the_protected_ports_and_allow_comes_first(
    shape: Shape, ports: frozenset[int], v4: int, v6: int
) -> None:
    text = nft_text(shape, ports, v4_len=v4, v6_len=v6)
    rules = [ln for ln in text.splitlines() if ln.startswith("add rule")]
    want = "tcp sport { " + ", ".join(str(p) for p in sorted(ports)) + " } "
    assert rules and all(want in r for r in rules)
    for version in (4, 6):
        fam = [r for r in rules if f"@allow{version}" in r or f"@tarpit{version}" in r]
        assert [("@allow" in r) for r in fam] == [True, False]
        assert fam[0].endswith("return")
    if shape.classes > 1:
        assert f"mod {shape.classes} offset {bucket_class(0):#x}" in text
        # The hash covers the source's group, not the address: a /64 cannot spread over every bucket.
        assert ("ip daddr & " in text) == (v4 < 32)
        assert ("ip6 daddr & " in text) == (v6 < 128)


def test_the_hash_masks_to_the_group_prefix() -> None:
    text = nft_text(Shape(buckets=8), frozenset({25, 587}), v4_len=24, v6_len=48)
    assert re.search(r"jhash ip daddr & 255\.255\.255\.0 mod 8 ", text)
    assert re.search(r"jhash ip6 daddr & ffff:ffff:ffff:: mod 8 ", text)


@pytest.mark.parametrize(("delay", "buckets"), [(0.01, 4), (61, 4), (2, 0), (2, 257)])
def test_shape_refuses_values_out_of_range(delay: float, buckets: int) -> None:
    with pytest.raises(ValueError, match="tarpit"):
        Shape(delay=delay, buckets=buckets)


def test_no_ports_no_rules() -> None:
    with pytest.raises(ValueError, match="port"):
        nft_text(Shape(), frozenset())


def test_config_keys_and_their_checks() -> None:
    cfg = from_mapping({"tarpit": {"delay": "500ms", "buckets": 16, "interfaces": ["eth0", "bond0.25"]}})
    shape = {k: cfg["tarpit"][k] for k in ("delay", "buckets", "interfaces")}
    assert shape == {"delay": 0.5, "buckets": 16, "interfaces": ("eth0", "bond0.25")}
    for key, value, msg in (
        ("interfaces", ["eth0", "eth0"], "listed twice"),
        ("interfaces", ["a/b"], "not an interface name"),
        ("interfaces", ["x" * 16], "not an interface name"),
        ("buckets", 0, "between 1 and 256"),
        ("delay", "2m", "between"),
    ):
        with pytest.raises(ConfigError, match=rf"tarpit\.{key}: .*{msg}"):
            from_mapping({"tarpit": {key: value}})


def test_fake_tarpit_holds_what_the_kernel_would() -> None:
    tp = FakeTarpit()
    tp.setup(frozenset({25}), ["eth0"])
    a, b = Prefix.parse("198.18.0.7"), Prefix.parse("2001:db8:bad::/64")
    tp.apply({a: 60, b: 30}, [])
    tp.apply({}, [a])
    assert tp.tarpitted() == {b} and tp.commits == 2
    tp.fail_next = True
    with pytest.raises(KernelError):
        tp.apply({a: 1}, [])
    assert tp.tarpitted() == {b}
    assert tp.teardown() is True and tp.tarpitted() == frozenset()
    assert FakeTarpit(reason="no htb").supported() == "no htb"
