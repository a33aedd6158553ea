"""The adversary matrix's peers for real: Debian's fail2ban inside the lab's mx namespace (its own files, bans with
nftables there and nowhere else), and the lab Postfix with postscreen in front (a pregreet is enforced, a patient
client passes and delivers, the trusted relay is on the access list)."""

from __future__ import annotations

import contextlib
import os
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from govern.observe.postfix import greet_action, holders
from govern.observe.sockdiag import SockDiag
from govern.sysctl.backlog import POSTFIX, owners
from govern_lab import peers
from govern_lab.addresses import MX4, MX6
from govern_lab.postfix import POSTSCREEN_TUNED, Postfix, install, pass_postscreen, temporary
from govern_lab.topology import Lab


@pytest.fixture(scope="module")
def lab(lab_module: Lab) -> Lab:
    return lab_module


def pretalk(lab: Lab, src: str) -> bytes:
    """One connection that talks before the banner, as a bot does; what the MTA answered."""
    with lab.entered("bots"):
        s = socket.socket()
    with s:
        s.settimeout(10)
        s.bind((src, 0))
        s.connect((MX4, 25))
        s.sendall(b"EHLO bot.example\r\nMAIL FROM:<a@bot.example>\r\n")
        with contextlib.suppress(OSError):
            return s.recv(512)
    return b""


def root_has_f2b_table() -> bool:
    return subprocess.run(["nft", "list", "table", "inet", "f2b-table"], capture_output=True).returncode == 0


def test_fail2ban_runs_in_mx_with_its_own_files_and_bans_there_only(lab: Lab, tmp_path: Path) -> None:
    peers.install_fail2ban()
    assert not root_has_f2b_table()
    before = peers.root_fail2bans()
    with temporary(lab, "gvlab-f2b-") as pf:
        f2b = peers.Fail2ban(lab, tmp_path / "f2b", pf.log_path)
        with f2b:
            assert f2b.proc is not None
            pid = f2b.proc.pid
            assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{lab.ns('mx')}").st_ino
            for f in (f2b.socket, f2b.pidfile, tmp_path / "f2b" / "fail2ban.sqlite3", f2b.log):
                assert f.exists(), f
            assert not list((f2b.config_dir / "jail.d").iterdir())  # Debian's sshd jail is not ours to run
            for _ in range(6):  # stock maxretry is 5
                pretalk(lab, "198.18.9.9")
            deadline = time.monotonic() + 30
            while "198.18.9.9" not in f2b.banned() and time.monotonic() < deadline:
                time.sleep(0.5)
            assert f2b.banned() == ["198.18.9.9"]
            status = f2b.client("status", "postfix").stdout
            assert "Currently banned:\t1" in status
            assert not root_has_f2b_table() and peers.root_fail2bans() <= before
            # banned in the mx namespace: the next connection from that address gets nowhere
            with pytest.raises(OSError):
                pretalk(lab, "198.18.9.9")
        assert not os.path.exists(f"/proc/{pid}")  # stopped and reaped
    assert lab.run("mx", "nft", "list", "table", "inet", "f2b-table", check=False) == ""
    assert not root_has_f2b_table() and peers.root_fail2bans() <= before


@pytest.fixture
def screened(lab: Lab) -> Iterator[Postfix]:
    install()
    work = tempfile.mkdtemp(prefix="gvlab-postscreen-")
    pf = Postfix(lab, os.path.join(work, "pf"), postscreen=POSTSCREEN_TUNED)
    try:
        with pf:
            yield pf
    finally:
        shutil.rmtree(work, ignore_errors=True)


def mta_processes(lab: Lab, comm: str) -> list[str]:
    """The pids of processes named `comm` in the lab's mx namespace."""
    ns = os.stat(f"/run/netns/{lab.ns('mx')}").st_ino
    found = []
    for pid in (d for d in os.listdir("/proc") if d.isdigit()):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == comm and os.stat(f"/proc/{pid}/ns/net").st_ino == ns:
                found.append(pid)
    return found


