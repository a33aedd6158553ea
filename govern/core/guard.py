"""What govern never punishes, whoever asks: the rules every block, throttle and tarpit passes, from the operator's
`govern block` and from the core's own decisions alike.

- never this host: loopback, or a prefix covering one of the host's own addresses (the MTA would refuse its own
  host, and local submission with it);
- never the allowlist (the allowlist's own rule, in decide);
- never wider than `guard.ipv4_widest` / `guard.ipv6_widest` (default /16 and /32): a typo such as 0.0.0.0/0 or a
  /1 would otherwise block the whole Internet.

Each refusal names the rule that refused.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from govern.addr import Prefix, PrefixSet

LOOPBACK = (Prefix.parse("127.0.0.0/8"), Prefix.parse("::1/128"))


def this_host(p: Prefix, own: PrefixSet) -> str | None:
    """Why `p` is this host's (loopback, or one of `own`), or None: never punished, its sessions never cut."""
    for lo in LOOPBACK:
        if lo.overlaps(p):
            return f"{p} covers loopback ({lo}): govern never blocks this host"
    # The set's lookups first: this runs for every block at start-up (release_allowlisted), and walking the host's
    # addresses in order for each of 100k blocks was a third of a second.
    if own.intersects(p):
        mine = next(m for m in own if m.overlaps(p))
        return f"{p} covers {mine}, an address of this host: govern never blocks this host"
    return None


def refusal(p: Prefix, widest: Mapping[int, int], own: PrefixSet) -> str | None:
    """Why `p` may not be blocked, throttled or tarpitted, or None when it may."""
    here = this_host(p, own)
    if here:
        return here
    limit = widest.get(p.version)
    if limit is not None and p.length < limit:
        key = f"guard.ipv{p.version}_widest"
        return f"{p} is wider than /{limit} ({key}): govern never blocks that much of the address space"
    return None


def refused(
    prefixes: Collection[Prefix], widest: Mapping[int, int], own: PrefixSet, allow: PrefixSet | None = None
) -> set[Prefix]:
    """Those of `prefixes` that `refusal` refuses, or that touch `allow`, asked a prefix length at a time (every
    restored block at start-up): the reason is then asked of these alone."""
    members = (*LOOPBACK, *own.members(), *(allow.members() if allow is not None else ()))
    out = PrefixSet(members).intersecting(prefixes)
    out.update(p for p in prefixes if p.length < widest.get(p.version, 0))
    return out
