"""The flood lab in CI: a real Postfix under the prolific bot flood with govern on its default config plus the
lab's allowlist. The scenario must run end to end and report; during the flood, legitimate delivery and the trusted
relay's must stay at 90% or better (absolute: stricter than 90% of a baseline, which delivers at most everything, so
CI spares the baseline's minute), govern must block the flood's prolific sources, and neither the trusted relay nor
a legitimate sender may ever appear in a govern set (blocks, throttles, tarpits).
"""

from __future__ import annotations

import json
from pathlib import Path

from govern.addr import Prefix, PrefixSet
from govern_lab import scenario


def test_short_flood_with_govern_blocks_bots_and_never_touches_trusted_or_legit(tmp_path: Path) -> None:
    (res,) = scenario.run_all(tmp_path, ("flood+govern",), scenario.Plan.short())
    out = tmp_path / "flood-govern"
    assert json.loads((out / "result.json").read_text())["scenario"] == "flood+govern"
    assert (out / "timeline.png").read_bytes().startswith(b"\x89PNG")
    print((tmp_path / "table.txt").read_text())
    # The flood was real: its hogs wanted many times the MTA's 50 processes and tried again and again, and most of
    # their attempts found no room (govern's slot budget caps strangers from the flood's first packet, so the
    # accept queue no longer overflows as it did without the cap); legitimate mail kept being attempted throughout.
    hogs = [b for name, b in res.bots.items() if name.endswith("-hogs")]
    assert sum(b["connections_wanted"] for b in hogs) >= 500
    assert sum(b["timeouts"] for b in hogs) > 5 * sum(b["established"] for b in hogs), hogs
    assert res.legit["attempted"] >= 100 and res.trusted["attempted"] >= 50
    # The guard: legitimate mail still flows during the flood.
    assert res.legit["success"] is not None and res.legit["success"] >= 0.9, res.legit
    assert res.trusted["success"] is not None and res.trusted["success"] >= 0.9, res.trusted
    # govern blocked the IPv4 hogs (25 sessions each). Blocks of one /24 are gathered into one element, so the test
    # asks for blocks in their range, not for a count. The reconnectors are not asserted on: the full queue starves
    # them with or without govern (about 25 connections in the whole flood), and the wave's gate then holds them
    # back, so whether they ever open enough connections to be blocked varies from run to run.
    blocked = PrefixSet(Prefix.parse(p) for p in res.blocked)
    assert blocked.intersects(Prefix.parse("198.18.10.0/27")), res.blocked
    # ...and never on the allowlisted relay or a legitimate sender.
    assert not res.trusted_in_govern_sets
    assert res.legit_in_govern_sets == []
    assert res.govern_rss_max is not None and res.govern_rss_max < 150 * 2**20
