"""The control channel between the CLI and the daemon: one JSON request and one JSON reply per connection over
a unix socket that only root may use (socket mode 0600, the peer's uid checked with SO_PEERCRED on every
connection, and a directory govern creates with mode 0700 or an existing one that others cannot write)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from govern import protocol
from govern.errors import DaemonUnavailable, GovernError, UsageError

log = logging.getLogger("govern.control")
MAX_REQUEST = 1 << 20
LISTEN_BACKLOG = 256


@dataclass
class Request:
    """A request handed to the daemon's main loop; `reply` is filled there and `done` set."""

    body: dict[str, Any]
    reply: dict[str, Any] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _recv_all(conn: socket.socket) -> bytes:
    chunks, size = [], 0
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_REQUEST:
            raise ValueError("request too large")
        if chunk.endswith(b"\n"):
            break
    return b"".join(chunks)


def unsafe_directory(directory: str) -> str | None:
    """Why the existing `directory` must not hold the control socket, or None: anyone but root and its owner may
    write in it without the sticky bit, so they could replace the socket with their own and answer the CLI."""
    try:
        st = os.stat(directory)
    except OSError as exc:
        return f"cannot use {directory}: {exc.strerror or exc}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{directory} is not a directory"
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        return (
            f"{directory} (mode {stat.S_IMODE(st.st_mode):04o}) may be written by others without the sticky bit: "
            "someone else could replace govern's control socket there; choose a directory only root may write"
        )
    if st.st_uid not in (0, os.geteuid()):
        return f"{directory} belongs to uid {st.st_uid}, who could replace govern's control socket there"
    return None


def prepare_directory(directory: str) -> None:
    """The socket's directory: created root-only (0700) when it is missing; an existing one is used as it is, never
    chmod'ed (with socket = "/tmp/govern.sock" that would be /tmp), and refused when it is unsafe. The socket's own
    mode (0600) and the peer's uid keep others out either way."""
    try:
        # Missing parents get the usual mode: only the socket's own directory is govern's to make private.
        os.makedirs(os.path.dirname(directory) or "/", exist_ok=True)
        os.mkdir(directory, 0o700)
    except FileExistsError:
        why = unsafe_directory(directory)
        if why:
            raise UsageError(f"daemon.socket: {why}") from None
        return
    except OSError as exc:
        raise UsageError(f"daemon.socket: cannot create {directory}: {exc.strerror or exc}") from None
    os.chmod(directory, 0o700)  # whatever the umask did: this directory is the one govern created


def prepare_place(path: str) -> None:
    """Make ready the control socket's place: its directory (prepare_directory), and no stale socket at `path`.
    `govern run` calls it before it touches the kernel, so a bad place is refused while nothing is changed yet."""
    prepare_directory(os.path.dirname(path))
    _remove_stale(path)


def _remove_stale(path: str) -> None:
    """Remove a socket left by a daemon that is gone; anything else at `path` is the operator's and stays."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise UsageError(f"daemon.socket: {path} exists and is not a socket; govern will not replace it")
    if ping(path):
        raise GovernError(f"another govern daemon is already answering on {path}")
    os.unlink(path)


class ControlServer:
    """Accepts CLI connections in a thread and queues their requests for the main loop."""

    def __init__(self, path: str, requests: queue.Queue[Request | None], timeout: float = 30.0) -> None:
        self.path = path
        self.requests = requests
        self.timeout = timeout
        prepare_place(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(path)
            os.chmod(path, 0o600)
        except OSError as exc:
            self.sock.close()
            raise GovernError(f"cannot listen on {path}: {exc.strerror or exc}") from None
        finally:
            os.umask(old)
        # A burst of CLI calls (a script, several operators) must queue, not fail with EAGAIN.
        self.sock.listen(LISTEN_BACKLOG)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="govern-control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                if self._stop.is_set():
                    return
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(self.timeout)
            try:
                # Read before judging: closing on an unread request resets the connection, and the refused
                # client would see a broken pipe instead of the reason.
                raw = _recv_all(conn)
                if _peer_uid(conn) != 0:
                    self._send(conn, {"ok": False, "error": "permission denied: the govern control socket is root's"})
                    return
                body = json.loads(raw or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("request must be a JSON object")
            except RecursionError:  # JSON nested deeper than the parser goes: the request's fault, not ours
                with contextlib.suppress(OSError):
                    self._send(conn, {"ok": False, "error": "bad request: nested too deep", "refused": True})
                return
            except ValueError as exc:  # not JSON, not an object, too large: the client's to fix, like any refusal
                with contextlib.suppress(OSError):
                    self._send(conn, {"ok": False, "error": f"bad request: {exc}", "refused": True})
                return
            except OSError as exc:
                with contextlib.suppress(OSError):
                    self._send(conn, {"ok": False, "error": f"bad request: {exc}"})
                return
            req = Request(body)
            self.requests.put(req)
            if not req.done.wait(self.timeout):
                req.reply = {"ok": False, "error": "the daemon did not answer in time"}
            with contextlib.suppress(OSError):
                self._send(conn, req.reply)

    @staticmethod
    def _send(conn: socket.socket, reply: dict[str, Any]) -> None:
        conn.sendall(json.dumps(reply, default=str).encode() + b"\n")

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(timeout=2)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def call(path: str, body: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Send one request to the daemon and return its reply; DaemonUnavailable when nobody answers."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        _connect(s, path, timeout)
        s.sendall(json.dumps(body).encode() + b"\n")
        raw = _recv_all(s)
    except (FileNotFoundError, ConnectionRefusedError):
        raise DaemonUnavailable(
            f"the govern daemon is not running (no one answers on {path}); start it with 'govern run'"
        ) from None
    except PermissionError:
        raise DaemonUnavailable(f"permission denied on {path}: govern's control socket is for root only") from None
    except OSError as exc:
        raise DaemonUnavailable(f"cannot talk to the govern daemon on {path}: {exc}") from None
    finally:
        s.close()
    try:
        reply = json.loads(raw)
    except ValueError:
        raise DaemonUnavailable(f"the govern daemon on {path} sent an unreadable reply") from None
    if not isinstance(reply, dict):
        raise DaemonUnavailable(f"the govern daemon on {path} sent an unreadable reply")
    return reply


def _connect(s: socket.socket, path: str, timeout: float) -> None:
    """Connect, waiting while the daemon's listen queue is full: a unix socket with a timeout refuses at once
    (EAGAIN) instead of waiting for room, and a burst of callers must queue, not fail."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            s.connect(path)
            return
        except BlockingIOError:
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def ping(path: str) -> bool:
    try:
        return bool(call(path, protocol.to_wire(protocol.Ping()), timeout=2.0).get("ok"))
    except DaemonUnavailable:
        return False


Handler = Callable[[dict[str, Any]], dict[str, Any]]
