"""Handing freed heap memory back to the kernel after a tick.

A tick at a million sources allocates and frees ~100 MB of numpy temporaries. glibc raises its mmap threshold
after the first large free, so later ones come from the heap, where what is freed between long-lived columns is
not returned: RSS then holds ~40 MB more than the live data at 1M sources (137 MB instead of 96 MB, the rate window
alone). `malloc_trim(0)` returns every free page (~1 ms at that size). A no-op where the C library has no
malloc_trim (musl).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

_trim: Callable[[int], int] | None
try:
    _trim = ctypes.CDLL(None).malloc_trim
except (AttributeError, OSError):
    _trim = None


def give_back() -> None:
    """Return the heap's free pages to the kernel."""
    if _trim is not None:
        _trim(0)
