"""Human durations as operators write them in config and on the command line: '500ms', '10m', '1h30m', '7d'."""

from __future__ import annotations

import math
import re

from govern.errors import shown

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
MAX_TEXT = 64  # '1w2d3h4m5s6ms' needs far less; a longer text is not a duration a person wrote
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(value: object) -> float:
    """Seconds from '10m', '1h30m', '2.5s' or a bare number of seconds. Raises ValueError with the reason."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '10m', not a boolean")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an integer of hundreds of digits
            raise ValueError(f"{shown(value)} is too large to be a duration") from None
    elif isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise ValueError(f"{shown(value)} is not a duration (too long)")
        text = value.strip().lower().replace(" ", "")
        pos, seconds = 0, 0.0
        for m in _PART.finditer(text):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if not text or pos != len(text):
            raise ValueError(f"{shown(value)} is not a duration (use e.g. '30s', '10m', '1h30m', '7d')")
    else:
        raise ValueError(f"expected a duration such as '10m', got {type(value).__name__}")
    if not math.isfinite(seconds):
        raise ValueError(f"{shown(value)} is not a finite duration")
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {shown(value)}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a whole number of seconds ('1h30m'); sub-second values in ms."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    rest = round(seconds)
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out)
