"""govern's iptables rules: one chain `GOVERN` in the raw table of iptables and ip6tables, entered from PREROUTING
only for TCP to the protected ports of a local address, and one rule per set inside it (never one per address).

Legacy xtables (libip4tc, what python-iptables drives), not the nft-backed `iptables-nft`: both can be installed
and both hook the same packets; see docs/iptables.md. `RETURN` (not `ACCEPT`) for allowlisted sources, as in the
nftables backend: govern never overrides the operator's own rules, it only ever takes away.
"""

from __future__ import annotations

import warnings
from typing import Any

from govern.model import FirewallSpec

CHAIN = "GOVERN"
PREFIX = "govern-"
# Counting sets forget a source two minutes after it was first seen (ipset's match cannot refresh a timeout
# without resetting the counter): the observer's rate window is one minute and it takes a lower total as a restart.
SEEN_TIMEOUT = 120
SEEN_SIZE = 262144
# The block and throttle sets' limit (ipset's default, 65,536, is a flood's first minutes): memory grows with the
# elements, not with the limit.
MAX_ELEMENTS = 1 << 22
# python-iptables builds a hashlimit match the kernel refuses (EINVAL) unless the table expiry is given.
HASHLIMIT_EXPIRE_MS = "120000"


def set_names(v: int) -> dict[str, str]:
    return {k: f"{PREFIX}{k}{v}" for k in ("allow", "block", "throttle", "tight", "seen")}


def ipset_create(spec: FirewallSpec) -> list[str]:
    """`ipset restore` lines creating every set (existing ones are kept with their elements)."""
    lines: list[str] = []
    for v, fam in ((4, "inet"), (6, "inet6")):
        s = set_names(v)
        mask = spec.v4_len if v == 4 else spec.v6_len
        lines.append(f"create {s['allow']} hash:net family {fam}")
        for kind in ("block", "throttle", "tight"):
            lines.append(f"create {s[kind]} hash:net family {fam} timeout 0 maxelem {MAX_ELEMENTS}")
        seen = f"hash:ip family {fam} netmask {mask} counters timeout {SEEN_TIMEOUT} maxelem {SEEN_SIZE}"
        lines.append(f"create {s['seen']} {seen}")
    return lines


