"""The socket scan through the BPF iterator (bpf/govern_sockets.c, govern.observe.sockiter) against sock_diag's, on
the same sockets in a namespace MX: the same sources with the same counts (held, established, SYN_RECV, idle), the
same listeners and accept queues, other ports and TIME_WAIT left out."""

from __future__ import annotations

import socket
import threading
import time

from govern.model import Scan, ScanOptions
from govern.observe.sockdiag import SockDiag
from govern.observe.sockiter import RECORD, SockIter
from tests.netns import MX4, MX6, Lab, Listener, SmtpListener, connect

PORTS = frozenset({25, 465, 587})


def same(a: Scan, b: Scan) -> None:
    """Equal scans, but for the longest waits, read a moment apart: within 100 ms."""
    assert a.sockets == b.sockets
    # The iterator does not read a listener's inode: sock_diag's listeners have it (who holds the socket).
    assert [ls._replace(inode=0) for ls in a.listeners] == list(b.listeners)
    assert all(ls.inode for ls in a.listeners) and not any(ls.inode for ls in b.listeners)
    assert a.sources.keys() == b.sources.keys()
    for p, x in a.sources.items():
        y = b.sources[p]
        assert x[:4] == y[:4], (p, x, y)
        assert abs(x.max_idle_ms - y.max_idle_ms) <= 100, (p, x, y)


def test_the_iterator_counts_every_source_as_sock_diag_does(lab: Lab) -> None:
    smtp = SmtpListener(lab.mx, 25)
    other = Listener(lab.mx, 8025)
    # A listener that never accepts: its queue holds what the handshakes completed, its backlog is 3.
    with lab.mx.entered():
        stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stuck.bind((MX4, 587))
    stuck.listen(3)
    held: list[socket.socket] = []
    try:
        with lab.net.entered():
            held += [connect(f"198.18.40.{i}", MX4, 25) for i in range(1, 6) for _ in range(2)]  # silent, 2 each
            held += [connect(f"2001:db8:bad:40{i}::1", MX6, 25) for i in range(4)]  # their own /64s
            held += [connect(f"2001:db8:bad:410::{i}", MX6, 25) for i in range(1, 4)]  # three in one /64
            held += [connect("198.18.41.1", MX4, 8025) for _ in range(3)]  # another port: never counted
            held += [connect("198.18.42.1", MX4, 587) for _ in range(2)]  # queued at the stuck listener
            talker = connect("198.51.100.40", MX4, 25)
            held.append(talker)
        talker.settimeout(5)
        assert talker.recv(100).startswith(b"220")
        talker.sendall(b"EHLO relay.example\r\n")
        assert talker.recv(100).startswith(b"250")
        # A session the server closed first leaves a TIME_WAIT socket on its side: never counted.
        with lab.net.entered():
            gone = connect("198.18.43.1", MX4, 25)
        gone.settimeout(5)
        assert gone.recv(100).startswith(b"220")
        time.sleep(0.3)
        for c in list(smtp.held):
            if c.getpeername()[0].endswith("198.18.43.1"):
                c.shutdown(socket.SHUT_RDWR)  # the server's FIN first
        assert gone.recv(100) == b""
        gone.close()
        time.sleep(1.2)  # the silent ones wait past the threshold below, the talker too (its EHLO was answered)
        assert "198.18.43.1" in lab.mx.sh("ss", "-Htn", "state", "time-wait")  # there is one to leave out
        with lab.mx.entered():
            diag, it = SockDiag(), SockIter()
            try:
                for idle_after_ms in (500, 60_000):
                    a = diag.scan(ScanOptions(PORTS, idle_after_ms=idle_after_ms))
                    b = it.scan(ScanOptions(PORTS, idle_after_ms=idle_after_ms))
                    same(a, b)
                tw = [r for r in it.records(frozenset({25})) if r["state"] == 6]
            finally:
                diag.close()
                it.close()
        assert a.sockets == 10 + 4 + 3 + 2 + 1  # the listeners apart, the other port and TIME_WAIT left out
        assert ("203.0.113.25", 587, 2, 3) in [tuple(x)[:4] for x in b.listeners]
        assert len(b.sources) == 5 + 4 + 1 + 1 + 1
        assert not tw  # the TIME_WAIT socket is left out by the program itself
        assert RECORD.itemsize == 48
    finally:
        for c in held:
            c.close()
        stuck.close()
        other.close()
        smtp.close()


def test_the_iterator_reads_the_namespace_it_is_read_from(lab: Lab) -> None:
    srv = Listener(lab.mx, 25)
    try:
        with lab.net.entered():
            c = connect("198.18.44.1", MX4, 25)
        with lab.mx.entered():
            it = SockIter()
        try:
            with lab.mx.entered():
                inside = it.records(frozenset({25}))
            # The same iterator read from the test's own namespace: the MX's sockets are not there.
            box: list[int] = []
            t = threading.Thread(target=lambda: box.append(count(it.records(frozenset({25})), 0xC6122C01)))
            t.start()
            t.join()
        finally:
            it.close()
        c.close()
        assert sorted(int(s) for s in inside["state"]) == [1, 10]  # the connection and the dual-stack listener
        assert count(inside, 0xC6122C01) == 1
        assert box == [0]
    finally:
        srv.close()


def count(records: object, mapped_v4: int) -> int:
    """Records of ESTABLISHED sockets whose client is this IPv4 address (IPv4-mapped on a dual-stack listener)."""
    import numpy as np

    r = np.asarray(records)
    return int(((r["state"] == 1) & (r["mid"] == 0xFFFF) & (r["lo"] == mapped_v4)).sum())
