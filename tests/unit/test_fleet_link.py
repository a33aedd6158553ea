"""The fleet edge (govern.fleet.link) against a real redis-server on a unix socket of the test's own: decisions
published by one link reach another and never come back to their publisher, forged entries are refused with a log
line, a link that starts late catches up from the sorted set, and a Redis that goes away and comes back loses
nothing. Skipped where Debian's redis-server is not installed."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from govern.addr import Prefix
from govern.fleet import codec
from govern.fleet.codec import Decision
from govern.fleet.link import RedisLink, shown_url
from tests.redis_server import RedisServer, need_redis

KEY = b"fleet-test-key-0123456789abcdef"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    need_redis()
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def links(redis_server: RedisServer) -> Iterator[Callable[[str], RedisLink]]:
    made: list[RedisLink] = []

    def make(name: str) -> RedisLink:
        link = RedisLink(redis_server.url, KEY, name, namespace="t")
        link.start()
        made.append(link)
        return link

    try:
        yield make
    finally:
        for link in made:
            link.close()


def decision(prefix: str = "198.18.0.7/32", origin: str = "mx1", lasts: float = 600) -> Decision:
    now = time.time()
    return codec.new("block", Prefix.parse(prefix), "opened 300 connections", now + lasts, 1, origin, now)


def wait_for(what: Callable[[], object], timeout: float = 5.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s")


def drained(link: RedisLink, into: list[Decision]) -> Callable[[], list[Decision]]:
    def take() -> list[Decision]:
        into.extend(link.drain())
        return into

    return take


def test_a_decision_reaches_the_others_and_never_comes_back(links: Callable[[str], RedisLink]) -> None:
    mx1, mx2 = links("mx1"), links("mx2")
    wait_for(lambda: mx1.state().state == "connected" and mx2.state().state == "connected")
    d = decision()
    t0 = time.monotonic()
    mx1.publish([d])
    got: list[Decision] = []
    wait_for(drained(mx2, got))
    assert time.monotonic() - t0 < 2.0
    assert got == [d]
    time.sleep(0.5)
    assert mx1.drain() == []
    assert mx1.state().published == 1 and mx2.state().received == 1
    assert mx2.state().lag is not None


def test_a_forged_entry_is_refused_with_a_log_line(
    links: Callable[[str], RedisLink], redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    mx2 = links("mx2")
    wait_for(lambda: mx2.state().state == "connected")
    forged = codec.encode(decision(origin="mx9"), b"not-the-fleet-key-at-all-000000")
    unsigned = {k: v for k, v in codec.encode(decision(origin="mx9"), KEY).items() if k != "sig"}
    with caplog.at_level(logging.WARNING, logger="govern.fleet"):
        client = redis_server.client()
        client.xadd("t:decisions", forged)
        client.xadd("t:decisions", unsigned)
        client.xadd("t:decisions", {"junk": b"\xff\xfe"})
        wait_for(lambda: mx2.state().refused == 3)
    assert mx2.drain() == []
    text = caplog.text
    assert "bad signature" in text and "unsigned" in text


def test_a_late_link_catches_up_from_the_sorted_set(links: Callable[[str], RedisLink]) -> None:
    mx1 = links("mx1")
    d, gone = decision(), decision("198.18.0.8/32", lasts=0.3)
    mx1.publish([d, gone])
    wait_for(lambda: mx1.state().published == 2)
    time.sleep(0.5)  # `gone` has expired meanwhile
    mx3 = links("mx3")
    got: list[Decision] = []
    wait_for(drained(mx3, got))
    assert got == [d]


def test_redis_down_and_back_loses_nothing(
    links: Callable[[str], RedisLink], redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    mx1, mx2 = links("mx1"), links("mx2")
    wait_for(lambda: mx1.state().state == "connected" and mx2.state().state == "connected")
    with caplog.at_level(logging.WARNING, logger="govern.fleet"):
        redis_server.stop()
        wait_for(lambda: mx1.state().state == "down" and mx2.state().state == "down")
        assert mx1.state().error
        d = decision()
        mx1.publish([d])  # while Redis is away: queued, not lost
        redis_server.start()
        wait_for(lambda: mx1.state().state == "connected" and mx2.state().state == "connected", timeout=15)
    got: list[Decision] = []
    wait_for(drained(mx2, got))
    assert got == [d]
    assert "enforces alone" in caplog.text and "answers again" in caplog.text


def test_what_redis_lost_in_a_restart_is_put_back(
    links: Callable[[str], RedisLink], redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A redis-server without persistence restarts empty: the publisher puts back its decisions in force, so a host
    that starts afterwards still catches up, and one that had them already is not handed them twice."""
    mx1, mx2 = links("mx1"), links("mx2")
    d = decision()
    mx1.publish([d])
    got: list[Decision] = []
    wait_for(drained(mx2, got))
    with caplog.at_level(logging.WARNING, logger="govern.fleet"):
        redis_server.stop()
        wait_for(lambda: mx1.state().state == "down")
        redis_server.start()
        wait_for(lambda: "published again" in caplog.text, timeout=15)
    mx3 = links("mx3")
    late: list[Decision] = []
    wait_for(drained(mx3, late))
    assert late == [d]
    wait_for(lambda: mx2.state().state == "connected", timeout=15)
    time.sleep(0.5)
    assert mx2.drain() == []


def test_a_redis_that_never_answers_never_holds_up_the_caller(tmp_path: Path) -> None:
    """A server that accepts and then says nothing (a hung Redis): publish and drain return at once, and the link
    says it is down once its call's time is up."""
    path = str(tmp_path / "silent.sock")
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(path)
    silent.listen(8)
    link = RedisLink(f"unix://{path}", KEY, "mx1", namespace="t")
    try:
        link.start()
        t0 = time.monotonic()
        for _ in range(100):
            link.publish([decision()])
            assert link.drain() == []
        assert time.monotonic() - t0 < 0.1
        wait_for(lambda: link.state().state == "down", timeout=10)
        assert "imeout" in link.state().error
    finally:
        link.close()
        silent.close()


def test_the_url_is_shown_without_credentials() -> None:
    assert shown_url("rediss://fleet:s3cret@redis.example:6380/2") == "rediss://redis.example:6380/2"
    assert shown_url("unix:///run/redis/redis.sock") == "unix:///run/redis/redis.sock"
