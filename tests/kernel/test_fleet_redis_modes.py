"""The fleet through a Redis Sentinel and a Redis Cluster (govern.fleet.url): real redis-servers (Debian's, the same
binary in sentinel and cluster mode) on loopback inside a namespace of the test's own; two links, as two hosts,
share a decision through each. Under Sentinel, the master killed: the sentinel promotes the replica and the next
decision still crosses, the first one still in the active set."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from govern.addr import Prefix
from govern.fleet import codec
from govern.fleet.codec import Decision
from govern.fleet.link import RedisLink
from tests.netns import Netns, new_name, sh
from tests.redis_server import REDIS_SERVER, need_redis

pytestmark = pytest.mark.kernel

KEY = b"fleet-modes-test-key-0123456789ab"


@pytest.fixture
def ns() -> Iterator[Netns]:
    need_redis()
    n = Netns(new_name("redis"))
    sh("ip", "netns", "add", n.name)
    try:
        n.sh("ip", "link", "set", "lo", "up")
        yield n
    finally:
        # Every redis-server the test started lives in the namespace: end them with it.
        for pid in sh("ip", "netns", "pids", n.name, check=False).split():
            subprocess.run(["kill", "-9", pid], check=False)
        sh("ip", "netns", "del", n.name, check=False)


class Servers:
    def __init__(self, ns: Netns, base: Path) -> None:
        self.ns, self.base = ns, base
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, port: int, *args: str, conf: str = "") -> None:
        d = self.base / str(port)
        d.mkdir(parents=True)
        cmd = ["ip", "netns", "exec", self.ns.name, REDIS_SERVER]
        if conf:
            (d / "redis.conf").write_text(conf)
            cmd.append(str(d / "redis.conf"))
        cmd += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(d), "--save", "", "--appendonly", "no"]
        with open(d / "log", "wb") as log:
            self.procs[port] = subprocess.Popen([*cmd, *args], stdout=log, stderr=subprocess.STDOUT)
        self.wait(lambda: "PONG" in self.cli(port, "ping"), f"redis on {port} answers")

    def cli(self, port: int, *args: str) -> str:
        return self.ns.sh("redis-cli", "-p", str(port), *args, check=False, timeout=30)

    def kill(self, port: int) -> None:
        self.procs[port].kill()
        self.procs[port].wait(10)

    @staticmethod
    def wait(cond: Callable[[], bool], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.1)
        raise AssertionError(f"not within {timeout} s: {what}")


@pytest.fixture
def servers(ns: Netns, tmp_path: Path) -> Iterator[Servers]:
    s = Servers(ns, tmp_path)
    try:
        yield s
    finally:
        for p in s.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)


def decision(prefix: str, origin: str = "mx1") -> Decision:
    now = time.time()
    return codec.new("block", Prefix.parse(prefix), "opened 300 connections", now + 600, 1, origin, now)


def two_links(ns: Netns, url: str) -> tuple[RedisLink, RedisLink]:
    # The links' threads are started inside the namespace and stay there (a thread inherits its creator's).
    with ns.entered():
        a, b = RedisLink(url, KEY, "mx1", namespace="t"), RedisLink(url, KEY, "mx2", namespace="t")
        a.start()
        b.start()
    Servers.wait(lambda: a.state().state == b.state().state == "connected", "both links connected")
    return a, b


def crosses(a: RedisLink, b: RedisLink, prefix: str, timeout: float) -> float:
    """Seconds until a decision `a` publishes reaches `b`."""
    d = decision(prefix)
    t0 = time.monotonic()
    a.publish([d])
    got: list[Decision] = []

    def arrived() -> bool:
        got.extend(b.drain())
        return any(x.id == d.id for x in got)

    Servers.wait(arrived, f"{prefix} reaches mx2", timeout)
    return time.monotonic() - t0


def test_a_decision_crosses_a_redis_cluster(ns: Netns, servers: Servers) -> None:
    ports = (7100, 7101, 7102)
    for p in ports:
        servers.start(p, "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{p}.conf")
    made = ns.sh(
        "redis-cli",
        "--cluster",
        "create",
        *(f"127.0.0.1:{p}" for p in ports),
        "--cluster-replicas",
        "0",
        "--cluster-yes",
        timeout=60,
    )
    assert "All 16384 slots covered" in made, made
    servers.wait(lambda: all("cluster_state:ok" in servers.cli(p, "cluster", "info") for p in ports), "cluster ok")
    a, b = two_links(ns, "redis+cluster://127.0.0.1:7101")
    try:
        assert crosses(a, b, "198.18.0.7/32", timeout=5) < 2.0
        # The keys live where the cluster put them, and the active set holds the decision for a late host.
        got = [servers.cli(p, "-c", "zcard", "t:active").strip() for p in ports]
        assert set(got) == {"1"}, got
    finally:
        a.close()
        b.close()


def test_a_decision_crosses_a_sentinel_and_survives_its_failover(ns: Netns, servers: Servers) -> None:
    servers.start(6400)
    servers.start(6401, "--replicaof", "127.0.0.1", "6400")
    conf = (
        "sentinel monitor fleet 127.0.0.1 6400 1\n"
        "sentinel down-after-milliseconds fleet 1000\n"
        "sentinel failover-timeout fleet 5000\n"
    )
    servers.start(26400, "--sentinel", conf=conf)
    servers.wait(lambda: "slaves" in servers.cli(26400, "sentinel", "master", "fleet"), "the sentinel knows")
    a, b = two_links(ns, "redis+sentinel://127.0.0.1:26400/fleet")
    try:
        assert crosses(a, b, "198.18.0.7/32", timeout=5) < 2.0
        servers.wait(lambda: servers.cli(6401, "zcard", "t:active").strip() == "1", "replicated")
        servers.kill(6400)
        servers.wait(
            lambda: "6401" in servers.cli(26400, "sentinel", "get-master-addr-by-name", "fleet"),
            "the sentinel promotes the replica",
        )
        # The links find the new master by themselves; what was published before the failover is still there.
        crosses(a, b, "198.18.0.8/32", timeout=30)
        assert servers.cli(6401, "zcard", "t:active").strip() == "2"
        assert a.state().state == b.state().state == "connected"
    finally:
        a.close()
        b.close()
