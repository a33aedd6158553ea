"""Sources as numpy columns (govern.keys): the round trip to Prefix, the table that finds rows, and the kernel's
counters as columns."""

from __future__ import annotations

import weakref

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from govern.addr import Prefix
from govern.keys import Counted, KeyTable, group_counts, keys_of

prefixes = st.one_of(
    st.builds(lambda v, n: Prefix(4, v, n), st.integers(0, 2**32 - 1), st.integers(0, 32)),
    st.builds(lambda v, n: Prefix(6, v, n), st.integers(0, 2**128 - 1), st.integers(0, 128)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(prefixes, unique=True, max_size=300))
def test_columns_give_back_each_prefix(ps: list[Prefix]) -> None:
    keys = keys_of(ps)
    assert keys.size == len(ps)
    assert keys.prefixes() == ps
    assert all(keys.prefix(i) == p and keys.find(p) == i for i, p in enumerate(ps))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(prefixes, max_size=400), max_size=6), st.lists(prefixes, max_size=50))
def test_table_finds_every_row_it_was_given_and_nothing_else(batches: list[list[Prefix]], others: list[Prefix]) -> None:
    table, rows = KeyTable(), dict[Prefix, int]()
    for batch in batches:
        new = [p for p in dict.fromkeys(batch) if p not in rows]
        added = table.add(keys_of(new)).tolist()
        assert added == list(range(len(rows), len(rows) + len(new)))
        rows.update(zip(new, added, strict=True))
        assert table.find(keys_of(list(rows))).tolist() == list(rows.values())
    absent = [p for p in others if p not in rows]
    assert table.find(keys_of(absent)).tolist() == [-1] * len(absent)
    assert table.view().prefixes() == list(rows)


def test_a_table_grows_past_its_first_size() -> None:
    ps = [Prefix(4, 0xC6120000 + i, 32) for i in range(5000)]
    table = KeyTable()
    for lo in range(0, 5000, 700):
        table.add(keys_of(ps[lo : lo + 700]))
    assert len(table) == 5000
    assert table.find(keys_of(ps[::-1])).tolist() == list(range(4999, -1, -1))


def _grouped(elements: list[tuple[int, int]], version: int, plen: int) -> dict[Prefix, int]:
    """What group_counts gives, one Python step per element: each key's group network, the groups' packets summed."""
    out: dict[Prefix, int] = {}
    bits = 32 if version == 4 else 128
    for key, packets in elements:
        p = Prefix(version, key >> (bits - plen) << (bits - plen), plen)
        out[p] = out.get(p, 0) + packets
    return out


elements4 = st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**56)), max_size=60, unique_by=lambda e: e[0])
elements6 = st.lists(
    st.tuples(
        st.one_of(st.integers(0, 2**128 - 1), st.integers(0, 3).map(lambda i: (0x20010DB80BAD << 80) | i << 56 | 1)),
        st.integers(0, 2**56),
    ),
    max_size=60,
    unique_by=lambda e: e[0],
)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.tuples(st.just(4), elements4, st.sampled_from([8, 16, 24, 31, 32])),
        st.tuples(st.just(6), elements6, st.sampled_from([32, 48, 56, 63, 64, 65, 72, 127, 128])),
    )
)
def test_counts_are_grouped_as_one_step_per_element_groups_them(case: tuple[int, list[tuple[int, int]], int]) -> None:
    # Each half of an IPv6 key cut in place (kept whole, cleared, or masked) and IPv4 in its own column: every
    # length on either side of the halves' boundary, and keys that do and do not fall in one group.
    version, elements, plen = case
    size = 4 if version == 4 else 16
    keys = bytearray(b"".join(k.to_bytes(size, "big") for k, _n in elements))
    packets = bytes(b"".join(n.to_bytes(8, "big") for _k, n in elements))
    got = group_counts(keys, packets, version, plen)
    assert dict(got) == _grouped(elements, version, plen)
    assert keys == b"".join(k.to_bytes(size, "big") for k, _n in elements)  # the caller's buffer as it was
    assert (
        got.totals.dtype.type is np.uint64 and got.sources.hi.dtype == np.uint64 and got.sources.tag.dtype == np.uint16
    )


def test_concat_joins_the_parts_in_order_and_takes_them() -> None:
    four = group_counts(bytes([198, 18, 0, 1, 198, 18, 0, 2]), (3).to_bytes(8, "big") * 2, 4, 32)
    six = group_counts((0x20010DB80BAD << 80 | 7).to_bytes(16, "big"), (2**40).to_bytes(8, "big"), 6, 128)
    empty = group_counts(b"", b"", 6, 64)
    want = [*dict(four).items(), *dict(empty).items(), *dict(six).items()]
    joined = Counted.concat([four, empty, six])
    assert list(joined.items()) == want and len(joined) == 3 and joined.totals.dtype == np.uint64
    assert len(four) == len(six) == 0 and dict(four) == {}  # taken: their columns went into the join
    parts = [group_counts(bytes(16 * 1000), bytes(8 * 1000), 6, 128), group_counts(b"", b"", 4, 32)]
    columns = [weakref.ref(c) for c in (*parts[0].sources, parts[0].totals)]
    joined = Counted.concat(parts)
    assert len(joined) == 1000 and all(c() is None for c in columns)  # nothing left holding the parts' memory
    one = group_counts(bytes([198, 18, 0, 1]), (1).to_bytes(8, "big"), 4, 32)
    assert Counted.concat([one]) is one
    assert len(Counted.concat([])) == 0


def test_take_hands_over_the_columns_and_leaves_the_counts_empty() -> None:
    counts = group_counts(bytes([198, 18, 0, 1, 198, 18, 0, 2]), (3).to_bytes(8, "big") * 2, 4, 32)
    want = dict(counts)
    columns = [weakref.ref(c) for c in (*counts.sources, counts.totals)]
    keys, totals = counts.take()
    assert dict(zip(keys.prefixes(), totals.tolist(), strict=True)) == want
    assert len(counts) == 0 and dict(counts) == {}
    del keys, totals
    assert all(c() is None for c in columns)  # the counts kept nothing of them
