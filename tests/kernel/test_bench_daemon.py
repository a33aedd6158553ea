"""bench/bench_daemon.py at a tiny size, so the whole-daemon bench cannot rot unseen: it runs `govern run` with 200
live sessions, 1,000 tracked sources and 1,000 restored blocks, a few seconds each, and its figures must be sane
and agree with what the daemon reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_daemon_at_a_tiny_size_gives_sane_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--sockets", "200", "--tracked", "1000", "--blocks", "1000", "--reps", "1", "--window", "3"]
    args += ["--settle", "1", "--talk-every", "2", "--json", str(out), "--plot", str(tmp_path / "bench.png")]
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_daemon.py"), *args], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    rows = {r["case"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"sockets", "tracked", "blocks"}
    for case, r in rows.items():
        (w,) = r["windows"]
        assert w["ticks"] >= 2, (case, w)  # a 1 s tick over a 3 s window
        assert 0 < w["cpu_pct"] < 100, (case, w)
        assert 0 < w["mean_tick_ms"] < 1000, (case, w)
        assert w["timed_ticks"] >= 1 and 0 < w["p50_ms"] <= w["p99_ms"] < 1000, (case, w)
        assert 20 < w["rss_mb"] <= w["hwm_mb"] < 1000, (case, w)
    assert rows["sockets"]["windows"][0]["sockets"] == 200  # the daemon's own count of the sessions
    assert rows["sockets"]["windows"][0]["sources"] == 20  # ten sessions per source
    assert rows["tracked"]["windows"][0]["sources"] == 1000
    assert rows["blocks"]["windows"][0]["blocks"] == 1000
    assert rows["sockets"]["side"]["ss -Htn"] > 0
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    assert "| sockets | 200 |" in res.stdout
