"""Allowlist files that are re-read when they change (inode, size or modification time), so an edit or an atomic
replace takes effect without a reload. A file that becomes unreadable or invalid keeps its last good content in force
and reports the error: nothing the operator set up is lost to a half-written file."""

from __future__ import annotations

import os
from dataclasses import dataclass

from govern.addr import Prefix
from govern.allow.entries import AllowEntry
from govern.errors import AddressError, ConfigError


def parse_allow_text(text: str, path: str) -> tuple[AllowEntry, ...]:
    """One address or prefix per line, '#' comments; ConfigError naming FILE:LINE for the first bad line."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        try:
            p = Prefix.parse(item, strict=True)
        except AddressError as exc:
            raise ConfigError(str(exc), path=f"{path}:{n}") from None
        if p.length == 0:
            raise ConfigError(f"{p} would allow every address", path=f"{path}:{n}")
        out.append(AllowEntry(p, f"file {path}:{n}"))
    return tuple(out)


@dataclass
class WatchedFile:
    path: str
    entries: tuple[AllowEntry, ...] = ()
    error: str = ""
    loaded: bool = False  # some content was read successfully at least once
    _seen: tuple[int, int, int, int] | None = None  # (dev, inode, size, mtime_ns) of the last version parsed

    def check(self) -> bool:
        """Re-read the file if it changed; True when its entries changed."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            self.error = f"{self.path}: {exc.strerror or exc}"
            self._seen = None  # whatever appears next is read
            return False
        if _signature(st) == self._seen:
            return False
        try:
            with open(self.path, "rb") as fh:
                # The signature of what was read, not of what was stat'ed: a replace between the two is seen next time.
                seen = _signature(os.fstat(fh.fileno()))
                text = fh.read().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.error = f"{self.path}: cannot read: {getattr(exc, 'strerror', None) or exc}"
            return False
        try:
            entries = parse_allow_text(text, self.path)
        except ConfigError as exc:
            self.error = str(exc)
            self._seen = seen  # parsed and refused: not again until it changes
            return False
        self._seen, self.error, self.loaded = seen, "", True
        changed = entries != self.entries
        self.entries = entries
        return changed


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
