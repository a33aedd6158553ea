"""Elements of govern's ipsets over nfnetlink (NFNL_SUBSYS_IPSET): the iptables backend's per-tick path, no process.

This module owns adding and deleting elements of existing sets as messages to the kernel's ipset core: their layout
(linux/netfilter/ipset/ip_set.h), all of one plan in one sendmsg, and what the acks and ipset's own error codes
mean; and the per-tick reads: the names of the sets there are, and a set's elements with their timeouts and packet
counters (IPSET_CMD_LIST dumps, as `ipset list -n` and `ipset save` ask for them). Creating, swapping and
destroying sets stay with the `ipset` command (govern/ipt/ipset.py): they happen at set-up, where a process does
not matter.

Layout, as `ipset restore` sends it (ipset 7.17, protocol 7): one IPSET_CMD_ADD or IPSET_CMD_DEL message per run of
ops on one set, carrying IPSET_ATTR_PROTOCOL, IPSET_ATTR_SETNAME and IPSET_ATTR_ADT, a list of IPSET_ATTR_DATA
(each: IPSET_ATTR_IP with the address in network order, IPSET_ATTR_CIDR, IPSET_ATTR_TIMEOUT in seconds, network
order), and IPSET_ATTR_LINENO, without which the kernel refuses a list (its value is a restore's line number, for
its own error reports; 0 here). nla_len is u16: a long run is split over several messages below 64 KiB each.

Kernel behaviour (Linux 6.18, tests/kernel/test_ipset.py): without NLM_F_EXCL a message has `-exist`'s meaning:
adding an element that is there replaces its timeout, deleting one that is not there succeeds. ipset has no
transactions: each message applies on its own, up to the element it refuses. Every op is made unable to fail
(releases of held elements, adds below the sets' limit), as with `ipset restore`.
"""

from __future__ import annotations

import bisect
import itertools
import socket
from collections.abc import Sequence
from typing import NamedTuple

from govern import netlink
from govern.addr import Prefix
from govern.netlink import NLA_F_NESTED, NLM_F_ACK, NLM_F_REQUEST, NLMSG_HDRLEN, NetlinkError, NlError

NETLINK_NETFILTER = 12
NFNL_SUBSYS_IPSET = 6
IPSET_PROTOCOL = 7
IPSET_CMD_LIST = 7
IPSET_CMD_ADD = 9
IPSET_CMD_DEL = 10
IPSET_ATTR_PROTOCOL = 1
IPSET_ATTR_SETNAME = 2
IPSET_ATTR_FLAGS = 6
IPSET_ATTR_DATA = 7
IPSET_ATTR_ADT = 8
IPSET_ATTR_LINENO = 9
IPSET_ATTR_IP = 1
IPSET_ATTR_CIDR = 3
IPSET_ATTR_TIMEOUT = 6
IPSET_ATTR_PACKETS = 25
IPSET_FLAG_LIST_SETNAME = 1 << 1  # a dump of the sets' names only
IPSET_ATTR_IPADDR_IPV4 = 1
IPSET_ATTR_IPADDR_IPV6 = 2
NLA_F_NET_BYTEORDER = 0x4000
# The largest timeout ipset takes (seconds); a longer block is re-asserted by the daemon's extend before it lapses.
MAX_TIMEOUT_S = 2147483
MAX_ADT_ATTR = 0xFFFF
# ipset's own error numbers (ip_set.h, ip_set_hash.h), as the kernel reports them in an NLMSG_ERROR.
ERRORS = {
    4097: "protocol error (the kernel's ipset does not take this message)",
    4102: "the element's type does not fit the set",
    4103: "the element is already added, or is not there",
    4104: "a prefix length the set does not take",
    4106: "the set's family does not fit the address",
    4107: "the set has no timeouts",
    4352: "the set is full (its maxelem)",
    4353: "a prefix length the set cannot hold more of",
}


class Op(NamedTuple):
    """One element change."""

    add: bool
    set: str
    prefix: Prefix
    timeout_s: int = 0  # 0: the set's default (ignored for deletes)


