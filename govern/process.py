"""The daemon as a process (`govern run`): one per state directory (a lock), signals (SIGTERM and SIGINT stop it,
SIGHUP reloads the config), the control socket's requests served between ticks, the ISP's pull feed kept up to
date, the Prometheus endpoint (govern.metrics), systemd told how it is, and everything closed in order on the way
out. The Governor (govern.daemon) does the governing; this module only runs it. Whatever changes the Governor runs
under its lock, so the endpoint's threads never read half a tick."""

from __future__ import annotations

import fcntl
import gc
import logging
import os
import queue
import signal
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

from govern import config as configmod
from govern import heap, metrics, protocol, wiring
from govern.control import ControlServer, Request, prepare_place
from govern.daemon import Governor
from govern.errors import GovernError, UsageError
from govern.export import feed as export_feed
from govern.export.feed import Feed
from govern.model import Mode
from govern.store import Store
from govern.systemd import JournalFormatter, journal_stderr, notify

log = logging.getLogger("govern")
# How often the daemon takes what it made meanwhile (blocks, mostly) out of the cyclic GC's walks (govern.heap):
# one full collection each time, 0.3-0.4 s at a million blocks.
SETTLE_EVERY = 600.0


@dataclass
class _Flags:
    """What the signals and the control socket asked of the main loop."""

    stop: bool = False
    reload: bool = False
    torn_down: bool = False  # `govern teardown` removed every kernel object: nothing to restore on the way out


