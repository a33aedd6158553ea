"""The iptables+ipset backend's sets: large enough for a flood (ipset's default limit is 65,536 elements), sets of
an earlier version's form made anew in place at set-up with every block they held (`ipset swap`), and the element
messages the backend sends each tick over netlink instead of an `ipset restore` process."""

from __future__ import annotations

import subprocess
import time

import pytest

from govern.addr import Prefix
from govern.config import from_mapping
from govern.errors import KernelError
from govern.ipt import ipset, rules
from govern.ipt.backend import IptBackend
from govern.ipt.netlink import IpsetNetlink, Op
from govern.model import Action, ActionKind, FirewallSpec, Plan, State
from tests.kernel.test_backend_contract import passes
from tests.netns import Lab

P = Prefix.parse


def test_a_block_set_of_the_old_limit_is_made_anew_with_its_blocks(served: Lab) -> None:
    lab, now = served, time.time()
    spec = from_mapping({"protect": {"ports": [25]}}).firewall()
    # The form before: ipset's default limit of 65,536, two blocks in it.
    lab.mx.sh("ipset", "create", "govern-block4", "hash:net", "family", "inet", "timeout", "0")
    lab.mx.sh("ipset", "add", "govern-block4", "198.18.0.7", "timeout", "600")
    lab.mx.sh("ipset", "add", "govern-block4", "198.18.1.0/24", "timeout", "0")
    with lab.mx.entered():
        backend = IptBackend()
    try:
        with lab.mx.entered():
            adopted = backend.setup(spec, [], State(), now)
            assert {a.prefix for a in adopted.actions} == {P("198.18.0.7"), P("198.18.1.0/24")}
            header = ipset.headers()["govern-block4"]
            assert header[0] == "hash:net" and header[header.index("maxelem") + 1] == str(rules.MAX_ELEMENTS)
            kept = {e.prefix: e.timeout_s for e in ipset.save("govern-block4")}
            assert 590 <= kept[P("198.18.0.7")] <= 600 and kept[P("198.18.1.0/24")] == 0
            assert "govern-block4-new" not in ipset.names()
        assert not passes(lab, "198.18.0.7") and not passes(lab, "198.18.1.9") and passes(lab, "198.18.0.8")
        with lab.mx.entered():
            # Past the old limit, in one plan.
            many = [Prefix(4, P("10.0.0.0").value + i, 32) for i in range(70_000)]
            backend.apply(Plan(tuple(Action(ActionKind.BLOCK, p, "test", until=now + 600) for p in many)), now)
            assert len(ipset.save("govern-block4")) == 70_002
            # A second set-up finds every set as it makes it: nothing made anew (the counting sets keep their counts).
            assert backend.setup(spec, [], State(), now).actions
            assert converged_nothing(spec) and "govern-block4-new" not in ipset.names()
    finally:
        with lab.mx.entered():
            backend.teardown()
        backend.close()


def test_differs_compares_type_and_the_options_a_create_line_names() -> None:
    line = "create govern-block4 hash:net family inet timeout 0 maxelem 4194304"
    old = ("hash:net", "family", "inet", "hashsize", "1024", "maxelem", "65536", "timeout", "0", "bucketsize", "12")
    new = ("hash:net", "family", "inet", "hashsize", "4096", "maxelem", "4194304", "timeout", "0", "bucketsize", "12")
    assert ipset.differs(line, old) and not ipset.differs(line, new)
    assert ipset.differs(line, ("hash:ip", *new[1:]))
    # As `ipset list -t` shows the counting sets: `netmask 32` is the default, left out.
    seen = "create govern-seen4 hash:ip family inet netmask 32 counters timeout 120 maxelem 262144"
    have = ("hash:ip", "family", "inet", "hashsize", "1024", "maxelem", "262144", "timeout", "120")
    assert ipset.differs(seen, have) and not ipset.differs(seen, (*have, "counters"))
    seen6 = "create govern-seen6 hash:ip family inet6 netmask 64 counters timeout 120 maxelem 262144"
    have6 = ("hash:ip", "family", "inet6", "maxelem", "262144", "netmask", "64", "timeout", "120", "counters")
    assert not ipset.differs(seen6, have6) and ipset.differs(seen6.replace("64", "56"), have6)


def converged_nothing(spec: FirewallSpec) -> bool:
    """Whether every set of the ruleset is found as its create line makes it (call inside the namespace)."""
    have = ipset.headers()
    return not any(ipset.differs(line, have[line.split()[1]]) for line in rules.ipset_create(spec))