def data(op: Op) -> bytes:
    """The IPSET_ATTR_DATA of one op."""
    p = op.prefix
    kind = IPSET_ATTR_IPADDR_IPV4 if p.version == 4 else IPSET_ATTR_IPADDR_IPV6
    addr = netlink.attr(NLA_F_NESTED | IPSET_ATTR_IP, netlink.attr(NLA_F_NET_BYTEORDER | kind, p.packed()))
    body = addr + netlink.attr(IPSET_ATTR_CIDR, bytes((p.length,)))
    if op.add and op.timeout_s:
        seconds = min(max(op.timeout_s, 1), MAX_TIMEOUT_S)
        body += netlink.attr(NLA_F_NET_BYTEORDER | IPSET_ATTR_TIMEOUT, seconds.to_bytes(4, "big"))
    return netlink.attr(NLA_F_NESTED | IPSET_ATTR_DATA, body)


class Element(NamedTuple):
    """An element of a set as the kernel lists it."""

    prefix: Prefix
    timeout_s: int  # seconds left; 0 in a set without timeouts
    packets: int  # 0 in a set without counters


def _request(name: str, flags: int = 0) -> bytes:
    """An IPSET_CMD_LIST request (its netlink flags and sequence number are the dump's): of set `name`, or of every
    set with `flags`."""
    body = bytes((socket.AF_UNSPEC, 0, 0, 0)) + netlink.attr(IPSET_ATTR_PROTOCOL, bytes((IPSET_PROTOCOL,)))
    if name:
        body += netlink.strz(IPSET_ATTR_SETNAME, name)
    if flags:
        body += netlink.attr(NLA_F_NET_BYTEORDER | IPSET_ATTR_FLAGS, flags.to_bytes(4, "big"))
    return netlink.nlmsg((NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_LIST, 0, 0, body)


def _element(buf: netlink.Buffer, start: int, end: int) -> Element | None:
    """One IPSET_ATTR_DATA of a listing's IPSET_ATTR_ADT."""
    addr: bytes | None = None
    cidr = timeout = packets = 0
    for atype, lo, hi in netlink.attrs(buf, start, end):
        if atype == IPSET_ATTR_IP:
            for kind, alo, ahi in netlink.attrs(buf, lo, hi):
                if kind in (IPSET_ATTR_IPADDR_IPV4, IPSET_ATTR_IPADDR_IPV6):
                    addr = bytes(buf[alo:ahi])
        elif atype == IPSET_ATTR_CIDR:
            cidr = buf[lo]
        elif atype == IPSET_ATTR_TIMEOUT:
            timeout = int.from_bytes(buf[lo:hi], "big")
        elif atype == IPSET_ATTR_PACKETS:
            packets = int.from_bytes(buf[lo:hi], "big")
    if addr is None:
        return None
    bits = len(addr) * 8
    return Element(Prefix(4 if bits == 32 else 6, int.from_bytes(addr, "big"), cidr or bits), timeout, packets)


class Message(NamedTuple):
    seq: int
    op: Op  # the first op of the message, to name in an error
    elements: int


def encode(ops: Sequence[Op], seq: int) -> tuple[bytes, list[Message]]:
    """Every op as messages of one sendmsg, in order; sequence numbers from `seq`."""
    out: list[bytes] = []
    messages: list[Message] = []
    for (add, name), run in itertools.groupby(ops, key=lambda o: (o.add, o.set)):
        batch = list(run)
        records = [data(o) for o in batch]
        starts = [0, *itertools.accumulate(map(len, records))]
        head = netlink.attr(IPSET_ATTR_PROTOCOL, bytes((IPSET_PROTOCOL,))) + netlink.strz(IPSET_ATTR_SETNAME, name)
        # A list of elements (IPSET_ATTR_ADT) must come with a line number, whatever its value (a restore's).
        head += netlink.attr(NLA_F_NET_BYTEORDER | IPSET_ATTR_LINENO, bytes(4))
        mtype = (NFNL_SUBSYS_IPSET << 8) | (IPSET_CMD_ADD if add else IPSET_CMD_DEL)
        lo = 0
        while lo < len(records):
            hi = max(bisect.bisect_right(starts, starts[lo] + MAX_ADT_ATTR - 4) - 1, lo + 1)
            adt = netlink.attr(NLA_F_NESTED | IPSET_ATTR_ADT, b"".join(records[lo:hi]))
            # nfgenmsg: the family is not read for element messages; version 0; res_id 0.
            body = bytes((socket.AF_INET, 0, 0, 0)) + head + adt
            out.append(netlink.nlmsg(mtype, NLM_F_REQUEST | NLM_F_ACK, seq, body))
            messages.append(Message(seq, batch[lo], hi - lo))
            seq += 1
            lo = hi
    return b"".join(out), messages


class IpsetNetlink:
    """A NETLINK_NETFILTER socket for ipset's element messages, in the network namespace it was opened in."""

    def __init__(self) -> None:
        self._nl = netlink.NetlinkSocket(
            NETLINK_NETFILTER, "ipset", rcvbuf=1 << 20, recv_size=1 << 16, ext_ack=True, timeout_s=30
        )

    def close(self) -> None:
        self._nl.close()

    def names(self) -> list[str]:
        """The names of every set in this namespace (`ipset list -n`)."""
        out: list[str] = []

        def feed(buf: netlink.Buffer, n: int) -> bool:
            for off, ln, mtype, _flags in netlink.walk(buf, n, "listing the ipsets"):
                if mtype >> 8 == NFNL_SUBSYS_IPSET:
                    at = netlink.find_attr(buf, off + NLMSG_HDRLEN + 4, off + ln, IPSET_ATTR_SETNAME)
                    if at >= 0:
                        length = int.from_bytes(buf[at : at + 2], "little")
                        out.append(bytes(buf[at + 4 : at + length]).rstrip(b"\0").decode())
                else:
                    return True
            return False

        self._nl.dump(_request("", IPSET_FLAG_LIST_SETNAME), feed, "listing the ipsets")
        return out

    def elements(self, name: str) -> list[Element]:
        """Every element of set `name` with its timeout and packet counter (`ipset save NAME`); a set that is not
        there raises NetlinkError (ENOENT)."""
        out: list[Element] = []
        what = f"listing ipset {name}"

        def feed(buf: netlink.Buffer, n: int) -> bool:
            for off, ln, mtype, _flags in netlink.walk(buf, n, what):
                if mtype >> 8 != NFNL_SUBSYS_IPSET:
                    return True
                for atype, lo, hi in netlink.attrs(buf, off + NLMSG_HDRLEN + 4, off + ln):
                    if atype == IPSET_ATTR_ADT:
                        for kind, dlo, dhi in netlink.attrs(buf, lo, hi):
                            e = _element(buf, dlo, dhi) if kind == IPSET_ATTR_DATA else None
                            if e is not None:
                                out.append(e)
            return False

        self._nl.dump(_request(name), feed, what)
        return out

    def apply(self, ops: Sequence[Op]) -> None:
        """Send every op in one sendmsg and wait for each message's ack; a refusal raises KernelError naming the
        set and the first op of the refused message (the ops before it, and other messages, stay applied)."""
        if not ops:
            return
        seq = self._nl.next_seq(len(ops))
        data_, messages = encode(ops, seq)
        what = f"{len(ops)} ipset element changes"
        self._nl.send(data_, what)
        pending = {m.seq for m in messages}
        errors: list[NlError] = []
        while pending:
            for e in self._nl.read_acks(what):
                if e.seq in pending:
                    pending.discard(e.seq)
                    if e.errno:
                        errors.append(e)
        self._nl.dirty = False
        if errors:
            first = min(errors, key=lambda e: e.seq)
            m = next(m for m in messages if m.seq == first.seq)
            verb, prep = ("add", "to") if m.op.add else ("delete", "from")
            reason = ERRORS.get(first.errno) or netlink.strerror(first.errno)
            more = f"; {len(errors) - 1} more message(s) refused" if len(errors) > 1 else ""
            which = f"{m.op.prefix}" if m.elements == 1 else f"one of {m.elements} elements from {m.op.prefix} on"
            text = f"ipset: cannot {verb} {which} {prep} set {m.op.set}: {reason}"
            raise NetlinkError(text + more, first.errno)
