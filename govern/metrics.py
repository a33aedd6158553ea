"""The Prometheus endpoint (`[metrics] listen`, docs/metrics.md): a collector that reads the Governor's figures when
Prometheus scrapes, and the HTTP server that serves them on /metrics from threads of its own.

Nothing here runs in the tick. A scrape copies what it reads under the Governor's lock (references to immutable
values and shallow copies of the state's tables), then counts and classifies outside it: it never sees half a tick,
and holds a tick up at most for those copies. Labels carry only bounded sets of values (modes, reason classes of
govern.core.reasons, address families, components, listeners, sysctl keys), never addresses or free text.

The exposition format, the registry and the HTTP server are prometheus-client's.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from govern import __version__
from govern.core.modes import measure
from govern.core.policy import Policy
from govern.core.reasons import (
    BLOCK_REASONS,
    MODE_CAUSES,
    OTHER,
    TARPIT_REASONS,
    THROTTLE_REASONS,
    family,
    mode_cause,
    reason_class,
)
from govern.core.shedding import strangers_holding
from govern.daemon import TICK_BUCKETS
from govern.errors import GovernError
from govern.model import Block, Mode, ModeState, Snapshot, Tarpitted, Throttle, holding
from govern.observe.mta import Budget

if TYPE_CHECKING:
    from govern.daemon import Governor
    from govern.export.feed import FeedServer
    from govern.sysctl.manager import Drift

log = logging.getLogger("govern.metrics")
FAMILIES = ("ipv4", "ipv6")


@dataclass(frozen=True)
class Figures:
    """What one scrape reads of the Governor, copied together under its lock: one tick's view, whole."""

    now: float
    started: float
    backend: str
    dry_run: bool
    interval: float
    mode: ModeState
    policy: Policy
    snapshot: Snapshot | None
    budget: Budget | None
    # The entries themselves are frozen: copying the tables' values is all the lock is held for.
    blocks: tuple[Block, ...]
    throttles: tuple[Throttle, ...]
    tarpits: tuple[Tarpitted, ...]
    acted: dict[tuple[str, str, str], int]
    tick_counts: tuple[int, ...]
    tick_seconds: float
    phase_seconds: dict[str, float]
    ended: int
    cut: int
    forgotten: int
    kernel_counters: dict[str, int]
    failures: dict[str, int]
    store_behind: bool
    features: dict[str, bool]


def figures(gov: Governor) -> Figures:
    with gov.lock:
        st = gov.state
        return Figures(
            now=gov.clock(),
            started=gov.started,
            backend=gov.enforcer.name,
            dry_run=gov.dry_run,
            interval=gov.interval,
            mode=st.mode,
            policy=gov.policy,
            snapshot=gov.snapshot,
            budget=gov.mta.budget,
            blocks=tuple(st.blocks.values()),
            throttles=tuple(st.throttles.values()),
            tarpits=tuple(st.tarpits.values()),
            acted=dict(gov.acted),
            tick_counts=tuple(gov.tick_times.counts),
            tick_seconds=gov.tick_times.seconds,
            phase_seconds=dict(gov.phases.total),
            ended=gov.ended_sessions,
            cut=gov.cut_sessions,
            forgotten=gov.forgotten_conntrack,
            kernel_counters=dict(gov.totals),
            failures=dict(gov.health.failures),
            store_behind=gov.store_behind is not None,
            features=_features(gov),
        )


def _features(gov: Governor) -> dict[str, bool]:
    """The optional features the config asks for, each True while it runs."""
    out = {}
    if gov.config["tarpit"]["enabled"] and not gov.dry_run:
        out["tarpit"] = gov.tarpit is not None and gov.tarpit_unsupported is None
    if gov.config["backend"]["xdp"] and not gov.dry_run:
        out["xdp"] = "xdp" not in gov.enforcer.unavailable()
    return out


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _labelled(
    kind: Callable[..., GaugeMetricFamily | CounterMetricFamily],
    name: str,
    doc: str,
    labels: list[str],
    samples: Iterable[tuple[tuple[str, ...], float]],
) -> Metric:
    m = kind(name, doc, labels=labels)
    for values, v in samples:
        m.add_metric(list(values), v)
    return m


