"""A fleet of three real daemons, each in a network namespace of its own, sharing one real redis-server (Debian's,
on a unix socket in the test's directory, started and killed by the test): a block on one host is in the others'
nftables block sets within 2 s; an entry forged without the key is refused and logged; a block covering one host's
allowlist is refused there only; Redis killed and restarted loses nothing; a restarted daemon catches up from the
sorted set; an operator's unblock is lifted on every host, one away meanwhile included; a reload takes
[fleet] off and on again (docs/fleet.md)."""

from __future__ import annotations

import json
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from govern.addr import Prefix
from govern.fleet import codec
from tests.kernel.daemon_harness import Daemon, govern, nft_set, wait_for, write_config
from tests.netns import Netns, new_name, sh
from tests.redis_server import RedisServer, need_redis

KEY = secrets.token_hex(24)
NAMES = ("mx1", "mx2", "mx3")
KEYS = f"fleet-{secrets.token_hex(3)}"  # the Redis keys' namespace of this run
MX3_ALLOW = "198.18.5.0/24"  # allowlisted on mx3 only


@dataclass
class Host:
    name: str
    ns: Netns
    config: Path
    daemon: Daemon

    def blocked(self, addr: str) -> bool:
        return addr in nft_set(self.ns, "block4") or f"{addr}/32" in nft_set(self.ns, "block4")

    def cli(self, *args: str) -> str:
        run = govern(self.ns, *args, "--config", str(self.config))
        assert run.returncode == 0, run.stderr
        return run.stdout

    def log(self) -> str:
        return self.daemon.log.read_text()


def connected(h: Host) -> bool:
    return bool(h.daemon.status()["fleet"]["state"] == "connected")


def logged(h: Host, text: str) -> bool:
    return text in h.log()


@dataclass
class Fleet:
    redis: RedisServer
    hosts: dict[str, Host]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    need_redis()
    tmp = tmp_path_factory.mktemp("fleet")
    key = tmp / "fleet.key"
    key.write_text(KEY + "\n")
    key.chmod(0o600)
    redis = RedisServer(tmp / "redis")
    made: list[Netns] = []
    hosts: dict[str, Host] = {}
    try:
        redis.start()
        for name in NAMES:
            ns = Netns(new_name(name))
            sh("ip", "netns", "add", ns.name)
            made.append(ns)
            ns.sh("ip", "link", "set", "lo", "up")
            home = tmp / name
            home.mkdir()
            allow = ["192.0.2.0/24"] + ([MX3_ALLOW] if name == "mx3" else [])
            extra = (
                "[sysctl]\napply_at_start = false\n[tarpit]\nenabled = false\n"
                f'[fleet]\nurl = "{redis.url}"\nname = "{name}"\nkey_file = "{key}"\nnamespace = "{KEYS}"\n'
            )
            cfg = write_config(home, extra, allow=allow)
            hosts[name] = Host(name, ns, cfg, Daemon(ns, cfg).start())
        for h in hosts.values():
            assert wait_for(partial(connected, h), 10), h.log()[-2000:]
        yield Fleet(redis, hosts)
    finally:
        for h in hosts.values():
            h.daemon.stop()
        redis.stop()
        for ns in made:
            sh("ip", "netns", "del", ns.name, check=False)


def test_a_block_on_one_host_is_on_the_others_within_2_seconds(fleet: Fleet) -> None:
    mx1, mx2, mx3 = (fleet.hosts[n] for n in NAMES)
    mx1.cli("block", "198.18.0.7", "--for", "1h", "--reason", "seen in a flood")
    t0 = time.monotonic()
    assert wait_for(lambda: mx2.blocked("198.18.0.7") and mx3.blocked("198.18.0.7"), 5, step=0.05)
    took = time.monotonic() - t0
    assert took < 2.0, f"{took:.2f} s"
    entries = json.loads(mx2.cli("list", "--json"))
    (entry,) = [e for e in entries if e["prefix"] == "198.18.0.7"]
    assert entry["from"] == "mx1" and entry["reason"] == "fleet:mx1: manual: seen in a flood"
    assert "fleet:mx1" in mx2.cli("why", "198.18.0.7")
    status = mx2.cli("status")
    assert "fleet: connected as mx2" in status
    # Applied there, never published again: mx1 published one decision, the others none.
    time.sleep(1.5)
    assert mx2.daemon.status()["fleet"]["published"] == 0
    assert mx1.daemon.status()["fleet"]["published"] == 1


def test_an_entry_forged_without_the_key_is_refused_and_logged(fleet: Fleet) -> None:
    now = time.time()
    forged = codec.new("block", Prefix.parse("198.18.0.66"), "forged", now + 600, 1, "mx9", now)
    client = fleet.redis.client()
    stream = f"{KEYS}:decisions"
    client.xadd(stream, codec.encode(forged, b"an attacker's key, not the fleet's"))
    for h in fleet.hosts.values():
        assert wait_for(partial(logged, h, "bad signature"), 5), h.log()[-2000:]
    time.sleep(1.5)
    assert not any(h.blocked("198.18.0.66") for h in fleet.hosts.values())
    assert all(h.daemon.status()["fleet"]["refused"] >= 1 for h in fleet.hosts.values())


