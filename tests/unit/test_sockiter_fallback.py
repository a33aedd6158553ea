"""The daemon's socket source (govern.observe.sockiter.IteratedSockets) falls back to sock_diag when the BPF
iterator cannot be had or fails, and says so in `scanner`; the rest always goes to sock_diag."""

from __future__ import annotations

from typing import Any, cast

import pytest

from govern.addr import Prefix
from govern.errors import KernelError
from govern.fakes import FakeSockets
from govern.model import Scan, ScanOptions, SockCounts
from govern.observe.sockdiag import SockDiag
from govern.observe.sockiter import IteratedSockets, SockIter

P = Prefix.parse("198.18.0.1")
KW: dict[str, Any] = {"v4_len": 32, "v6_len": 64, "idle_after_ms": 3000}


class FakeIter:
    def __init__(self, fail: bool = False) -> None:
        self.fail, self.scans, self.closed = fail, 0, False

    def scan(self, ports: frozenset[int], **kw: Any) -> Scan:
        self.scans += 1
        if self.fail:
            raise KernelError("reading the socket iterator: Input/output error", 5)
        return Scan({P: SockCounts(7, 7, 0, 0, 0)}, (), 7)

    def close(self) -> None:
        self.closed = True


def diag() -> SockDiag:
    return cast(SockDiag, FakeSockets(sources={P: SockCounts(1, 1, 0, 0, 0)}))


def test_the_scan_goes_through_the_iterator_and_the_rest_to_sock_diag() -> None:
    it = FakeIter()
    s = IteratedSockets(diag(), lambda: cast(SockIter, it))
    assert s.scanner == "BPF iterator"
    assert s.scan(ScanOptions(frozenset({25}), **KW)).sources[P].held == 7
    assert s.destroy([P], frozenset({25})) == 1  # FakeSockets' destroy, not the iterator
    # Sources grouped finer than an IPv6 /64 have 16-byte keys, which only sock_diag's path reads.
    s.scan(ScanOptions(frozenset({25}), **{**KW, "v6_len": 96}))
    assert it.scans == 1


def test_an_iterator_that_does_not_load_leaves_the_scan_to_sock_diag_and_says_why() -> None:
    def refuse() -> SockIter:
        raise KernelError("loading govern_sockets.o: Operation not permitted", 1)

    s = IteratedSockets(diag(), refuse)
    assert (
        s.scanner
        == "sock_diag (the BPF socket iterator did not load: loading govern_sockets.o: Operation not permitted)"
    )
    assert s.scan(ScanOptions(frozenset({25}), **KW)).sources[P].held == 1


def test_an_iterator_that_fails_is_closed_and_never_asked_again(caplog: pytest.LogCaptureFixture) -> None:
    it = FakeIter(fail=True)
    s = IteratedSockets(diag(), lambda: cast(SockIter, it))
    assert s.scan(ScanOptions(frozenset({25}), **KW)).sources[P].held == 1  # this tick's scan, from sock_diag
    assert s.scan(ScanOptions(frozenset({25}), **KW)).sources[P].held == 1
    assert it.scans == 1 and it.closed
    assert s.scanner.startswith("sock_diag (the BPF socket iterator failed: reading the socket iterator")
    assert "sock_diag from now on" in caplog.text
