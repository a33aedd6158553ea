"""The sysctl journal in `state_dir`: each key's original value (written before govern first changes it) and the
value each profile set, so `restore` can always put the originals back, even after a crash.

It is one JSON file replaced atomically: temp file, fsync, rename, fsync of the directory. A crash leaves either
the old or the new journal, never a torn one; since it is written before the kernel, it is never behind it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from govern.errors import GovernError

NAME = "sysctl-journal.json"
VERSION = 1


class JournalError(GovernError):
    """The journal cannot be read or written; nothing was changed."""


@dataclass
class Entry:
    """One key govern changed: its original text and what each profile wrote (None: that profile left it)."""

    original: str
    base: str | None = None
    wave: str | None = None

    def effective(self) -> str:
        """The value the key should have with the recorded profiles in force (the wave lies on top of the base)."""
        return self.wave if self.wave is not None else self.base if self.base is not None else self.original


@dataclass
class Record:
    boot: str  # the kernel boot the originals belong to ("" if unknown): a reboot resets every sysctl
    netns: str  # the network namespace they belong to: restoring them anywhere else would be wrong
    profiles: list[str] = field(default_factory=list)  # profiles applied, in order
    keys: dict[str, Entry] = field(default_factory=dict)  # in the order they were first changed

    def empty(self) -> bool:
        return not self.keys and not self.profiles


class Journal:
    """`state_dir/sysctl-journal.json`, and a lock so the daemon and a CLI command never interleave."""

    def __init__(self, state_dir: str) -> None:
        self.dir = state_dir
        self.path = os.path.join(state_dir, NAME)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            fd = os.open(os.path.join(self.dir, "sysctl.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise JournalError(f"cannot open the sysctl lock in {self.dir}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def load(self) -> Record | None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise JournalError(f"sysctl journal {self.path} is unreadable ({exc}); fix or remove it") from None
        try:
            return _decode(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise JournalError(
                f"sysctl journal {self.path} is not a govern journal ({exc}); fix or remove it"
            ) from None

    def save(self, rec: Record) -> None:
        """Durably replace the journal; an empty record removes it."""
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            if rec.empty():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            else:
                tmp = f"{self.path}.tmp"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.write(fd, json.dumps(_encode(rec), indent=1).encode())
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, self.path)
            dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            raise JournalError(f"cannot write the sysctl journal {self.path}: {exc.strerror}") from None


def _encode(rec: Record) -> dict[str, Any]:
    return {
        "version": VERSION,
        "boot": rec.boot,
        "netns": rec.netns,
        "profiles": rec.profiles,
        "keys": {k: {"original": e.original, "base": e.base, "wave": e.wave} for k, e in rec.keys.items()},
    }


def _opt_str(v: Any) -> str | None:
    if v is not None and not isinstance(v, str):
        raise TypeError(f"expected a string, got {v!r}")
    return v


def _decode(data: Any) -> Record:
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise ValueError("unknown version")
    keys: dict[str, Entry] = {}
    for k, e in data["keys"].items():
        original = e["original"]
        if not isinstance(original, str):
            raise TypeError(f"{k}: original is not a string")
        keys[str(k)] = Entry(original, _opt_str(e.get("base")), _opt_str(e.get("wave")))
    return Record(
        boot=str(data["boot"]), netns=str(data["netns"]), profiles=[str(p) for p in data["profiles"]], keys=keys
    )
