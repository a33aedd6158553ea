"""The lab's SMTP client: one whole transaction (EHLO, MAIL, RCPT, DATA, the message, QUIT; with STARTTLS first
where asked and offered) per call, recorded as an event whatever its outcome, and the messages it sends (a
one-liner, or a text part with a base64 attachment)."""

from __future__ import annotations

import asyncio
import base64
import random
import ssl
import time
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from govern_lab.traffic.host import client_socket, failure_reason
from govern_lab.traffic.options import TxnOptions


class _Failed(Exception):
    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


async def _reply_lines(reader: asyncio.StreamReader) -> tuple[int, list[str]]:
    """One SMTP reply (multi-line ones whole): its code and its lines."""
    lines: list[str] = []
    while True:
        try:
            raw = await reader.readline()
        except ValueError:
            raise _Failed("protocol", "reply line too long") from None
        if not raw.endswith(b"\n"):
            raise _Failed("closed")
        lines.append(raw.decode("utf-8", "replace").strip())
        if len(raw) < 4 or raw[3:4] != b"-":
            break
    if not lines[-1][:3].isdigit():
        raise _Failed("protocol", lines[-1][:120])
    return int(lines[-1][:3]), lines


async def _expect(reader: asyncio.StreamReader, want: int) -> list[str]:
    code, lines = await _reply_lines(reader)
    if code != want:
        raise _Failed(f"reply {code}", lines[-1][:200])
    return lines


async def _ehlo(reader: asyncio.StreamReader) -> set[str]:
    """The EHLO reply (250 wanted): the extensions the server offers, by keyword (the first line names the host)."""
    lines = await _expect(reader, 250)
    return {line[4:].split(" ", 1)[0].upper() for line in lines[1:]}


