"""The text of table `inet govern`: every set and rule govern puts in the kernel, generated from the firewall's
section of the config (govern.model.FirewallSpec).

Every rule matches only the protected TCP ports, and the allow rules come first, so no mistake in the sets can
touch SSH or any other service. The chain hooks prerouting at raw priority: blocked sources are dropped before
connection tracking, so a flood of them cannot fill the conntrack table. `return` (not `accept`) for allowlisted
sources: govern never overrides the operator's own firewall, it only ever takes away.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from govern.addr import Prefix
from govern.model import FirewallSpec

TABLE = "govern"
FAMILY = "inet"
# Blocks, throttles and the wave's tighter throttles: each kind lives in parts by prefix length, so that adding a
# host or a /64 never pays for an interval set's rebuild (every commit into an interval set rebuilds its lookup
# array, O(its size): 12 ms at 100k elements; a hash set takes 0.02 ms at any size, docs/benchmarks.md):
# - `block4h`, `block6h`: hosts (/32, /128), hash sets;
# - `block6n`: IPv6 /64s (the default source group), a hash set matched through `ip6 saddr & ffff:ffff:ffff:ffff::`;
# - `block4`, `block6`: every other prefix, interval sets (the names of the one set each kind had before, so a table
#   of that shape converges in place: govern.nft.backend moves what they hold to its part).
# The rules match all parts of a kind with the same verdict. The gate (0.0.0.0/0 and ::/0 during a wave) and the
# allowlist (changed only on reload) stay single interval sets.
KINDS = ("block", "throttle", "tight")
NET6_LEN = 64
_NET6_MASK = "ffff:ffff:ffff:ffff::"
INTERVAL_SETS = frozenset({"allow4", "allow6", "gate4", "gate6", *(f"{k}{v}" for k in KINDS for v in (4, 6))})
# A hash set's expired elements are invisible at once, but the kernel frees them only when its garbage collection
# walks the whole set: every second by default, 8.8% of a core at 1M elements (the interval sets collect during
# commits instead). Once a minute costs 0.15% there.
HASH_GC = "1m"


def part(kind: str, p: Prefix) -> str:
    """The set of `kind` ("block", "throttle", "tight") that holds prefix `p`."""
    if p.length == p.bits:
        return f"{kind}{p.version}h"
    if p.version == 6 and p.length == NET6_LEN:
        return f"{kind}6n"
    return f"{kind}{p.version}"


def parts(kind: str, version: int) -> tuple[str, ...]:
    """Every set of `kind` for one family, in the order the rules look them up (hash sets first)."""
    return (f"{kind}4h", f"{kind}4") if version == 4 else (f"{kind}6h", f"{kind}6n", f"{kind}6")


def stored(name: str, p: Prefix) -> Prefix:
    """What an element of set `name` stands for: the elements of a /64 set are keys, read back as /128s."""
    if name.endswith("6n"):
        return Prefix(6, p.value >> (128 - NET6_LEN) << (128 - NET6_LEN), NET6_LEN)
    return p


def _lookups(kind: str, version: int) -> list[str]:
    """One match per part of `kind`: a packet's source in that part."""
    if version == 4:
        return [f"ip saddr @{kind}4h", f"ip saddr @{kind}4"]
    return [f"ip6 saddr @{kind}6h", f"ip6 saddr & {_NET6_MASK} @{kind}6n", f"ip6 saddr @{kind}6"]


