"""Learned trust from a real Postfix log: the lab's Postfix (in its mx namespace) accepts mail from a legitimate and a
trusted sender and loses one client mid-DATA; following its maillog, govern learns exactly the two that delivered."""

from __future__ import annotations

import contextlib
import json
import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from govern import config
from govern.addr import Prefix
from govern.allow.learning import TrustSources
from govern.allow.postfix import logged_at
from govern_lab.addresses import MX4, MX6
from govern_lab.postfix import Postfix, temporary
from govern_lab.topology import Lab
from tests.kernel.daemon_harness import govern, nft_set, running, wait_for, write_config
from tests.netns import Netns


@pytest.fixture(scope="module")
def pf(lab_module: Lab) -> Iterator[Postfix]:
    with temporary(lab_module, "gvallow-postfix-") as pf:
        yield pf


def deliver(lab: Lab, role: str, src: str, dst: str) -> None:
    with lab.entered(role):
        s = smtplib.SMTP(dst, 25, source_address=(src, 0), timeout=10)
    with contextlib.closing(s):
        s.ehlo("sender.example")
        s.mail("a@sender.example")
        assert s.rcpt("anyone@lab.test")[0] == 250
        code, msg = s.data(b"Subject: trust\r\n\r\nhello\r\n")
        assert code == 250, msg
        s.quit()


def up_to_rcpt(lab: Lab, src: str, helo: str, timeout: float = 10) -> smtplib.SMTP:
    """A client from the legit namespace, through EHLO, MAIL and an accepted RCPT (the queue file exists now: smtpd
    has logged its client=)."""
    with lab.entered("legit"):
        s = smtplib.SMTP(MX4, 25, source_address=(src, 0), timeout=timeout)
    s.ehlo(helo)
    s.mail(f"someone@{helo}")
    assert s.rcpt("anyone@lab.test")[0] == 250
    return s


def abandon_mid_data(lab: Lab, src: str) -> None:
    s = up_to_rcpt(lab, src, "quitter.example")
    assert s.docmd("DATA")[0] == 354
    s.send(b"Subject: never finished\r\n\r\npart of a message")
    s.close()


def test_only_clients_whose_message_was_queued_are_trusted(lab_module: Lab, pf: Postfix) -> None:
    cfg = config.from_mapping({"trust": {"postfix_log": pf.log_path, "learn_for": "1h"}})
    ts = TrustSources(cfg.trust_section())
    try:
        ts.refresh(time.time())  # the log as it was before: nothing from these addresses in it
        abandon_mid_data(lab_module, "198.51.100.32")
        deliver(lab_module, "legit", "198.51.100.31", MX4)
        deliver(lab_module, "trusted", "2001:db8:2::31", MX6)
        want = {Prefix.parse("198.51.100.31"), Prefix.parse("2001:db8:2::/64")}
        deadline = time.monotonic() + 15
        while not want <= set(ts.trusted()) and time.monotonic() < deadline:
            ts.refresh(time.time())
            time.sleep(0.1)
        assert set(ts.trusted()) == want
        with open(pf.log_path) as fh:
            lines = [line for line in fh if "client=unknown[198.51.100.3" in line]
        assert any("[198.51.100.32]" in line for line in lines)  # seen, and still not trusted
        now = time.time()
        assert logged_at(lines[-1], now) == logged_at(lines[-1], now + 1000) <= now  # Postfix's own stamps are read
        until = ts.trust.until(Prefix.parse("198.51.100.31"))
        assert until is not None and abs(until - 3600 - time.time()) < 30  # learned at the time it was logged
    finally:
        ts.close()


