"""The whole daemon against the real kernel: a listener on port 25 in an MX namespace, clients from many source
addresses in another, and `govern run` governing the MX namespace (issue 2, items a-g)."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from pathlib import Path

from govern.addr import Prefix, PrefixSet
from tests.kernel.daemon_harness import Daemon, govern, nft_set, running, tables, wait_for, write_config
from tests.netns import MX4, MX6, Lab, Listener, SmtpListener, connect, converse


def open_many(lab: Lab, sources: list[str], per_source: int, dst: str) -> list[socket.socket]:
    out = []
    with lab.net.entered():
        for src in sources:
            for _ in range(per_source):
                out.append(connect(src, dst, 25))
    return out


def talk(socks: list[socket.socket]) -> None:
    """Read the banner and hold a dialogue the MTA answers, as an MTA does, then send part of a message: the server
    waits for the rest, so the session is busy (a session without progress is cut when the host is under pressure)."""
    for s in socks:
        converse(s, b"EHLO client.example", b"MAIL FROM:<a@client.example>", b"RCPT TO:<b@example.net>", b"DATA")
        s.sendall(b"Subject: part of a message\r\n\r\n" + b"A line of the body, more to come.\r\n" * 8)


def reaches(lab: Lab, src: str, dst: str = MX4, timeout: float = 1.5) -> bool:
    """True when a new connection from `src` completes its handshake (its SYN was not dropped)."""
    try:
        with lab.net.entered():
            s = connect(src, dst, 25, timeout=timeout)
    except OSError:
        return False
    s.close()
    return True


def dead(s: socket.socket) -> bool:
    """The server ended this session: the client reads a reset or end of stream."""
    s.settimeout(2)
    try:
        while True:
            data = s.recv(4096)
            if not data:
                return True
            if not data.startswith(b"220"):
                return False
    except (ConnectionResetError, ConnectionAbortedError):
        return True
    except TimeoutError:
        return False


def established_from(lab: Lab, prefix: str) -> int:
    out = lab.mx.sh("ss", "-Htn", "state", "established", "( sport = :25 )")
    return sum(1 for line in out.splitlines() if prefix in line.split()[-1])


class Watch:
    """Polls the kernel's sets in the background and remembers everything that ever appeared in them."""

    def __init__(self, lab: Lab, names: tuple[str, ...]) -> None:
        self.lab, self.names = lab, names
        self.seen: dict[str, set[str]] = {n: set() for n in names}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for n in self.names:
                with contextlib.suppress(RuntimeError):
                    self.seen[n] |= nft_set(self.lab.mx, n)
            time.sleep(0.2)

    def stop(self) -> dict[str, set[str]]:
        self._stop.set()
        self._t.join(5)
        return self.seen


def covered(addresses: list[str], prefixes: set[str]) -> bool:
    inside = PrefixSet(Prefix.parse(p) for p in prefixes)
    return all(inside.covers(Prefix.parse(a)) for a in addresses)