# Proof is the MTA's word, never the client's bytes: a session in which the server has pushed this many positive
# replies (a segment starting with a 2xx or 3xx code, or a TLS handshake record) proves its source: the banner and
# three answers (EHLO, MAIL, RCPT; or EHLO, a pipelined MAIL/RCPT/DATA batch and the "queued" reply; or EHLO,
# STARTTLS and the TLS handshake). A silent, dripping, babbling or pre-banner-talking client gets the banner and
# errors (4xx, 5xx), which never count.
PROOF_REPLIES = 4
# A crowd's proof during a wave (below): the banner and five answers, EHLO, MAIL, RCPT, DATA's 354 and the reply that
# accepts the message. A swarm's bot that holds a spam bot's dialogue and stops at DATA gets five.
CROWD_PROOF_REPLIES = 6
# The first byte of a reply that counts: "2", "3", and 0x16, a TLS handshake record (after STARTTLS).
PROOF_FIRST_BYTES = "0x32, 0x33, 0x16"
# How long the kernel's own set of proven sources remembers one (each proving session starts it again). A
# constant, so a reload never has to redefine the set; the daemon's trust applies `trust.learn_for` on top.
PROVEN_TIMEOUT_S = 7 * 86_400
PROVEN_TIMEOUT = f"{PROVEN_TIMEOUT_S}s"
# Per-connection reply counts: a session proves its source within two minutes or not at all (and a busy MX's
# connections of the last two minutes fit the set).
TALK_TIMEOUT = "2m"
# The slot budget when the MTA's capacity is unknown (no listener when the table was made): Postfix's
# default_process_limit is 100, and strangers get `budget_share` of it.
DEFAULT_MTA_SLOTS = 100
# The named counter of every source's new connections (not the allowlisted's, not retransmitted SYNs).
ATTEMPTS = "attempts"
# Counting sets forget a source two minutes after its last SYN: the rate window is one minute.
SEEN_TIMEOUT = "2m"
SEEN_SIZE = 262144
# Each family's counting set is SEEN_SHARDS sets (`seen4_00` ...), a source's key hashed to one of them: a dump of a
# set walks its hash table from the start again for every batch the kernel fills (nft_rhash_walk skips what it
# sent), so a read of n elements costs ~n^2; in 16 shards a sixteenth of that, below the cost of filling the
# replies, which grows with n alone: 250k sources 2.2 s a read in 4 shards, 0.6 s in 16, where 32 and 64 gain
# nothing more (docs/benchmarks.md, "Counting sets in shards"). Together they hold SEEN_SIZE, as one set did.
# A shard's size is also the kernel's first guess at its hash table (nft_rhash_init's nelem_hint), which every dump
# walks whole: a fresh shard of 16,384 would cost each empty dump 0.1 ms, not 0.01. The backend adds and deletes
# one element in each shard it makes (NftBackend.setup), and the removal shrinks the table to what the set holds.
SEEN_SHARDS = 16
# The shards of the versions before (4 sets of 65,536 a family, `seen4_0` ...): deleted once no rule uses them.
OLD_SHARDS = 4
# Fixed: without a seed the kernel draws one per rule, and a reload of the rules would move a source to another
# shard while the old one still counts it.
SHARD_SEED = 0x676F76
# Connections whose SYN was seen recently: longer than a client's SYN retries (1+2+4+8+16 s on Linux's defaults)
# and large enough for a SYN flood's spoofed sources; when full, retransmissions simply count again.
SYN_TIMEOUT = "40s"
SYN_SIZE = 1048576
# Over from a source's second counted connection on (within SEEN_TIMEOUT of its last one): what makes it `twice`.
TWICE = "limit rate over 1/hour burst 1 packets"
CONN4 = "ip saddr . tcp sport . tcp sequence"
CONN6 = "ip6 saddr . tcp sport . tcp sequence"


def seen_sets(version: int) -> tuple[str, ...]:
    """The counting set's shards of one family, in the order of their hash values."""
    return tuple(f"seen{version}_{i:02d}" for i in range(SEEN_SHARDS))


def _count_chain(version: int, shard: int) -> str:
    return f"count{version}_{shard}"


COUNT_CHAINS = tuple(_count_chain(v, i) for v in (4, 6) for i in range(SEEN_SHARDS))


def _to_shard(version: int, key: str) -> str:
    """The jump to the chain that counts `key` in its shard of the counting set."""
    jumps = ", ".join(f"{i} : jump {_count_chain(version, i)}" for i in range(SEEN_SHARDS))
    return f"jhash {key} mod {SEEN_SHARDS} seed {SHARD_SEED:#x} vmap {{ {jumps} }}"


def _key(version: int, length: int, field: str = "saddr") -> str:
    addr = f"ip {field}" if version == 4 else f"ip6 {field}"
    bits = 32 if version == 4 else 128
    if length >= bits:
        return addr
    mask = ipaddress.ip_network(f"{'0.0.0.0' if version == 4 else '::'}/{length}").netmask
    return f"{addr} & {mask}"


def slot_budget(spec: FirewallSpec) -> int:
    """The budget of MTA slots strangers may hold in a wave: `wave.slot_budget` as resolved by the daemon from the
    MTA's capacity, or, before that (teardown, a CLI that only reads the config), from Postfix's default."""
    if isinstance(spec.slot_budget, int):
        return spec.slot_budget
    return max(1, int(DEFAULT_MTA_SLOTS * spec.budget_share))


