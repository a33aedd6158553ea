"""Reading a file the operator named (the config, an allowlist file) without trusting what it is: only a regular
file is read, never a FIFO (the read would wait for a writer forever), a device (/dev/zero never ends) or a
directory, and never more than a limit. A leaf module: it imports only govern.errors.
"""

from __future__ import annotations

import os
import stat

from govern.errors import ConfigError

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def size_text(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and not n % (1 << 20) else f"{n} bytes"


def _not_regular(st: os.stat_result) -> str | None:
    if stat.S_ISREG(st.st_mode):
        return None
    kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
    return f"is {kind}, not a regular file"


def read_regular(path: str, limit: int, *, key: str | None = None) -> bytes:
    """The bytes of the regular file at `path`, at most `limit` of them; ConfigError naming `path` (and `key`)
    otherwise. The file is stat'ed before it is opened, so a device is never opened at all, and opened without
    blocking and checked again, so one swapped in between is refused too."""

    def refuse(problem: str) -> ConfigError:
        return ConfigError(problem, path=path, key=key)

    try:
        if "\0" in path:
            raise refuse("a file name cannot contain a NUL character")
        why = _not_regular(os.stat(path))
        if why:
            raise refuse(why)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            why = _not_regular(st)
            if why:
                raise refuse(why)
            if st.st_size > limit:
                raise refuse(f"is larger than {size_text(limit)} ({st.st_size} bytes)")
            chunks, size = [], 0
            while size <= limit:
                chunk = os.read(fd, min(1 << 20, limit + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise refuse("does not exist") from None
    except PermissionError:
        raise refuse("permission denied") from None
    except OSError as exc:
        raise refuse(f"cannot read: {exc.strerror or exc}") from None
    if size > limit:  # it grew after the fstat
        raise refuse(f"is larger than {size_text(limit)}")
    return b"".join(chunks)
