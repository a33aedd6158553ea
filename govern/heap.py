"""The daemon's memory between ticks: handing freed heap pages back to the kernel, and keeping long-lived objects
out of the cyclic collector's walks.

A tick at a million sources allocates and frees ~100 MB of numpy temporaries. glibc raises its mmap threshold
after the first large free, so later ones come from the heap, where what is freed between long-lived columns is
not returned: RSS then holds ~40 MB more than the live data at 1M sources (137 MB instead of 96 MB, the rate window
alone). `malloc_trim(0)` returns every free page (~1 ms at that size). A no-op where the C library has no
malloc_trim (musl).

The state (a million blocks are ~3 million tracked objects) lives for hours, and every full collection of the cyclic
GC walks all of it: 0.3-0.4 s at a million blocks, whenever the objects made since the last one reach a quarter of the
long-lived ones. `settle` collects once and freezes what survives (gc.freeze): later collections walk only what was
made since. It unfreezes first, so cyclic garbage among what it froze last time is found then, not kept for good.
`collector_held` keeps the collector off while a burst of objects that are not garbage is built (the store's load,
a dump of a large set): each collection it triggers would walk everything built so far.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
from collections.abc import Callable, Iterator

_trim: Callable[[int], int] | None
try:
    _trim = ctypes.CDLL(None).malloc_trim
except (AttributeError, OSError):
    _trim = None


def give_back() -> None:
    """Return the heap's free pages to the kernel."""
    if _trim is not None:
        _trim(0)


def settle() -> None:
    """Collect everything once, then keep what is alive out of the cyclic collector's later walks. For start-up and
    the daemon's maintenance (every few minutes), not for every tick: it costs one full collection."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


@contextlib.contextmanager
def collector_held() -> Iterator[None]:
    """The cyclic collector off for the block, then as it was before (also when the block raises)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()
