"""Backlog awareness: a listener's accept queue is capped by the backlog its MTA passed to listen(), further capped
by somaxconn at that moment. Raising somaxconn does nothing for a listener whose MTA asks for less, or that started
listening before the raise; this module says which, and names the MTA setting to change.

`warnings` is pure; `owners` finds the process behind each listener (best effort, /proc).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence

from govern.model import ListenerStats
from govern.sysctl.planner import SOMAXCONN, Item

POSTFIX = "Postfix"
EXIM = "Exim"
OPENSMTPD = "OpenSMTPD"

ADVICE = {
    # master(8) passes max(the service's maxproc, default_process_limit) to listen() (master_listen.c).
    POSTFIX: "Postfix listens with the larger of the service's maxproc (master.cf, 7th column of the smtp line) "
    "and default_process_limit (main.cf); raise one and run `postfix reload`",
    EXIM: "set smtp_connect_backlog in the Exim configuration (default 20) and restart Exim",
    OPENSMTPD: "OpenSMTPD's listen backlog is compiled in (SMTPD_BACKLOG), not configurable; "
    "put a proxy with a larger backlog in front or rebuild it",
}


def identify(processes: Sequence[tuple[str, str]]) -> str | None:
    """The MTA among a listener's processes, given (name, executable path) pairs; None if none is known."""
    for name, exe in processes:
        if "postfix" in exe or (name in ("master", "postscreen") and not exe.endswith("/smtpd")):
            return POSTFIX
        if name.startswith("exim") or "/exim" in exe:
            return EXIM
    for name, exe in processes:
        if name == "smtpd" and "postfix" not in exe:
            return OPENSMTPD
    return None


def _where(ls: ListenerStats) -> str:
    return f"[{ls.address}]:{ls.port}" if ":" in ls.address else f"{ls.address}:{ls.port}"


def warnings(
    listeners: Sequence[ListenerStats],
    somaxconn_live: int | None,
    somaxconn_target: int | None,
    mtas: Mapping[tuple[str, int], str | None],
) -> list[str]:
    """One line per listener whose accept backlog is below the planned somaxconn."""
    want = max(somaxconn_live or 0, somaxconn_target or 0)
    out = []
    for ls in listeners:
        if not want or ls.backlog >= want:
            continue
        mta = mtas.get((ls.address, ls.port))
        head = f"listener {_where(ls)}{f' ({mta})' if mta else ''}: accept backlog {ls.backlog} < somaxconn {want}"
        if somaxconn_live is not None and ls.backlog == somaxconn_live and ls.backlog < want:
            out.append(f"{head}: capped by somaxconn when it started listening; restart the MTA after applying")
        else:
            advice = ADVICE.get(mta or "", "raise the backlog the MTA passes to listen()")
            out.append(f"{head}: the MTA's own listen backlog caps the queue; {advice}")
    return out


def owners(listeners: Sequence[ListenerStats], proc: str = "/proc") -> dict[tuple[str, int], str | None]:
    """The MTA behind each listener, from its socket inode (sock_diag's listeners have it) and the processes'
    descriptors."""
    inodes = {ls.inode: ls.port for ls in listeners if ls.inode}
    by_inode: dict[int, list[tuple[str, str]]] = {}
    if inodes:
        for pid in (d for d in os.listdir(proc) if d.isdigit()):
            with contextlib.suppress(OSError):
                name = _comm(proc, pid)
                exe = ""
                with contextlib.suppress(OSError):
                    exe = os.readlink(f"{proc}/{pid}/exe")
                for fd in os.listdir(f"{proc}/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        link = os.readlink(f"{proc}/{pid}/fd/{fd}")
                        if link.startswith("socket:["):
                            ino = int(link[8:-1])
                            if ino in inodes:
                                by_inode.setdefault(ino, []).append((name, exe))
    out: dict[tuple[str, int], str | None] = {}
    for ls in listeners:
        procs = [p for ino, port in inodes.items() if port == ls.port for p in by_inode.get(ino, [])]
        out[(ls.address, ls.port)] = identify(procs)
    return out


def _comm(proc: str, pid: str) -> str:
    with open(f"{proc}/{pid}/comm", encoding="utf-8", errors="replace") as fh:
        return fh.read().strip()


def plan_warnings(listeners: Sequence[ListenerStats], items: Sequence[Item]) -> list[str]:
    """`warnings` against a sysctl plan's somaxconn (live and planned), naming each listener's MTA."""
    som = next((i for i in items if i.key == SOMAXCONN), None)
    if som is None:
        return []
    return warnings(listeners, som.current, som.target, owners(listeners))