def _by_class(
    entries: Iterable[tuple[str, bool, int]], classes: tuple[str, ...]
) -> Iterator[tuple[tuple[str, str], float]]:
    """Every (reason class, family) this kind of entry can have, with its count, zeros included, so a graph never
    has a gap."""
    n = Counter((reason_class(r, manual), family(v)) for r, manual, v in entries)
    for rc in {c for c, _ in n} - set(classes):
        for fam in FAMILIES:
            n[(OTHER, fam)] += n[(rc, fam)]
    for rc in classes:
        for fam in FAMILIES:
            yield (rc, fam), n[(rc, fam)]


def _listener(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class GovernCollector:
    """Yields the govern_* metrics from one consistent copy of the Governor's figures per scrape."""

    def __init__(self, gov: Governor, feed: FeedServer | None = None) -> None:
        self.gov = gov
        self.feed = feed

    def collect(self) -> Iterator[Metric]:
        f = figures(self.gov)
        yield from self._daemon(f)
        yield from self._mode(f)
        yield from self._pressure(f)
        yield from self._enforcement(f)
        yield from self._health(f)
        yield from self._sysctl()
        yield from self._feed()
        yield from self._fleet()

    def _daemon(self, f: Figures) -> Iterator[Metric]:
        yield _labelled(
            GaugeMetricFamily,
            "govern_info",
            "always 1: the version, the firewall backend and whether this is a dry run",
            ["version", "backend", "dry_run"],
            [((__version__, f.backend, str(f.dry_run).lower()), 1)],
        )
        yield _gauge("govern_start_time_seconds", "when the daemon started, seconds since the epoch", f.started)
        yield _gauge("govern_tick_interval_seconds", "the time between ticks now (shorter in a wave)", f.interval)
        cumulative, buckets = 0, []
        for bound, n in zip((*map(str, TICK_BUCKETS), "+Inf"), f.tick_counts, strict=True):
            cumulative += n
            buckets.append((bound, float(cumulative)))
        yield HistogramMetricFamily(
            "govern_tick_duration_seconds",
            "how long each tick (observe, decide, act) took",
            buckets=buckets,
            sum_value=f.tick_seconds,
        )
        yield _labelled(
            CounterMetricFamily,
            "govern_tick_phase_seconds",
            "seconds the ticks spent in each phase (upkeep, fleet, scan, counts, sources, netstat, learn, decide, act,"
            " maintain)",
            ["phase"],
            (((phase,), s) for phase, s in f.phase_seconds.items()),
        )

    def _mode(self, f: Figures) -> Iterator[Metric]:
        yield _labelled(
            GaugeMetricFamily,
            "govern_mode",
            "1 for the mode the host is in (normal, elevated, wave), 0 for the others",
            ["mode"],
            (((m.value,), float(m is f.mode.mode)) for m in Mode),
        )
        cause = mode_cause(f.mode)
        yield _labelled(
            GaugeMetricFamily,
            "govern_mode_cause",
            "1 for why the host is in its mode (pressure, operator, timer, calm, none), 0 for the others",
            ["cause"],
            (((c,), float(c == cause)) for c in MODE_CAUSES),
        )
        yield _gauge("govern_mode_since_timestamp_seconds", "when the mode last changed", f.mode.since)

    def _pressure(self, f: Figures) -> Iterator[Metric]:
        snap = f.snapshot
        pr = measure(snap, f.policy) if snap is not None else None
        yield _gauge(
            "govern_pressure_level",
            "the mode the pressure asks for: 0 normal, 1 elevated, 2 wave",
            pr.level if pr else 0,
        )
        listeners = snap.listeners if snap is not None else ()
        names = [_listener(ls.address, ls.port) for ls in listeners]
        for name, doc, values in (
            (
                "govern_accept_queue_fill",
                "a listener's accept queue as a share of its backlog",
                [ls.queued / ls.backlog if ls.backlog else 0.0 for ls in listeners],
            ),
            (
                "govern_accept_queue_length",
                "connections waiting in a listener's accept queue",
                [ls.queued for ls in listeners],
            ),
            (
                "govern_accept_queue_backlog",
                "the backlog a listener's accept queue may grow to",
                [ls.backlog for ls in listeners],
            ),
        ):
            yield _labelled(
                GaugeMetricFamily, name, doc, ["listener"], (((n,), v) for n, v in zip(names, values, strict=True))
            )
        yield _gauge(
            "govern_listen_drops_per_second",
            "connections the kernel dropped at a full listen queue, per second, in the last tick",
            pr.listen_drops_per_s if pr else 0.0,
        )
        yield _gauge(
            "govern_syn_recv", "half-open connections (SYN_RECV) on the protected ports", pr.syn_recv if pr else 0
        )
        yield _gauge(
            "govern_connection_attempts_per_second",
            "new connections a second from non-allowlisted sources in the last tick, counted in the kernel",
            pr.attempts_per_s if pr else 0.0,
        )
        yield _gauge(
            "govern_idle_share",
            "share of the sessions held silent by non-allowlisted clients (0 under modes.min_sessions)",
            pr.idle_share if pr else 0.0,
        )
        yield _labelled(
            CounterMetricFamily,
            "govern_kernel_tcp",
            "TcpExt counters (ListenOverflows, ListenDrops, SyncookiesSent, ...) since the daemon started",
            ["counter"],
            (((k,), v) for k, v in sorted(f.kernel_counters.items())),
        )
        sources = snap.sources if snap is not None else {}
        totals = snap.totals if snap is not None else None
        yield _gauge(
            "govern_sources", "sources (per protect.ipv4_prefix / ipv6_prefix) seen in the last tick", len(sources)
        )
        held = holding(sources)
        established = totals.established if totals is not None else sum(s.established for s in held.values())
        yield _gauge("govern_sessions", "established sessions on the protected ports", established)
        yield _gauge(
            "govern_stranger_sessions",
            "established sessions held by strangers (neither allowlisted nor trusted)",
            _strangers(snap, f.policy),
        )
        yield _gauge(
            "govern_slot_budget",
            "sessions strangers may hold (in a wave; before one, a cap; 0: no budget)",
            f.budget.slots if f.budget else 0,
        )
        yield _gauge(
            "govern_mta_slots", "the MTA's slots the budget is a share of", f.budget.capacity if f.budget else 0
        )
        yield _gauge(
            "govern_slot_budget_taken",
            "connections of strangers holding a slot of the budget, as the kernel counts them",
            snap.slotted if snap is not None and snap.slotted is not None else 0,
        )
        yield _gauge(
            "govern_trusted_sources",
            "sources trusted for a delivery they completed (softer limits)",
            len(snap.trusted) if snap else 0,
        )
        yield _gauge("govern_allowlist_entries", "prefixes on the allowlist, from every source", len(f.policy.allow))

    def _enforcement(self, f: Figures) -> Iterator[Metric]:
        now = "sources {} now, by reason class and address family"
        for name, what, entries, classes in (
            ("govern_blocks", "blocked", ((b.reason, b.manual, b.prefix.version) for b in f.blocks), BLOCK_REASONS),
            (
                "govern_throttles",
                "throttled",
                ((t.reason, False, t.prefix.version) for t in f.throttles),
                THROTTLE_REASONS,
            ),
            ("govern_tarpits", "tarpitted", ((t.reason, False, t.prefix.version) for t in f.tarpits), TARPIT_REASONS),
        ):
            yield _labelled(
                GaugeMetricFamily, name, now.format(what), ["reason", "family"], _by_class(entries, classes)
            )
        yield _labelled(
            CounterMetricFamily,
            "govern_actions",
            "blocks, throttles, tarpits and block extensions made since start, by reason class and address family",
            ["action", "reason", "family"],
            sorted(f.acted.items()),
        )
        yield _counter(
            "govern_sessions_ended", "sessions of newly blocked sources ended (sock_diag SOCK_DESTROY)", f.ended
        )
        yield _counter("govern_sessions_cut", "sessions cut for want of progress or shed over the slot budget", f.cut)
        yield _counter("govern_conntrack_forgotten", "conntrack entries of newly blocked sources deleted", f.forgotten)

    def _health(self, f: Figures) -> Iterator[Metric]:
        yield _labelled(
            CounterMetricFamily,
            "govern_failures",
            "failures per component (act, store, observe, kernel-changed, sysctl, ...); each is retried",
            ["component"],
            (((c,), n) for c, n in sorted(f.failures.items())),
        )
        yield _labelled(
            GaugeMetricFamily,
            "govern_feature_up",
            "1 while a feature the config asks for (tarpit, xdp) runs, 0 while it cannot (the log and status say why)",
            ["feature"],
            (((name,), float(up)) for name, up in sorted(f.features.items())),
        )
        yield _gauge(
            "govern_store_behind",
            "1 while the state store cannot be written (enforcing from memory)",
            float(f.store_behind),
        )

    def _sysctl(self) -> Iterator[Metric]:
        drift = _drift(self.gov)
        yield _gauge(
            "govern_sysctl_drift_keys",
            "sysctls whose live value is not what govern's profiles in force set",
            len(drift),
        )
        yield _labelled(
            GaugeMetricFamily,
            "govern_sysctl_drift",
            "1 for each sysctl whose live value is not what govern's profiles in force set",
            ["key"],
            (((d.key,), 1) for d in drift),
        )

    def _feed(self) -> Iterator[Metric]:
        counts = self.feed.counts() if self.feed is not None else {}
        yield _labelled(
            CounterMetricFamily,
            "govern_export_feed_requests",
            "requests the pull feed answered, by path and HTTP status code",
            ["path", "code"],
            (((path, str(code)), n) for (path, code), n in sorted(counts.items())),
        )

    def _fleet(self) -> Iterator[Metric]:
        # The link's figures are its own thread's, read under its lock: no need of the Governor's.
        f = self.gov.fleet_status()
        yield _gauge(
            "govern_fleet_up",
            "1 while the fleet's Redis answers, 0 while it does not or no fleet is set",
            f["state"] == "connected",
        )
        yield _gauge(
            "govern_fleet_lag_seconds",
            "from the last received fleet decision's publication to its reception",
            f.get("lag") or 0.0,
        )
        yield _labelled(
            CounterMetricFamily,
            "govern_fleet_decisions",
            "fleet decisions: published, received, applied, unblocked, refused (by this host), unverified, dropped",
            ["what"],
            (
                ((what,), float(f.get(key, 0)))
                for what, key in (
                    ("published", "published"),
                    ("received", "received"),
                    ("applied", "applied"),
                    ("unblocked", "unblocked"),
                    ("refused", "refused_here"),
                    ("unverified", "refused"),
                    ("dropped", "dropped"),
                )
            ),
        )


def _strangers(snap: Snapshot | None, policy: Policy) -> int:
    """Established sessions of sources neither allowlisted nor trusted: what the slot budget limits in a wave."""
    if snap is None:
        return 0
    return sum(s.established for _p, s in strangers_holding(snap, policy))


def _drift(gov: Governor) -> tuple[Drift, ...]:
    """Keys off the profiles govern applied; none while it applied none. Read from the scrape's thread: the sysctl
    journal has a lock of its own, and a read failure only leaves the figure out of this scrape."""
    if gov.sysctl is None:
        return ()
    try:
        return gov.sysctl.verify() if gov.sysctl.profiles() else ()
    except GovernError as exc:
        log.debug("metrics: cannot read the sysctl drift: %s", exc)
        return ()


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: %s %s", self.address_string(), format % args)


class MetricsServer:
    """Serves GET /metrics from a registry; anything else is a 404 naming the path to use."""

    def __init__(self, listen: str, registry: CollectorRegistry) -> None:
        host, _, port = listen.rpartition(":")
        metrics = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO") == "/metrics":
                body: Iterable[bytes] = metrics(environ, start_response)
                return body
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"govern serves its metrics on /metrics\n"]

        v6 = ":" in host  # "[::1]", or "::1" with the port after its last colon
        cls = type(
            "MetricsHTTPServer", (ThreadingWSGIServer,), {"address_family": socket.AF_INET6 if v6 else socket.AF_INET}
        )
        self.httpd: WSGIServer = make_server(host.strip("[]"), int(port), app, cls, handler_class=_Quiet)
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="govern-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=2)


def registry(gov: Governor, feed: FeedServer | None = None) -> CollectorRegistry:
    """govern's collector, and prometheus-client's own for the process (process_cpu_seconds_total, memory, fds)."""
    reg = CollectorRegistry()
    reg.register(GovernCollector(gov, feed))
    ProcessCollector(registry=reg)
    return reg


def start(gov: Governor, feed: FeedServer | None = None) -> MetricsServer | None:
    """The endpoint if `metrics.listen` is set. One that cannot listen is a warning and a line in `govern status`,
    never the end of the daemon: the MX needs protecting more than graphing."""
    listen = gov.config["metrics"]["listen"]
    if not listen:
        gov.metrics = {"state": "off"}
        return None
    try:
        server = MetricsServer(listen, registry(gov, feed))
    except OSError as exc:
        error = f"cannot listen on {listen}: {exc.strerror or exc}"
        log.warning("metrics: %s; govern runs on without its /metrics endpoint", error)
        gov.metrics = {"state": "failed", "listen": listen, "error": error}
        return None
    gov.metrics = {"state": "serving", "listen": listen, "url": f"http://{listen}/metrics"}
    log.info("metrics on http://%s/metrics", listen)
    return server
