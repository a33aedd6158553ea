"""Reading and writing sysctls under a root directory (default /proc/sys; tests point it at a temporary tree), and
the module parameter that sizes the conntrack hash where its sysctl is read-only.

Errno values are translated into KernelError here, once. Whether a key can be written is judged from its mode bits,
not from access(2): root may open a 0444 file of a test tree, while procfs refuses a write to a 0444 sysctl.
"""

from __future__ import annotations

import errno
import os
import stat

from govern.errors import KernelError
from govern.sysctl.planner import CONNTRACK_BUCKETS, Access, Reading

HASHSIZE = "nf_conntrack/parameters/hashsize"
# The initial network namespace's fixed inode (PROC_NET_INIT_INO, kernel 6.x); older kernels number it at boot,
# and then only a comparison with PID 1's namespace tells (which a sandbox may forbid).
INIT_NET = "net:[4026531833]"


def _namespace_inode(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


class ProcSys:
    """The sysctls of the network namespace this process is in."""

    def __init__(
        self, root: str = "/proc/sys", modules_root: str = "/sys/module", *, initial_namespace: bool | None = None
    ) -> None:
        self.root = root.rstrip("/") or "/"
        self.modules_root = modules_root.rstrip("/") or "/"
        self._initial = initial_namespace

    def path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("."))

    def in_initial_namespace(self) -> bool:
        if self._initial is None:
            mine = _namespace_inode("/proc/self/ns/net")
            self._initial = bool(mine) and mine in (INIT_NET, _namespace_inode("/proc/1/ns/net"))
        return self._initial

    def where(self) -> tuple[str, str]:
        """The kernel boot ("" if unknown) and network namespace these sysctls belong to: a journal is valid there."""
        boot = self._read(self.path("kernel.random.boot_id")) or ""
        return boot.strip(), _namespace_inode("/proc/self/ns/net")

    def read(self, key: str) -> Reading:
        path = self._settable(key)
        text = self._read(path)
        if text is None:
            return Reading.absent()
        return Reading(" ".join(text.split()), Access.WRITABLE if _writable(path) else Access.READ_ONLY, path)

    def write(self, key: str, value: str) -> None:
        path = self._settable(key)
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            raise KernelError(f"{key}: no such sysctl ({path})", errno.ENOENT) from None
        except PermissionError as exc:
            raise KernelError(f"{key}: read-only here ({path})", exc.errno or 0) from None
        except OSError as exc:
            raise KernelError(f"{key}: cannot open {path}: {exc.strerror}", exc.errno or 0) from None
        try:
            os.write(fd, f"{value}\n".encode())
        except OSError as exc:
            raise KernelError(f"{key}: the kernel refused {value!r}: {exc.strerror}", exc.errno or 0) from None
        finally:
            os.close(fd)

    def _settable(self, key: str) -> str:
        """Where a key can be set: the conntrack hash size moves to its module parameter when the sysctl is 0444."""
        path = self.path(key)
        if key != CONNTRACK_BUCKETS or _writable(path) or not self.in_initial_namespace():
            return path
        param = os.path.join(self.modules_root, HASHSIZE)
        return param if os.path.exists(path) and _writable(param) else path

    @staticmethod
    def _read(path: str) -> str | None:
        try:
            with open(path, encoding="ascii", errors="replace") as fh:
                return fh.read()
        except OSError:
            return None


def _writable(path: str) -> bool:
    try:
        return bool(os.stat(path).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    except OSError:
        return False


def mem_total(path: str = "/proc/meminfo") -> int:
    """MemTotal in bytes (0 if unreadable: the planner's memory caps then keep every value as it is)."""
    try:
        with open(path, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
