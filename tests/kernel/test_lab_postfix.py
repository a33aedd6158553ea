"""The lab's real Postfix (govern_lab.postfix): installed without touching the host's mail system, run only inside
the lab's mx namespace, accepting mail for lab.test from the client namespaces and discarding it, and leaving
nothing running when stopped."""

from __future__ import annotations

import contextlib
import json
import os
import re
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from govern_lab import postfix
from govern_lab.addresses import MX4, MX6
from govern_lab.postfix import Postfix, install, root_masters, temporary
from govern_lab.topology import Lab


def own_processes(pf: Postfix) -> set[int]:
    """Live (not zombie) processes working in this instance's queue directory."""
    return {pid for pid in pf._own_processes() if postfix._alive(pid)}


@pytest.fixture(scope="module")
def masters_before() -> set[int]:
    return root_masters()


@pytest.fixture(scope="module")
def lab(lab_module: Lab) -> Lab:
    """The whole lab (router, mx, clients), shared by this module's tests."""
    return lab_module


@pytest.fixture(scope="module")
def pf(lab: Lab, masters_before: set[int]) -> Iterator[Postfix]:
    with temporary(lab, "gvlab-postfix-") as pf:
        yield pf


def smtp_from(lab: Lab, role: str, src: str, dst: str = MX4) -> smtplib.SMTP:
    with lab.entered(role):
        return smtplib.SMTP(dst, 25, source_address=(src, 0), timeout=10)


