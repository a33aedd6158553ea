"""The `gobgp` export format against a real GoBGP (Debian's gobgpd) in a namespace: every generated command is
accepted, and the RIB then holds the FlowSpec rules (and RTBH routes) for exactly the exported sources."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from govern import config
from govern.addr import Prefix, PrefixSet
from govern.export.formats import Target, render
from govern.export.select import ExportPolicy, Selection, select
from govern.model import Block
from tests.netns import Netns, new_name, sh

NOW = 1_700_000_000.0


@pytest.fixture
def gobgpd(tmp_path: Path) -> Iterator[Netns]:
    ns = Netns(new_name("gobgp"))
    sh("ip", "netns", "add", ns.name)
    conf = tmp_path / "gobgpd.toml"
    conf.write_text('[global.config]\n  as = 64512\n  router-id = "203.0.113.25"\n  port = -1\n')
    proc = None
    try:
        ns.sh("ip", "link", "set", "lo", "up")
        with open(tmp_path / "gobgpd.log", "wb") as log:  # the child has its own copy of the descriptor
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns.name, "gobgpd", "-f", str(conf), "--api-hosts", "127.0.0.1:50051"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while ns.sh("gobgp", "global", check=False).find("64512") < 0:
            assert time.monotonic() < deadline, (tmp_path / "gobgpd.log").read_text()
            time.sleep(0.2)
        yield ns
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        sh("ip", "netns", "del", ns.name, check=False)


def selection() -> tuple[Selection, Target]:
    blocks = [
        Block(Prefix.parse("198.18.0.0/24"), "swarm", NOW - 3600, NOW + 3600, 3),
        Block(Prefix.parse("198.18.9.7"), "hog", NOW - 3600, NOW + 3600, 2),
        Block(Prefix.parse("2001:db8:bad:1::/64"), "hog", NOW - 3600, NOW + 3600, 2),
    ]
    pol = ExportPolicy.from_config(config.from_mapping({})["export"])
    sel = select(blocks, PrefixSet(), (), pol, NOW)
    target = Target((Prefix.parse("203.0.113.25"), Prefix.parse("2001:db8:25::25")), (25, 587))
    return sel, target


def run_all(ns: Netns, text: str) -> None:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines and all(line.startswith("gobgp ") for line in lines)
    for line in lines:
        r = subprocess.run(["ip", "netns", "exec", ns.name, "sh", "-c", line], capture_output=True, text=True)
        assert r.returncode == 0, (line, r.stderr)


def test_gobgp_flowspec_commands_are_accepted_and_land_in_the_rib(gobgpd: Netns) -> None:
    sel, target = selection()
    run_all(gobgpd, render("gobgp", sel, target, NOW))
    v4 = gobgpd.sh("gobgp", "global", "rib", "-a", "ipv4-flowspec")
    v6 = gobgpd.sh("gobgp", "global", "rib", "-a", "ipv6-flowspec")
    for src in ("198.18.0.0/24", "198.18.9.7/32"):
        assert f"[destination: 203.0.113.25/32][source: {src}][protocol: ==tcp][destination-port: ==25 ==587]" in v4
    assert "discard" in v4 and v4.count("[source: ") == 2
    assert "[source: 2001:db8:bad:1::/64/0]" in v6 and v6.count("[source: ") == 1


def test_gobgp_rtbh_routes_carry_the_blackhole_community(gobgpd: Netns) -> None:
    sel, target = selection()
    rtbh = Target(target.destinations, target.ports, rtbh=True)
    run_all(gobgpd, render("gobgp", sel, rtbh, NOW))
    v4 = gobgpd.sh("gobgp", "global", "rib", "-a", "ipv4")
    assert "198.18.0.0/24" in v4 and "198.18.9.7/32" in v4 and v4.count("blackhole, no-export") == 2
    assert "2001:db8:bad:1::/64" in gobgpd.sh("gobgp", "global", "rib", "-a", "ipv6")