def test_postscreen_in_front_enforces_pregreet_and_passes_patient_clients(lab: Lab, screened: Postfix) -> None:
    master = Path(screened.config_dir, "master.cf").read_text()
    assert "postscreen" in master and "smtpd      pass" in master
    # govern reads the greet action as this running postscreen has it (its config directory from its environment).
    (pid,) = [p for p in mta_processes(lab, "postscreen")]
    assert greet_action(pid) == "enforce"
    # ... and finds that postscreen by the listening socket it holds, named by sock_diag's inode.
    with lab.entered("mx"), SockDiag() as diag:
        listeners = diag.listeners(frozenset({25}))
    assert listeners and all(ls.inode for ls in listeners)
    assert holders(listeners)["postscreen"] == pid
    assert set(owners(listeners).values()) == {POSTFIX}
    # A bot that talks first: postscreen notices and, enforcing, rejects its mail later in the session.
    pretalk(lab, "198.18.9.10")
    # A patient sender waits out the greet test and delivers.
    with lab.entered("legit"):
        s = smtplib.SMTP(MX4, 25, source_address=("198.51.100.200", 0), timeout=30)
    with contextlib.closing(s):
        assert s.ehlo("stranger.legit.example")[0] == 250
        assert s.mail("a@legit.example")[0] == 250
        assert s.rcpt("b@lab.test")[0] == 250
        assert s.data(b"Subject: t\r\n\r\nhello\r\n")[0] == 250
        s.quit()
    # The trusted relay is on postscreen's access list: no greet wait at all.
    with lab.entered("trusted"):
        t0 = time.monotonic()
        t = smtplib.SMTP(MX4, 25, source_address=("192.0.2.10", 0), timeout=30)
    with contextlib.closing(t):
        assert time.monotonic() - t0 < 2
        t.quit()
    # Postfix's log lines reach its file through postlogd, a moment after the sessions that caused them (a CI run
    # read the file before postscreen's line was in it): wait for them, up to 10 s.
    wanted = ("PREGREET", "198.18.9.10", "PASS NEW [198.51.100.200]", "ALLOWLISTED [192.0.2.10]")
    deadline = time.monotonic() + 10
    log = Path(screened.log_path).read_text()
    while not all(w in log for w in wanted) and time.monotonic() < deadline:
        time.sleep(0.1)
        log = Path(screened.log_path).read_text()
    assert "PREGREET" in log and "198.18.9.10" in log
    assert "PASS NEW [198.51.100.200]" in log and "ALLOWLISTED [192.0.2.10]" in log


def test_the_known_relays_pass_postscreen_before_a_cell_and_are_handed_on_at_once_after(
    lab: Lab, screened: Postfix
) -> None:
    """The matrix's cells with postscreen in front start with the known relays in its cache (govern_lab.matrix,
    `_known_to_postscreen`): each waits out the greeting once, together, and its next connection reaches smtpd's
    banner without the wait."""
    relays = ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
    t0 = time.monotonic()
    assert pass_postscreen(lab, "legit", relays, MX4) == []
    assert time.monotonic() - t0 >= 2  # postscreen made them wait (2 s under stress, 6 s otherwise), all at once
    assert pass_postscreen(lab, "legit", ["198.51.100.4"], MX6) == ["198.51.100.4"]  # no IPv6 route from v4
    deadline = time.monotonic() + 10
    log = Path(screened.log_path).read_text()
    while not all(f"PASS NEW [{r}]" in log for r in relays) and time.monotonic() < deadline:
        time.sleep(0.1)
        log = Path(screened.log_path).read_text()
    assert all(f"PASS NEW [{r}]" in log for r in relays)
    with lab.entered("legit"):
        t0 = time.monotonic()
        s = smtplib.SMTP(MX4, 25, source_address=(relays[0], 0), timeout=30)
    with contextlib.closing(s):
        assert time.monotonic() - t0 < 1.5  # smtpd's banner at once: postscreen remembers it
        s.quit()