def test_flood_blocks_prolific_sources_and_spares_allowlisted_and_ordinary(lab: Lab, tmp_path: Path) -> None:
    """(a) 20 sources x 30 connections are blocked within 10 s, their SYNs dropped and sessions ended;
    (b) an allowlisted peer with 50 connections is never in a govern set but the allow sets and keeps connecting;
    (c) 50 ordinary sources under the limits are never acted on."""
    srv = SmtpListener(lab.mx, 25)
    socks: list[socket.socket] = []
    # The test's own 750 connections, opened one after another in well under a second, are a rate a poll between
    # ticks reads as a wave's; a wave drops each new source's first SYN, which would slow the set-up by a second per
    # source. What is tested here is blocking the prolific, in any mode.
    cfg = write_config(tmp_path, "[modes]\nwave_attempts = 1000000\n")
    try:
        with running(lab.mx, cfg) as d:
            watch = Watch(lab, ("block4", "throttle4", "tight4"))
            bots = [f"198.18.1.{i}" for i in range(1, 21)]
            ordinary = [f"198.51.100.{i}" for i in range(1, 51)]
            t0 = time.monotonic()
            hogs = open_many(lab, bots, 30, MX4)
            trusted = open_many(lab, ["192.0.2.10"], 50, MX4)
            normal = open_many(lab, ordinary, 2, MX4)
            talk(normal)
            socks = hogs + trusted + normal
            # Blocked one by one, or (20 of one /24, on the default config) as their whole /24.
            assert wait_for(lambda: covered(bots, nft_set(lab.mx, "block4")), timeout=10), nft_set(lab.mx, "block4")
            took = time.monotonic() - t0
            # Their sessions are gone on the server, and the clients were told.
            assert wait_for(lambda: established_from(lab, "198.18.1.") == 0, timeout=3)
            assert all(dead(s) for s in hogs[::29])
            # New SYNs from a blocked source are dropped; the allowlisted peer and ordinary senders still connect.
            assert not reaches(lab, "198.18.1.5")
            assert reaches(lab, "192.0.2.10") and reaches(lab, "198.51.100.7")
            assert established_from(lab, "192.0.2.10") >= 50
            st = d.status()
            entries = d.ask(cmd="list")["entries"]
            listed = {e["prefix"] for e in entries}
            seen = watch.stop()
            assert "192.0.2.10" in nft_set(lab.mx, "allow4") or "192.0.2.0/24" in nft_set(lab.mx, "allow4")
            for name in ("block4", "throttle4"):
                assert not any(x.startswith("192.0.2.") for x in seen[name]), seen[name]
                assert not any(x.startswith("198.51.100.") for x in seen[name]), seen[name]
            assert covered(bots, listed) and all(p.startswith("198.18.1.") for p in listed)
            assert st["ended_sessions"] >= 600 - 20
            print(f"20 hogs blocked after {took:.1f}s")
    finally:
        for s in socks:
            s.close()
        srv.close()


def conntrack_entries(lab: Lab, src: str) -> int:
    out = lab.mx.sh("conntrack", "-L", "-p", "tcp", "-s", src, "--dport", "25", check=False)
    return sum(1 for line in out.splitlines() if line.startswith("tcp"))


def test_blocking_forgets_the_conntrack_entries_of_the_source(lab: Lab, tmp_path: Path) -> None:
    """On a host with a stateful firewall, a blocked source's conntrack entries go at once (after the resets
    they would otherwise linger in CLOSE for 10 s), and nobody else's do."""
    # The operator's own stateful firewall: it makes the kernel track every connection in this namespace.
    lab.mx.sh("nft", "add table inet operator")
    lab.mx.sh("nft", "add chain inet operator in { type filter hook input priority 0; }")
    lab.mx.sh("nft", "add rule inet operator in ct state established accept")
    srv = Listener(lab.mx, 25)
    socks: list[socket.socket] = []
    try:
        with running(lab.mx, write_config(tmp_path)) as d:
            socks = open_many(lab, ["198.18.4.1"], 5, MX4) + open_many(lab, ["198.51.100.4"], 3, MX4)
            assert conntrack_entries(lab, "198.18.4.1") == 5 and conntrack_entries(lab, "198.51.100.4") == 3
            r = d.ask(cmd="block", prefix="198.18.4.1", reason="test")
            assert r["ok"], r
            assert conntrack_entries(lab, "198.18.4.1") == 0
            assert conntrack_entries(lab, "198.51.100.4") == 3
            st = d.status()
            assert st["conntrack_forgotten"] == 5 and st["ended_sessions"] == 5
    finally:
        for s in socks:
            s.close()
        srv.close()