def _module() -> Any:
    """python-iptables, imported quietly: its regular expressions are not raw strings (a warning on Python 3.11+)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", SyntaxWarning)
        import iptc
    return iptc


def _iptc(v: int) -> Any:
    iptc = _module()
    return (iptc.Table, iptc.Rule) if v == 4 else (iptc.Table6, iptc.Rule6)


def _rule(v: int, *, syn: bool = False) -> Any:
    rule = _iptc(v)[1]()
    rule.protocol = "tcp"
    if syn:
        rule.create_match("tcp").syn = "1"
    return rule


def _set(rule: Any, name: str, *, negate: bool = False, count: bool = True) -> None:
    m = rule.create_match("set")
    m.match_set = ["!", name, "src"] if negate else [name, "src"]
    if not count:
        m.update_counters = "!"


def chain_rules(spec: FirewallSpec, v: int, *, enforce: bool) -> list[Any]:
    """The rules of chain GOVERN for one family, in order."""
    s = set_names(v)
    mask = str(spec.v4_len if v == 4 else spec.v6_len)
    rules = []
    r = _rule(v)
    _set(r, s["allow"])
    r.create_target("RETURN")
    rules.append(r)
    # Counting: every SYN of a source already in the set counts (the match updates the element's counter); a
    # source not yet there is added, and the kernel starts a new element's counter at the packet that added it.
    # Re-adding every time (`--add-set --exist`) would reset the counter instead, and a negated match counts too
    # unless told not to, hence `! --update-counters` on the adding rule.
    r = _rule(v, syn=True)
    _set(r, s["seen"])
    r.create_target("")
    rules.append(r)
    r = _rule(v, syn=True)
    _set(r, s["seen"], negate=True, count=False)
    r.create_target("SET").add_set = [s["seen"], "src"]
    rules.append(r)
    if not enforce:
        return rules
    r = _rule(v)
    _set(r, s["block"], count=False)
    r.create_target("DROP")
    rules.append(r)
    for kind, rate, burst in (
        ("throttle", spec.throttle_rate, spec.throttle_burst),
        ("tight", spec.tight_rate, spec.tight_burst),
    ):
        r = _rule(v, syn=True)
        _set(r, s[kind], count=False)
        h = r.create_match("hashlimit")
        h.hashlimit_above = f"{rate}/minute"
        h.hashlimit_burst = str(burst)
        h.hashlimit_mode = "srcip"
        h.hashlimit_srcmask = mask
        h.hashlimit_name = f"{PREFIX}{kind}{v}"
        h.hashlimit_htable_expire = HASHLIMIT_EXPIRE_MS
        r.create_target("DROP")
        rules.append(r)
    return rules


def jump_rule(spec: FirewallSpec, v: int) -> Any:
    r = _rule(v)
    r.create_match("multiport").dports = ",".join(str(p) for p in spec.ports)
    r.create_match("addrtype").dst_type = "LOCAL"
    r.create_target(CHAIN)
    return r


def _raw(v: int) -> Any:
    table = _iptc(v)[0]("raw")
    table.autocommit = False
    table.refresh()
    return table


def install(spec: FirewallSpec, *, enforce: bool) -> None:
    """Create or converge chain GOVERN and its jump, one commit per family (the chain is replaced whole)."""
    iptc = _module()
    for v in (4, 6):
        table = _raw(v)
        try:
            chain = iptc.Chain(table, CHAIN) if table.is_chain(CHAIN) else table.create_chain(CHAIN)
            chain.flush()
            for r in chain_rules(spec, v, enforce=enforce):
                chain.append_rule(r)
            pre = iptc.Chain(table, "PREROUTING")
            for r in list(pre.rules):
                if r.target.name == CHAIN:
                    pre.delete_rule(r)
            pre.insert_rule(jump_rule(spec, v))
            table.commit()
        except iptc.IPTCError as exc:
            raise _kernel_error(f"ip{'' if v == 4 else '6'}tables: installing chain {CHAIN}", exc) from None
        finally:
            table.close()


def shape() -> tuple[object, ...]:
    """Per family: chain GOVERN's rules (as iptables-save would print them) and how many jumps lead to it."""
    iptc = _module()
    out: list[object] = []
    for v in (4, 6):
        table = _raw(v)
        try:
            if not table.is_chain(CHAIN):
                out.append(None)
                continue
            mine = tuple(_describe(r) for r in iptc.Chain(table, CHAIN).rules)
            jumps = sum(1 for r in iptc.Chain(table, "PREROUTING").rules if r.target.name == CHAIN)
            out.append((mine, jumps))
        except iptc.IPTCError as exc:
            raise _kernel_error(f"ip{'' if v == 4 else '6'}tables: reading chain {CHAIN}", exc) from None
        finally:
            table.close()
    return tuple(out)


def _describe(r: Any) -> tuple[object, ...]:
    """A rule without its counters."""
    matches = tuple((m.name, tuple(sorted(m.get_all_parameters().items()))) for m in r.matches)
    target = (r.target.name, tuple(sorted(r.target.get_all_parameters().items())))
    return r.protocol, r.src, r.dst, matches, target


def remove() -> bool:
    """Remove the jump and chain GOVERN from both families; True if there was something to remove."""
    iptc = _module()
    found = False
    for v in (4, 6):
        table = _raw(v)
        try:
            if not table.is_chain(CHAIN):
                continue
            found = True
            pre = iptc.Chain(table, "PREROUTING")
            for r in list(pre.rules):
                if r.target.name == CHAIN:
                    pre.delete_rule(r)
            chain = iptc.Chain(table, CHAIN)
            chain.flush()
            chain.delete()
            table.commit()
        except iptc.IPTCError as exc:
            raise _kernel_error(f"ip{'' if v == 4 else '6'}tables: removing chain {CHAIN}", exc) from None
        finally:
            table.close()
    return found


def _kernel_error(what: str, exc: Exception) -> Exception:
    from govern.errors import KernelError

    return KernelError(f"{what}: {exc}")
