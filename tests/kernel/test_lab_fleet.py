"""The lab's fleet scenario in CI: its short "sharing" run, two MX namespaces each with its own Postfix and govern,
one real redis-server (Debian's, on a unix socket in the run's directory), the prolific bot flood on mx1 and then,
from the same sources, on mx2. It fails unless the fleet spares mx2: the bot sources mx1 blocked are in mx2's
nftables block sets, on mx1's word, before the flood reaches mx2, and mx2's bot sessions during its flood stay far
below what mx1 held before it learned. The "alone" run and the side-by-side table are `govern lab run --fleet`'s
(docs/lab.md); CI keeps to the one run, about a minute."""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

from govern.addr import Prefix
from govern_lab import fleet
from tests.redis_server import need_redis


def test_sharing_spares_the_second_mx_the_flood_the_first_one_learned(tmp_path: Path) -> None:
    need_redis()
    plan = fleet.FleetPlan.short()
    t = time.monotonic()
    tag = f"gvf-{secrets.token_hex(3)}"
    res = fleet.run("sharing", tmp_path / "sharing", plan, tag=tag)
    took = time.monotonic() - t
    (tmp_path / "result.json").write_text(res.to_json())
    print(f"took {took:.0f} s")
    mx1, mx2 = res.mx1, res.mx2
    print(json.dumps({m.mx: {k: v for k, v in vars(m).items() if k not in ("samples", "rolling")} for m in (mx1, mx2)}))
    # The flood was real on mx1, and govern there blocked its sources by itself. (Its peak, sampled four times a
    # second, is what got in before govern's wave, which starts within a quarter second of the queue filling and
    # sheds it within a second: sampled once a second, CI's run once caught 7 of it.)
    assert mx1.bot_sessions_peak >= 20, mx1
    assert mx1.blocked_on_arrival == 0 and mx1.blocked_at_end >= mx1.bot_sources // 2, mx1
    # Before the flood reached mx2, most of what mx1 blocked was in mx2's block sets already, every one on mx1's word.
    assert mx2.blocked_on_arrival >= 0.8 * mx1.blocked_at_end, (mx2.blocked_on_arrival, mx1.blocked_at_end)
    assert mx2.arrival_origins == {"mx1": mx2.blocked_on_arrival}, mx2.arrival_origins
    assert mx2.fleet_applied is not None and mx2.fleet_applied >= 1
    assert (mx2.blocks_by_reason.get("fleet") or 0) >= 1, mx2.blocks_by_reason
    # The IPv4 hogs (25 sessions each) are the flood's bulk: all of them were held off mx2 from the start.
    hogs = [s for s in fleet.bot_sources(plan) if Prefix.parse("198.18.10.0/27").contains(Prefix.parse(s))]
    assert len(hogs) == 30 and set(hogs) <= set(mx2.sources_on_arrival), sorted(set(hogs) - set(mx2.sources_on_arrival))
    # So mx2's bot sessions during its flood stay far below mx1's, and its legitimate mail flows.
    assert mx2.bot_sessions_peak <= mx1.bot_sessions_peak / 4, (mx2.bot_sessions_peak, mx1.bot_sessions_peak)
    assert mx2.legit["attempted"] >= 30 and mx2.legit["success"] >= 0.95, mx2.legit
    # The run leaves nothing behind: its namespaces are gone and its redis-server closed its socket.
    assert not [n for n in os.listdir("/run/netns") if n.startswith(f"{tag}-")]
    assert (tmp_path / "sharing" / "redis" / "redis.log").exists()
    sock = str(tmp_path / "sharing" / "redis" / "redis.sock")
    assert not [p for p in Path("/proc").glob("[0-9]*") if sock in _cmdline(p)]


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # gone meanwhile
        return ""
