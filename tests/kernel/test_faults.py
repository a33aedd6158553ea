"""Faults the daemon must ride out (issue 13, item 4), against the real kernel and a real filesystem: a state
store on a full disk, kernel objects removed by someone else."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from govern.addr import Prefix, PrefixSet
from tests.kernel.daemon_harness import Daemon, govern, nft_kinds, nft_set, wait_for, write_config
from tests.netns import MX4, Lab, Listener, connect


@contextlib.contextmanager
def small_disk(where: Path, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of its own at `where`, unmounted however the test ends."""
    where.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "govern-test", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of `disk`; returns the file to delete to give them back."""
    ballast = disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    try:
        while True:  # the last partial block
            os.write(fd, b"\0" * 512)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    os.close(fd)
    return ballast


def store_state(d: Daemon) -> dict[str, object]:
    st = d.status()
    return dict(st["store"])


def test_a_full_disk_never_kills_the_daemon_nor_undoes_an_operators_unblock(lab: Lab, tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    with small_disk(tmp_path / "state"):
        d = Daemon(lab.mx, cfg).start()
        try:
            assert govern(lab.mx, "block", "198.18.0.5", "--config", str(cfg)).returncode == 0
            assert "198.18.0.5" in nft_set(lab.mx, "block4")
            ballast = fill(tmp_path / "state")
            # An operator's decisions while the store cannot record them: refused, nothing changed in the kernel.
            r = govern(lab.mx, "block", "198.18.0.6", "--config", str(cfg))
            assert r.returncode == 1 and "nothing was changed" in r.stderr and "Traceback" not in r.stderr, r.stderr
            r = govern(lab.mx, "unblock", "198.18.0.5", "--config", str(cfg))
            assert r.returncode == 1 and "nothing was changed" in r.stderr, r.stderr
            assert nft_set(lab.mx, "block4") == {"198.18.0.5"}
            assert d.proc is not None and d.proc.poll() is None  # alive
            st = store_state(d)
            assert st["state"] == "behind" and "full" in str(st["error"]), st
            r = govern(lab.mx, "status", "--config", str(cfg))
            assert r.returncode == 0 and "STATE STORE NOT WRITTEN" in r.stdout, r.stdout
            # A restart on the full disk comes up, with the block the store and kernel hold.
            d.stop()
            d = Daemon(lab.mx, cfg).start()
            assert nft_set(lab.mx, "block4") == {"198.18.0.5"}
            # Space returns: the operator is heard again, and the unblock outlives a restart.
            ballast.unlink()
            r = govern(lab.mx, "unblock", "198.18.0.5", "--config", str(cfg))
            assert r.returncode == 0, r.stderr
            assert store_state(d) == {"state": "ok"}
            d.stop()
            d = Daemon(lab.mx, cfg).start()
            assert nft_set(lab.mx, "block4") == set()
            listed = json.loads(govern(lab.mx, "list", "--json", "--config", str(cfg)).stdout)
            assert not [e for e in listed if e.get("kind") == "block"], listed
        finally:
            d.stop()


def test_a_table_removed_by_someone_else_is_back_with_its_blocks_within_a_tick(lab: Lab, tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    d = Daemon(lab.mx, cfg).start()
    try:
        assert govern(lab.mx, "block", "198.18.0.5", "--config", str(cfg)).returncode == 0
        assert govern(lab.mx, "block", "2001:db8:bad:7::/64", "--config", str(cfg)).returncode == 0
        for tamper in (("delete", "table", "inet", "govern"), ("flush", "ruleset")):
            lab.mx.sh("nft", *tamper)
            assert wait_for(lambda: "198.18.0.5" in _set_or_empty(lab, "block4"), timeout=2.5), tamper
            assert "2001:db8:bad:7::/64" in nft_set(lab.mx, "block6")
            assert "192.0.2.0/24" in nft_set(lab.mx, "allow4")
        st = d.status()
        assert st["failures"].get("kernel-changed") == 2, st["failures"]
        assert "by someone else; restored" in st["last_errors"]["kernel-changed"]
        assert d.proc is not None and d.proc.poll() is None
    finally:
        d.stop()


def _set_or_empty(lab: Lab, name: str) -> set[str]:
    try:
        return nft_set(lab.mx, name)
    except RuntimeError:  # the table is not there (yet)
        return set()


SYSCTL_PREFIXES = ("net.ipv4.tcp_", "net.core.somaxconn", "net.core.netdev_max_backlog", "net.netfilter.nf_conntrack")


def sysctls(lab: Lab) -> dict[str, str]:
    """The namespace's TCP and conntrack sysctls (every key govern's profiles could touch, and more)."""
    out = {}
    for line in lab.mx.sh("sysctl", "-a", check=False).splitlines():
        key, _, value = line.partition(" = ")
        if key.startswith(SYSCTL_PREFIXES) and "count" not in key:  # counts move by themselves
            out[key] = value
    return out


def kernel_view(lab: Lab) -> dict[str, set[str]]:
    """The blocks and throttles (the wave's tight ones too) in the kernel, read in one `nft` run."""
    try:
        sets = nft_kinds(lab.mx, ("block4", "block6", "throttle4", "throttle6", "tight4", "tight6"))
    except RuntimeError:  # the table is not there (yet)
        return {"block": set(), "throttle": set()}
    return {
        "block": sets["block4"] | sets["block6"],
        "throttle": set().union(*(sets[n] for n in ("throttle4", "throttle6", "tight4", "tight6"))),
    }


def listed(d: Daemon) -> dict[str, list[str]]:
    """What `govern list` shows, asked of the socket itself: a CLI process takes longer to start than a wave tick."""
    entries = d.ask(cmd="list")["entries"]
    return {kind: [e["prefix"] for e in entries if e["kind"] == kind] for kind in ("block", "throttle")}


def one_tick_view(lab: Lab, d: Daemon, where: str) -> tuple[dict[str, set[str]], dict[str, Any], dict[str, list[str]]]:
    """The kernel's sets, the daemon's status and its list, all read between the same two ticks: the flood keeps the
    daemon blocking, so views read across a tick differ by the blocks that tick added, and say nothing."""
    for _ in range(30):
        st = d.status()
        after, state = kernel_view(lab), listed(d)
        if d.status()["ticks"] == st["ticks"]:
            return after, st, state
    raise AssertionError(f"{where}: no three reads fell between two ticks in 30 tries")


class Flood:
    """Bot sources that each open many sessions and hold them, one new source every 0.3 s, until stopped: the daemon
    throttles and blocks them, and is killed in the middle of doing so."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set() and n < 400:
            src = f"198.18.{60 + n // 200}.{n % 200 + 1}"
            n += 1
            with self.lab.net.entered():
                for _ in range(25):
                    try:
                        self.held.append(connect(src, MX4, 25, timeout=0.3))
                    except OSError:
                        break  # throttled or blocked already
            while len(self.held) > 1500:
                self.held.pop(0).close()
            self._stop.wait(0.3)

    def stop(self) -> None:
        self._stop.set()
        self._t.join(10)
        for s in self.held:
            s.close()


def test_sigkill_at_random_points_during_a_flood_loses_and_duplicates_nothing(lab: Lab, tmp_path: Path) -> None:
    """20 times: the daemon is killed (SIGKILL) at a random moment while a flood keeps it throttling and blocking;
    after each restart every block the kernel held before the kill is still held, the state (`govern list`) and the
    kernel hold the same blocks and throttles, each once, and the operator's decisions stand (a block, an unblock,
    an allowlist entry, the wave switched on and later off). At the end the sysctls are the namespace's own again."""
    seed = int(os.environ.get("GOVERN_FAULT_SEED", str(int(time.time()))))
    rng = random.Random(seed)
    start_values = sysctls(lab)
    srv = Listener(lab.mx, 25)
    cfg = write_config(tmp_path)
    d = Daemon(lab.mx, cfg).start()
    flood = Flood(lab)
    op_block, op_unblock, op_allow = "198.18.200.1", "198.18.200.2", "203.0.113.0/24"

    def cli(*args: str) -> None:
        r = govern(lab.mx, *args, "--config", str(cfg))
        assert r.returncode == 0, (seed, args, r.stderr)

    try:
        cli("block", op_block, "--for", "1h")
        cli("block", op_unblock, "--for", "1h")
        cli("unblock", op_unblock)
        cli("allow", op_allow)
        wave = False
        for i in range(20):
            if i == 6:
                cli("wave", "on", "--for", "1h")
                wave = True
            if i == 13:
                cli("wave", "off")
                wave = False
            time.sleep(rng.uniform(0.05, 2.5))
            before = kernel_view(lab)
            assert d.stop(signal.SIGKILL) == -signal.SIGKILL
            d = Daemon(lab.mx, cfg).start()
            where = f"seed {seed}, kill {i + 1}"
            after, st, state = one_tick_view(lab, d, where)
            held = PrefixSet(Prefix.parse(p) for p in after["block"])  # a block may be part of its /24 by now
            lost = [p for p in before["block"] if not held.covers(Prefix.parse(p))]
            assert not lost, (where, lost)
            assert len(state["block"]) == len(set(state["block"])) == st["blocks"], where
            assert set(state["block"]) == after["block"], (where, set(state["block"]) ^ after["block"])
            assert set(state["throttle"]) == after["throttle"] - after["block"], where
            assert op_block in after["block"] and op_unblock not in after["block"], where
            assert "203.0.113.0/24" in nft_set(lab.mx, "allow4"), where
            assert (st["mode"] == "wave") is wave, (where, st["mode"])
            assert st["failures"].get("store", 0) == 0, (where, st["last_errors"])
        # Something was at stake: the flood's sources were blocked (one by one, then as their /24) on the way.
        assert [p for p in kernel_view(lab)["block"] if p.startswith("198.18.6")], "the flood was never blocked"
    finally:
        flood.stop()
        d.stop()
        srv.close()
    r = govern(lab.mx, "teardown", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    end_values = sysctls(lab)  # read once: each read is a `sysctl -a`
    changed = {k: (v, end_values.get(k)) for k, v in start_values.items() if end_values.get(k) != v}
    assert not changed, (seed, changed)
