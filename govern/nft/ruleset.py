"""The text of table `inet govern`: every set and rule govern puts in the kernel, generated from the config.

Every rule matches only the protected TCP ports, and the allow rules come first, so no mistake in the sets can
touch SSH or any other service. The chain hooks prerouting at raw priority: blocked sources are dropped before
connection tracking, so a flood of them cannot fill the conntrack table. `return` (not `accept`) for allowlisted
sources: govern never overrides the operator's own firewall, it only ever takes away.
"""

from __future__ import annotations

import ipaddress

from govern.config import Config

TABLE = "govern"
FAMILY = "inet"
INTERVAL_SETS = frozenset(
    {"allow4", "allow6", "block4", "block6", "throttle4", "throttle6", "tight4", "tight6", "gate4", "gate6"}
)
# A packet this long (IP length) to a protected port carries part of a message: EHLO, MAIL and RCPT lines are far
# shorter, as is what a silent, dripping or pre-banner-talking bot sends.
MESSAGE_LEN = 256
# How long the kernel's own set of delivering sources remembers one (each message-sized packet starts it again). A
# constant, so a reload never has to redefine the set; the daemon's trust applies `trust.learn_for` on top.
KNOWN_TIMEOUT = "7d"
# Counting sets forget a source two minutes after its last SYN: the rate window is one minute.
SEEN_TIMEOUT = "2m"
SEEN_SIZE = 262144
# Connections whose SYN was seen recently: longer than a client's SYN retries (1+2+4+8+16 s on Linux's defaults)
# and large enough for a SYN flood's spoofed sources; when full, retransmissions simply count again.
SYN_TIMEOUT = "40s"
SYN_SIZE = 1048576
CONN4 = "ip saddr . tcp sport . tcp sequence"
CONN6 = "ip6 saddr . tcp sport . tcp sequence"


def _key(version: int, length: int) -> str:
    addr = "ip saddr" if version == 4 else "ip6 saddr"
    bits = 32 if version == 4 else 128
    if length >= bits:
        return addr
    mask = ipaddress.ip_network(f"{'0.0.0.0' if version == 4 else '::'}/{length}").netmask
    return f"{addr} & {mask}"


