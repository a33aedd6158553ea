"""The XDP program (bpf/govern_xdp.c) on the veth of a namespace MX, loaded through govern.xdp.loader.

Its maps are pinned on a bpffs mounted for the test alone (the `pin_root` fixture of conftest.py), so nothing
outside the test's namespaces and mount is touched.
"""

from __future__ import annotations

import ctypes
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from govern.addr import Prefix
from govern.wiring import DEFAULT_OBJECT
from govern.xdp.loader import XdpProgram, unpin
from tests.kernel.daemon_harness import govern, running, write_config
from tests.netns import MX4, MX6, Lab, Listener, connect

P = Prefix.parse
SOURCE = Path(__file__).parents[2] / "bpf" / "govern_xdp.c"
DROP_TIMEOUT = 0.6


def mx_iface(lab: Lab) -> str:
    return f"v{lab.mx.name[-6:]}m"


@pytest.fixture
def xdp(lab: Lab, pin_root: str) -> Iterator[XdpProgram]:
    with lab.mx.entered():
        prog = XdpProgram(str(DEFAULT_OBJECT), pin_root)
        try:
            prog.set_ports([25])
            prog.attach([mx_iface(lab)])
            yield prog
        finally:
            prog.detach()
            prog.close()
            unpin(pin_root)


def passes(lab: Lab, src: str, port: int = 25) -> bool:
    with lab.net.entered():
        try:
            connect(src, MX6 if ":" in src else MX4, port, timeout=DROP_TIMEOUT).close()
        except TimeoutError:
            return False
    return True


def test_blocked_sources_dropped_at_xdp_and_allow_wins(lab: Lab, xdp: XdpProgram) -> None:
    listener = Listener(lab.mx, 25)
    try:
        xdp.update("block", [P("198.18.1.0/24"), P("2001:db8:bad:1::/64")])
        xdp.update("allow", [P("198.18.1.77")])
        before = xdp.stats()
        assert not passes(lab, "198.18.1.5")
        assert not passes(lab, "2001:db8:bad:1::5")
        accepted = listener.accepted
        assert passes(lab, "198.18.1.77"), "an allowlisted address inside a blocked /24 was dropped"
        assert passes(lab, "198.18.2.5")
        after = xdp.stats()
        deadline = time.monotonic() + 5
        while listener.accepted < accepted + 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert listener.accepted == accepted + 2, "the listener saw something other than the passed connections"
        # One SYN of each refused connect is certain; a retransmission may follow inside the timeout.
        assert after["drop_block"][0] - before["drop_block"][0] >= 2
        assert after["pass_allow"][0] > before["pass_allow"][0]
        assert xdp.prefixes("block") == {P("198.18.1.0/24"), P("2001:db8:bad:1::/64")}
        xdp.update("block", [], [P("198.18.1.0/24")])
        assert passes(lab, "198.18.1.5"), "a released prefix is still dropped"
    finally:
        listener.close()


def test_hosts_and_ipv6_64s_are_blocked_through_the_hash_maps(lab: Lab, xdp: XdpProgram) -> None:
    """Hosts and IPv6 /64s live in hash maps (O(1) to add, whatever is held), other prefixes in the tries; the
    allowlist still wins, and a lapsed host entry leaves a live covering prefix in force."""
    from govern.libbpf import lib
    from govern.xdp import maps

    listener = Listener(lab.mx, 25)
    try:
        host4, host6, wide = P("198.18.5.5"), P("2001:db8:bad:7::5"), P("198.18.6.0/24")
        net64 = P("2001:db8:bad:8::/64")
        xdp.update("block", {host4: 0.0, host6: 0.0, net64: 0.0, wide: 0.0, P("198.18.6.9"): 1.0})
        assert {maps.block_key(p)[0] for p in (host4, host6, net64, wide)} == {"host4", "host6", "net6", "block4"}
        assert len(xdp._keys("host4", maps.Host4)) == 2 and len(xdp._keys("net6", maps.Net64)) == 1
        assert xdp.prefixes("block") == {host4, host6, net64, wide, P("198.18.6.9")}
        assert not passes(lab, "198.18.5.5")
        assert not passes(lab, "2001:db8:bad:7::5")
        assert not passes(lab, "2001:db8:bad:8::77")  # inside the /64
        assert passes(lab, "2001:db8:bad:9::5")  # the next /64
        assert passes(lab, "198.18.5.6")
        time.sleep(1.1)
        assert not passes(lab, "198.18.6.9"), "a lapsed host entry lifted the live /24 that covers it"
        xdp.update("allow", [P("198.18.5.5")])
        assert passes(lab, "198.18.5.5"), "the allowlist did not win over a host block"
        xdp.update("allow", [], [P("198.18.5.5")])
        xdp.update("block", [], [host4, net64])
        assert passes(lab, "198.18.5.5") and passes(lab, "2001:db8:bad:8::77"), "a released block still drops"
        # Maps pinned by an earlier version held hosts in the tries: tidy moves them out, the caller writes them back.
        old = maps.lpm_key(P("198.18.5.7"))
        value = maps.BlockValue(0)
        fd = xdp.fds["block4"]
        assert lib().bpf_map_update_elem(fd, ctypes.byref(old), ctypes.byref(value), 0) == 0
        assert xdp.tidy() == 1
        assert not any(k.prefixlen == 32 for k in xdp._keys("block4", maps.Lpm4))
    finally:
        listener.close()


