"""The lab's figures: time to mitigate, transaction summaries, the table and the PNG timeline."""

from __future__ import annotations

import json
from pathlib import Path

from govern_lab.report import Result, Sample, plot, summarise, table, time_to_mitigate


def test_time_to_mitigate() -> None:
    rolling = [(float(t), 1.0) for t in range(10)] + [(10.0, 0.5), (11.0, 0.2), (12.0, 0.8), (13.0, 0.95), (14.0, 1.0)]
    assert time_to_mitigate(rolling, flood_start=10.0) == 3.0
    assert time_to_mitigate([(t, 1.0) for t in (10.0, 11.0)], flood_start=10.0) == 0.0
    assert time_to_mitigate([(10.0, 0.5), (11.0, 0.1)], flood_start=10.0) is None
    # A dip before the flood does not count.
    assert time_to_mitigate([(5.0, 0.1), (10.0, 1.0)], flood_start=10.0) == 0.0


def tx(t: float, ok: bool, latency: float = 0.1, reason: str = "", cut: bool = False) -> dict[str, object]:
    return {"t_start": t, "ok": ok, "latency": latency, "stage": "banner", "reason": reason, "cut": cut}


def test_summarise_window_and_latency() -> None:
    txs = [tx(float(i), True, latency=0.01 * (i + 1)) for i in range(20)] + [tx(21.0, False, reason="timeout")]
    txs.append(tx(22.0, False, reason="cut", cut=True))
    s = summarise(txs, start=10.0)
    assert s["attempted"] == 11 and s["delivered"] == 10 and s["success"] == round(10 / 11, 4)
    assert s["latency_p50"] == 0.155 and s["latency_p95"] == 0.2
    assert s["failures"] == {"banner: timeout": 1}
    assert summarise([])["success"] is None


def result(name: str, flood: bool) -> Result:
    samples = [Sample(float(t), sessions=10 + t, queued=t % 3, blocked=t // 2, throttled=1) for t in range(20)]
    return Result(
        scenario=name,
        duration=20.0,
        flood_start=5.0 if flood else None,
        flood_end=15.0 if flood else None,
        legit={"success": 0.985, "attempted": 200, "latency_p50": 0.12, "latency_p95": 0.4},
        trusted={"success": 1.0},
        time_to_mitigate=2.5 if flood else None,
        trusted_in_govern_sets=False,
        legit_in_govern_sets=[],
        sources_blocked=42,
        peak_sessions=50,
        counters={"ListenOverflows": 7},
        govern_cpu_percent=3.2 if flood else None,
        govern_rss_max=60 * 2**20 if flood else None,
        rolling=[(float(t), 1.0 if t < 5 or t > 8 else 0.4) for t in range(20)],
        samples=samples,
    )


def test_table_lists_every_scenario_side_by_side() -> None:
    out = table([result("baseline", False), result("flood+govern", True)])
    lines = out.splitlines()
    assert lines[0].split() == ["baseline", "flood+govern"]
    row = next(line for line in lines if line.startswith("time to mitigate"))
    assert row.split()[-2:] == ["-", "2.5s"]
    assert next(line for line in lines if line.startswith("govern RSS max")).endswith("60 MiB")


def test_plot_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "timeline.png"
    plot(result("flood+govern", True), str(path))
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_transactions_and_the_flood_are_put_on_the_runs_clock(tmp_path: Path) -> None:
    from govern_lab.scenario import flood_began, run_events

    wall0 = 1_000.0
    legit = tmp_path / "legit.json"
    # The generator began 0.6 s after the run: its own clock's 9.6 s is the run's 10.2 s.
    legit.write_text(json.dumps({"started": 1_000.6, "events": [{"n": 1, "t_start": 9.6, "t_end": 9.7, "ok": True}]}))
    (e,) = run_events(legit, wall0)
    assert (round(e["t_start"], 3), round(e["t_end"], 3), e["ok"]) == (10.2, 10.3, True)
    bots = [tmp_path / "bot-0.json", tmp_path / "bot-1.json", tmp_path / "missing.json"]
    bots[0].write_text(json.dumps({"started": 1_010.45, "events": []}))
    bots[1].write_text(json.dumps({"started": 1_010.3, "events": []}))
    assert round(flood_began(bots, wall0, 10.0), 3) == 10.3  # the first bot's start, not the planned 10.0
    assert flood_began([bots[2]], wall0, 10.0) == 10.0  # nothing reported: as planned
