"""Sources as numpy columns (govern.keys): the round trip to Prefix, and the table that finds rows."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from govern.addr import Prefix
from govern.keys import KeyTable, keys_of

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