def wait_for_count(pf: Postfix, n: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while (got := pf.delivered()) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return got


def test_install_is_idempotent_and_starts_nothing(pf: Postfix, masters_before: set[int]) -> None:
    policy = Path(postfix.POLICY_RC_D)
    before = (policy.read_bytes(), policy.stat().st_mode) if policy.exists() else None
    install()  # already installed: a no-op
    assert ((policy.read_bytes(), policy.stat().st_mode) if policy.exists() else None) == before
    assert root_masters() <= masters_before
    if not os.path.exists("/etc/postfix/main.cf"):  # the host's own postfix is unconfigured, so cannot run
        assert subprocess.run(["postfix", "status"], capture_output=True).returncode != 0


@pytest.mark.parametrize("before", ["absent", "file", "symlink"])
def test_policy_rc_d_forbids_starts_and_is_restored(
    before: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = tmp_path / "policy-rc.d"
    monkeypatch.setattr(postfix, "POLICY_RC_D", str(policy))
    if before == "file":
        policy.write_text("#!/bin/sh\nexit 0\n")
        policy.chmod(0o700)
        os.utime(policy, ns=(1_000_000_000, 2_000_000_000))
    elif before == "symlink":
        policy.symlink_to("/bin/true")

    def state() -> tuple[object, ...]:
        if policy.is_symlink():
            return ("link", os.readlink(policy))
        if policy.exists():
            st = policy.stat()
            return ("file", policy.read_bytes(), st.st_mode, st.st_mtime_ns)
        return ("absent",)

    was = state()
    with postfix.no_service_starts():
        assert subprocess.run([str(policy), "postfix", "start"]).returncode == 101
    assert state() == was
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if before == "absent" else ["policy-rc.d"])


def test_settings(pf: Postfix) -> None:
    def conf(name: str) -> str:
        return subprocess.run(
            ["postconf", "-c", pf.config_dir, "-h", name], capture_output=True, text=True, check=True
        ).stdout.strip()

    assert conf("default_process_limit") == "50"
    # Postfix's defaults, which are what a flood meets on an unprotected host: 300 s, or 10 s once every smtpd
    # process is busy (Postfix's own stress-adaptive behaviour).
    assert conf("smtpd_timeout") == "${stress?{10}:{300}}s"
    assert conf("smtpd_client_connection_count_limit") == "50"
    assert conf("smtpd_peername_lookup") == "no"
    assert conf("inet_protocols") == "all"
    assert "postscreen" not in Path(pf.config_dir, "master.cf").read_text()


def test_the_tls_scenarios_postfix_offers_starttls_and_delivers_a_message_sent_inside_it(lab: Lab, pf: Postfix) -> None:
    pf.stop()  # the module's instance holds port 25 in the same namespace
    try:
        _starttls_delivery(lab)
    finally:
        pf.start()


def _starttls_delivery(lab: Lab) -> None:
    with temporary(lab, "gvlab-postfix-tls-", tls=True) as pf:
        s = smtp_from(lab, "legit", "198.51.100.24")
        with contextlib.closing(s):
            assert s.ehlo("sender.legit.example")[0] == 250 and s.has_extn("starttls")
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # the lab's self-signed certificate
            assert s.starttls(context=ctx)[0] == 220
            assert isinstance(s.sock, ssl.SSLSocket) and s.sock.version() in ("TLSv1.2", "TLSv1.3")
            assert s.ehlo("sender.legit.example")[0] == 250 and not s.has_extn("starttls")
            assert s.mail("alice@legit.example")[0] == 250 and s.rcpt("anyone@lab.test")[0] == 250
            code, msg = s.data(b"Subject: lab\r\n\r\nhello inside TLS\r\n")
            assert code == 250, msg
        assert wait_for_count(pf, 1) == 1


def test_real_smtp_transaction_from_legit_is_delivered_and_logged(lab: Lab, pf: Postfix) -> None:
    start = pf.delivered()
    s = smtp_from(lab, "legit", "198.51.100.23")
    with contextlib.closing(s):
        assert s.ehlo("sender.legit.example")[0] == 250
        assert s.mail("alice@legit.example")[0] == 250
        assert s.rcpt("anyone@lab.test")[0] == 250
        code, msg = s.data(b"Subject: lab\r\n\r\nhello from the lab\r\n")
        assert code == 250, msg
        assert s.quit()[0] == 221
    assert wait_for_count(pf, start + 1) == start + 1
    log = Path(pf.log_path).read_text()
    queue_id = msg.decode().rsplit(" ", 1)[-1]
    assert f"{queue_id}: client=unknown[198.51.100.23]" in log
    assert f"{queue_id}: to=<anyone@lab.test>" in log


def test_the_lab_sender_pipelines_as_real_mtas_do_and_postfix_answers_a_batch_in_one_segment(
    lab: Lab, pf: Postfix, tmp_path: Path
) -> None:
    """Real MTAs send MAIL, RCPT and DATA in one write where PIPELINING is offered, and Postfix then answers them in
    one segment: the server's data segments to a pipelining sender are the banner, EHLO's reply, the batch's replies
    and the "queued" reply with QUIT's (4), against 7 one command at a time. What govern's proof counts (segments,
    not replies) must hold for senders like these, not only for the lab's."""
    pipelined, stepwise = "198.51.100.31", "198.51.100.32"
    lab.run("mx", "nft", "add", "table", "inet", "gvtest")
    lab.run("mx", "nft", "add chain inet gvtest out { type filter hook output priority 0; }")
    for src in (pipelined, stepwise):
        lab.run("mx", "nft", f"add rule inet gvtest out ip daddr {src} tcp sport 25 tcp flags & psh == psh counter")
    start = pf.delivered()
    for src, extra in ((pipelined, ()), (stepwise, ("--no-pipelining",))):
        out = tmp_path / f"{src}.json"
        lab.run(
            "legit", sys.executable, "-m", "govern_lab.traffic", "legit", "--dst", MX4, "--sources", f"{src}/32",
            "--rate", "1", "--duration", "1", "--size", "4", "--json-out", str(out), *extra,
        )  # fmt: skip
        assert json.loads(out.read_text())["totals"]["ok"] == 1
    assert wait_for_count(pf, start + 2) == start + 2
    ruleset = lab.run("mx", "nft", "list", "table", "inet", "gvtest")
    lab.run("mx", "nft", "delete", "table", "inet", "gvtest")
    segments = {m[0]: int(m[1]) for m in re.findall(r"ip daddr (\S+) .* counter packets (\d+)", ruleset)}
    assert segments == {pipelined: 4, stepwise: 7}, ruleset


def test_relays_for_nobody(lab: Lab, pf: Postfix) -> None:
    s = smtp_from(lab, "trusted", "2001:db8:2::25", MX6)
    with contextlib.closing(s):
        assert s.ehlo("relay.trusted.example")[0] == 250
        assert s.mail("bob@trusted.example")[0] == 250
        code, msg = s.rcpt("someone@example.com")
        assert code == 554 and b"Relay access denied" in msg
        s.quit()


def test_banner_from_both_mx_addresses(lab: Lab, pf: Postfix) -> None:
    for role, src, dst in (("bots", "2001:db8:bad:1::7", MX6), ("bots", "198.18.7.7", MX4)):
        with lab.entered(role):
            sock = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            sock.settimeout(10)
            sock.bind((src, 0))
            sock.connect((dst, 25))
            assert sock.recv(512).startswith(b"220 mx.lab.test ESMTP")
            sock.sendall(b"QUIT\r\n")
            assert sock.recv(512).startswith(b"221")


def test_runs_only_in_mx(lab: Lab, pf: Postfix, masters_before: set[int]) -> None:
    master = pf._master_pid()
    assert master is not None
    assert os.stat(f"/proc/{master}/ns/net").st_ino == os.stat(f"/run/netns/{lab.ns('mx')}").st_ino
    assert root_masters() <= masters_before


def test_stop_start_repeatable_with_stale_pid_file(lab: Lab, pf: Postfix, masters_before: set[int]) -> None:
    pf.start()  # already running: nothing to do
    # The work directory is out of the postfix user's reach, so the data directory (the master's lock) is not in it.
    assert pf.data_dir.startswith(postfix.RUN_DIR + "/")
    for _ in range(2):
        pf.stop()
        assert own_processes(pf) == set()
        assert not os.path.exists(os.path.dirname(pf.data_dir))
        pf.stop()  # idempotent
    # A pid file left behind by a master that died: the pid now belongs to some other process (this one).
    Path(pf.queue_dir, "pid", "master.pid").write_text(f"{os.getpid():>10}\n")
    pf.start()
    assert pf._master_pid() not in (None, os.getpid())
    s = smtp_from(lab, "legit", "198.51.100.24")
    with contextlib.closing(s):
        assert s.ehlo("again.legit.example")[0] == 250
        s.quit()
    assert root_masters() <= masters_before
