"""The flood lab's traffic generators against a small SMTP responder in a real namespace: they make the
connections and transactions they claim, hogs really starve legitimate senders of a slot-limited MTA, and
spoofed SYNs arrive from the bot range (counted by nftables in the MX namespace)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from govern_lab.traffic import host, options, senders
from tests.netns import MX4, MX6, Lab, Netns

REPO = Path(__file__).resolve().parents[2]


class Responder:
    """An MTA stand-in in a namespace: banner, EHLO/MAIL/RCPT/DATA/QUIT, at most `slots` sessions at once.

    Beyond `slots` it stops accepting, so new connections wait in the kernel's listen queue, as they do when every
    smtpd process is busy. A session silent for `idle_timeout` gets a 421 and is closed (smtpd_timeout; any byte
    resets it). With `greet_delay` the banner waits that long, and a client that spoke first counts as a pregreet.
    """

    BANNER = b"220 mx.lab.test ESMTP test responder\r\n"

    def __init__(
        self,
        ns: Netns,
        port: int = 25,
        slots: int = 100,
        backlog: int = 128,
        idle_timeout: float = 60.0,
        greet_delay: float = 0.0,
    ) -> None:
        self.slots, self.idle_timeout, self.greet_delay = slots, idle_timeout, greet_delay
        self.accepted = self.active = self.max_active = self.pregreet = self.delivered = self.idle_drops = 0
        self.peers: Counter[str] = Counter()
        with ns.entered():
            self.lsock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("::", port))
        self.lsock.listen(backlog)
        self.lsock.setblocking(False)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)
        self._thread.start()
        self._ready.wait(5)

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._ready.set()
        sessions: set[asyncio.Task[None]] = set()
        free = asyncio.Semaphore(self.slots)

        def done(task: asyncio.Task[None]) -> None:
            sessions.discard(task)
            free.release()

        async def serve() -> None:
            while True:
                await free.acquire()
                try:
                    conn, addr = await self.loop.sock_accept(self.lsock)
                except BaseException:
                    free.release()
                    raise
                task = asyncio.create_task(self._session(conn, str(addr[0]).removeprefix("::ffff:")))
                sessions.add(task)
                task.add_done_callback(done)

        server = asyncio.create_task(serve())
        await self._stop.wait()
        server.cancel()
        for t in list(sessions):
            t.cancel()
        await asyncio.gather(server, *sessions, return_exceptions=True)

    async def _session(self, conn: socket.socket, peer: str) -> None:
        self.accepted += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.peers[peer] += 1
        loop = self.loop
        try:
            conn.setblocking(False)
            if self.greet_delay:
                await asyncio.sleep(self.greet_delay)
            with contextlib.suppress(BlockingIOError):
                if conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                    self.pregreet += 1
            await loop.sock_sendall(conn, self.BANNER)
            buf, in_data = b"", False
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout):
                        data = await loop.sock_recv(conn, 4096)
                except TimeoutError:
                    self.idle_drops += 1
                    await loop.sock_sendall(conn, b"421 4.4.2 mx.lab.test Error: timeout exceeded\r\n")
                    return
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    line = line.rstrip(b"\r")
                    if in_data:
                        if line == b".":
                            in_data = False
                            self.delivered += 1
                            await loop.sock_sendall(conn, b"250 2.0.0 Ok: queued\r\n")
                        continue
                    verb = line[:4].upper()
                    if verb == b"QUIT":
                        await loop.sock_sendall(conn, b"221 2.0.0 Bye\r\n")
                        return
                    if verb == b"DATA":
                        in_data = True
                        reply = b"354 End data with <CR><LF>.<CR><LF>\r\n"
                    elif verb == b"EHLO":
                        reply = b"250-mx.lab.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
                    elif verb in (b"HELO", b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                        reply = b"250 2.0.0 Ok\r\n"
                    else:
                        reply = b"502 5.5.2 Error: command not recognized\r\n"
                    await loop.sock_sendall(conn, reply)
        except OSError:
            pass
        finally:
            self.active -= 1
            conn.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self.lsock.close()
        self.loop.close()

    def __enter__(self) -> Responder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start(ns: Netns, role: str, out: Path, *args: str) -> subprocess.Popen[str]:
    """The generator as the scenario runner starts it: its own process inside a namespace."""
    cmd = ["ip", "netns", "exec", ns.name, sys.executable, "-m", "govern_lab.traffic", role, *args]
    return subprocess.Popen(
        [*cmd, "--json-out", str(out)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen[str], out: Path, timeout: float = 30) -> tuple[dict[str, Any], str]:
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr
    assert stderr == ""
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc, stdout


def run(ns: Netns, role: str, out: Path, *args: str, timeout: float = 30) -> tuple[dict[str, Any], str]:
    return finish(start(ns, role, out, *args), out, timeout)


def established(ns: Netns, prefix: str) -> Counter[str]:
    """Established port-25 connections per peer address in `ns`, as the kernel lists them (ss)."""
    peers: Counter[str] = Counter()
    for line in ns.sh("ss", "-Htn", "state", "established", "( sport = :25 )").splitlines():
        peer = line.split()[-1].rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:")
        if peer.startswith(prefix):
            peers[peer] += 1
    return peers


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


TXN_KEYS = {"n", "t_start", "t_end", "wall", "src", "dst", "ok", "stage", "reason", "detail", "latency", "cut"}


def test_legit_transactions_succeed_and_stop_by_themselves(lab: Lab, tmp_path: Path) -> None:
    out = tmp_path / "legit.json"
    with Responder(lab.mx, slots=20) as srv:
        t0, wall = time.monotonic(), time.time()
        doc, stdout = run(
            lab.net,
            "legit",
            out,
            *("--dst", MX4, "--dst", MX6, "--rate", "10", "--duration", "3"),
            *("--sources", "198.51.100.0/29", "--sources", "2001:db8:51::/125"),
        )
        elapsed = time.monotonic() - t0
        delivered, peers = srv.delivered, dict(srv.peers)
    assert elapsed < 3 + 2.5  # interpreter start-up included
    assert set(doc) == {"role", "args", "started", "duration", "stopped_by", "events", "totals"}
    assert doc["role"] == "legit" and doc["args"]["rate"] == 10 and doc["args"]["dst"] == [MX4, MX6]
    assert abs(doc["started"] - wall) < 2 and doc["duration"] <= 3.1
    events = doc["events"]
    assert len(events) == 30 and delivered == 30
    assert all(set(e) == TXN_KEYS for e in events)
    assert all(e["ok"] and e["stage"] is None and e["reason"] is None and not e["cut"] for e in events)
    starts = sorted(e["t_start"] for e in events)
    assert all(abs(t - k / 10) < 0.3 for k, t in enumerate(starts))  # one every 1/rate s
    srcs = {e["src"] for e in events}
    assert srcs == {f"198.51.100.{i}" for i in range(1, 7)} | {f"2001:db8:51::{i}" for i in range(1, 8)}
    assert set(peers) == srcs
    assert {e["dst"] for e in events} == {MX4, MX6}
    assert doc["totals"]["success_rate"] == 1.0 and doc["totals"]["transactions"] == 30
    assert stdout.count("\n") == 1 and stdout.startswith("legit: 30 transactions, 30 ok (100.0%)")


def test_trusted_keeps_parallel_transactions_going(lab: Lab, tmp_path: Path) -> None:
    with Responder(lab.mx) as srv:
        doc, stdout = run(
            lab.net, "trusted", tmp_path / "t.json", "--dst", MX4, "--dst", MX6, "--sources", "192.0.2.10/32",
            "--parallel", "5", "--duration", "1.5",
        )  # fmt: skip
        delivered, max_active, peers = srv.delivered, srv.max_active, set(srv.peers)
    t = doc["totals"]
    assert t["failed"] == 0 and t["ok"] >= 50 and t["cut"] <= 5  # back to back, so some are in flight at the end
    assert delivered >= t["ok"] and max_active == 5 and peers == {"192.0.2.10"}
    assert {e["src"] for e in doc["events"]} == {"192.0.2.10"} and {e["dst"] for e in doc["events"]} == {MX4}
    assert doc["stopped_by"] == "duration" and stdout.startswith("trusted: ")
    # with a rate, the workers share it
    with Responder(lab.mx):
        paced, _ = run(
            lab.net, "trusted", tmp_path / "p.json", "--dst", MX4, "--parallel", "5", "--rate", "20", "--duration", "1",
        )  # fmt: skip
    pt = paced["totals"]
    assert pt["ok"] + pt["cut"] == 20 and pt["ok"] >= 18 and pt["failed"] == 0


def test_sigterm_ends_a_run_cleanly_with_what_it_has(lab: Lab, tmp_path: Path) -> None:
    out = tmp_path / "legit.json"
    with Responder(lab.mx):
        proc = start(lab.net, "legit", out, "--dst", MX4, "--rate", "5", "--duration", "60")
        time.sleep(1.5)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        doc, _ = finish(proc, out, timeout=10)
        assert time.monotonic() - t0 < 2
    assert doc["stopped_by"] == "SIGTERM" and 1 < doc["duration"] < 3
    assert len(doc["events"]) >= 3 and all(e["ok"] or e["cut"] for e in doc["events"])


def test_in_process_api(lab: Lab) -> None:
    # The last of the 20 starts at 3.8 s and must end within the run's 4 s to be "finished": 200 ms for a whole
    # transaction against the Responder (at 20 a second, 50 ms, a CI run on a busy machine missed it once).
    opts = options.TxnOptions(dst=(MX6,), duration=4.0, rate=5)
    with Responder(lab.mx), lab.net.entered():
        doc = asyncio.run(senders.legit(opts))
    assert doc["totals"]["ok"] == 20 and doc["stopped_by"] == "finished"


def test_hogs_starve_legit_senders_who_succeed_without_them(lab: Lab, tmp_path: Path) -> None:
    legit = ("--dst", MX4, "--rate", "5", "--timeout", "1", "--txn-timeout", "5")
    with Responder(lab.mx, slots=10, backlog=64) as srv:
        calm, _ = run(lab.net, "legit", tmp_path / "calm.json", *legit, "--duration", "2")
        assert calm["totals"]["ok"] == 10 and calm["totals"]["success_rate"] == 1.0

        hogs = start(
            lab.net, "hogs", tmp_path / "hogs.json", "--dst", MX4, "--sources", "198.18.7.0/29", "--count", "4",
            "--per-source", "5", "--ramp", "0.2", "--duration", "6",
        )  # fmt: skip
        wait_for(lambda: sum(established(lab.mx, "198.18.7.").values()) == 20, 5, "20 hog connections")
        assert srv.active == 10  # every slot taken; the other 10 hogs wait in the listen queue
        flood, _ = run(lab.net, "legit", tmp_path / "flood.json", *legit, "--duration", "3")
        hog, _ = finish(hogs, tmp_path / "hogs.json")
    s = flood["totals"]
    assert s["ok"] == 0 and s["transactions"] >= 8
    assert s["failures"] == {"banner: timeout": s["transactions"]}  # connected to the queue, never greeted
    t = hog["totals"]
    assert t["established"] == 20 and t["held_at_end"] == 20 and t["max_held"] == 20
    assert t["dropped"] == t["refused"] == t["timeouts"] == t["errors"] == t["reconnects"] == 0
    assert hog["stopped_by"] == "duration" and len(hog["events"]) == 6
    assert hog["events"][-1]["held"] == 20 and sum(r["established"] for r in hog["events"]) == 20


def test_hogs_reconnect_when_dropped_and_drip_keeps_them(lab: Lab, tmp_path: Path) -> None:
    common = ("--dst", MX4, "--dst", MX6, "--per-source", "2", "--ramp", "0", "--retry-delay", "0.1", "--duration", "3")
    with Responder(lab.mx, idle_timeout=0.7) as srv:
        silent = start(lab.net, "hogs", tmp_path / "silent.json", *common, "--sources", "198.18.8.0/30")
        drip = start(
            lab.net,
            "hogs",
            tmp_path / "drip.json",
            *common,
            "--sources",
            "2001:db8:bad:9::/126",
            "--count",
            "2",
            "--drip",
            "0.2",
        )
        s, _ = finish(silent, tmp_path / "silent.json")
        d, _ = finish(drip, tmp_path / "drip.json")
        idle_drops = srv.idle_drops
    # silent: dropped every ~0.7 s by the server's idle timeout, and back each time
    st = s["totals"]
    assert st["dropped"] >= 4 * 3 and st["reconnects"] >= st["dropped"] - 4 and st["established"] >= 4 * 4
    assert idle_drops >= st["dropped"]
    # drip: a byte every ~0.2 s resets the server's timer, so the four connections are never dropped
    dt = d["totals"]
    assert dt["established"] == dt["held_at_end"] == 4 and dt["dropped"] == dt["reconnects"] == 0
    assert dt["bytes_sent"] >= 4 * 10


def test_reconnect_makes_the_connections_it_claims(lab: Lab, tmp_path: Path) -> None:
    with Responder(lab.mx) as srv:
        doc, stdout = run(
            lab.net, "reconnect", tmp_path / "r.json", "--dst", MX4, "--sources", "198.18.3.0/29",
            "--rate", "20", "--duration", "2",
        )  # fmt: skip
        wait_for(lambda: srv.active == 0, 3, "the responder to finish its sessions")
        server = {p: n for p, n in srv.peers.items() if p.startswith("198.18.3.")}
    t = doc["totals"]
    assert t["sources"] == 6 and set(server) == {f"198.18.3.{i}" for i in range(1, 7)}
    assert t["established"] >= 0.8 * 6 * 20 * 2  # 20 a second from each of 6 sources
    assert abs(sum(server.values()) - t["established"]) <= 6  # at most one in flight per source at the end
    assert t["completed"] >= t["established"] - 6 and t["errors"] == t["dropped"] == 0
    assert t["bytes_sent"] == 6 * t["completed"]  # "QUIT\r\n" each
    assert stdout.startswith("reconnect: 6 sources;")


def test_pretalk_speaks_before_the_banner(lab: Lab, tmp_path: Path) -> None:
    with Responder(lab.mx, greet_delay=0.3) as srv:
        proc = start(
            lab.net, "pretalk", tmp_path / "p.json", "--dst", MX4, "--sources", "198.18.4.0/30", "--per-source", "3",
            "--duration", "2",
        )  # fmt: skip
        wait_for(lambda: srv.pregreet == 6, 4, "six pregreets")
        peers = established(lab.mx, "198.18.4.")
        doc, _ = finish(proc, tmp_path / "p.json")
    assert peers == {"198.18.4.1": 3, "198.18.4.2": 3}
    t = doc["totals"]
    assert t["established"] == t["held_at_end"] == 6 and t["dropped"] == 0
    assert t["bytes_sent"] == 6 * len(b"EHLO pretalk.bots.lab.test\r\n")


def test_swarm_of_500_sources(lab: Lab, tmp_path: Path) -> None:
    with Responder(lab.mx, slots=2000, backlog=1024) as srv:
        proc = start(
            lab.net, "swarm", tmp_path / "s.json", "--dst", MX4, "--dst", MX6, "--count", "500", "--per-source", "2",
            "--ramp", "1", "--duration", "4", "--seed", "7",
        )  # fmt: skip
        time.sleep(3)
        v4, v6 = established(lab.mx, "198.18."), established(lab.mx, "2001:db8:bad:")
        doc, _ = finish(proc, tmp_path / "s.json")
        accepted = srv.accepted
    t = doc["totals"]
    assert len(v4) == 250 and len(v6) == 250  # distinct sources, half of them IPv6
    assert set(Counter(v4.values())) | set(Counter(v6.values())) <= {1, 2}  # each holds one or two
    assert sum(v4.values()) + sum(v6.values()) == t["held_at_end"] == t["connections_wanted"] == accepted
    assert t["sources"] == 500 and t["dropped"] == t["errors"] == t["timeouts"] == 0
    assert 500 < t["held_at_end"] < 1000


SYN = "tcp dport 25 tcp flags & (syn | ack) == syn"
NFT_COUNT = f"""
table inet gvtraffic {{
    counter bot4 {{ }}
    counter bot6 {{ }}
    counter syn {{ }}
    set src4 {{ type ipv4_addr; size 65536; flags dynamic; }}
    set src6 {{ type ipv6_addr; size 65536; flags dynamic; }}
    chain pre {{
        type filter hook prerouting priority raw; policy accept;
        {SYN} counter name "syn"
        {SYN} ip saddr 198.18.0.0/16 counter name "bot4" add @src4 {{ ip saddr }}
        {SYN} ip6 saddr 2001:db8:bad::/48 counter name "bot6" add @src6 {{ ip6 saddr }}
    }}
}}
"""


def _nft_json(ns: Netns, *what: str) -> list[dict[str, Any]]:
    data: dict[str, list[dict[str, Any]]] = json.loads(ns.sh("nft", "-j", "list", *what))
    return data["nftables"]


def _counter(ns: Netns, name: str) -> int:
    return next(
        int(o["counter"]["packets"]) for o in _nft_json(ns, "counter", "inet", "gvtraffic", name) if "counter" in o
    )


def _set_size(ns: Netns, name: str) -> int:
    return sum(len(o["set"].get("elem", [])) for o in _nft_json(ns, "set", "inet", "gvtraffic", name) if "set" in o)


def test_synflood_spoofed_syns_arrive_from_the_bot_range(lab: Lab, tmp_path: Path) -> None:
    subprocess.run(["ip", "netns", "exec", lab.mx.name, "nft", "-f", "-"], input=NFT_COUNT, text=True, check=True)
    doc, stdout = run(
        lab.net, "synflood", tmp_path / "f.json", "--dst", MX4, "--dst", MX6, "--pps", "300", "--duration", "2",
        "--sources", "198.18.0.0/16", "--sources", "2001:db8:bad::/48",
    )  # fmt: skip
    time.sleep(0.2)
    counts = {n: _counter(lab.mx, n) for n in ("syn", "bot4", "bot6")}
    srcs = {n: _set_size(lab.mx, n) for n in ("src4", "src6")}
    t = doc["totals"]
    assert 0.95 * 600 <= t["sent"] <= 600 and t["errors"] == 0
    assert counts["bot4"] + counts["bot6"] == counts["syn"] == t["sent"]  # every SYN arrived, none from elsewhere
    assert counts["bot4"] > 200 and counts["bot6"] > 200
    assert srcs["src4"] >= 0.95 * counts["bot4"] and srcs["src6"] == counts["bot6"]  # random, spoofed sources
    assert sum(r["sent"] for r in doc["events"]) == t["sent"] and len(doc["events"]) == 2
    assert stdout.startswith(f"synflood: {t['sent']} SYNs sent")


def test_refuses_targets_and_namespaces_outside_the_lab(lab: Lab, tmp_path: Path) -> None:
    with pytest.raises(options.TrafficError, match=r"host's network namespace|PID 1|ip netns add"):
        host.check_namespace()
    with lab.net.entered():
        assert host.check_namespace() == lab.net.name
    out = tmp_path / "never.json"
    for args in (
        ("synflood", "--dst", "192.0.2.1", "--duration", "1"),
        ("synflood", "--dst", MX4, "--sources", "198.51.100.0/24", "--duration", "1"),
        ("hogs", "--dst", "8.8.8.8", "--duration", "1"),
        ("legit", "--dst", MX4, "--sources", "10.0.0.0/8", "--duration", "1"),
        ("legit", "--dst", MX4, "--duration", "99999"),
    ):
        proc = start(lab.net, args[0], out, *args[1:])
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 2 and ("outside" in err or "duration" in err), err
        assert not out.exists()
