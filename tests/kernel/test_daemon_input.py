"""Bad files against the real daemon (issue 13, item 3): an allowlist file that is a FIFO is refused at start
before the kernel is touched, and neither a FIFO nor a config that used to crash the loader, sent with SIGHUP,
hangs or ends a running daemon: it keeps the old config and its allowlist in the kernel, and answers."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

from tests.kernel.daemon_harness import Daemon, govern, nft_set, running, tables, wait_for, write_config
from tests.netns import Lab


def with_files(cfg: Path, *files: Path) -> str:
    listed = ", ".join(f'"{f}"' for f in files)
    return cfg.read_text().replace("[allow]\n", f"[allow]\nfiles = [{listed}]\n", 1)


def failed_reloads(d: Daemon, n: int) -> bool:
    """Wait until the daemon has counted `n` failed reloads; it answers status all the while."""
    return wait_for(lambda: d.status()["failures"].get("reload") == n, timeout=5)


def test_a_fifo_is_refused_at_start_and_bad_files_on_sighup_keep_the_daemon_and_its_config(
    lab: Lab, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path)
    fifo = tmp_path / "partners.fifo"
    os.mkfifo(fifo)
    cfg.write_text(with_files(cfg, fifo))
    t0 = time.monotonic()
    r = govern(lab.mx, "run", "--config", str(cfg), timeout=20)  # used to wait for a writer forever
    assert time.monotonic() - t0 < 10
    assert r.returncode == 2, r.stderr
    assert f"{fifo}: allow.files[0]: is a FIFO, not a regular file" in r.stderr and "Traceback" not in r.stderr
    assert "govern" not in tables(lab.mx)

    partners = tmp_path / "partners.txt"
    partners.write_text("198.51.100.7\n")
    cfg = write_config(tmp_path)
    cfg.write_text(with_files(cfg, partners))
    good = cfg.read_text()
    with running(lab.mx, cfg) as d:
        assert "198.51.100.7" in nft_set(lab.mx, "allow4")

        # The allowlist file becomes a FIFO: the periodic re-read and the reload both refuse it without blocking.
        partners.unlink()
        os.mkfifo(partners)
        d.send(signal.SIGHUP)
        assert wait_for(lambda: "is a FIFO, not a regular file" in d.log.read_text(), timeout=5)
        t0 = time.monotonic()
        d.status()  # the tick loop is not stuck in open()
        assert time.monotonic() - t0 < 5
        assert failed_reloads(d, 1)

        # Configs that used to end the daemon with a traceback on SIGHUP.
        for n, bad in enumerate(
            (
                "[allow]\ncidrs = " + "[" * 2000 + "]" * 2000 + "\n",  # RecursionError
                "[limits]\nmax_new_per_minute = " + "9" * 5000 + "\n",  # ValueError: int digits
                "[block]\nduration = " + "9" * 400 + "\n",  # OverflowError
            ),
            start=2,
        ):
            cfg.write_text(bad)
            d.send(signal.SIGHUP)
            assert failed_reloads(d, n), d.log.read_text()[-2000:]
            assert d.proc is not None and d.proc.poll() is None

        st = d.status()
        assert "198.51.100.7" in nft_set(lab.mx, "allow4")  # the old allowlist is still in force
        assert st["failures"]["reload"] == 4
        assert "Traceback" not in d.log.read_text()
        cfg.write_text(good)


def test_what_run_would_refuse_after_touching_the_kernel_is_refused_before(lab: Lab, tmp_path: Path) -> None:
    """A socket path too long for AF_UNIX, a state_dir with a NUL or under /proc: `govern run` used to set up
    nftables and the tarpit first and then die with a traceback; now it exits 2 naming the key, and the
    namespace holds no govern table."""
    base = write_config(tmp_path).read_text()
    for daemon_line, problem in (
        (f'socket = "{tmp_path}/{"s" * 200}.sock"', "daemon.socket: a unix socket's path is at most 107 bytes"),
        ('state_dir = "/var/lib/gov\\u0000ern"', "daemon.state_dir: a path cannot contain a NUL character"),
        ('state_dir = "/proc/govern"', "daemon.state_dir: '/proc/govern' is under /proc"),
    ):
        cfg = tmp_path / "bad.toml"
        key = daemon_line.split(" = ", 1)[0]
        cfg.write_text(
            "\n".join(line for line in base.splitlines() if not line.startswith(f"{key} = ")).replace(
                "[daemon]\n", f"[daemon]\n{daemon_line}\n"
            )
        )
        r = govern(lab.mx, "run", "--config", str(cfg))
        assert r.returncode == 2 and problem in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert "govern" not in tables(lab.mx)
        r = govern(lab.mx, "config", "check", str(cfg))
        assert r.returncode == 2 and problem in r.stderr


def test_the_daemon_leaves_an_existing_socket_directory_as_it_was(lab: Lab, tmp_path: Path) -> None:
    """socket = "/tmp/govern.sock" used to chmod /tmp to 0700; a shared sticky directory stays as it is."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace(f'socket = "{tmp_path}/run/govern.sock"', f'socket = "{shared}/g.sock"'))
    d = Daemon(lab.mx, cfg)
    d.socket = str(shared / "g.sock")
    d.start()
    try:
        assert d.status()["blocks"] == 0
        assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
        assert stat.S_IMODE((shared / "g.sock").stat().st_mode) == 0o600
    finally:
        d.stop()
