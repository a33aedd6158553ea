"""The config's "auto" values resolved against the running MTA: the slot budget (a share of the slots its listeners
show), postscreen's pregreet wait and action, and the Postfix log that proves senders by their deliveries. What was
found, and how, is an `MtaView` the daemon keeps for `govern status` and the metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from govern import config as configmod
from govern.config import Config
from govern.model import ListenerStats
from govern.observe.mta import POSTSCREEN_GREET_WAIT, Budget, budget
from govern.observe.postfix import greet_action, holders, postfix_log


@dataclass(frozen=True, slots=True)
class MtaView:
    """What the last resolution found of the MTA."""

    budget: Budget | None = None
    postscreen: bool = False  # postscreen holds a protected port
    greet_action: str = ""  # postscreen's postscreen_greet_action, as read when it was found
    log_basis: str = ""  # how trust.postfix_log "auto" found the log, or why not


def resolve(config: Config, listeners: Sequence[ListenerStats], proc: str = "/proc") -> tuple[Config, MtaView]:
    """`config` with its "auto"s resolved against the MTA holding these listeners, and what was found of it."""
    held = holders(listeners, proc)
    pid = held.get("postscreen")
    action = greet_action(pid, proc) if pid is not None else ""
    if config.raw["cut"]["greet_wait"] == "auto":
        wait = POSTSCREEN_GREET_WAIT if pid is not None else 0.0
        config = configmod.with_override(config, "cut", "greet_wait", wait, resolved=True)
    if config.raw["cut"]["pregreet"] == "auto":
        # Where postscreen rejects (enforce) or drops a client that talked before its banner, that client's
        # session carries no mail: waiting out the pregreet wait for it only keeps a slot from a sender.
        pregreet = "cut" if action in ("enforce", "drop") else "wait"
        config = configmod.with_override(config, "cut", "pregreet", pregreet, resolved=True)
    # The raw value: a budget resolved before is "auto" still, sized again from what is seen now.
    wave = {**config["wave"], "slot_budget": config.raw["wave"]["slot_budget"]}
    greet = config["cut"]["greet_wait"]
    slots = budget(
        wave,
        listeners,
        greet_wait=greet if isinstance(greet, float) else 0.0,
        cut_after=config["cut"]["wave_idle_after"],
    )
    config = configmod.with_override(config, "wave", "slot_budget", slots.slots, resolved=True)
    config, basis = _trust(config, held, proc)
    if slots.slots:  # the lanes as the budget split them (behind a pregreet wait, not by the share alone)
        config = configmod.with_override(config, "wave", "newcomer_share", slots.newcomers / slots.slots, resolved=True)
    return config, MtaView(slots, pid is not None, action, basis)


def _trust(config: Config, held: Mapping[str, str], proc: str) -> tuple[Config, str]:
    """The trust section's "auto"s: the log of the Postfix holding a protected port, and whether the kernel's count
    of replies proves sources too (only where no log is followed: a bot can hold a dialogue as cheaply as silence,
    the lab's provers, but cannot get a message queued without sending one). With how the log was found."""
    trust = config.raw["trust"]
    if trust["postfix_log"] == "auto":
        path, basis = postfix_log(held, proc)
        config = configmod.with_override(config, "trust", "postfix_log", path, resolved=True)
    else:
        basis = "set in the config" if trust["postfix_log"] else "off in the config"
    if trust["from_sessions"] == "auto":
        counted = not config["trust"]["postfix_log"]
        config = configmod.with_override(config, "trust", "from_sessions", counted, resolved=True)
    return config, basis


def found_since(
    config: Config, view: MtaView, listeners: Callable[[], Sequence[ListenerStats]], proc: str = "/proc"
) -> list[str]:
    """What an "auto" did not find at the last resolution and is there now, as log lines ([] for nothing new):
    postscreen starts with the first connection it screens, and Postfix itself may start after govern (boot
    order). Neither the listeners nor /proc are read when nothing is missing."""
    cut, trust = config.raw["cut"], config.raw["trust"]
    want_postscreen = "auto" in (cut["greet_wait"], cut["pregreet"]) and not view.postscreen
    want_log = trust["postfix_log"] == "auto" and not config["trust"]["postfix_log"]
    if not (want_postscreen or want_log):
        return []
    held = holders(listeners(), proc)
    found = []
    if want_postscreen and "postscreen" in held:
        found.append("postscreen holds a protected port: no silent session is cut during its pregreet wait")
    if want_log and (path := postfix_log(held, proc)[0]):
        found.append(f"following the Postfix log {path}: senders are proven by the deliveries it records")
    return found
