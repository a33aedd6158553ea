"""What the daemon hands an exporter over the control socket ({"cmd": "export"}): its blocks with since/until/
offences, its effective allowlist and its own addresses, read in its network namespace. The CLI and the follower
apply the guardrails to it with their config, so every exporter sees the same set."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from govern.addr import Prefix, PrefixSet
from govern.config import Config
from govern.errors import DaemonUnavailable
from govern.export.formats import Target
from govern.export.select import ExportPolicy, Selection, select
from govern.model import Block


@dataclass(frozen=True, slots=True)
class View:
    blocks: tuple[Block, ...]
    allow: PrefixSet
    local: tuple[Prefix, ...]  # every address of the daemon's host
    public: tuple[Prefix, ...]  # its global-scope addresses: the default FlowSpec destinations
    now: float


def reply(
    blocks: Iterable[Block], allow: PrefixSet, local: Sequence[Prefix], public: Sequence[Prefix], now: float
) -> dict[str, Any]:
    return {
        "ok": True,
        "now": now,
        "blocks": [
            {"prefix": str(b.prefix), "reason": b.reason, "since": b.since, "until": b.until, "offences": b.offences}
            for b in blocks
        ],
        "allow": [str(p) for p in allow.members()],
        "local": [str(p) for p in local],
        "public": [str(p) for p in public],
    }


def parse(body: Mapping[str, Any]) -> View:
    try:
        blocks = tuple(
            Block(Prefix.parse(b["prefix"]), str(b["reason"]), float(b["since"]), float(b["until"]), int(b["offences"]))
            for b in body["blocks"]
        )
        return View(
            blocks,
            PrefixSet(Prefix.parse(p) for p in body["allow"]),
            tuple(Prefix.parse(p) for p in body["local"]),
            tuple(Prefix.parse(p) for p in body["public"]),
            float(body["now"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DaemonUnavailable(f"the daemon's export reply is unreadable ({exc}); is it an older govern?") from None


def choose(view: View, config: Config) -> Selection:
    return select(view.blocks, view.allow, view.local, ExportPolicy.from_config(config["export"]), view.now)


def target(view: View, config: Config, *, rtbh: bool = False) -> Target:
    ex = config["export"]
    dests = tuple(ex["destinations"]) or view.public
    return Target(dests, tuple(config["protect"]["ports"]), ex["rate_limit"], rtbh)
