"""Sources as numpy columns instead of Python objects, and the table that finds a source's row.

A flood can bring a million sources. As Python objects each costs ~200 bytes before anything is known of it (a
Prefix, its int, a dict slot); as a row of columns it costs 18: the address as two 64-bit halves and a tag (version
and length). `KeyTable` finds rows by address in an open-addressing table of row numbers (4 bytes a slot, at most
half full), looked up and filled a whole batch at a time, so a tick's work is a few vectorised passes rather than a
Python step per source.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from itertools import chain
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from govern.addr import Prefix

U64 = npt.NDArray[np.uint64]
U16 = npt.NDArray[np.uint16]
Rows = npt.NDArray[np.intp]

_M64 = (1 << 64) - 1
_EMPTY = -1
# Keys found and placed this many at a time: each pass's temporaries (hashes, slots, masks: ~60 B a key) for a
# flood's million new sources at once were the largest part of a tick's peak (docs/benchmarks.md, "Memory").
_BATCH = 1 << 17
# Multipliers of the hash (odd 64-bit constants from splitmix64 and the golden ratio): sequential addresses, the
# common case in a flood from one range, spread over the whole table.
_K1 = np.uint64(0x9E3779B97F4A7C15)
_K2 = np.uint64(0xBF58476D1CE4E5B9)
_K3 = np.uint64(0x94D049BB133111EB)
_S29 = np.uint64(29)
_S32 = np.uint64(32)


class Keys(NamedTuple):
    """Addresses as columns: row i is Prefix(tag[i] >> 8, hi[i] << 64 | lo[i], tag[i] & 0xFF)."""

    hi: U64
    lo: U64
    tag: U16  # version << 8 | length

    @property
    def size(self) -> int:
        """The number of rows."""
        return int(self.tag.shape[0])

    def take(self, rows: Rows) -> Keys:
        return Keys(self.hi[rows], self.lo[rows], self.tag[rows])

    def part(self, start: int, stop: int) -> Keys:
        """Rows start to stop, as views."""
        return Keys(self.hi[start:stop], self.lo[start:stop], self.tag[start:stop])

    def prefix(self, row: int) -> Prefix:
        tag = int(self.tag[row])
        return Prefix(tag >> 8, int(self.hi[row]) << 64 | int(self.lo[row]), tag & 0xFF)

    def prefixes(self, rows: Sequence[int] | Rows | None = None) -> list[Prefix]:
        """The Prefix of each of `rows` (all of them by default), made afresh: for the few a caller needs as
        objects."""
        keys = self if rows is None else self.take(np.asarray(rows, np.intp))
        hi, lo, tag = keys.hi.tolist(), keys.lo.tolist(), keys.tag.tolist()
        return [Prefix(t >> 8, h << 64 | v, t & 0xFF) for h, v, t in zip(hi, lo, tag, strict=True)]

    def find(self, p: Prefix) -> int:
        """The row of `p` by a pass over every row (for one-off questions such as `govern why`), or -1."""
        hit = np.flatnonzero((self.lo == p.value & _M64) & (self.hi == p.value >> 64) & (self.tag == _tag(p)))
        return int(hit[0]) if hit.size else -1


def _tag(p: Prefix) -> int:
    return p.version << 8 | p.length


def empty_keys(n: int = 0) -> Keys:
    return Keys(np.zeros(n, np.uint64), np.zeros(n, np.uint64), np.zeros(n, np.uint16))


def keys_of(prefixes: Collection[Prefix]) -> Keys:
    """The columns of `prefixes`, in their order. ~160 ns a source: one pass unpacks every Prefix, then numpy splits
    the values (object arrays of Python ints, so IPv6's 128 bits survive)."""
    n = len(prefixes)
    if not n:
        return empty_keys()
    flat = np.fromiter(chain.from_iterable(prefixes), dtype=object, count=3 * n)
    values = flat[1::3]
    tag = (flat[0::3] * 256 + flat[2::3]).astype(np.uint16)
    return Keys((values >> 64).astype(np.uint64), (values & _M64).astype(np.uint64), tag)


def _hash(keys: Keys) -> U64:
    """Mixes every bit of the key into the top bits (the table's slot is the top `bits`): each half is folded in,
    multiplied (which carries low bits up) and shifted down (which brings high bits back)."""
    with np.errstate(over="ignore"):
        h = keys.hi * _K1
        h ^= h >> _S29
        h += keys.lo
        h *= _K2
        h ^= h >> _S32
        h += keys.tag.astype(np.uint64)
        h *= _K3
        return h


class KeyTable:
    """Rows of keys, appended and never rewritten, found through an open-addressing table (linear probing).

    Row numbers are the caller's index into its own columns. Rows are only ever added (into new columns when the
    old ones are full), so a `view` stays what it was when taken; a caller that drops rows builds a new table from
    the rows it keeps (`KeyTable(keys.take(kept))`), which renumbers them.
    """

    __slots__ = ("_bits", "_n", "_slots", "keys")

    def __init__(self, keys: Keys | None = None) -> None:
        self.keys = empty_keys(1024)
        self._n = 0
        self._bits = 11
        self._slots = np.full(1 << self._bits, _EMPTY, np.int32)
        if keys is not None and keys.size:
            self.add(keys)

    def __len__(self) -> int:
        return self._n

    def view(self) -> Keys:
        """The rows' keys: views of the columns, which later rows never change."""
        n = self._n
        return Keys(self.keys.hi[:n], self.keys.lo[:n], self.keys.tag[:n])

    def _start(self, keys: Keys) -> U64:
        return _hash(keys) >> np.uint64(64 - self._bits)

    def find(self, keys: Keys) -> Rows:
        """The row of each key, or -1 for those not in the table."""
        out = np.full(keys.size, -1, np.intp)
        for start in range(0, keys.size, _BATCH):
            stop = min(start + _BATCH, keys.size)
            out[start:stop] = self._find(keys.part(start, stop))
        return out

    def _find(self, keys: Keys) -> Rows:
        out = np.full(keys.size, -1, np.intp)
        todo = np.arange(keys.size, dtype=np.intp)
        slot = self._start(keys).astype(np.intp)
        mask = (1 << self._bits) - 1
        mine = self.keys
        while todo.size:
            row = self._slots[slot].astype(np.intp)
            empty = row == _EMPTY
            at = np.where(empty, 0, row)
            match = (
                ~empty
                & (mine.lo[at] == keys.lo[todo])
                & (mine.hi[at] == keys.hi[todo])
                & (mine.tag[at] == keys.tag[todo])
            )
            out[todo[match]] = row[match]
            go_on = ~(empty | match)
            todo, slot = todo[go_on], (slot[go_on] + 1) & mask
        return out

    def add(self, keys: Keys) -> Rows:
        """Append keys none of which is in the table yet (nor twice among them); returns their new rows."""
        m = keys.size
        first, n = self._n, self._n + m
        if n > self.keys.size:
            cap = max(n, self.keys.size * 3 // 2)
            grown, old = empty_keys(cap), self.keys
            grown.hi[:first], grown.lo[:first], grown.tag[:first] = old.hi[:first], old.lo[:first], old.tag[:first]
            self.keys = grown
        mine = self.keys
        mine.hi[first:n], mine.lo[first:n], mine.tag[first:n] = keys.hi, keys.lo, keys.tag
        self._n = n
        rows = np.arange(first, n, dtype=np.intp)
        if 2 * n > (1 << self._bits):
            while 2 * n > (1 << self._bits):
                self._bits += 1
            self._slots = np.full(1 << self._bits, _EMPTY, np.int32)
            self._place(np.arange(n, dtype=np.intp))
        else:
            self._place(rows)
        return rows

    def _place(self, rows: Rows) -> None:
        """Put rows into free slots: each claims the first free slot from its start; of several claiming one slot
        in the same pass one wins (numpy keeps the last write), the others probe on."""
        for start in range(0, rows.size, _BATCH):
            self._place_some(rows[start : start + _BATCH])

    def _place_some(self, rows: Rows) -> None:
        mask = (1 << self._bits) - 1
        slot = self._start(self.keys.take(rows)).astype(np.intp)
        slots = self._slots
        while rows.size:
            free = slots[slot] == _EMPTY
            claim, who = slot[free], rows[free]
            slots[claim] = who
            lost = slots[claim] != who
            go_on = ~free
            go_on[np.flatnonzero(free)[lost]] = True
            rows, slot = rows[go_on], (slot[go_on] + 1) & mask


class Counted(Mapping[Prefix, int]):
    """Counts per source as columns: the SYN counters a tick reads from the kernel, which the rate window takes as
    they are (no Prefix object per source; a flood's million sources were ~200 MB of them, the peak of a tick). As a
    Mapping (tests, tools) it makes its Prefix objects on first use."""

    __slots__ = ("_dict", "sources", "totals")

    def __init__(self, keys: Keys, totals: U64) -> None:
        self.sources, self.totals = keys, totals  # not `keys`: Mapping.keys() is a method
        self._dict: dict[Prefix, int] | None = None

    def _as_dict(self) -> dict[Prefix, int]:
        if self._dict is None:
            self._dict = dict(zip(self.sources.prefixes(), self.totals.tolist(), strict=True))
        return self._dict

    def __getitem__(self, p: Prefix) -> int:
        return self._as_dict()[p]

    def __iter__(self) -> Iterator[Prefix]:
        return iter(self._as_dict())

    def __len__(self) -> int:
        return self.sources.size

    @staticmethod
    def concat(parts: Sequence[Counted]) -> Counted:
        """The parts' rows one after the other. Takes the parts: each of their columns is let go as soon as it is
        joined, and they are left empty (a single part is the join, returned as it is), so a tick holds the parts
        and the join together one column at a time, not whole (both whole were 52 B a source of a flood's tick's
        peak; docs/benchmarks.md, "Memory")."""
        if not parts:
            return Counted(empty_keys(), np.zeros(0, np.uint64))
        if len(parts) == 1:
            return parts[0]
        keys = {f: np.concatenate([c._give(f) for c in parts]) for f in Keys._fields}
        totals = np.concatenate([c._give("totals") for c in parts], dtype=np.uint64)  # in this machine's order
        return Counted(Keys(**keys), totals)

    def take(self) -> tuple[Keys, U64]:
        """The sources and their totals, leaving the counts empty: whoever takes them can let each column go as
        soon as it is done with it, which it could not while the counts held them too."""
        keys, totals = self.sources, self.totals
        self.sources, self.totals, self._dict = empty_keys(), np.zeros(0, np.uint64), None
        return keys, totals

    def _give(self, column: str) -> npt.NDArray[np.generic]:
        """One column, leaving an empty one in its place."""
        self._dict = None
        col = self.totals if column == "totals" else getattr(self.sources, column)
        empty = np.empty(0, col.dtype)  # not col[:0], a view that would keep the column's memory
        if column == "totals":
            self.totals = empty
        else:
            self.sources = self.sources._replace(**{column: empty})
        return col


def group_counts(keys_be: bytes | bytearray, packets_be: bytes | bytearray, version: int, plen: int) -> Counted:
    """The counts of a counting set's elements per source group of `plen` bits: `keys_be` the elements' keys
    (addresses, big-endian, 4 or 16 bytes each), `packets_be` their counters' packets (big-endian u64). The rules key
    the sets by the group's network already, so a group is one element; after a reload that changed the grouping,
    until the elements lapse, keys falling in one group add up."""
    # The counters as read, big-endian, not a copy: numpy reads them as they are, and a copy beside the buffers was
    # 8 B a source more at the top of the tick's peak. (The buffer stays alive as long as the counts.)
    totals = np.frombuffer(packets_be, ">u8")
    n = totals.shape[0]
    # Each column read straight into its own array and the group's network taken in place: a flood's buffers, its
    # columns and a second copy of them alive together were the top of a tick's peak (docs/benchmarks.md, "Memory").
    if version == 4:
        lo = np.frombuffer(keys_be, ">u4").astype(np.uint64)
        hi = np.zeros(n, np.uint64)
        moved = _network(lo, _mask(32 + plen))  # the address is the low 32 bits
    else:
        halves = np.frombuffer(keys_be, ">u8").reshape(-1, 2)
        hi, lo = halves[:, 0].astype(np.uint64), halves[:, 1].astype(np.uint64)
        del halves
        moved = _network(hi, _mask(min(plen, 64)))
        moved = _network(lo, _mask(max(plen - 64, 0))) or moved
    tag = np.full(n, version << 8 | plen, np.uint16)
    if not moved:
        return Counted(Keys(hi, lo, tag), totals)
    pairs = np.empty(n, dtype=[("hi", np.uint64), ("lo", np.uint64)])
    pairs["hi"], pairs["lo"] = hi, lo
    uniq, inverse = np.unique(pairs, return_inverse=True)
    summed = np.zeros(uniq.shape[0], np.uint64)
    np.add.at(summed, inverse, totals)
    return Counted(Keys(uniq["hi"].copy(), uniq["lo"].copy(), tag[: uniq.shape[0]]), summed)


def _network(col: U64, mask: int) -> bool:
    """Clears the bits of `col` outside `mask`, in place; whether any was set."""
    if mask == _M64:
        return False
    if not mask:
        moved = bool(col.any())
        col.fill(0)
        return moved
    moved = bool((col & np.uint64(~mask & _M64)).any())
    col &= np.uint64(mask)
    return moved


def _mask(bits: int) -> int:
    """The top `bits` of 64 set."""
    return ((1 << bits) - 1) << (64 - bits) if bits else 0