class _Lock:
    """One daemon per state directory."""

    def __init__(self, state_dir: str) -> None:
        try:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
            self.fd = os.open(os.path.join(state_dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise GovernError(f"daemon.state_dir: cannot use {state_dir}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise GovernError(f"another govern daemon is running with state directory {state_dir}") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        os.close(self.fd)


def _logging(level: str) -> None:
    handler = logging.StreamHandler()
    if journal_stderr():
        handler.setFormatter(JournalFormatter("%(levelname)s %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s govern[%(process)d] %(levelname)s %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])


def run(config_path: str | None, *, dry_run: bool = False) -> int:
    """`govern run`: the foreground daemon. Returns the exit status."""
    cfg = configmod.load(config_path)
    if dry_run:
        cfg = configmod.with_override(cfg, "daemon", "dry_run", True)
    _logging(cfg["daemon"]["log_level"])
    # pyroute2 logs every netlink message at debug level: noise, even when debugging govern.
    logging.getLogger("pyroute2").setLevel(max(logging.INFO, logging.getLogger().level))
    if os.geteuid() != 0:
        raise UsageError("govern run needs root: it talks to the kernel's netfilter and sock_diag")
    lock = _Lock(cfg["daemon"]["state_dir"])
    store = Store(cfg["daemon"]["state_dir"])
    requests: queue.Queue[Request | None] = queue.Queue()
    flags = _Flags()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            flags.reload = True
        else:
            flags.stop = True
        requests.put(None)  # wake the loop now, not at the next tick

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    began = time.monotonic()
    gov = wiring.governor(cfg, store)
    # The restored state (100k blocks are ~300k objects, built with the collector held off), the config and the
    # modules, frozen for the start: unfrozen, the next 100k objects kept (the setup's set dumps) paid 0.1 s more
    # for collections walking them (docs/benchmarks.md, "Restart"). No collection first, as heap.settle makes:
    # that would walk them all once more now; the settle after the start unfreezes them and collects instead.
    gc.freeze()
    restored = time.monotonic()
    server: ControlServer | None = None
    feed: Feed | None = None
    endpoint: metrics.MetricsServer | None = None
    try:
        # The pull feed for the ISP (docs/export.md), None unless export.listen: first, so a bad token file is
        # refused before anything is changed.
        feed = export_feed.start(cfg)
        # The socket's place before the kernel: one it cannot be made in is refused while nothing is changed. The
        # socket itself appears once the daemon has started: tools wait for it as the sign that it is up.
        prepare_place(cfg["daemon"]["socket"])
        gov.start()
        started = time.monotonic()
        # After the start, so the first scrape sees the state restored; a port it cannot have is only a warning.
        endpoint = metrics.start(gov, feed.server if feed is not None else None)
        server = ControlServer(cfg["daemon"]["socket"], requests)
        log.info(
            "govern running: ports %s, %d blocks, %d throttles restored, %s; started in %.2f s (state read in %.2f s, "
            "kernel reconciled in %.2f s)",
            ",".join(map(str, sorted(gov.policy.ports))),
            len(gov.state.blocks),
            len(gov.state.throttles),
            "DRY RUN (nothing enforced)" if gov.dry_run else f"backend {gov.enforcer.name}",
            started - began,
            restored - began,
            started - restored,
        )
        notify("READY=1\nSTATUS=governing")
        heap.settle()  # the state restored, the config, the modules: out of the cyclic GC's walks
        settled = next_tick = ticked = polled = time.monotonic()
        while not flags.stop:
            now = time.monotonic()
            if now >= next_tick:
                ticked = now
                with gov.lock:
                    gov.tick()
                    if feed is not None:
                        _update_feed(gov, feed)
                    if now - settled >= SETTLE_EVERY:  # the blocks made since, too
                        settled = now
                        heap.settle()
                next_tick = max(next_tick + gov.interval, now)
                # The watchdog's ping comes from the loop itself: a tick that hangs (a kernel call that never
                # returns) misses it, and systemd restarts the daemon (WatchdogSec in govern.service).
                notify(f"WATCHDOG=1\nSTATUS={len(gov.state.blocks)} blocks, {len(gov.state.throttles)} throttles")
                continue
            # Between ticks, the accept queues every `queue_poll` (requests or not: a client polling the daemon
            # must not hold the watch off): a flood that fills them is answered now, not at the next tick. Not in a
            # wave, which ticks fast already, and no sooner after a tick than a wave would tick (a queue that stays
            # full without changing the mode is no reason to tick at the poll's rate).
            poll = gov.config["daemon"]["queue_poll"]
            watching = poll > 0 and gov.state.mode.mode is not Mode.WAVE
            if watching and now - polled >= poll:
                polled = now
                with gov.lock:
                    pressing = gov.pressing()  # read at every poll: the rate it sees goes into the next tick
                if pressing and now - ticked >= gov.config["daemon"]["wave_tick"]:
                    log.info("an accept queue filled or a flood of connections began between ticks: ticking now")
                    next_tick = now
                    continue
            wake = min(next_tick, polled + poll) if watching else next_tick
            try:
                req = requests.get(timeout=max(0.0, wake - now))
            except queue.Empty:
                continue
            if req is not None:
                if req.body.get("cmd") == protocol.Teardown.CMD:
                    with gov.lock:
                        req.reply = _teardown(gov)
                    req.done.set()
                    flags.stop = flags.torn_down = True
                    continue
                with gov.lock:
                    req.reply = gov.handle(req.body)
                req.done.set()
            if flags.reload:
                flags.reload = False
                with gov.lock:
                    _reload(gov, config_path)
    finally:
        notify("STOPPING=1")
        if endpoint is not None:  # first: what follows changes what a scrape would read
            endpoint.close()
        if not flags.torn_down:
            gov.sysctl_stop()
        if server is not None:
            server.close()
        if feed is not None:
            feed.close()
        gov.enforcer.close()
        gov.close_sources()
        store.close()
        lock.release()
    log.info("govern stopped; blocks stay enforced in the kernel until their timeouts")
    return 0


def _update_feed(gov: Governor, feed: Feed) -> None:
    try:
        feed.update(gov.state.blocks.values(), gov.policy.allow, gov.clock())
    except GovernError as exc:  # the feed keeps its last snapshot
        gov.health.fail("export-feed", exc)


def _reload(gov: Governor, config_path: str | None) -> None:
    try:
        new = _load_again(config_path)
        if gov.dry_run:
            new = configmod.with_override(new, "daemon", "dry_run", True)
        gov.reload(new)
    except GovernError as exc:
        log.error("reload failed, keeping the running config: %s", exc)
        gov.health.fail("reload", exc)


def _load_again(config_path: str | None) -> configmod.Config:
    """The config for a reload. Whatever goes wrong in reading it, a bug included, is a failed reload: it must never
    end a daemon that is enforcing."""
    try:
        return configmod.load(config_path)
    except GovernError:
        raise
    except Exception as exc:
        log.exception("reading the config for a reload")
        raise GovernError(f"cannot read the config: {type(exc).__name__}: {exc}") from exc


def _teardown(gov: Governor) -> dict[str, Any]:
    try:
        removed = gov.enforcer.teardown()
        if gov.tarpit is not None:
            removed |= gov.tarpit.teardown()
    except GovernError as exc:
        return protocol.failed(str(exc))
    gov.sysctl_stop(teardown=True)
    message = "removed table inet govern" if removed else "nothing to remove"
    if gov.health.failures.get("sysctl"):
        message += "; some sysctls could not be restored: " + gov.health.last_error.get("sysctl", "")
    return protocol.ok(message=message, stopped=True)
