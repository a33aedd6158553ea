"""The Prometheus endpoint of the real daemon (issue 14, item 3): `govern run` in an MX namespace with
`[metrics] listen` on the namespace's loopback; an operator blocks an address with the CLI, and a scrape from inside
the namespace shows the mode, the block counted by its reason class and family, the listener's queue, the ticks'
durations, a store that is not behind, and the sysctl drift someone else makes. An address the daemon cannot listen
on leaves it running, with a warning in its log and a line in `govern status`."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.kernel.daemon_harness import govern, nft_set, running, wait_for, write_config
from tests.netns import Lab, Netns, SmtpListener

LISTEN = "127.0.0.1:9742"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(ns: Netns, listen: str = LISTEN) -> Samples:
    """GET /metrics from inside the namespace, parsed as Prometheus parses it."""
    with ns.entered(), urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_a_scrape_from_the_namespace_shows_what_the_daemon_did(lab: Lab, tmp_path: Path) -> None:
    srv = SmtpListener(lab.mx, 25)
    try:
        cfg = write_config(tmp_path, f'[metrics]\nlisten = "{LISTEN}"\n')
        with running(lab.mx, cfg) as d:
            assert "metrics on http://127.0.0.1:9742/metrics" in d.log.read_text()
            r = govern(lab.mx, "block", "198.18.0.1", "--for", "5m", "--config", str(cfg))
            assert r.returncode == 0, r.stderr
            assert "198.18.0.1" in nft_set(lab.mx, "block4")
            ticks = d.status()["ticks"]
            assert wait_for(lambda: d.status()["ticks"] >= ticks + 2, timeout=5)
            s = scrape(lab.mx)
            assert value(s, "govern_mode", mode="normal") == 1 and value(s, "govern_mode", mode="wave") == 0
            assert value(s, "govern_blocks", reason="manual", family="ipv4") == 1
            assert value(s, "govern_actions_total", action="block", reason="manual", family="ipv4") == 1
            assert value(s, "govern_tick_duration_seconds_count") >= ticks + 2
            assert 0 < value(s, "govern_tick_duration_seconds_sum") < value(s, "govern_tick_duration_seconds_count")
            assert value(s, "govern_store_behind") == 0
            assert value(s, "govern_accept_queue_backlog", listener="[::]:25") > 0
            assert value(s, "govern_info", version="0.1.0", backend="nftables", dry_run="false") == 1
            assert not any(k[0] == "govern_failures_total" for k in s), s
            # govern applied its base profile in the namespace; a key it tuned, changed behind its back, drifts.
            assert d.status()["sysctl_profiles"] == ["base"]
            assert value(s, "govern_sysctl_drift_keys") == 0
            lab.mx.sh("sysctl", "-qw", "net.core.somaxconn=64")
            s = scrape(lab.mx)
            assert value(s, "govern_sysctl_drift", key="net.core.somaxconn") == 1
            assert value(s, "govern_sysctl_drift_keys") >= 1
            out = govern(lab.mx, "status", "--config", str(cfg)).stdout
            assert "metrics: http://127.0.0.1:9742/metrics" in out
    finally:
        srv.close()


def test_an_address_the_daemon_cannot_listen_on_is_a_warning_and_a_line_in_status(lab: Lab, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[metrics]\nlisten = "192.0.2.99:9742"\n')  # not an address of this host
    with running(lab.mx, cfg) as d:
        out = govern(lab.mx, "status", "--config", str(cfg)).stdout
        assert "METRICS NOT SERVED: cannot listen on 192.0.2.99:9742" in out, out
        assert "WARNING metrics: cannot listen on 192.0.2.99:9742" in d.log.read_text()
        assert d.status()["mode"] == "normal"  # governing all the same