def message_body(head: str, src: str, role: str, size: int, rng: random.Random) -> bytes:
    """A message of about `size` bytes (headers included), ending with the DATA terminator: a short text part and a
    base64 attachment of random bytes, as a real mail with a document attached looks on the wire (76-character
    lines, CRLF, no line starting with a dot)."""
    text = f"A message from govern's flood lab ({role} sender {src}).\r\n"
    mime = (
        'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="lab"\r\n\r\n'
        f"--lab\r\nContent-Type: text/plain\r\n\r\n{text}\r\n"
        "--lab\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        'Content-Disposition: attachment; filename="lab.bin"\r\n\r\n'
    )
    tail = "\r\n--lab--\r\n.\r\n"
    room = max(0, size - len(head) - len(mime) - len(tail))
    raw = rng.randbytes(room * 57 // 78)  # 57 raw bytes make one 76-character line plus CRLF
    attachment = base64.encodebytes(raw).replace(b"\n", b"\r\n")
    return (head + mime).encode() + attachment + tail.encode()


def opportunistic() -> ssl.SSLContext:
    """TLS between MTAs, the lab's senders' and its bots': encrypted, the certificate not checked (the lab's is
    self-signed)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@dataclass
class _Txn:
    n: int
    src: str
    dst: str
    stage: str = "connect"


class Transactions:
    """The transactions of one legit or trusted run, and how to make one."""

    def __init__(self, role: str, opts: TxnOptions, t0: float) -> None:
        self.role = role
        self.opts = opts
        self.t0 = t0
        self.events: list[dict[str, Any]] = []
        self.domain = f"{role}.lab.test"

    def _message(self, t: _Txn) -> bytes:
        head = (
            f"From: <sender@{self.domain}>\r\nTo: <rcpt@lab.test>\r\nSubject: lab message {t.n}\r\n"
            f"Date: {formatdate()}\r\nMessage-ID: <{self.opts.seed}.{t.n}.{time.time_ns()}@{self.domain}>\r\n"
        )
        lo, hi = self.opts.size_kb
        if hi <= 0:
            return f"{head}\r\nA small message from govern's flood lab ({self.role} sender {t.src}).\r\n.\r\n".encode()
        rng = random.Random(self.opts.seed * 1_000_003 + t.n)
        return message_body(head, t.src, self.role, round(1024 * rng.uniform(lo, hi)), rng)

    def _steps(self, t: _Txn) -> list[tuple[str, bytes, int]]:
        """After EHLO, one command at a time: each stage, what is sent and the reply code it wants."""
        return [
            ("mail", f"MAIL FROM:<sender@{self.domain}>\r\n".encode(), 250),
            ("rcpt", b"RCPT TO:<rcpt@lab.test>\r\n", 250),
            ("data", b"DATA\r\n", 354),
            ("message", self._message(t), 250),
            ("quit", b"QUIT\r\n", 221),
        ]

    async def _converse(self, t: _Txn) -> None:
        o = self.opts
        loop = asyncio.get_running_loop()
        sock = client_socket(t.src, t.dst)
        writer: asyncio.StreamWriter | None = None
        try:
            if o.banner_timeout is None:
                async with asyncio.timeout(o.timeout):
                    await loop.sock_connect(sock, (t.dst, o.port))
                    t.stage = "banner"
                    reader, writer = await asyncio.open_connection(sock=sock)
                    await _expect(reader, 220)
            else:  # a real MTA: its connect timeout, then a long wait for the banner
                async with asyncio.timeout(o.timeout):
                    await loop.sock_connect(sock, (t.dst, o.port))
                t.stage = "banner"
                reader, writer = await asyncio.open_connection(sock=sock)
                async with asyncio.timeout(o.banner_timeout):
                    await _expect(reader, 220)
            offered = await self._hello(t, reader, writer)
            if o.starttls and "STARTTLS" in offered:
                t.stage = "starttls"
                if o.pause > 0:
                    await asyncio.sleep(o.pause)
                async with asyncio.timeout(o.cmd_timeout):
                    writer.write(b"STARTTLS\r\n")
                    await writer.drain()
                    await _expect(reader, 220)
                    await writer.start_tls(opportunistic())
                offered = await self._hello(t, reader, writer)
            # As real MTAs do (Postfix, Exim, Exchange): where the server offers PIPELINING, MAIL, RCPT and DATA go
            # in one write, and the message with QUIT; the server's replies then come several to a segment.
            steps = self._steps(t)
            pipelined = o.pipelining and "PIPELINING" in offered
            batches = [steps[:3], steps[3:]] if pipelined else [[step] for step in steps]
            for batch in batches:
                t.stage = batch[0][0]
                if o.pause > 0 and t.stage != "message":  # the message follows the 354 without a pause
                    await asyncio.sleep(o.pause)
                async with asyncio.timeout(o.cmd_timeout):
                    writer.write(b"".join(line for _, line, _ in batch))
                    await writer.drain()
                    for stage, _, want in batch:
                        t.stage = stage
                        await _expect(reader, want)
        finally:
            if writer is not None:
                writer.close()
            else:
                sock.close()

    async def _hello(self, t: _Txn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> set[str]:
        """EHLO, after the client's pause; what the server offers."""
        t.stage = "ehlo"
        if self.opts.pause > 0:
            await asyncio.sleep(self.opts.pause)
        async with asyncio.timeout(self.opts.cmd_timeout):
            writer.write(f"EHLO relay.{self.domain}\r\n".encode())
            await writer.drain()
            return await _ehlo(reader)

    async def one(self, n: int, src: str, dst: str) -> dict[str, Any]:
        """Run transaction `n` from `src` to `dst` and record it; never raises except on cancellation."""
        t = _Txn(n, src, dst)
        start, wall = time.monotonic(), time.time()
        ok, cut, reason, detail = False, False, None, None
        whole = asyncio.timeout(self.opts.txn_timeout)
        try:
            async with whole:
                await self._converse(t)
            ok = True
        except TimeoutError:
            reason = "transaction timeout" if whole.expired() else "timeout"
        except _Failed as f:
            reason, detail = f.reason, f.detail
        except asyncio.CancelledError:
            cut, reason = True, "cut"
            raise
        except Exception as exc:  # a failed transaction is data, whatever the cause
            reason = failure_reason(exc)
        finally:
            end = time.monotonic()
            ev = {
                "n": n,
                "t_start": round(start - self.t0, 4),
                "t_end": round(end - self.t0, 4),
                "wall": round(wall, 3),
                "src": src,
                "dst": dst,
                "ok": ok,
                "stage": None if ok else t.stage,
                "reason": reason,
                "detail": detail,
                "latency": round(end - start, 4),
                "cut": cut,
            }
            self.events.append(ev)
        return ev