def test_syn_counter_matches_the_syns_sent(lab: Lab, xdp: XdpProgram) -> None:
    listener = Listener(lab.mx, 25)
    try:
        for _ in range(7):
            assert passes(lab, "198.51.100.10")
        for _ in range(3):
            assert passes(lab, "2001:db8:51::10")
        counts = xdp.syn_counts()
        assert counts[P("198.51.100.10")] == 7
        assert counts[P("2001:db8:51::10")] == 3
        # Read in batches and counted per source group, as the daemon's protect.ipv4_prefix / ipv6_prefix ask.
        assert passes(lab, "198.51.100.11") and passes(lab, "2001:db8:51::11")
        assert dict(xdp.syn_counts(24, 64)) == {P("198.51.100.0/24"): 8, P("2001:db8:51::/64"): 4}
    finally:
        listener.close()


def test_other_ports_are_not_touched(lab: Lab, xdp: XdpProgram) -> None:
    listener = Listener(lab.mx, 2525)
    try:
        xdp.update("block", [P("198.18.1.0/24")])
        assert passes(lab, "198.18.1.5", 2525)
        assert P("198.18.1.5") not in xdp.syn_counts()
    finally:
        listener.close()


def test_a_block_lapses_in_xdp_by_itself_at_its_expiry(lab: Lab, xdp: XdpProgram) -> None:
    """No daemon involved: the program compares the block's expiry with the kernel's clock."""
    listener = Listener(lab.mx, 25)
    try:
        xdp.update("block", {P("198.18.3.0/24"): 2.0, P("198.18.4.0/24"): 0.0})  # 0: never lapses
        t0 = time.monotonic()
        assert not passes(lab, "198.18.3.5")
        while time.monotonic() - t0 < 2.2:
            time.sleep(0.1)
        assert passes(lab, "198.18.3.5"), "a lapsed block still dropped"
        assert not passes(lab, "198.18.4.5")
        assert P("198.18.3.0/24") in xdp.prefixes("block")  # the entry stays until the daemon releases it
    finally:
        listener.close()


def test_govern_run_with_the_xdp_backend_drops_blocked_sources_at_xdp(lab: Lab, pin_root: str, tmp_path: Path) -> None:
    """The daemon, on `[backend] xdp = true`, mirrors `govern block` into the XDP maps; the drop happens there."""
    iface = mx_iface(lab)
    extra = f'[backend]\nxdp = true\nxdp_interfaces = ["{iface}"]\nxdp_pin_root = "{pin_root}"\n'
    cfg = write_config(tmp_path, extra)
    listener = Listener(lab.mx, 25)
    try:
        with running(lab.mx, cfg) as d:
            assert d.status()["backend"] == "xdp+nftables"
            assert "xdp" in lab.mx.sh("ip", "-d", "link", "show", "dev", iface)
            r = govern(lab.mx, "block", "198.18.1.0/24", "--for", "10m", "--config", str(cfg))
            assert r.returncode == 0, r.stderr
            with lab.mx.entered():
                seen = XdpProgram(str(DEFAULT_OBJECT), pin_root)  # the daemon's pinned maps, opened again
            try:
                assert P("198.18.1.0/24") in seen.prefixes("block")
                before = seen.stats()["drop_block"][0]
                assert not passes(lab, "198.18.1.5")
                assert passes(lab, "192.0.2.10") and passes(lab, "198.18.2.5")
                assert seen.stats()["drop_block"][0] > before, "the blocked SYN was not dropped at XDP"
            finally:
                seen.close()
            assert govern(lab.mx, "teardown", "--config", str(cfg)).returncode == 0
        assert "xdp" not in lab.mx.sh("ip", "-d", "link", "show", "dev", iface).split("link/ether")[0]
    finally:
        listener.close()


def test_the_object_built_from_source_loads_as_the_shipped_one_does(lab: Lab, pin_root: str) -> None:
    """The package carries the built object (no compiler on an MX host); the source in bpf/ builds and loads too."""
    subprocess.run(["make", "-s", "-C", str(SOURCE.parent), "govern_xdp.o"], check=True)
    with lab.mx.entered():
        prog = XdpProgram(str(SOURCE.parent / "govern_xdp.o"), pin_root)
        try:
            prog.attach([mx_iface(lab)])
            prog.update("block", [P("198.18.1.0/24")])
            assert P("198.18.1.0/24") in prog.prefixes("block")
        finally:
            prog.detach()
            prog.close()
            unpin(pin_root)