def test_a_block_covering_one_hosts_allowlist_is_refused_there_only(fleet: Fleet) -> None:
    mx1, mx2, mx3 = (fleet.hosts[n] for n in NAMES)
    mx1.cli("block", "198.18.5.5", "--reason", "a trusted relay of mx3's")
    assert wait_for(lambda: mx2.blocked("198.18.5.5"), 5, step=0.05)
    assert wait_for(lambda: "refused mx1's block of 198.18.5.5" in mx3.log(), 5), mx3.log()[-2000:]
    assert not mx3.blocked("198.18.5.5")
    assert mx3.daemon.status()["fleet"]["refused_here"] >= 1


def test_redis_killed_and_restarted_loses_nothing(fleet: Fleet) -> None:
    mx1, mx2, _ = (fleet.hosts[n] for n in NAMES)
    fleet.redis.stop()
    assert wait_for(lambda: mx1.daemon.status()["fleet"]["state"] == "down", 10)
    assert "FLEET DOWN since" in mx1.cli("status")
    mx1.cli("block", "198.18.0.9", "--reason", "while Redis was away")  # enforced here at once, queued for the fleet
    assert mx1.blocked("198.18.0.9")
    fleet.redis.start()
    assert wait_for(lambda: mx2.blocked("198.18.0.9"), 15, step=0.1), mx2.log()[-2000:]
    assert mx2.daemon.status()["fleet"]["state"] == "connected"


def test_a_restarted_daemon_catches_up_from_the_sorted_set(fleet: Fleet) -> None:
    mx1, _, mx3 = (fleet.hosts[n] for n in NAMES)
    mx3.daemon.stop()
    mx1.cli("block", "198.18.0.10", "--reason", "while mx3 was away")
    time.sleep(1.0)
    mx3.daemon.start()
    assert wait_for(lambda: mx3.blocked("198.18.0.10"), 5, step=0.1), mx3.log()[-2000:]
    assert mx3.blocked("198.18.0.7")  # restored from its own store as well


def test_an_operators_unblock_is_lifted_everywhere_even_on_a_host_away_meanwhile(fleet: Fleet) -> None:
    mx1, mx2, mx3 = (fleet.hosts[n] for n in NAMES)
    mx1.cli("block", "198.18.0.11", "--reason", "a false positive")
    assert wait_for(lambda: mx2.blocked("198.18.0.11") and mx3.blocked("198.18.0.11"), 5, step=0.05)
    mx3.daemon.stop()  # its block stays in its kernel and store while it is away
    out = mx1.cli("unblock", "198.18.0.11")
    assert "shared with the fleet" in out, out
    t0 = time.monotonic()
    assert wait_for(lambda: not mx2.blocked("198.18.0.11"), 5, step=0.05), mx2.log()[-2000:]
    took = time.monotonic() - t0
    assert took < 2.0, f"{took:.2f} s"
    assert "unblock 198.18.0.11: fleet:mx1: unblocked by the operator" in mx2.log()
    mx3.daemon.start()
    assert wait_for(lambda: not mx3.blocked("198.18.0.11"), 5, step=0.1), mx3.log()[-2000:]
    # Nor does a host that starts afresh catch up with the lifted block: the active set no longer has it.
    active = [codec.from_member(m) for m in fleet.redis.client().zrange(f"{KEYS}:active", 0, -1)]
    assert not [f for f in active if f["prefix"] == "198.18.0.11" and f["kind"] == "block"]
    assert [f["origin"] for f in active if f["prefix"] == "198.18.0.11"] == ["mx1"]


def test_a_reload_takes_the_fleet_off_and_back_on_and_the_host_catches_up(fleet: Fleet) -> None:
    mx1, mx2, _ = (fleet.hosts[n] for n in NAMES)
    shared = mx2.config.read_text()
    try:
        mx2.config.write_text(shared.split("[fleet]")[0])
        mx2.daemon.send(signal.SIGHUP)
        assert wait_for(lambda: mx2.daemon.status()["fleet"]["state"] == "off", 5), mx2.log()[-2000:]
        assert "fleet: off after the reload" in mx2.log()
        mx1.cli("block", "198.18.0.12", "--reason", "while mx2 had no fleet")
        time.sleep(2.0)
        assert not mx2.blocked("198.18.0.12")
    finally:
        mx2.config.write_text(shared)
        mx2.daemon.send(signal.SIGHUP)
    assert wait_for(lambda: connected(mx2), 10), mx2.log()[-2000:]
    assert wait_for(lambda: mx2.blocked("198.18.0.12"), 5, step=0.1), mx2.log()[-2000:]
    # A reload that changes nothing of [fleet] keeps the link (and its counts) as it is.
    before = mx2.daemon.status()["fleet"]["since"]
    mx2.daemon.send(signal.SIGHUP)
    time.sleep(1.0)
    assert mx2.daemon.status()["fleet"]["since"] == before
