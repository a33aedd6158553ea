"""The one exception tree of govern.

GovernError                 anything govern reports to a person instead of a traceback
├── UsageError              bad input from the operator: config, CLI argument, address, file (exit status 2)
│   ├── ConfigError         a config file or key is wrong; names the file, the key and the problem
│   └── AddressError        text that is not an IPv4/IPv6 address or prefix
├── RefusedError            a valid request the daemon will not carry out (blocking an allowlisted address, ...)
├── DaemonUnavailable       the CLI cannot reach the daemon's control socket
├── KernelError             the kernel refused an operation; errno and netlink errors are translated into it
│   │                       once, at the adapter that talked to the kernel
│   └── NetlinkError        (govern/netlink.py) a netlink request refused or its reply unreadable; also the
│                           kernel's extended-ack text and offset
└── StoreError              the state store cannot be opened, read or written (a full disk, an I/O error)
"""

from __future__ import annotations


class GovernError(Exception):
    """Base of every error govern reports to a person."""

    exit_code = 1


class UsageError(GovernError):
    """Bad input from the operator; nothing was changed."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration problem, located by file and key."""

    def __init__(self, problem: str, *, path: str | None = None, key: str | None = None) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        where = ": ".join(p for p in (path, key) if p)
        super().__init__(f"{where}: {problem}" if where else problem)


class AddressError(UsageError):
    """Text that is not an address or prefix govern can use."""


class RefusedError(GovernError):
    """A well-formed request the daemon refuses, with the reason."""

    exit_code = 2


class DaemonUnavailable(GovernError):
    """The daemon is not running or its control socket cannot be reached."""

    exit_code = 3


class KernelError(GovernError):
    """The kernel refused an operation."""

    def __init__(self, what: str, errno: int = 0) -> None:
        self.errno = errno
        super().__init__(what)


class StoreError(GovernError):
    """The state store cannot be opened, read or written. `committing`: the failure came at the commit, after the
    work inside `Store.pending` (the kernel's commit) was done."""

    def __init__(self, message: str, *, committing: bool = False) -> None:
        super().__init__(message)
        self.committing = committing


def shown(value: object, width: int = 40) -> str:
    """A value quoted in an error, cut short: a refusal must not repeat a 100 kB input back."""
    if isinstance(value, str):
        return repr(value if len(value) <= width else value[:width] + "...")
    text = repr(value)
    return text if len(text) <= width else text[:width] + "..."
