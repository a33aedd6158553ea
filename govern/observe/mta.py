"""What govern reads of the MTA behind the protected ports: how many sessions it can serve at once (the slot
budget is a share of that) and whether postscreen answers first (its pregreet test asks clients to stay silent).

Postfix's master(8) passes max(the service's maxproc, default_process_limit) to listen(), so a Postfix listener's
accept backlog is its process limit; other MTAs pass their own figure (Exim's smtp_connect_backlog). Where that is
not the number of sessions the MTA serves, `wave.mta_slots` says it. `budget` is pure; `postscreen_pid`
and `greet_action` look at /proc.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from govern.model import ListenerStats
from govern.nft.ruleset import DEFAULT_MTA_SLOTS, budget_lanes, first_contact_lanes
from govern.sysctl.backlog import _comm

# Postfix's postscreen_greet_wait is ${stress?{2}:{6}}s: a client may be asked to wait the longer one.
POSTSCREEN_GREET_WAIT = 6.0


@dataclass(frozen=True, slots=True)
class Budget:
    """The slot budget for strangers in a wave, and what it was sized from (shown by `govern status`)."""

    slots: int
    capacity: int
    basis: str
    newcomers: int = 0  # of `slots`, kept for first contacts

    def to_dict(self) -> dict[str, Any]:
        """`govern status`'s "budget", with the first contacts' lane's part for crowds (the CLI does not load the
        ruleset to work it out)."""
        crowds = first_contact_lanes(self.newcomers)[1]
        return {
            "slots": self.slots,
            "newcomers": self.newcomers,
            "crowds": crowds,
            "capacity": self.capacity,
            "basis": self.basis,
        }


def budget(
    wave: Mapping[str, Any], listeners: Sequence[ListenerStats], *, greet_wait: float = 0.0, cut_after: float = 3.0
) -> Budget:
    """`wave.slot_budget` resolved: an explicit number as it is; "auto" as `budget_share` of the MTA's slots, which
    are `wave.mta_slots` if set, else the smallest accept backlog among the protected listeners (the tightest door
    is the one bots fill), else Postfix's default process limit.

    Behind a pregreet wait (postscreen's `greet_wait`), a stranger's connection spends the wait in postscreen and
    then at most `cut_after` in smtpd, and each phase has the same capacity (postscreen screens at most
    postscreen_pre_queue_limit = default_process_limit clients at once, and answers 421 to everyone over it, trusted
    relays included). "auto" is then the share times (greet_wait + cut_after) / max(greet_wait, cut_after): the
    longer phase holds no more than the share, the budget turns over as fast as it can (x1.5 on the defaults). The
    lab tried x3 (each phase's time over smtpd's alone): postscreen's screening filled and refused the trusted
    relay.

    The lanes are split by the time their connections hold a slot: returning strangers are mostly ones postscreen
    passed already and sends straight to smtpd, while a first contact spends the whole wait in postscreen. So the
    common lane is the share's common part times cut_after / (greet_wait + cut_after) (7 of 45 on the defaults), the
    first contacts' lane the rest (38). In the lab, never-seen senders behind postscreen: 75% with a lane of 15,
    80-87% with 25 (the wait's slots alone), 87% with 41 (docs/lab.md)."""
    share = wave["budget_share"]
    newcomers: int | None = None
    if wave["mta_slots"]:
        capacity, basis = wave["mta_slots"], "wave.mta_slots"
    elif any(ls.backlog > 0 for ls in listeners):
        tight = min((ls for ls in listeners if ls.backlog > 0), key=lambda ls: ls.backlog)
        capacity, basis = tight.backlog, f"the accept backlog of {tight.address}:{tight.port}"
    else:
        capacity, basis = DEFAULT_MTA_SLOTS, "no listener seen: Postfix's default process limit"
    if wave["slot_budget"] != "auto":
        slots, why = int(wave["slot_budget"]), "wave.slot_budget"
    elif greet_wait > 0 and cut_after > 0:
        factor = (greet_wait + cut_after) / max(greet_wait, cut_after)
        base = max(1, int(capacity * share))
        slots = max(base, int(capacity * share * factor))
        if wave["newcomer_share"] > 0:  # 0: the operator wants no lane
            # The common lane carries returning strangers, whom postscreen passes straight to smtpd: each holds its
            # slot only for its session, a first contact for the wait and then its session. The same connections
            # through the common lane need cut_after / (greet_wait + cut_after) of the slots they had without the
            # wait; the first contacts' lane gets the rest.
            common = budget_lanes(base, wave["newcomer_share"])[0]
            common = max(1, round(common * cut_after / (greet_wait + cut_after)))
            newcomers = max(slots - common, 0)
        why = (
            f"{share:.0%} of {capacity} slots ({basis}), x{factor:.3g}: strangers spend a {greet_wait:g}s pregreet "
            f"wait in postscreen, then at most {cut_after:g}s in smtpd"
        )
    else:
        slots, why = max(1, int(capacity * share)), f"{share:.0%} of {capacity} slots: {basis}"
    if newcomers is None:
        newcomers = budget_lanes(slots, wave["newcomer_share"])[1]
    return Budget(slots, capacity, why, newcomers)


def postscreen_pid(listeners: Sequence[ListenerStats], proc: str = "/proc") -> str | None:
    """The pid of a postscreen process holding one of these listening sockets (sock_diag's, which name their inodes).

    Not from /proc/net/tcp: that lists every socket of the namespace, and reading it cost a tick 100 ms at 20k
    sessions and 0.5 s at 100k, every ten seconds (docs/benchmarks.md); the listeners are a dump of their own."""
    inodes = {ls.inode for ls in listeners if ls.inode}
    if not inodes:
        return None
    for pid in (d for d in os.listdir(proc) if d.isdigit()):
        with contextlib.suppress(OSError):
            if _comm(proc, pid) != "postscreen":
                continue
            for fd in os.listdir(f"{proc}/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"{proc}/{pid}/fd/{fd}")
                    if link.startswith("socket:[") and int(link[8:-1]) in inodes:
                        return pid
    return None


GREET_ACTIONS = frozenset({"ignore", "enforce", "drop"})


def greet_action(pid: str, proc: str = "/proc") -> str:
    """postscreen's `postscreen_greet_action` as the running process has it: a `-o` on its command line (master.cf
    passes them so), else main.cf in its config directory (`-c` or MAIL_CONFIG, else /etc/postfix), else Postfix's
    default, "ignore". "unknown" when it cannot be read or is not a plain value (a `$parameter`)."""
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as fh:
            argv = [a.decode("utf-8", "replace") for a in fh.read().split(b"\0")]
        with open(f"{proc}/{pid}/environ", "rb") as fh:
            env = dict(e.decode("utf-8", "replace").partition("=")[::2] for e in fh.read().split(b"\0") if e)
    except OSError:
        return "unknown"
    value: str | None = None
    config_dir = env.get("MAIL_CONFIG") or "/etc/postfix"
    for flag, arg in itertools.pairwise(argv):
        if flag == "-c":
            config_dir = arg
        elif flag == "-o" and arg.partition("=")[0].strip() == "postscreen_greet_action":
            value = arg.partition("=")[2]
    if value is None:
        try:
            with open(os.path.join(config_dir, "main.cf"), encoding="utf-8", errors="replace") as fh:
                value = main_cf_value(fh.read(), "postscreen_greet_action")
        except OSError:
            return "unknown"
    if value is None:
        return "ignore"
    value = value.strip().lower()
    return value if value in GREET_ACTIONS else "unknown"


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
