"""What govern tells systemd, without libsystemd: sd_notify (one datagram to $NOTIFY_SOCKET, silently nothing when
not under systemd) and log lines that carry journald's priority when stderr is the journal."""

from __future__ import annotations

import logging
import os
import socket
import sys

# syslog priorities (sd-daemon.h's SD_ERR ...) by logging level: journald reads "<N>" at a line's start.
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def notify(state: str) -> bool:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract namespace socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)
            s.sendall(state.encode())
        return True
    except OSError:
        return False


def journal_stderr() -> bool:
    """Whether stderr is connected to the journal ($JOURNAL_STREAM names its device and inode, systemd.exec(5))."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return bool(dev and ino) and f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


class JournalFormatter(logging.Formatter):
    """ "<priority>message": journald keeps its own timestamp and the unit's name, and `journalctl -p warning` shows
    govern's warnings and errors only."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        return "\n".join(f"<{prio}>{line}" for line in super().format(record).splitlines())
