"""Which addresses a role sends from and to, kept inside the lab (docs/testing.md): the destination must be one
address of the lab's MX range, every source prefix inside the ranges the role may use; and, pure, the picking of
distinct host addresses (or one per subnet) from those prefixes, paired with a destination of their family."""

from __future__ import annotations

import ipaddress
import random
from collections import Counter
from collections.abc import Iterable, Sequence

from govern_lab.addresses import CLIENT_RANGES, MX_RANGES
from govern_lab.traffic.options import ALL_HOSTS_UP_TO, DEFAULT_SOURCES, MAX_DURATION, Common, TrafficError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _net(text: str) -> Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise TrafficError(f"not an address or prefix: {text!r}: {exc}") from None


def _inside(net: Network, ranges: Iterable[str]) -> bool:
    for r in ranges:
        outer = ipaddress.ip_network(r)
        if outer.version == net.version and net.subnet_of(outer):  # type: ignore[arg-type]
            return True
    return False


def check_dst(dsts: Sequence[str]) -> tuple[str, ...]:
    """The destinations, normalised; each must be one address inside the lab's MX range."""
    if not dsts:
        raise TrafficError("--dst is required")
    out = []
    for d in dsts:
        try:
            addr = ipaddress.ip_address(d)
        except ValueError:
            raise TrafficError(f"--dst must be an address, not {d!r}") from None
        if not _inside(ipaddress.ip_network(addr), MX_RANGES):
            raise TrafficError(f"--dst {d} is outside the lab's MX range ({', '.join(MX_RANGES)})")
        out.append(str(addr))
    return tuple(out)


def check_sources(sources: Sequence[str], allowed: Sequence[str] = CLIENT_RANGES) -> tuple[Network, ...]:
    """The source prefixes; each must lie inside one of `allowed` (the lab's client ranges)."""
    nets = tuple(_net(s) for s in sources)
    for n in nets:
        if not _inside(n, allowed):
            raise TrafficError(f"--sources {n} is outside the lab's ranges for this role ({', '.join(allowed)})")
    return nets


def host_span(net: Network) -> tuple[int, int]:
    """(first, how many) usable host addresses of `net`, as integers.

    IPv4 leaves out the network and broadcast addresses of prefixes up to /30, IPv6 the subnet-router anycast
    address of prefixes up to /126: a real host never sends from those.
    """
    base, size = int(net.network_address), net.num_addresses
    if net.version == 4 and net.prefixlen <= 30:
        return base + 1, size - 2
    if net.version == 6 and net.prefixlen <= 126:
        return base + 1, size - 1
    return base, size


def pick_sources(nets: Sequence[Network], count: int | None, rng: random.Random, default: int = 10) -> list[str]:
    """`count` distinct host addresses spread evenly over `nets`; all of them in order when that is every host.

    count None: every host if the prefixes hold at most ALL_HOSTS_UP_TO, else `default`.
    """
    if not nets:
        raise TrafficError("no source prefixes")
    spans = [host_span(n) for n in nets]
    total = sum(size for _, size in spans)
    if count is None:
        count = total if total <= ALL_HOSTS_UP_TO else default
    if count < 1:
        raise TrafficError("--count must be at least 1")
    if count > total:
        raise TrafficError(f"--count {count} is more than the {total} host addresses in --sources")
    alloc = _allot(count, [size for _, size in spans])
    out: list[str] = []
    for net, (first, size), want in zip(nets, spans, alloc, strict=True):
        if want == size:
            picks: Iterable[int] = range(size)
        elif size < 2**62:
            picks = rng.sample(range(size), want)
        else:
            picks = sorted(_distinct(rng, size, want))
        cls = ipaddress.IPv4Address if net.version == 4 else ipaddress.IPv6Address
        out += [str(cls(first + k)) for k in picks]
    return out


def spread_sources(nets: Sequence[Network], count: int, rng: random.Random, length: int) -> list[str]:
    """`count` host addresses, each in a /`length` subnet of its own, spread evenly over `nets` (whose prefixes must be
    at most `length` long): a swarm over many /64s of one /48 rather than random addresses, which may share one."""
    if not nets:
        raise TrafficError("no source prefixes")
    if count < 1:
        raise TrafficError("--count must be at least 1")
    caps = []
    for n in nets:
        if not n.prefixlen <= length <= n.max_prefixlen:
            raise TrafficError(f"--spread {length} does not fit {n} (it must be /{n.prefixlen}..{n.max_prefixlen})")
        caps.append(1 << (length - n.prefixlen))
    if count > sum(caps):
        raise TrafficError(f"--count {count} is more than the {sum(caps)} /{length} subnets of --sources")
    alloc = _allot(count, caps)
    out: list[str] = []
    for n, cap, want in zip(nets, caps, alloc, strict=True):
        subnets = rng.sample(range(cap), want) if cap < 2**62 else _distinct(rng, cap, want)
        step = 1 << (n.max_prefixlen - length)
        base = int(n.network_address)
        cls = ipaddress.IPv4Network if n.version == 4 else ipaddress.IPv6Network
        for k in sorted(subnets):
            sub = cls((base + k * step, length))
            first, size = host_span(sub)
            out.append(str(ipaddress.ip_address(first + rng.randrange(size))))
    return out


def _allot(count: int, caps: Sequence[int]) -> list[int]:
    """`count` shared out as evenly as `caps` (what each prefix can give, in order) allow; what small prefixes cannot
    give comes from the others. The caller has checked that `count` fits."""
    share, extra = divmod(count, len(caps))
    alloc = [min(cap, share + (1 if i < extra else 0)) for i, cap in enumerate(caps)]
    short = count - sum(alloc)
    for i, cap in enumerate(caps):
        more = min(short, cap - alloc[i])
        alloc[i] += more
        short -= more
    return alloc


def _distinct(rng: random.Random, size: int, want: int) -> list[int]:
    chosen: set[int] = set()
    while len(chosen) < want:
        chosen.add(rng.randrange(size))
    return list(chosen)


def family(addr: str) -> int:
    return 6 if ":" in addr else 4


def pair_sources(sources: Sequence[str], dsts: Sequence[str]) -> list[tuple[str, str]]:
    """Each source with a destination of its own family (several destinations of a family take turns)."""
    by_fam: dict[int, list[str]] = {}
    for d in dsts:
        by_fam.setdefault(family(d), []).append(d)
    turn: Counter[int] = Counter()
    out = []
    for s in sources:
        fam = family(s)
        if fam not in by_fam:
            raise TrafficError(f"source {s} is IPv{fam} but no --dst is")
        out.append((s, by_fam[fam][turn[fam] % len(by_fam[fam])]))
        turn[fam] += 1
    return out


def resolve_sources(role: str, opts: Common, allowed: Sequence[str] = CLIENT_RANGES) -> tuple[Network, ...]:
    """The role's source prefixes: as given (every family must have a --dst), or its defaults for the --dst families."""
    fams = {family(d) for d in opts.dst}
    if opts.sources:
        nets = check_sources(opts.sources, allowed)
        for n in nets:
            if n.version not in fams:
                raise TrafficError(f"--sources {n} is IPv{n.version} but no --dst is")
        return nets
    return tuple(n for n in check_sources(DEFAULT_SOURCES[role], allowed) if n.version in fams)


def check_common(opts: Common) -> None:
    check_dst(opts.dst)
    if not 0 < opts.duration <= MAX_DURATION:
        raise TrafficError(f"--duration must be more than 0 and at most {MAX_DURATION:g} seconds")
    if not 0 < opts.port < 65536:
        raise TrafficError("--port must be 1..65535")