def test_on_its_defaults_the_daemon_follows_postfixs_log_and_proves_by_delivery_not_by_dialogue(
    lab_module: Lab, pf: Postfix, tmp_path: Path
) -> None:
    """`trust.postfix_log = "auto"` finds the log of the Postfix holding port 25 (its maillog_file), and with a log
    the kernel's count of replies proves nobody (`from_sessions = "auto"`): a bot's whole dialogue up to DATA, then
    silence, is not proven, nor is a bot whose message was queued and which then holds the session without QUIT;
    a delivery ended with QUIT is put in the kernel's proven set, which the wave's gate and the slot budget read."""
    mx = Netns(lab_module.ns("mx"))
    with running(mx, write_config(tmp_path)) as d:
        t = d.status()["trust"]
        assert t["postfix_log"] == pf.log_path, t
        assert t["postfix_log_basis"].startswith("maillog_file in ") and t["from_sessions"] is False, t
        with (
            contextlib.closing(up_to_rcpt(lab_module, "198.51.100.42", "prove.bots.example")) as bot,
            contextlib.closing(up_to_rcpt(lab_module, "198.51.100.44", "deliver.bots.example")) as bought,
        ):
            assert bot.docmd("DATA")[0] == 354  # five positive replies: the kernel's count would prove it
            assert bought.data(b"Subject: offer\r\n\r\nbuy now\r\n")[0] == 250  # queued; no QUIT: held
            deliver(lab_module, "legit", "198.51.100.41", MX4)
            assert wait_for(lambda: "198.51.100.41" in nft_set(mx, "proven4"), timeout=10)
            assert not {"198.51.100.42", "198.51.100.44"} & nft_set(mx, "proven4")
            st = d.status()["trust"]
            assert st["deliveries_learned"] >= 1 and st["trusted"] >= 1


def test_in_a_wave_a_sender_that_delivers_then_stalls_loses_its_proof(
    lab_module: Lab, pf: Postfix, tmp_path: Path
) -> None:
    """The lab's quitters against the real Postfix: in a wave, a delivery ended with QUIT (the log proves the source),
    then a session whose message was queued held silently. govern cuts it and takes the source out of the kernel's
    proven set."""
    mx = Netns(lab_module.ns("mx"))
    cfg = write_config(tmp_path)
    with running(mx, cfg) as d:
        assert govern(mx, "wave", "on", "--for", "5m", "--config", str(cfg)).returncode == 0
        deliver(lab_module, "legit", "198.51.100.43", MX4)
        assert wait_for(lambda: "198.51.100.43" in nft_set(mx, "proven4"), timeout=10)
        with contextlib.closing(up_to_rcpt(lab_module, "198.51.100.43", "deliver.bots.example", 30)) as bot:
            assert bot.data(b"Subject: offer\r\n\r\nbuy now\r\n")[0] == 250  # queued; no QUIT: held, silent
            assert wait_for(lambda: d.status()["proof_revoked"] >= 1, timeout=20), d.status()["trust"]
            assert "198.51.100.43" not in nft_set(mx, "proven4")
            assert d.status()["trust"]["revoked"] == 1
        # The operator who gets the phone call hears why, and what the sender must fix.
        why = json.loads(govern(mx, "why", "198.51.100.43", "--json", "--config", str(cfg)).stdout)
        assert "unproven" in {a["rule"] for a in why["advice"]}, why["advice"]


def test_in_a_wave_a_crowds_delivery_reaches_the_kernel_after_a_probation_or_the_waves_end(
    lab_module: Lab, pf: Postfix, tmp_path: Path
) -> None:
    """The lab's quitters against the real Postfix: a source that opened two connections at once as a first contact
    in a wave (a crowd, as a swarm's sources are) delivers and quits on one. govern learns the delivery but keeps it
    out of the kernel's proven set, which passes the budget, for a probation (8 s) the wave's end cuts short."""
    mx = Netns(lab_module.ns("mx"))
    cfg = write_config(tmp_path)
    src = "198.51.100.45"
    with running(mx, cfg) as d:
        assert govern(mx, "wave", "on", "--for", "5m", "--config", str(cfg)).returncode == 0
        with lab_module.entered("legit"):
            other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with contextlib.closing(other):
            other.bind((src, 0))
            other.setblocking(False)
            other.connect_ex((MX4, 25))  # the first contact's SYN, dropped: a real stack sends it again
            deliver(lab_module, "legit", src, MX4)  # meanwhile the second connection: a crowd
            assert src in nft_set(mx, "crowd4")
            assert wait_for(lambda: d.status()["trust"]["deliveries_learned"] >= 1, timeout=10)
            time.sleep(1.5)  # a few of the wave's ticks
            assert src not in nft_set(mx, "proven4")
        assert govern(mx, "wave", "off", "--config", str(cfg)).returncode == 0
        assert wait_for(lambda: src in nft_set(mx, "proven4"), timeout=10)