def budget_lanes(total: int, newcomer_share: float) -> tuple[int, int]:
    """The budget split into (slots any stranger may take, slots kept for first contacts); the first contacts'
    lane needs a budget of two slots or more, and never takes all of it."""
    newcomers = min(round(total * newcomer_share), total - 1) if total >= 2 else 0
    return total - newcomers, newcomers


def first_contact_lanes(newcomers: int) -> tuple[int, int]:
    """The first contacts' lane split into (slots for a source's only connection, slots for a crowd's): a third
    for crowds, none below three slots (a crowd then waits for the common lane)."""
    crowd = newcomers // 3 if newcomers >= 3 else 0
    return newcomers - crowd, crowd


SLOT_SETS = ("slots", "newslots", "crowdslots")
# The chains no hook enters: the slot budget's admission in a wave and before one, and the verdicts on blocked and
# throttled sources.
CHAINS = ("admit", "calm", "enforce")
# A slot's element lapses this long after the last packet of its connection either way, a connection whose
# handshake never completes (a SYN the full accept queue dropped, a client gone) after SLOT_HANDSHAKE: the budget
# never counts a phantom for long. Closing (FIN or RST, a cut's included) removes it at once.
SLOT_IDLE = "60s"
SLOT_HANDSHAKE = "5s"
# How often the kernel frees the budget's closed connections: an element a close deleted is invisible at once but
# still counts against the set's size until the garbage collection walks the set (every second by default, and the
# freeing waits for the next commit's grace period): a cap of 60 refused the 61st of 60 short connections opened
# and closed within a second (a kernel test). The sets hold a budget's worth of elements: a walk costs nothing.
SLOT_GC = "100ms"
# A source whose first SYN made a connection a first contact makes no other one for this long.
NEWSRC_TIMEOUT = "10s"
# A source's connections this close after its first contact's first SYN are opened "at once", as a swarm's source
# (and a relay with several messages for the host) opens its sessions; a sender's next message comes a second or more
# later.
AT_ONCE = "500ms"


def slot_sets(spec: FirewallSpec, enforce: bool = True) -> dict[str, int]:
    """The budget's sets and their sizes (the size is the budget: an add to a full set fails)."""
    main, newcomers = budget_lanes(slot_budget(spec), spec.newcomer_share) if enforce else (0, 0)
    return {name: n for name, n in zip(SLOT_SETS, (main, *first_contact_lanes(newcomers)), strict=True) if n}


