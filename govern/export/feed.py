"""The pull feed: the daemon serves plain, netset and json over HTTP to ISPs that pull, behind a bearer token.

The server runs in threads of its own and serves the last snapshot the tick loop published: publishing swaps one
reference, so no lock is held across ticks and a slow client never delays a tick. The token is read once, from a
file only root may read (mode 0600 or stricter), and compared in constant time.
"""

from __future__ import annotations

import hmac
import logging
import os
import stat
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from govern.addr import Prefix, PrefixSet
from govern.config import Config
from govern.errors import ConfigError, KernelError
from govern.export.formats import FEED_FORMATS, Target, render
from govern.model import Block

log = logging.getLogger("govern.export")
PATHS = {"/plain": "plain", "/netset": "netset", "/json": "json"}


def read_token(path: str) -> bytes:
    """The bearer token; refused unless the file is a regular file that neither group nor others may read."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path} is not a regular file", key="export.token_file")
        if st.st_mode & 0o077:
            raise ConfigError(
                f"{path} is mode {stat.S_IMODE(st.st_mode):04o}; the feed's token file must be 0600 (chmod 600 {path})",
                key="export.token_file",
            )
        with open(path, "rb") as fh:
            token = fh.read().strip()
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist", key="export.token_file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}", key="export.token_file") from None
    if len(token) < 16:
        raise ConfigError(f"the token in {path} is shorter than 16 characters", key="export.token_file")
    return token


class FeedServer:
    """Serves GET /plain, /netset and /json; `publish` replaces what they return."""

    def __init__(self, listen: str, token: bytes) -> None:
        host, _, port = listen.rpartition(":")
        self._docs: Mapping[str, tuple[bytes, str]] = {}
        self._token = b"Bearer " + token
        # Requests answered, by path (one of PATHS, else "other") and status code: govern.metrics reads it.
        self.requests: Counter[tuple[str, int]] = Counter()
        self._counting = threading.Lock()  # the handlers run in threads of their own
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                given = self.headers.get("Authorization", "").encode()
                # compare_digest takes time independent of where the strings differ.
                if not hmac.compare_digest(given, server._token):
                    self._send(
                        HTTPStatus.UNAUTHORIZED,
                        b"a valid bearer token is required\n",
                        "text/plain",
                        {"WWW-Authenticate": 'Bearer realm="govern"'},
                    )
                    return
                fmt = PATHS.get(self.path.split("?", 1)[0])
                doc = server._docs.get(fmt or "")
                if doc is None:
                    self._send(HTTPStatus.NOT_FOUND, b"try /plain, /netset or /json\n", "text/plain")
                    return
                self._send(HTTPStatus.OK, doc[0], doc[1])

            def _send(self, code: HTTPStatus, body: bytes, ctype: str, extra: Mapping[str, str] = {}) -> None:
                path = self.path.split("?", 1)[0]
                with server._counting:
                    server.requests[(path if path in PATHS else "other", int(code))] += 1
                self.send_response(code)
                self.send_header("Content-Type", f"{ctype}; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("feed: %s %s", self.address_string(), format % args)

        cls = type("FeedHTTPServer", (ThreadingHTTPServer,), {"address_family": _family(host)})
        self.httpd = cls((host.strip("[]"), int(port)), Handler)
        self.httpd.daemon_threads = True
        self.address = self.httpd.server_address
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="govern-feed", daemon=True)
        self._thread.start()

    def counts(self) -> dict[tuple[str, int], int]:
        """Requests answered so far, by path and status code."""
        with self._counting:
            return dict(self.requests)

    def publish(self, docs: Mapping[str, tuple[bytes, str]]) -> None:
        """Swap in a new snapshot: format -> (body, content type)."""
        self._docs = dict(docs)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=2)


def _family(host: str) -> int:
    import socket

    return socket.AF_INET6 if ":" in host else socket.AF_INET


LOCAL_EVERY = 30.0  # seconds between reads of the host's addresses: they rarely change, and never mid-flood


class Feed:
    """The daemon's side: the server, and the snapshot rebuilt from the state after each tick."""

    def __init__(self, config: Config) -> None:
        ex = config["export"]
        self.config = config
        self.server = FeedServer(ex["listen"], read_token(ex["token_file"]))
        self._local: tuple[Prefix, ...] = ()
        self._local_at = -LOCAL_EVERY

    def update(self, blocks: Iterable[Block], allow: PrefixSet, now: float) -> None:
        from govern.export.local import host_addresses
        from govern.export.select import ExportPolicy, select

        if now - self._local_at >= LOCAL_EVERY:
            self._local, self._local_at = host_addresses()[0], now
        sel = select(blocks, allow, self._local, ExportPolicy.from_config(self.config["export"]), now)
        target = Target((), ())  # the feed formats name sources only
        self.server.publish(
            {fmt: (render(fmt, sel, target, now).encode(), ctype) for fmt, ctype in FEED_FORMATS.items()}
        )

    def close(self) -> None:
        self.server.close()


def start(config: Config) -> Feed | None:
    """The feed if `export.listen` is set; ConfigError for a bad token file, KernelError if it cannot listen."""
    if not config["export"]["listen"]:
        return None
    try:
        feed = Feed(config)
    except OSError as exc:
        raise KernelError(f"the export feed cannot listen on {config['export']['listen']}: {exc}") from None
    log.info("export feed on http://%s/ (plain, netset, json)", config["export"]["listen"])
    return feed
