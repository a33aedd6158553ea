"""Faults the daemon must ride out (issue 13, item 4), against the real kernel and a real filesystem: a state
store on a full disk, kernel objects removed by someone else."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.kernel.daemon_harness import Daemon, govern, nft_set, wait_for, write_config
from tests.netns import Lab


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