def test_element_messages_mean_what_ipset_restore_exist_means(lab: Lab) -> None:
    """govern/ipt/netlink.py against the kernel: adds (with and without timeouts), a re-add replacing the timeout,
    deletes (of what is there and of what is not), runs longer than one message, and refusals named."""
    lab.mx.sh("ipset", "create", "t4", "hash:net", "family", "inet", "timeout", "0", "maxelem", "70000")
    lab.mx.sh("ipset", "create", "t6", "hash:net", "family", "inet6", "timeout", "0")
    lab.mx.sh("ipset", "create", "full", "hash:net", "family", "inet", "maxelem", "2")
    with lab.mx.entered():
        nl = IpsetNetlink()
    try:
        with lab.mx.entered():
            many = [Op(True, "t4", Prefix(4, P("10.0.0.0").value + i, 32), 600) for i in range(60_000)]
            nl.apply([*many, Op(True, "t4", P("198.18.1.0/24")), Op(True, "t6", P("2001:db8:bad::/64"), 30)])
            got = {e.prefix: e.timeout_s for e in ipset.save("t4")}
            assert len(got) == 60_001 and got[P("198.18.1.0/24")] == 0 and 590 <= got[P("10.0.0.7")] <= 600
            assert [(e.prefix, e.timeout_s > 25) for e in ipset.save("t6")] == [(P("2001:db8:bad::/64"), True)]
            nl.apply(
                [Op(True, "t4", P("10.0.0.7"), 5000), Op(False, "t4", P("10.0.0.8")), Op(False, "t4", P("9.9.9.9"))]
            )
            got = {e.prefix: e.timeout_s for e in ipset.save("t4")}
            assert got[P("10.0.0.7")] > 4000 and P("10.0.0.8") not in got and len(got) == 60_000
            with pytest.raises(KernelError, match=r"cannot add 2001:db8::1 to set t4: protocol error"):
                nl.apply([Op(True, "t4", P("2001:db8::1"))])
            with pytest.raises(
                KernelError, match=r"cannot add one of 3 elements from 198.18.0.1 on to set full: .*full"
            ):
                nl.apply([Op(True, "full", P(f"198.18.0.{i}")) for i in (1, 2, 3)])
            with pytest.raises(KernelError, match="nosuch"):
                nl.apply([Op(False, "nosuch", P("198.18.0.1"))])
            # The socket goes on after refusals.
            nl.apply([Op(False, "t6", P("2001:db8:bad::/64"))])
            assert ipset.save("t6") == []
    finally:
        nl.close()


def test_the_per_tick_reads_over_netlink_say_what_ipset_says(lab: Lab) -> None:
    """The set names and a set's elements with timeouts and packet counters, as the iptables backend reads them every
    tick (govern/ipt/netlink.py), against `ipset list -n` and `ipset save`, across many dump messages; a missing set
    is an error that names it."""
    lab.mx.sh("ipset", "create", "c4", "hash:net", "family", "inet", "timeout", "600", "counters", "maxelem", "70000")
    lab.mx.sh("ipset", "create", "c6", "hash:net", "family", "inet6", "timeout", "600", "counters")
    lab.mx.sh("ipset", "create", "plain", "hash:ip")
    lines = [f"add c4 10.0.{i >> 8}.{i & 255} timeout {100 + i % 400} packets {i}" for i in range(20_000)]
    lines += ["add c4 198.18.0.0/16 timeout 50", "add c6 2001:db8:bad:1::/64 timeout 70 packets 9"]
    lines += ["add plain 192.0.2.1"]
    subprocess.run(
        ["ip", "netns", "exec", lab.mx.name, "ipset", "restore"], input="\n".join(lines) + "\n", text=True, check=True
    )
    with lab.mx.entered():
        nl = IpsetNetlink()
    try:
        with lab.mx.entered():
            assert sorted(nl.names()) == sorted(ipset.names()) == ["c4", "c6", "plain"]
            for name in ("c4", "c6", "plain"):
                ours, theirs = nl.elements(name), ipset.save(name)
                assert {(e.prefix, e.packets) for e in ours} == {(e.prefix, e.packets) for e in theirs}
                left = {e.prefix: e.timeout_s for e in theirs}
                assert all(abs(e.timeout_s - left[e.prefix]) <= 1 for e in ours)
            assert len(nl.elements("c4")) == 20_001
            with pytest.raises(KernelError, match="listing ipset gone"):
                nl.elements("gone")
    finally:
        nl.close()
