"""The ruleset converges in place: applying it again with another port list replaces the ports (none left over)
and keeps the sets' elements, so a reload never lifts a block."""

from __future__ import annotations

import json

from govern import config
from govern.addr import Prefix
from govern.nft.libnft import Nft
from govern.nft.netlink import ElemOp, NftNetlink
from govern.nft.ruleset import INTERVAL_SETS, ruleset
from tests.netns import Netns, new_name, sh


def test_reapplying_with_other_ports_replaces_them_and_keeps_blocks() -> None:
    ns = Netns(new_name("rs"))
    sh("ip", "netns", "add", ns.name)
    try:
        with ns.entered():
            nft, nl = Nft(), NftNetlink()
        try:
            nft.run(ruleset(config.from_mapping({}).firewall()))
            nl.commit([ElemOp(True, "block4", Prefix.parse("198.18.0.7"), 600_000)], interval_sets=INTERVAL_SETS)
            for ports in ([25, 2525], [587], [25, 465, 587]):
                nft.run(ruleset(config.from_mapping({"protect": {"ports": ports}}).firewall()))
                out = json.loads(ns.sh("nft", "-j", "list", "set", "inet", "govern", "ports"))
                assert sorted(out["nftables"][1]["set"]["elem"]) == sorted(ports)
                assert "198.18.0.7" in ns.sh("nft", "list", "set", "inet", "govern", "block4")
        finally:
            nl.close()
            nft.close()
    finally:
        sh("ip", "netns", "del", ns.name, check=False)