def _budget_rules(
    sizes: dict[str, int], k4: str, k6: str, before_wave: bool = True
) -> tuple[list[str], list[str], list[str], list[str]]:
    """The slot budget: rules of the `slots` chain (prerouting, after conntrack), of `slots_out` (output) and of the
    `admit` and `calm` chains they jump to.

    In a wave, every new connection of a stranger (not allowlisted, not proven) must take an element, its conntrack
    id, in a set whose size is the budget: the lane of first contacts (`newslots`) if it is one and has room, else
    the common one (`slots`); a set that is full refuses the add, and the SYN is dropped before the MTA sees it. An
    element goes when its connection closes or resets (either way) and lapses when the connection goes quiet, so
    the sets hold strangers' live connections, in the accept queue and the MTA's processes alike. A refused SYN
    leaves nothing behind (its conntrack entry is never confirmed), however many a flood sends. Connections made
    before the table take a slot of the common lane with their next segment that carries data, while it has room.

    Before a wave the budget is a cap (`calm`): a stranger's new connection takes an element of any lane with room,
    or its SYN is dropped. A flood's first half second, before any tick can call the wave, otherwise filled the
    MTA and its accept queue with sessions the wave's budget never counted, behind which every relay waited (the
    lab's loopers: 110 sessions against a budget of 30, a known relay's p95 11 s); capped, the flood holds the
    budget and nothing more, and a full budget is pressure that calls the wave (govern.core.modes).
    """
    if not sizes:
        return [], [], [], []
    syn = "tcp flags syn / syn,ack"
    local = "fib daddr type local"
    closing = "tcp flags & (fin | rst) != 0"
    # Only packets after the handshake keep a slot: a SYN-ACK to a client that never answers must not.
    established = "tcp flags & syn == 0"
    pre: list[str] = []
    out: list[str] = []
    for name in sizes:
        pre += [
            f"tcp dport @ports {closing} ct id @{name} delete @{name} {{ ct id }}",
            f"tcp dport @ports {established} ct id @{name} update @{name} {{ ct id timeout {SLOT_IDLE} }}",
        ]
        out += [
            f"tcp sport @ports {closing} ct id @{name} delete @{name} {{ ct id }}",
            f"tcp sport @ports {established} ct id @{name} update @{name} {{ ct id timeout {SLOT_IDLE} }}",
        ]
    # A stranger's connection made before the wave holds the MTA as much as one made in it: its first segment with
    # data either way takes a slot of the common lane while there is room (an add to
    # a full set fails, and the packet goes on: never a drop), so returning strangers are not admitted while the
    # flood's earlier sessions hold the MTA (shedding ends those). Never the first contacts' lane: a sender the host
    # has never seen is better queued behind the flood's sessions than turned away until they go (the lab tried
    # both lanes: never-seen senders 86% behind postscreen and 97.6% in the mixed flood, against 88-92% and 98.8-100%).
    # Only on a segment that carries data (PSH: a greeting, a reply, a command), never on a bare ACK: the last ACK
    # of a close would take a slot again and hold it for SLOT_IDLE after the connection is gone.
    live = "tcp flags & (syn | fin | rst | psh) == psh"
    d4, d6 = k4.replace("saddr", "daddr", 1), k6.replace("saddr", "daddr", 1)
    unslotted = " ".join(f"ct id != @{name}" for name in sizes)
    if "slots" in sizes:
        adopt = f"{unslotted} add @slots {{ ct id timeout {SLOT_IDLE} }}"
        pre += [
            f"tcp dport @ports {live} ip saddr @gate4 ip saddr != @allow4 {k4} != @proven4 {adopt}",
            f"tcp dport @ports {live} ip6 saddr @gate6 ip6 saddr != @allow6 {k6} != @proven6 {adopt}",
        ]
        out += [
            f"tcp sport @ports {live} ip daddr @gate4 ip daddr != @allow4 {d4} != @proven4 {adopt}",
            f"tcp sport @ports {live} ip6 daddr @gate6 ip6 daddr != @allow6 {d6} != @proven6 {adopt}",
        ]
    pre += [
        f"tcp dport @ports {syn} {local} ip saddr @gate4 ip saddr != @allow4 {k4} != @proven4 jump admit",
        f"tcp dport @ports {syn} {local} ip6 saddr @gate6 ip6 saddr != @allow6 {k6} != @proven6 jump admit",
    ]
    if before_wave:
        pre += [
            f"tcp dport @ports {syn} {local} ip saddr != @gate4 ip saddr != @allow4 {k4} != @proven4 jump calm",
            f"tcp dport @ports {syn} {local} ip6 saddr != @gate6 ip6 saddr != @allow6 {k6} != @proven6 jump calm",
        ]
    admitted = [f"ct id @{name} accept" for name in sizes]  # a retransmitted SYN of an admitted connection
    admit = list(admitted)
    # A first contact takes the first contacts' lane: a source's only connection its own part of it, then the
    # crowds' part; a crowd's (a source that opened others at once, as a swarm's do) only the crowds' part. The
    # swarm's sources arriving during the wave then hold a third of the lane, not all of it, while a sender that
    # opens several connections at once (Postfix delivering a few messages to a destination it has not met) still
    # finds room there once the swarm has arrived, not only in the common lane the flood holds.
    if "newslots" in sizes:
        admit += [
            f"{CONN4} @fresh4 {k4} != @crowd4 add @newslots {{ ct id timeout {SLOT_HANDSHAKE} }} accept",
            f"{CONN6} @fresh6 {k6} != @crowd6 add @newslots {{ ct id timeout {SLOT_HANDSHAKE} }} accept",
        ]
    if "crowdslots" in sizes:
        admit += [
            f"{CONN4} @fresh4 add @crowdslots {{ ct id timeout {SLOT_HANDSHAKE} }} accept",
            f"{CONN6} @fresh6 add @crowdslots {{ ct id timeout {SLOT_HANDSHAKE} }} accept",
        ]
    admit += [f"add @slots {{ ct id timeout {SLOT_HANDSHAKE} }} accept", "counter drop"]
    # Before a wave there are no first contacts to keep a lane for: any lane with room, the common one first.
    calm = admitted + [f"add @{name} {{ ct id timeout {SLOT_HANDSHAKE} }} accept" for name in sizes]
    return pre, out, admit, [*calm, "counter drop"]


