"""The export formats: one pure function per format from a selection (govern.export.select) to text.

FlowSpec rules match the source prefix, our MX address(es) of the same family, TCP and the protected ports, so an
ISP drops a blocked source's SMTP to us and nothing else of it. RTBH routes (RFC 7999 community 65535:666) drop
everything the prefix sends anywhere behind the ISP: an option, not the default.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from govern.addr import Prefix
from govern.errors import UsageError
from govern.export.select import Entry, Selection

FORMATS = ("plain", "netset", "json", "csv", "exabgp", "bird", "gobgp", "dots")
FEED_FORMATS = {"plain": "text/plain", "netset": "text/plain", "json": "application/json"}
BLACKHOLE = "65535:666"  # RFC 7999
SCHEMA_ID = "https://govern.invalid/schemas/export-v1.json"


@dataclass(frozen=True, slots=True)
class Target:
    """What a FlowSpec rule protects and how the ISP treats the matched traffic."""

    destinations: tuple[Prefix, ...]  # our MX addresses
    ports: tuple[int, ...]
    rate_limit: int = 0  # bytes per second; 0 discards
    rtbh: bool = False

    def for_family(self, version: int) -> tuple[Prefix, ...]:
        return tuple(d for d in self.destinations if d.version == version)


def render(fmt: str, sel: Selection, target: Target, now: float) -> str:
    if fmt == "plain":
        return plain(sel)
    if fmt == "netset":
        return netset(sel, now)
    if fmt == "json":
        return json.dumps(json_doc(sel, now), indent=2) + "\n"
    if fmt == "csv":
        return csv_text(sel)
    if fmt == "exabgp":
        return "".join(f"announce {r}\n" for r in exabgp_routes(sel.entries, target))
    if fmt == "bird":
        return bird(sel, target)
    if fmt == "gobgp":
        return "".join(line + "\n" for line in gobgp(sel.entries, target))
    if fmt == "dots":
        return json.dumps(dots(sel, target, now), indent=2) + "\n"
    raise UsageError(f"unknown export format {fmt!r} (known: {', '.join(FORMATS)})")


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def plain(sel: Selection) -> str:
    return "".join(f"{_net(e.prefix)}\n" for e in sel.entries)


def netset(sel: Selection, now: float) -> str:
    head = [
        "; govern blocklist: sources this MX blocks for abusing SMTP",
        f"; Last-Modified: {_stamp(now)}",
        f"; Entries: {len(sel.entries)}",
    ]
    body = [f"{_net(e.prefix)} ; {_comment(e)}" for e in sel.entries]
    return "\n".join(head + body) + "\n"


def _comment(e: Entry) -> str:
    return f"{e.offences} offence(s), until {_stamp(e.until)}: {e.reason}".replace("\n", " ")


def json_doc(sel: Selection, now: float) -> dict[str, Any]:
    """The document docs/export.schema.json describes."""
    return {
        "$schema": SCHEMA_ID,
        "generated": _stamp(now),
        "entries": [
            {
                "prefix": _net(e.prefix),
                "family": f"ipv{e.prefix.version}",
                "since": _stamp(e.since),
                "until": _stamp(e.until),
                "offences": e.offences,
                "blocks": e.blocks,
                "reason": e.reason,
            }
            for e in sel.entries
        ],
        "omitted": [{"prefix": _net(o.prefix), "why": o.why} for o in sel.omitted],
    }


def csv_text(sel: Selection) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["prefix", "since", "until", "offences", "blocks", "reason"])
    for e in sel.entries:
        w.writerow([_net(e.prefix), _stamp(e.since), _stamp(e.until), e.offences, e.blocks, e.reason])
    return buf.getvalue()


def _net(p: Prefix) -> str:
    """Always with its length: routers and feeds want CIDR, even for a host."""
    return str(p) if not p.is_host else f"{p}/{p.length}"


# -- BGP ---------------------------------------------------------------------------------------------------


def exabgp_routes(entries: Sequence[Entry], target: Target) -> list[str]:
    """ExaBGP text-API route bodies, without the announce/withdraw verb (the follower diffs them as they are)."""
    out: list[str] = []
    for e in entries:
        if target.rtbh:
            out.append(f"route {_net(e.prefix)} next-hop self community [{BLACKHOLE} no-export]")
            continue
        ports = " ".join(f"={p}" for p in target.ports)
        then = f"rate-limit {target.rate_limit};" if target.rate_limit else "discard;"
        for d in target.for_family(e.prefix.version):
            # ExaBGP writes an IPv6 FlowSpec prefix with its offset (RFC 8956): /LEN/0.
            off = "/0" if e.prefix.version == 6 else ""
            out.append(
                f"flow route {{ match {{ source {_net(e.prefix)}{off}; destination {_net(d)}{off}; protocol tcp; "
                f"destination-port [ {ports} ]; }} then {{ {then} }} }}"
            )
    return out


def bird(sel: Selection, target: Target) -> str:
    """A BIRD 2 config fragment (include it): flow4/flow6 statics, or RTBH statics with the blackhole community."""
    lines = [f"# govern export: {len(sel.entries)} prefix(es); include this file from bird.conf", ""]
    for version in (4, 6):
        entries = [e for e in sel.entries if e.prefix.version == version]
        if target.rtbh:
            lines += [f"protocol static govern_rtbh{version} {{", f"  ipv{version};"]
            lines += [f"  route {_net(e.prefix)} blackhole {{ bgp_community.add((65535, 666)); }};" for e in entries]
        else:
            lines += [f"flow{version} table govern_flowtab{version};", f"protocol static govern_flow{version} {{"]
            lines.append(f"  flow{version} {{ table govern_flowtab{version}; }};")
            # Traffic-rate extended community (RFC 8955 7.3) with rate 0: discard; else the rate as an IEEE float.
            rate = _ieee754(float(target.rate_limit))
            ports = " || ".join(f"= {p}" for p in target.ports)
            for e in entries:
                for d in target.for_family(version):
                    lines.append(
                        f"  route flow{version} {{ src {_net(e.prefix)}; dst {_net(d)}; proto 6; dport {ports}; }} "
                        f"{{ bgp_ext_community.add((generic, 0x80060000, 0x{rate:08x})); }};"
                    )
        lines += ["}", ""]
    return "\n".join(lines)


def _ieee754(v: float) -> int:
    import struct

    return int.from_bytes(struct.pack(">f", v), "big")


def gobgp(entries: Sequence[Entry], target: Target) -> list[str]:
    out: list[str] = []
    for e in entries:
        if target.rtbh:
            fam = "ipv4" if e.prefix.version == 4 else "ipv6"
            out.append(f"gobgp global rib -a {fam} add {_net(e.prefix)} community {BLACKHOLE},no-export")
            continue
        fam = f"ipv{e.prefix.version}-flowspec"
        then = f"rate-limit {target.rate_limit}" if target.rate_limit else "discard"
        ports = " ".join(f"'=={p}'" for p in target.ports)
        for d in target.for_family(e.prefix.version):
            out.append(
                f"gobgp global rib -a {fam} add match source {_net(e.prefix)} destination {_net(d)} "
                f"protocol tcp destination-port {ports} then {then}"
            )
    return out


# -- DOTS --------------------------------------------------------------------------------------------------


def dots(sel: Selection, target: Target, now: float) -> dict[str, Any]:
    """Two bodies for a DOTS server: the RFC 9132 mitigation request for our MX addresses and ports (PUT to
    .../mitigate/cuid=CUID/mid=MID), and the RFC 8783 drop-list ACL of the exported sources (POST to
    .../dots-client=CUID/acls)."""
    lifetime = max(60, int(max((e.until for e in sel.entries), default=now + 3600) - now))
    request = {
        "ietf-dots-signal-channel:mitigation-scope": {
            "scope": [
                {
                    "target-prefix": [_net(d) for d in target.destinations],
                    "target-port-range": [{"lower-port": p} for p in target.ports],
                    "target-protocol": [6],
                    "lifetime": lifetime,
                }
            ]
        }
    }
    acls = []
    for version in (4, 6):
        key = f"ipv{version}"
        # One ACE per source and port: a port range would also drop the ports between ours.
        aces = [
            {
                "name": f"govern-{key}-{i}",
                "matches": {
                    key: {f"source-ipv{version}-network": _net(e.prefix), "protocol": 6},
                    "tcp": {"destination-port-range-or-operator": {"operator": "eq", "port": p}},
                },
                "actions": {"forwarding": "drop"},
            }
            for i, (e, p) in enumerate((e, p) for e in sel.entries if e.prefix.version == version for p in target.ports)
        ]
        if aces:
            acls.append(
                {
                    "name": f"govern-drop-{key}",
                    "type": f"{key}-acl-type",
                    "activation-type": "activate-when-mitigating",
                    "aces": {"ace": aces},
                }
            )
    return {"mitigation_request": request, "drop_list": {"ietf-dots-data-channel:acls": {"acl": acls}}}
