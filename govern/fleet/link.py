"""The fleet edge: one background thread owns the Redis connection, publishes this host's decisions and reads the
others', so that the tick only ever puts to and drains from bounded in-memory queues and never waits on Redis.

Redis holds two keys per fleet (`fleet.namespace`):
- NAMESPACE:decisions, a stream of signed decisions (govern.fleet.codec), trimmed to about STREAM_LENGTH entries;
- NAMESPACE:active, a sorted set of the same entries scored by their expiry, so that a host that starts or comes
  back catches up with every active block in one read (expired members are removed by whoever publishes, and the
  blocks an operator's unblock lifted by the host that publishes the unblock).

Each entry read is verified; what does not verify is one log line, and what this host published itself comes back
and is skipped. While Redis cannot be reached the thread retries with backoff, the host enforces alone, its own
decisions wait in the queue (up to its bound) and the state says since when and why (docs/fleet.md, "Faults").
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast
from urllib.parse import urlsplit

from govern.fleet import codec
from govern.fleet.codec import Decision, Rejected
from govern.fleet.url import connect, parse

log = logging.getLogger("govern.fleet")

STREAM_LENGTH = 100_000  # about this many entries kept: a host away longer catches up from the sorted set
QUEUE_BOUND = 10_000  # decisions waiting to be published, and received ones waiting for the tick
READ_BLOCK_MS = 200  # how long one XREAD waits: the bound on how late a queued decision is published
READ_COUNT = 1000
TIMEOUT = 2.0  # seconds any one Redis call may take before the link counts Redis as down
BACKOFF = (0.2, 5.0)  # first and longest wait before connecting again
PRUNE_EVERY = 10.0
MINE_BOUND = 200_000  # this host's own decisions in force remembered, to put back what Redis loses
SEEN_BOUND = 100_000  # ids remembered, so an entry read from both the stream and the sorted set is handed over once


@dataclass(frozen=True, slots=True)
class LinkState:
    """How the link is, for `govern status` and the metrics."""

    state: str  # "connected", "down" (since, error) or "connecting" (before the first answer)
    since: float
    error: str = ""
    lag: float | None = None  # seconds between the last received decision's publication and its reception
    published: int = 0
    received: int = 0
    refused: int = 0  # entries that did not verify
    dropped: int = 0  # decisions lost to a full queue (either way)

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "since": self.since,
            "error": self.error,
            "lag": self.lag,
            "published": self.published,
            "received": self.received,
            "refused": self.refused,
            "dropped": self.dropped,
        }


def shown_url(url: str) -> str:
    """The URL without its credentials, for the log and status."""
    try:
        t = parse(url)
    except ValueError:
        return "(a fleet.url that does not parse)"
    scheme = url.partition("://")[0].lower()
    if t.mode == "sentinel":
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in t.hosts)
        return f"{scheme}://{hosts}/{t.service}"
    parts = urlsplit(url)
    where = parts.hostname or ""
    if parts.port:
        where = f"{where}:{parts.port}"
    return f"{scheme}://{where}{parts.path}"


class RedisLink:
    """The real fleet edge (govern.edges.FleetLink): redis-py in a thread of its own."""

    def __init__(
        self,
        url: str,
        key: bytes,
        name: str,
        namespace: str = "govern",
        accept: Sequence[str] = ("block",),
        clock: Callable[[], float] = time.time,
        connect: Callable[[str], Any] | None = None,
    ) -> None:
        self.url = url
        self.key = key
        self.name = name
        self.stream = f"{namespace}:decisions"
        self.active = f"{namespace}:active"
        self.accept = frozenset(accept)
        self.clock = clock
        self._connect = connect or _connect
        self._out: queue.Queue[Decision] = queue.Queue(QUEUE_BOUND)
        self._in: queue.Queue[Decision] = queue.Queue(QUEUE_BOUND)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._state = LinkState("connecting", clock())
        self._last_id: str | None = None
        self._seen: OrderedDict[str, None] = OrderedDict()
        # This host's published decisions still in force, by (kind, prefix), the latest only: put back if Redis
        # comes back without them (restarted without persistence, or failed over to an empty replica).
        self._mine: OrderedDict[tuple[str, str], tuple[dict[str, str], float]] = OrderedDict()
        self._pruned = 0.0

    # -- the tick's side: never blocks --------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="govern-fleet", daemon=True)
            self._thread.start()

    def publish(self, decisions: Sequence[Decision]) -> None:
        for d in decisions:
            try:
                self._out.put_nowait(d)
            except queue.Full:
                self._count(dropped=1)
                log.warning("fleet: %d decisions wait to be published already; %s is not shared", QUEUE_BOUND, d.prefix)

    def drain(self, limit: int = QUEUE_BOUND) -> list[Decision]:
        out: list[Decision] = []
        while len(out) < limit:
            try:
                out.append(self._in.get_nowait())
            except queue.Empty:
                break
        return out

    def state(self) -> LinkState:
        with self._lock:
            return self._state

    @property
    def settings(self) -> tuple[object, ...]:
        return (self.url, self.key, self.name, self.stream, self.accept)

    def unsent(self) -> list[Decision]:
        out: list[Decision] = []
        while True:
            try:
                out.append(self._out.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(TIMEOUT + READ_BLOCK_MS / 1000 + 1)
            self._thread = None

    # -- the thread's side ---------------------------------------------------------------------------------------

    def _count(self, **add: int) -> None:
        with self._lock:
            s = self._state
            self._state = _replace(s, **{k: getattr(s, k) + v for k, v in add.items()})

    def _set(self, **fields: Any) -> None:
        with self._lock:
            self._state = _replace(self._state, **fields)

    def _run(self) -> None:
        wait = BACKOFF[0]
        while not self._stop.is_set():
            client: Any = None
            try:
                client = self._connect(self.url)
                self._republish(client)
                self._catch_up(client)
                if self._state.state != "connected":
                    was = self._state
                    self._set(state="connected", since=self.clock(), error="")
                    if was.state == "down":
                        log.warning("fleet: %s answers again; caught up", shown_url(self.url))
                    else:
                        log.info("fleet: connected to %s as %s", shown_url(self.url), self.name)
                wait = BACKOFF[0]
                while not self._stop.is_set():
                    self._flush(client)
                    self._read(client)
                    self._prune(client)
            except Exception as exc:  # redis-py's errors, OSError, and anything else: never the end of the thread
                self._down(exc)
            finally:
                if client is not None:
                    with contextlib.suppress(Exception):  # closing a broken connection may fail too
                        client.close()
            self._stop.wait(wait)
            wait = min(wait * 2, BACKOFF[1])

    def _down(self, exc: BaseException) -> None:
        error = (str(exc) or type(exc).__name__).splitlines()[0][:200]
        if self._state.state != "down":
            log.warning(
                "fleet: %s cannot be reached (%s): this host enforces alone and catches up when it answers",
                shown_url(self.url),
                error,
            )
            self._set(state="down", since=self.clock(), error=error)
        else:
            self._set(error=error)

    def _catch_up(self, client: Any) -> None:
        """Every active decision, from the sorted set; the stream is read from its end as it was before (so what
        is published meanwhile is read too, once), or from where this link left it."""
        top = cast(list[Any], client.xrevrange(self.stream, count=1))
        members = cast(list[bytes], client.zrangebyscore(self.active, self.clock(), "+inf"))
        entries = []
        for m in members:
            try:
                entries.append(codec.from_member(m))
            except Rejected as exc:
                self._refused("the active set", exc)
        # In the order they were decided, not by expiry: a block and the unblock that lifted it arrive as they were.
        for fields in sorted(entries, key=_published):
            self._take(fields, "the active set")
        if self._last_id is None:
            self._last_id = _text(top[0][0]) if top else "0-0"

    def _flush(self, client: Any) -> None:
        batch: list[Decision] = []
        while len(batch) < READ_COUNT:
            try:
                batch.append(self._out.get_nowait())
            except queue.Empty:
                break
        if not batch:
            return
        pipe = client.pipeline(transaction=False)
        for d in batch:
            fields = codec.encode(d, self.key)
            pipe.xadd(self.stream, cast(Any, fields), maxlen=STREAM_LENGTH, approximate=True)
            pipe.zadd(self.active, {codec.member(fields): d.until})
        try:
            pipe.execute()
        except Exception:
            # Back at the head of the line for the next connection: a decision is not lost to a Redis outage.
            for d in batch:
                try:
                    self._out.put_nowait(d)
                except queue.Full:
                    self._count(dropped=1)
            raise
        self._count(published=len(batch))
        for d in batch:
            mine = (d.kind, str(d.prefix))
            self._mine.pop(mine, None)
            self._mine[mine] = (codec.encode(d, self.key), d.until)
            if d.kind == "unblock":
                self._mine.pop(("block", str(d.prefix)), None)
        lifted = {str(d.prefix): d.at for d in batch if d.kind == "unblock"}
        if lifted:
            self._lift(client, lifted)
        while len(self._mine) > MINE_BOUND:
            self._mine.popitem(last=False)

    def _lift(self, client: Any, lifted: Mapping[str, float]) -> None:
        """Take out of the active set the blocks an operator's unblock lifted (any host's, published before it), so
        a host that starts later does not catch up with them; the unblock itself stays there for the hosts that
        still hold them. Unblocks are an operator's, and rare: one read of the set each is cheap."""
        gone = []
        for m in cast(list[bytes], client.zrangebyscore(self.active, self.clock(), "+inf")):
            with contextlib.suppress(Rejected, KeyError, ValueError):
                f = codec.from_member(m)
                if f["kind"] == "block" and f["prefix"] in lifted and float(f["at"]) <= lifted[f["prefix"]]:
                    gone.append(m)
        if gone:
            client.zrem(self.active, *gone)

    def _republish(self, client: Any) -> None:
        """Put back what Redis lost of this host's decisions in force: ZADD NX says which members were missing,
        and only those go to the stream again (the others' links skip an id they have seen)."""
        now = self.clock()
        for k in [k for k, (_, until) in self._mine.items() if until <= now]:
            del self._mine[k]
        if not self._mine:
            return
        entries = list(self._mine.values())
        pipe = client.pipeline(transaction=False)
        for fields, until in entries:
            pipe.zadd(self.active, {codec.member(fields): until}, nx=True)
        added = cast(list[int], pipe.execute())
        lost = [fields for (fields, _), n in zip(entries, added, strict=True) if n]
        if not lost:
            return
        pipe = client.pipeline(transaction=False)
        for fields in lost:
            pipe.xadd(self.stream, cast(Any, fields), maxlen=STREAM_LENGTH, approximate=True)
        pipe.execute()
        log.warning("fleet: Redis had lost %d of this host's decisions in force: published again", len(lost))

    def _read(self, client: Any) -> None:
        assert self._last_id is not None
        reply = cast(list[Any], client.xread({self.stream: self._last_id}, count=READ_COUNT, block=READ_BLOCK_MS) or [])
        for _stream, entries in reply:
            for entry_id, fields in entries:
                self._last_id = _text(entry_id)
                self._take(fields, f"entry {self._last_id}")

    def _prune(self, client: Any) -> None:
        now = self.clock()
        if now - self._pruned >= PRUNE_EVERY:
            self._pruned = now
            client.zremrangebyscore(self.active, "-inf", now)

    def _take(self, fields: Mapping[Any, Any], where: str) -> None:
        now = self.clock()
        try:
            d = codec.verify(fields, self.key, now)
        except Rejected as exc:
            if str(exc).startswith("expired"):  # the sorted set's stragglers, the stream's history: not an attack
                return
            self._refused(where, exc)
            return
        if d.origin == self.name or d.id in self._seen or d.kind not in self.accept:
            return
        self._seen[d.id] = None
        if len(self._seen) > SEEN_BOUND:
            self._seen.popitem(last=False)
        try:
            self._in.put_nowait(d)
        except queue.Full:
            self._count(dropped=1)
            log.warning("fleet: %d received decisions wait for the tick already; %s dropped", QUEUE_BOUND, d.prefix)
            return
        self._count(received=1)
        self._set(lag=max(0.0, now - d.at))

    def _refused(self, where: str, exc: Exception) -> None:
        self._count(refused=1)
        log.warning("fleet: refused %s from Redis: %s", where, exc)


def _published(fields: Mapping[str, str]) -> float:
    try:
        return float(fields.get("at", "0"))
    except ValueError:
        return 0.0  # verify() refuses it, with the reason


def _replace(s: LinkState, **fields: Any) -> LinkState:
    return replace(s, **fields)


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _connect(url: str) -> Any:
    """A client for `url` that has answered a PING (so a down Redis is seen at once, not at the first read)."""
    client = connect(url, timeout=TIMEOUT, read_timeout=TIMEOUT + READ_BLOCK_MS / 1000)
    client.ping()
    return client