def test_ipv6_sources_are_blocked_per_64_and_allowlisted_v6_untouched(lab: Lab, tmp_path: Path) -> None:
    """(e) the same over IPv6: sources are grouped per /64."""
    srv = Listener(lab.mx, 25)
    socks: list[socket.socket] = []
    try:
        with running(lab.mx, write_config(tmp_path)):
            watch = Watch(lab, ("block6", "throttle6"))
            # Two hosts of one /64 together hold 30 sessions: the /64 is the source.
            bots = [f"2001:db8:bad:{n}::{h}" for n in range(1, 6) for h in (1, 2)]
            hogs = open_many(lab, bots, 15, MX6)
            trusted = open_many(lab, ["2001:db8:2::10"], 50, MX6)
            socks = hogs + trusted
            want = {f"2001:db8:bad:{n}::/64" for n in range(1, 6)}
            assert wait_for(lambda: want <= nft_set(lab.mx, "block6"), timeout=10), nft_set(lab.mx, "block6")
            assert wait_for(lambda: established_from(lab, "[2001:db8:bad:") == 0, timeout=3)
            assert not reaches(lab, "2001:db8:bad:3::77", MX6)
            assert reaches(lab, "2001:db8:2::10", MX6) and reaches(lab, "2001:db8:51::5", MX6)
            seen = watch.stop()
            assert not any(x.startswith("2001:db8:2:") for n in seen for x in seen[n]), seen
    finally:
        for s in socks:
            s.close()
        srv.close()


def count_block4(lab: Lab) -> int:
    return len(nft_set(lab.mx, "block4"))


def test_restart_and_kill_keep_1000_blocks_enforced_throughout(lab: Lab, tmp_path: Path) -> None:
    """(d) restart (SIGTERM) and kill -9 with 1,000 active blocks: enforced throughout, nothing re-added."""
    srv = Listener(lab.mx, 25)
    cfg = write_config(tmp_path)
    d = Daemon(lab.mx, cfg).start()
    try:
        for i in range(1000):
            r = d.ask(cmd="block", prefix=f"198.18.{100 + i // 250}.{i % 250 + 1}", duration="1h", reason="test")
            assert r["ok"], r
        assert count_block4(lab) == 1000
        low = [1000]
        stop = threading.Event()

        def monitor() -> None:
            while not stop.is_set():
                low[0] = min(low[0], count_block4(lab))
                time.sleep(0.05)

        t = threading.Thread(target=monitor, daemon=True)
        t.start()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            rc = d.stop(sig)
            assert rc == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
            assert not reaches(lab, "198.18.100.7"), "a blocked source got through while the daemon was down"
            d = Daemon(lab.mx, cfg).start()
            st = d.status()
            assert st["blocks"] == 1000
            assert not reaches(lab, "198.18.103.250")
        stop.set()
        t.join(5)
        assert low[0] == 1000, f"the kernel held only {low[0]} blocks at some point"
        assert count_block4(lab) == 1000
        log = d.log.read_text()
        assert log.count("restored 0 elements into the kernel, adopted 0 found there") == 3, log[-2000:]
    finally:
        d.stop()
        srv.close()


