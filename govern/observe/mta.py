"""What govern reads of the MTA behind the protected ports: how many sessions it can serve at once (the slot
budget is a share of that) and whether postscreen answers first (its pregreet test asks clients to stay silent).

Postfix's master(8) passes max(the service's maxproc, default_process_limit) to listen(), so a Postfix listener's
accept backlog is its process limit; other MTAs pass their own figure (Exim's smtp_connect_backlog). Where that is
not the number of sessions the MTA serves, `wave.mta_slots` says it. `budget` is pure; what is read of the running
Postfix from /proc is in govern.observe.postfix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from govern.model import ListenerStats
from govern.nft.ruleset import DEFAULT_MTA_SLOTS, budget_lanes, first_contact_lanes

# Postfix's postscreen_greet_wait is ${stress?{2}:{6}}s: a client may be asked to wait the longer one.
POSTSCREEN_GREET_WAIT = 6.0


@dataclass(frozen=True, slots=True)
class Budget:
    """The slot budget for strangers (in a wave; before one, a cap unless `wave.budget_before_wave` is off), and what
    it was sized from (shown by `govern status`)."""

    slots: int
    capacity: int
    basis: str
    newcomers: int = 0  # of `slots`, kept for first contacts
    before_wave: bool = True

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
            "before_wave": self.before_wave,
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
    return Budget(slots, capacity, why, newcomers, bool(wave.get("budget_before_wave", True)))