def ruleset(spec: FirewallSpec, *, enforce: bool = True, resize: Iterable[str] = ()) -> str:
    """The whole table. With `enforce` False (dry run) only the counting rules are installed: no verdicts.

    `resize` names budget sets that exist with another size: they are deleted and made again (their slots are
    forgotten; live connections take them again as they come)."""
    ports = ", ".join(str(p) for p in spec.ports)
    k4, k6 = _key(4, spec.v4_len), _key(6, spec.v6_len)
    limit = f"limit rate over {spec.throttle_rate}/minute burst {spec.throttle_burst} packets"
    tight = f"limit rate over {spec.tight_rate}/minute burst {spec.tight_burst} packets"
    syn = "tcp flags syn / syn,ack"
    local = "fib daddr type local"
    sizes = slot_sets(spec, enforce)
    rules = [
        f"tcp dport @ports {local} ip saddr @allow4 return",
        f"tcp dport @ports {local} ip6 saddr @allow6 return",
        *(
            [
                # First contact in a wave: a new connection from a stranger whose SYNs the kernel has not counted in
                # the last two minutes (before the counting below adds it; asked of `once`, which holds every source
                # `seen` counts: looked up for its absence, an element's limit is never spent). Its first SYN is
                # remembered and dropped: a real TCP stack sends it again a second later, a spoofed SYN flood never
                # does, so half-open connections from forged sources never take a slot of the budget. A swarm's
                # sources all knock at once and keep knocking, so once it has arrived, a first contact is most often
                # a sender the host has never seen: it gets a lane of the budget the swarm cannot hold (chain
                # newcomers).
                # One connection per source is a first contact (`newsrc`, for as long as a handshake may take): a
                # swarm's source opens its connections at once, each would contend for the lane with the senders it
                # is kept for, and a sender opens one. The source's others are dropped as first contacts too; once
                # its first one's second SYN is counted, they go to the common lane.
                f"tcp dport @ports {syn} {local} ip saddr @gate4 {k4} != @proven4 {CONN4} != @fresh4 "
                f"{CONN4} != @syn4 {k4} != @once4 {k4} != @newsrc4 update @fresh4 {{ {CONN4} }} "
                f"update @newsrc4 {{ {k4} }} update @burst4 {{ {k4} }} drop",
                f"tcp dport @ports {syn} {local} ip6 saddr @gate6 {k6} != @proven6 {CONN6} != @fresh6 "
                f"{CONN6} != @syn6 {k6} != @once6 {k6} != @newsrc6 update @fresh6 {{ {CONN6} }} "
                f"update @newsrc6 {{ {k6} }} update @burst6 {{ {k6} }} drop",
                # The source's other connections at once (within AT_ONCE of its first contact's first SYN, `burst`)
                # mark it as a crowd (`crowd`): a swarm's source opens its sessions at once, a sender the host has
                # never seen most often one, so a crowd's first contact takes only the crowds' part of the first
                # contacts' lane (chain admit): the swarm's sources arriving during the wave would hold all of it for
                # as long as they keep arriving. A later one while the first contact is pending (a sender's next
                # message a second after its first) is dropped by the rule below and marks nothing: marked, the
                # sender was a crowd for two minutes, its first contact waited in the crowds' part the swarm holds
                # and timed out at connect (the CI's lab cell, one sender in most runs).
                f"tcp dport @ports {syn} {local} ip saddr @gate4 {k4} != @proven4 {CONN4} != @fresh4 "
                f"{CONN4} != @syn4 {k4} != @once4 {k4} @newsrc4 {k4} @burst4 "
                f"update @crowd4 {{ {k4} }} drop",
                f"tcp dport @ports {syn} {local} ip6 saddr @gate6 {k6} != @proven6 {CONN6} != @fresh6 "
                f"{CONN6} != @syn6 {k6} != @once6 {k6} @newsrc6 {k6} @burst6 "
                f"update @crowd6 {{ {k6} }} drop",
                # The same when the set is full (a flood of forged sources larger than it): dropped all the same,
                # so forged SYNs never reach the budget; first contacts wait until the set has room again.
                f"tcp dport @ports {syn} {local} ip saddr @gate4 {k4} != @proven4 {CONN4} != @fresh4 "
                f"{CONN4} != @syn4 {k4} != @once4 drop",
                f"tcp dport @ports {syn} {local} ip6 saddr @gate6 {k6} != @proven6 {CONN6} != @fresh6 "
                f"{CONN6} != @syn6 {k6} != @once6 drop",
                # A connection whose SYN the kernel counted just before the wave, and which is still knocking (its
                # SYN dropped by the accept queue the flood had filled), is a first contact too if it is its
                # source's only one counted (not in `twice`): a sender that knocked in the flood's first fraction
                # of a second would otherwise wait for the common lane the flood holds (the lab's slow MTA over
                # IPv6, timed out at connect). A retransmission already shows a real TCP stack: not dropped.
                f"tcp dport @ports {syn} {local} ip saddr @gate4 {k4} != @proven4 {CONN4} @syn4 "
                f"{CONN4} != @fresh4 {k4} != @twice4 {k4} != @newsrc4 update @fresh4 {{ {CONN4} }} "
                f"update @newsrc4 {{ {k4} }}",
                f"tcp dport @ports {syn} {local} ip6 saddr @gate6 {k6} != @proven6 {CONN6} @syn6 "
                f"{CONN6} != @fresh6 {k6} != @twice6 {k6} != @newsrc6 update @fresh6 {{ {CONN6} }} "
                f"update @newsrc6 {{ {k6} }}",
            ]
            if sizes
            else []
        ),
        # A connection counts once: SYNs the client retransmits (same source, port and initial sequence number,
        # at 1, 3, 7, 15 s while a flood keeps the server from answering) would otherwise make a busy, patient
        # relay look five times as prolific as it is.
        # ... and once in all (ATTEMPTS): read between ticks, so a flood on an MTA that accepts at once (postscreen:
        # no accept queue fills) starts the wave within a poll, not at the next tick.
        # A source's second connection counted (and later ones) puts it in `twice`: it has a first contact behind it.
        # Counted in a set of its own (`once`, whose per-source limit is "over" from the second connection on), not
        # by looking the source up in `seen`: a lookup in a set whose elements carry counters counts the packet
        # again.
        f"tcp dport @ports {syn} {local} {CONN4} != @syn4 update @once4 {{ {k4} {TWICE} }} update @twice4 {{ {k4} }}",
        f"tcp dport @ports {syn} {local} {CONN6} != @syn6 update @once6 {{ {k6} {TWICE} }} update @twice6 {{ {k6} }}",
        # The count itself in the source's shard of `seen` (chains count4_0 ...).
        f"tcp dport @ports {syn} {local} {CONN4} != @syn4 counter name {ATTEMPTS} {_to_shard(4, k4)}",
        f"tcp dport @ports {syn} {local} {CONN6} != @syn6 counter name {ATTEMPTS} {_to_shard(6, k6)}",
        f"tcp dport @ports {syn} {local} update @syn4 {{ {CONN4} }}",
        f"tcp dport @ports {syn} {local} update @syn6 {{ {CONN6} }}",
    ]
    proof: list[str] = []
    if spec.proof:
        # The server's positive replies, counted per connection (client address and port): the limit is "over"
        # from the PROOF_REPLIES-th on, and only then is the source added to the proven set. While the wave's gate
        # is closed, a crowd (a source that opened several connections at once as a first contact, as a swarm's do)
        # needs CROWD_PROOF_REPLIES, counted in a set of its own (`talkc`): a proven source passes the budget and
        # the gate, and a flood's bots can hold a spam bot's dialogue up to DATA as cheaply as silence, then hold the
        # MTA outside the budget (the lab's `provers`: strangers 83%, as with no protection, the bots over the
        # budget for the whole flood). Not more for every source in a wave: a sender the host has never seen that
        # delivers during a wave must pass the budget with its next message (with no proof in a wave at all,
        # never-seen senders fell from 100% to 96% in ten scenarios, their second messages timed out at connect in
        # the common lane; with none for crowds, the lab's sender of two messages 0.9 s apart, a crowd). The three
        # rules split the replies so that each is counted once. A crowd's proof goes to `provenc`, pending: the
        # daemon moves it to `proven` after a probation it was not cut in (govern.proving), as it does a crowd's
        # proof by the log.
        pushed = f"tcp flags & (psh | syn | rst | fin) == psh @ih,0,8 {{ {PROOF_FIRST_BYTES} }}"
        count = f"limit rate over 1/hour burst {PROOF_REPLIES - 1} packets"
        d4, d6 = _key(4, spec.v4_len, "daddr"), _key(6, spec.v6_len, "daddr")
        crowd_count = f"limit rate over 1/hour burst {CROWD_PROOF_REPLIES - 1} packets"
        proof = []
        for v, addr, d in ((4, "ip daddr", d4), (6, "ip6 daddr", d6)):
            counted = f"update @talk{v} {{ {addr} . tcp dport {count} }}"
            crowd_counted = f"update @talkc{v} {{ {addr} . tcp dport {crowd_count} }}"
            # A source that lost its proof in a wave (govern.core.proof) is not proven again by its next dialogue
            # while the daemon holds it off.
            pushed_to = f"tcp sport @ports {pushed} {d} != @unproven{v} {addr}"
            proof += [
                f"{pushed_to} != @gate{v} {counted} update @proven{v} {{ {d} }}",
                f"{pushed_to} @gate{v} {d} != @crowd{v} {counted} update @proven{v} {{ {d} }}",
                f"{pushed_to} @gate{v} {d} @crowd{v} {crowd_counted} update @provenc{v} {{ {d} }}",
            ]
    # The verdicts, in chain `enforce`: one jump after the counting, so the port and the local-address lookups are
    # made once per packet, not again for each of the sets' parts.
    verdicts: list[str] = []
    if enforce:
        rules.append(f"tcp dport @ports {local} jump enforce")
        verdicts += [f"{m} drop" for v in (4, 6) for m in _lookups("block", v)]
        # Throttled: SYNs over the rate, per source group (a source is in one part of a kind, so one update a SYN).
        # Throttled during a wave: the same, at the wave's tighter rate.
        for kind, rate, over in (("throttle", "rate", limit), ("tight", "trate", tight)):
            for v, k in ((4, k4), (6, k6)):
                verdicts += [f"{syn} {m} update @{rate}{v} {{ {k} {over} }} drop" for m in _lookups(kind, v)]
        if spec.gate_rate:
            # The wave's gate (its sets hold 0.0.0.0/0 and ::/0 while a wave is on, with the wave's timeout): strangers
            # share one rate; proven sources pass (the Postfix log saw them deliver, or, where no log is followed,
            # the kernel counted a dialogue the MTA answered).
            gate = f"limit rate over {spec.gate_rate}/second burst {spec.gate_burst} packets"
            verdicts += [
                f"{syn} ip saddr @gate4 {k4} != @proven4 {gate} drop",
                f"{syn} ip6 saddr @gate6 {k6} != @proven6 {gate} drop",
            ]
    sets = [
        "set ports { type inet_service; }",
        "set allow4 { type ipv4_addr; flags interval; }",
        "set allow6 { type ipv6_addr; flags interval; }",
        "set gate4 { type ipv4_addr; flags interval,timeout; }",
        "set gate6 { type ipv6_addr; flags interval,timeout; }",
    ]
    for kind in KINDS:
        for v, typ in ((4, "ipv4_addr"), (6, "ipv6_addr")):
            for name in parts(kind, v):
                flags = "flags interval,timeout;" if name in INTERVAL_SETS else f"flags timeout; gc-interval {HASH_GC};"
                sets.append(f"set {name} {{ type {typ}; {flags} }}")
    for v, typ in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        dyn = f"size {SEEN_SIZE}; flags dynamic,timeout;"
        sets.append(f"set proven{v} {{ type {typ}; {dyn} timeout {PROVEN_TIMEOUT}; }}")
        sets.append(f"set unproven{v} {{ type {typ}; flags timeout; }}")  # each element the daemon's own timeout
        # A crowd's proof in a wave, pending: the daemon moves it to proven after a probation (govern.proving).
        sets.append(f"set provenc{v} {{ type {typ}; {dyn} timeout {PROVEN_TIMEOUT}; }}")
        sets.append(f"set talk{v} {{ type {typ} . inet_service; {dyn} timeout {TALK_TIMEOUT}; }}")
        sets.append(f"set talkc{v} {{ type {typ} . inet_service; {dyn} timeout {TALK_TIMEOUT}; }}")
        sets.append(f"set newsrc{v} {{ type {typ}; {dyn} timeout {NEWSRC_TIMEOUT}; }}")
        sets.append(f"set burst{v} {{ type {typ}; {dyn} timeout {AT_ONCE}; }}")
    for name in ("once", "twice", "crowd", "rate", "trate"):
        for v, typ in ((4, "ipv4_addr"), (6, "ipv6_addr")):
            sets.append(
                f"set {name}{v} {{ type {typ}; size {SEEN_SIZE}; flags dynamic,timeout; timeout {SEEN_TIMEOUT}; }}"
            )
    for v, typ in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        shard = f"size {SEEN_SIZE // SEEN_SHARDS}; flags dynamic,timeout; timeout {SEEN_TIMEOUT};"
        sets += [f"set {name} {{ type {typ}; {shard} }}" for name in seen_sets(v)]
    for name, conn in (("syn4", CONN4), ("syn6", CONN6), ("fresh4", CONN4), ("fresh6", CONN6)):
        sets.append(f"set {name} {{ typeof {conn}; size {SYN_SIZE}; flags dynamic,timeout; timeout {SYN_TIMEOUT}; }}")
    slots_pre, slots_out, admit, calm = _budget_rules(sizes, k4, k6, spec.budget_before_wave)
    hooked = (
        ("guard", "prerouting priority raw"),
        ("proof", "output priority raw"),
        # After conntrack: the budget's elements are conntrack ids.
        ("slots", "prerouting priority mangle"),
        ("slots_out", "output priority mangle"),
    )
    body = "\n".join(
        [
            f"add table {FAMILY} {TABLE}",
            *(f"add {s.replace('set ', f'set {FAMILY} {TABLE} ', 1)}" for s in sets),
            f"add counter {FAMILY} {TABLE} {ATTEMPTS}",
            *(f"add chain {FAMILY} {TABLE} {c} {{ type filter hook {h}; policy accept; }}" for c, h in hooked),
            *(f"add chain {FAMILY} {TABLE} {c}" for c in (*CHAINS, *COUNT_CHAINS)),
            # Converging an existing table: the rules and the port list are replaced, the sets keep their elements.
            *(f"flush chain {FAMILY} {TABLE} {c}" for c in (*(c for c, _h in hooked), *CHAINS, *COUNT_CHAINS)),
            # The budget's sets, once no rule uses them: made again where their size (the budget) changed.
            *(f"delete set {FAMILY} {TABLE} {name}" for name in resize),
            *(
                f"add set {FAMILY} {TABLE} {name} {{ typeof ct id; size {n}; flags dynamic,timeout; "
                f"timeout {SLOT_IDLE}; gc-interval {SLOT_GC}; }}"
                for name, n in sizes.items()
            ),
            # Sets of earlier versions that no rule uses any more (added first, so deleting them never fails).
            *(
                f"add set {FAMILY} {TABLE} known{v} {{ type {typ}; size {SEEN_SIZE}; flags dynamic,timeout; "
                "timeout 7d; }\n"
                f"delete set {FAMILY} {TABLE} known{v}"
                for v, typ in ((4, "ipv4_addr"), (6, "ipv6_addr"))
            ),
            # The counting set before its shards (its counts start again in them: a tick's worth of rates).
            *(
                f"add set {FAMILY} {TABLE} seen{v} {{ type {typ}; size {SEEN_SIZE}; flags dynamic,timeout; "
                f"timeout {SEEN_TIMEOUT}; }}\n"
                f"delete set {FAMILY} {TABLE} seen{v}"
                for v, typ in ((4, "ipv4_addr"), (6, "ipv6_addr"))
            ),
            # The shards before these (their counts start again in these: a tick's worth of rates).
            *(
                f"add set {FAMILY} {TABLE} seen{v}_{i} {{ type {typ}; size {SEEN_SIZE // OLD_SHARDS}; "
                f"flags dynamic,timeout; timeout {SEEN_TIMEOUT}; }}\n"
                f"delete set {FAMILY} {TABLE} seen{v}_{i}"
                for v, typ in ((4, "ipv4_addr"), (6, "ipv6_addr"))
                for i in range(OLD_SHARDS)
            ),
            f"flush set {FAMILY} {TABLE} ports",
            # The ports go in with a set statement, not `add element`: that command makes libnftables read every set
            # of the table first, block sets included (0.8-1.5 s at 100k blocks, against ~1 ms this way).
            f"add set {FAMILY} {TABLE} ports {{ type inet_service; elements = {{ {ports} }}; }}",
            *(f"add rule {FAMILY} {TABLE} guard {r}" for r in rules),
            *(f"add rule {FAMILY} {TABLE} proof {r}" for r in proof),
            *(f"add rule {FAMILY} {TABLE} slots {r}" for r in slots_pre),
            *(f"add rule {FAMILY} {TABLE} slots_out {r}" for r in slots_out),
            *(f"add rule {FAMILY} {TABLE} admit {r}" for r in admit),
            *(f"add rule {FAMILY} {TABLE} calm {r}" for r in calm),
            *(f"add rule {FAMILY} {TABLE} enforce {r}" for r in verdicts),
            *(
                f"add rule {FAMILY} {TABLE} {_count_chain(v, i)} update @{name} {{ {k} counter }}"
                for v, k in ((4, k4), (6, k6))
                for i, name in enumerate(seen_sets(v))
            ),
        ]
    )
    return body + "\n"
