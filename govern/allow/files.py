"""Allowlist files that are re-read when they change (inode, size or modification time), so an edit or an atomic
replace takes effect without a reload. A file that becomes unreadable or invalid keeps its last good content in force
and reports the error: nothing the operator set up is lost to a half-written file."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from govern.addr import Prefix
from govern.allow.entries import AllowEntry
from govern.errors import AddressError, ConfigError
from govern.readfile import read_regular

# An allowlist file's limit (docs/configuration.md): some 300,000 entries, parsed in about two seconds.
MAX_BYTES = 4 << 20


def _nothing_too_wide(_p: Prefix) -> str | None:
    return None


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


def within_guard(
    entries: tuple[AllowEntry, ...], too_wide: Callable[[Prefix], str | None]
) -> tuple[tuple[AllowEntry, ...], list[str]]:
    """The entries the guard admits (govern.config.too_wide_to_allow), and why each other one was skipped."""
    kept, skipped = [], []
    for e in entries:
        why = too_wide(e.prefix)
        if why:
            skipped.append(f"{e.source}: skipped: {why}")
        else:
            kept.append(e)
    return tuple(kept), skipped


@dataclass
class WatchedFile:
    path: str
    # Why an entry is too wide to allowlist (the config's guard); entries it names are skipped, never taken.
    too_wide: Callable[[Prefix], str | None] = field(default=_nothing_too_wide, repr=False)
    entries: tuple[AllowEntry, ...] = ()
    error: str = ""
    loaded: bool = False  # some content was read successfully at least once
    _seen: tuple[int, int, int, int] | None = None  # (dev, inode, size, mtime_ns) of the last version parsed

    def judge_by(self, too_wide: Callable[[Prefix], str | None]) -> None:
        """Take the (re)loaded config's guard; the file is read again at the next check, judged by it."""
        self.too_wide, self._seen = too_wide, None

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
        # The signature of what was stat'ed before the read: a replace between the two is read again next time.
        seen = _signature(st)
        try:
            # Only a regular file, without blocking: a FIFO here would stop the daemon's loop for good.
            text = read_regular(self.path, MAX_BYTES).decode("utf-8")
        except ConfigError as exc:
            self.error = f"{self.path}: cannot read: {exc.problem}"
            return False
        except UnicodeDecodeError as exc:
            self.error = f"{self.path}: cannot read: not UTF-8 text ({exc.reason} at byte {exc.start})"
            return False
        try:
            entries, skipped = within_guard(parse_allow_text(text, self.path), self.too_wide)
        except ConfigError as exc:
            self.error = str(exc)
            self._seen = seen  # parsed and refused: not again until it changes
            return False
        self._seen, self.loaded = seen, True
        self.error = "; ".join(skipped[:3]) + (f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else "")
        changed = entries != self.entries
        self.entries = entries
        return changed


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