def ruleset(config: Config, *, enforce: bool = True) -> str:
    """The whole table. With `enforce` False (dry run) only the counting rules are installed: no verdicts."""
    ports = ", ".join(str(p) for p in config["protect"]["ports"])
    k4, k6 = _key(4, config["protect"]["ipv4_prefix"]), _key(6, config["protect"]["ipv6_prefix"])
    thr = config["throttle"]
    limit = f"limit rate over {thr['rate_per_minute']}/minute burst {thr['burst']} packets"
    wave = config["wave"]
    tight = f"limit rate over {wave['throttle_rate_per_minute']}/minute burst {wave['throttle_burst']} packets"
    syn = "tcp flags syn / syn,ack"
    local = "fib daddr type local"
    rules = [
        f"tcp dport @ports {local} ip saddr @allow4 return",
        f"tcp dport @ports {local} ip6 saddr @allow6 return",
        # A connection counts once: SYNs the client retransmits (same source, port and initial sequence number,
        # at 1, 3, 7, 15 s while a flood keeps the server from answering) would otherwise make a busy, patient
        # relay look five times as prolific as it is.
        f"tcp dport @ports {syn} {local} {CONN4} != @syn4 update @seen4 {{ {k4} counter }}",
        f"tcp dport @ports {syn} {local} {CONN6} != @syn6 update @seen6 {{ {k6} counter }}",
        f"tcp dport @ports {syn} {local} update @syn4 {{ {CONN4} }}",
        f"tcp dport @ports {syn} {local} update @syn6 {{ {CONN6} }}",
    ]
    if config["trust"]["from_sessions"]:
        rules += [
            f"tcp dport @ports {local} meta length >= {MESSAGE_LEN} update @known4 {{ {k4} }}",
            f"tcp dport @ports {local} meta length >= {MESSAGE_LEN} update @known6 {{ {k6} }}",
        ]
    if enforce:
        rules += [
            f"tcp dport @ports {local} ip saddr @block4 drop",
            f"tcp dport @ports {local} ip6 saddr @block6 drop",
            f"tcp dport @ports {syn} {local} ip saddr @throttle4 update @rate4 {{ {k4} {limit} }} drop",
            f"tcp dport @ports {syn} {local} ip6 saddr @throttle6 update @rate6 {{ {k6} {limit} }} drop",
            # Throttled during a wave: the same, at the wave's tighter rate.
            f"tcp dport @ports {syn} {local} ip saddr @tight4 update @trate4 {{ {k4} {tight} }} drop",
            f"tcp dport @ports {syn} {local} ip6 saddr @tight6 update @trate6 {{ {k6} {tight} }} drop",
        ]
        if wave["gate_rate_per_second"]:
            # The wave's gate (its sets hold 0.0.0.0/0 and ::/0 while a wave is on, with the wave's timeout): strangers
            # share one rate; sources the kernel (or the Postfix log) knows to deliver pass.
            gate = f"limit rate over {wave['gate_rate_per_second']}/second burst {wave['gate_burst']} packets"
            rules += [
                f"tcp dport @ports {syn} {local} ip saddr @gate4 {k4} != @known4 {gate} drop",
                f"tcp dport @ports {syn} {local} ip6 saddr @gate6 {k6} != @known6 {gate} drop",
            ]
    sets = [
        "set ports { type inet_service; }",
        "set allow4 { type ipv4_addr; flags interval; }",
        "set allow6 { type ipv6_addr; flags interval; }",
        "set block4 { type ipv4_addr; flags interval,timeout; }",
        "set block6 { type ipv6_addr; flags interval,timeout; }",
        "set throttle4 { type ipv4_addr; flags interval,timeout; }",
        "set throttle6 { type ipv6_addr; flags interval,timeout; }",
        "set tight4 { type ipv4_addr; flags interval,timeout; }",
        "set tight6 { type ipv6_addr; flags interval,timeout; }",
        "set gate4 { type ipv4_addr; flags interval,timeout; }",
        "set gate6 { type ipv6_addr; flags interval,timeout; }",
    ]
    for v, typ in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        sets.append(f"set known{v} {{ type {typ}; size {SEEN_SIZE}; flags dynamic,timeout; timeout {KNOWN_TIMEOUT}; }}")
    for name in ("seen", "rate", "trate"):
        for v, typ in ((4, "ipv4_addr"), (6, "ipv6_addr")):
            sets.append(
                f"set {name}{v} {{ type {typ}; size {SEEN_SIZE}; flags dynamic,timeout; timeout {SEEN_TIMEOUT}; }}"
            )
    for name, conn in (("syn4", CONN4), ("syn6", CONN6)):
        sets.append(f"set {name} {{ typeof {conn}; size {SYN_SIZE}; flags dynamic,timeout; timeout {SYN_TIMEOUT}; }}")
    body = "\n".join(
        [
            f"add table {FAMILY} {TABLE}",
            *(f"add {s.replace('set ', f'set {FAMILY} {TABLE} ', 1)}" for s in sets),
            f"add chain {FAMILY} {TABLE} guard {{ type filter hook prerouting priority raw; policy accept; }}",
            # Converging an existing table: the rules and the port list are replaced, the sets keep their elements.
            f"flush chain {FAMILY} {TABLE} guard",
            f"flush set {FAMILY} {TABLE} ports",
            # The ports go in with a set statement, not `add element`: that command makes libnftables read every set
            # of the table first, block sets included (0.8-1.5 s at 100k blocks, against ~1 ms this way).
            f"add set {FAMILY} {TABLE} ports {{ type inet_service; elements = {{ {ports} }}; }}",
            *(f"add rule {FAMILY} {TABLE} guard {r}" for r in rules),
        ]
    )
    return body + "\n"