def test_bad_config_and_bad_cli_input_give_clear_errors(lab: Lab, tmp_path: Path) -> None:
    """(f) bad config: exit 2 naming file, key and problem, nothing created; bad CLI input: exit 2 with the
    reason; a bad reload keeps the running config and a good one applies."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits]\nmax_connections_per_source = -1\n")
    r = govern(lab.mx, "run", "--config", str(bad))
    assert r.returncode == 2
    assert (
        r.stderr.strip() == f"govern: {bad}: limits.max_connections_per_source: must be between 1 and 1000000, got -1"
    )
    assert "Traceback" not in r.stderr
    assert "govern" not in tables(lab.mx)
    r = govern(lab.mx, "config", "check", str(bad))
    assert r.returncode == 2 and "limits.max_connections_per_source" in r.stderr

    cfg = write_config(tmp_path)
    with running(lab.mx, cfg) as d:
        for args, needle in (
            (("block", "192.0.2.10"), "192.0.2.10 is allowlisted"),
            (("block", "mx.example"), "'mx.example' is not an IPv4/IPv6 address"),
            (("block", "198.18.0.1", "--for", "soon"), "--for: 'soon' is not a duration"),
            (("block", "198.18.0.1/16"), "has host bits set; did you mean 198.18.0.0/16?"),
            (("unblock", "198.18.9.9"), "198.18.9.9 is not blocked"),
            (("allow", "300.1.1.1"), "is not an IPv4/IPv6 address"),
            # The guard, in the daemon: this host's loopback and its own address (read from the namespace).
            (("block", "0.0.0.0/1"), "covers loopback (127.0.0.0/8)"),
            (("block", "::ffff:127.0.0.1"), "covers loopback"),
            (("block", "203.0.113.0/24"), "covers 203.0.113.25, an address of this host"),
            (("block", "198.0.0.0/8"), "wider than /16 (guard.ipv4_widest)"),
        ):
            r = govern(lab.mx, *args, "--config", str(cfg))
            assert r.returncode == 2, (args, r.stdout, r.stderr)
            assert needle in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert d.status()["blocks"] == 0
        r = govern(lab.mx, "block", "198.18.0.1", "--for", "5m", "--config", str(cfg))
        assert r.returncode == 0 and "198.18.0.1" in nft_set(lab.mx, "block4")

        # A broken config on SIGHUP: the daemon keeps running on the old one.
        good = cfg.read_text()
        cfg.write_text(good + "[limits]\nmax_new_per_minute = 'lots'\n")
        d.send(signal.SIGHUP)
        assert wait_for(lambda: "reload failed, keeping the running config" in d.log.read_text(), timeout=5)
        assert d.status()["failures"].get("reload") == 1
        # A good one applies: a new allowlist entry reaches the kernel and lifts the block inside it.
        cfg.write_text(good.replace('"192.0.2.0/24"', '"192.0.2.0/24", "198.18.0.0/24"'))
        d.send(signal.SIGHUP)
        assert wait_for(lambda: "198.18.0.0/24" in nft_set(lab.mx, "allow4"), timeout=5)
        assert wait_for(lambda: "198.18.0.1" not in nft_set(lab.mx, "block4"), timeout=5)
    r = govern(lab.mx, "status", "--config", str(cfg))
    assert r.returncode == 3 and "daemon is not running" in r.stderr


def test_teardown_leaves_no_govern_object(lab: Lab, tmp_path: Path) -> None:
    """(g) `govern teardown` removes everything govern created, with the daemon running or not."""
    cfg = write_config(tmp_path)
    d = Daemon(lab.mx, cfg).start()
    try:
        d.ask(cmd="block", prefix="198.18.0.1")
        assert "table inet govern" in tables(lab.mx)
        r = govern(lab.mx, "teardown", "--config", str(cfg))
        assert r.returncode == 0, r.stderr
        assert "removed table inet govern" in r.stdout
        assert d.proc is not None and d.proc.wait(10) == 0
        assert tables(lab.mx).strip() == ""
    finally:
        d.stop()
    # Without a daemon: the kernel objects left by a killed daemon are removed too.
    d = Daemon(lab.mx, cfg).start()
    d.stop(signal.SIGKILL)
    assert "table inet govern" in tables(lab.mx)
    r = govern(lab.mx, "teardown", "--config", str(cfg))
    assert r.returncode == 0 and tables(lab.mx).strip() == ""
    r = govern(lab.mx, "teardown", "--config", str(cfg))
    assert r.returncode == 0 and "nothing to remove" in r.stdout


def test_dry_run_enforces_nothing_but_says_what_it_would_do(lab: Lab, tmp_path: Path) -> None:
    srv = Listener(lab.mx, 25)
    hogs: list[socket.socket] = []
    d = Daemon(lab.mx, write_config(tmp_path), extra=("--dry-run",)).start()
    try:
        hogs = open_many(lab, ["198.18.2.1"], 30, MX4)
        assert wait_for(lambda: "dry run: would block 198.18.2.1" in d.log.read_text(), timeout=12)
        assert "dry run: would throttle 198.18.2.1" in d.log.read_text()
        assert nft_set(lab.mx, "block4") == set() and nft_set(lab.mx, "throttle4") == set()
        assert "drop" not in lab.mx.sh("nft", "list", "chain", "inet", "govern", "guard")
        assert established_from(lab, "198.18.2.1") == 30
        assert reaches(lab, "198.18.2.1")
        st = d.status()
        assert st["dry_run"] is True and st["top"][0]["source"] == "198.18.2.1"
    finally:
        for s in hogs:
            s.close()
        d.stop()
        srv.close()
