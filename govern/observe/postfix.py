"""The running Postfix behind the protected ports, read from /proc: the process holding a listener (found by the
listening socket's inode, which sock_diag names), its configuration directory, and what govern takes from its
settings: postscreen's greet action and where it logs (the deliveries learned trust is made of).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Mapping, Sequence

from govern.model import ListenerStats
from govern.sysctl.backlog import _comm

# The processes of Postfix that hold a listening socket of smtpd's: master(8) made it and passes it on.
POSTFIX_HOLDERS = frozenset({"master", "smtpd", "postscreen"})
# Where Debian's rsyslog writes the mail facility; a Postfix without `maillog_file` logs to syslog.
SYSLOG_MAIL_LOG = "/var/log/mail.log"


def holders(listeners: Sequence[ListenerStats], proc: str = "/proc") -> dict[str, str]:
    """The Postfix processes holding one of these listening sockets (sock_diag's, which name their inodes): the pid
    of the first of each name (master, smtpd, postscreen), in one walk of /proc for all that is read of Postfix.

    Not from /proc/net/tcp: that lists every socket of the namespace, and reading it cost a tick 100 ms at 20k
    sessions and 0.5 s at 100k, every ten seconds (docs/benchmarks.md); the listeners are a dump of their own."""
    inodes = {ls.inode for ls in listeners if ls.inode}
    found: dict[str, str] = {}
    if not inodes:
        return found
    for pid in (d for d in os.listdir(proc) if d.isdigit()):
        with contextlib.suppress(OSError):
            comm = _comm(proc, pid)
            if comm not in POSTFIX_HOLDERS or comm in found:
                continue
            for fd in os.listdir(f"{proc}/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"{proc}/{pid}/fd/{fd}")
                    if link.startswith("socket:[") and int(link[8:-1]) in inodes:
                        found[comm] = pid
                        break
    return found


def _process(pid: str, proc: str) -> tuple[list[str], str] | None:
    """A Postfix process's arguments and configuration directory (`-c`, else MAIL_CONFIG, else /etc/postfix)."""
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as fh:
            argv = [a.decode("utf-8", "replace") for a in fh.read().split(b"\0")]
        with open(f"{proc}/{pid}/environ", "rb") as fh:
            env = dict(e.decode("utf-8", "replace").partition("=")[::2] for e in fh.read().split(b"\0") if e)
    except OSError:
        return None
    config_dir = env.get("MAIL_CONFIG") or "/etc/postfix"
    for flag, arg in itertools.pairwise(argv):
        if flag == "-c":
            config_dir = arg
    return argv, config_dir


def _main_cf(config_dir: str, name: str) -> str | None:
    """`name` as main.cf in `config_dir` sets it (None: not set); OSError when main.cf cannot be read."""
    with open(os.path.join(config_dir, "main.cf"), encoding="utf-8", errors="replace") as fh:
        return main_cf_value(fh.read(), name)


GREET_ACTIONS = frozenset({"ignore", "enforce", "drop"})


def greet_action(pid: str, proc: str = "/proc") -> str:
    """postscreen's `postscreen_greet_action` as the running process has it: a `-o` on its command line (master.cf
    passes them so), else main.cf in its config directory (`-c` or MAIL_CONFIG, else /etc/postfix), else Postfix's
    default, "ignore". "unknown" when it cannot be read or is not a plain value (a `$parameter`)."""
    got = _process(pid, proc)
    if got is None:
        return "unknown"
    argv, config_dir = got
    value: str | None = None
    for flag, arg in itertools.pairwise(argv):
        if flag == "-o" and arg.partition("=")[0].strip() == "postscreen_greet_action":
            value = arg.partition("=")[2]
    if value is None:
        try:
            value = _main_cf(config_dir, "postscreen_greet_action")
        except OSError:
            return "unknown"
    if value is None:
        return "ignore"
    value = value.strip().lower()
    return value if value in GREET_ACTIONS else "unknown"


def postfix_log(held: Mapping[str, str], proc: str = "/proc", syslog_file: str = SYSLOG_MAIL_LOG) -> tuple[str, str]:
    """Where the Postfix holding a protected port logs (`held`: what `holders` found; any of its processes names its
    config directory), for `trust.postfix_log = "auto"`: its `maillog_file` (main.cf of its config directory), else
    the syslog mail log if there is one. The path ("" for none) and how it was found or why not, for `govern
    status`."""
    pid = next(iter(held.values()), None)
    if pid is None:
        return "", "no Postfix process holds a protected port"
    got = _process(pid, proc)
    if got is None:
        return "", f"Postfix (pid {pid}) vanished while it was read"
    config_dir = got[1]
    try:
        value = (_main_cf(config_dir, "maillog_file") or "").strip()
    except OSError as exc:
        return "", f"{config_dir}/main.cf: {exc.strerror or exc}"
    if value.startswith("/") and "$" not in value:
        return value, f"maillog_file in {config_dir}/main.cf"
    if value:
        return "", f"maillog_file in {config_dir}/main.cf is not a plain path ({value}): set trust.postfix_log"
    if os.path.isfile(syslog_file):
        return syslog_file, f"the syslog mail log, Postfix ({config_dir}) having no maillog_file"
    return (
        "",
        f"Postfix ({config_dir}) logs to syslog and there is no {syslog_file} (journald only?): set trust.postfix_log",
    )


def main_cf_value(text: str, name: str) -> str | None:
    """The last value main.cf gives `name` (a line starting with whitespace continues the one before; a line
    starting with # is a comment), or None."""
    value: str | None = None
    current: list[str] = []

    def flush() -> None:
        nonlocal value
        if current:
            key, eq, rest = current[0].partition("=")
            if eq and key.strip() == name:
                value = " ".join([rest.strip(), *(c.strip() for c in current[1:])]).strip()
            current.clear()

    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():
            if current:
                current.append(line)
            continue
        flush()
        current.append(line)
    flush()
    return value
