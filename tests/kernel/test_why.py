"""`govern why` against the real kernel: a client that stays silent after the banner of an SMTP-ish server on port 25
shows its wait and the "waits after our greeting" advice; a source blocked by hand shows the block and its reason; an
allowlisted peer and a talking sender are told nothing is wrong with them; bad input exits 2 and a stopped daemon 3."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

from tests.kernel.daemon_harness import govern, running, wait_for, write_config
from tests.netns import MX4, MX6, Lab, SmtpListener, connect

SILENT, SILENT6, TALKER, BLOCKED = "198.18.7.1", "2001:db8:bad:7::1", "198.51.100.7", "198.18.9.9"


def test_why_explains_a_silent_client_and_a_manual_block(lab: Lab, tmp_path: Path) -> None:
    srv = SmtpListener(lab.mx, 25)
    cfg = write_config(tmp_path, '[limits]\nidle_after = "2s"\n')
    socks: list[socket.socket] = []
    try:
        with running(lab.mx, cfg) as d:
            with lab.net.entered():
                socks = [connect(SILENT, MX4, 25), connect(SILENT6, MX6, 25), connect(TALKER, MX4, 25)]
            for s in socks:
                assert s.recv(64) == srv.banner
            # The talker is answered, starts a message and sends part of it: the server waits for the rest of what
            # the client is sending, not on a client that stopped after a reply.
            sent, received = 0, len(srv.banner)
            for line, reply in ((b"EHLO client.example\r\n", b"250"), (b"MAIL FROM:<a@client.example>\r\n", b"250")):
                socks[2].sendall(line)
                got = socks[2].recv(64)
                assert got.startswith(reply)
                sent, received = sent + len(line), received + len(got)
            socks[2].sendall(b"DATA\r\n")
            got = socks[2].recv(64)
            assert got.startswith(b"354")
            part = b"Subject: hello\r\n\r\nthe first lines of a message\r\n"
            socks[2].sendall(part)
            sent, received = sent + len(b"DATA\r\n") + len(part), received + len(got)
            r = govern(
                lab.mx, "block", BLOCKED, "--for", "1h", "--reason", "customer complaint #4711", "--config", str(cfg)
            )
            assert r.returncode == 0, r.stderr
            # Past the idle threshold (2 s), and seen idle by a snapshot since.
            assert wait_for(lambda: (d.ask(cmd="why", addr=SILENT)["why"]["snapshot"] or {}).get("idle") == 1, 10)

            r = govern(lab.mx, "why", SILENT, "--config", str(cfg))
            assert r.returncode == 0, r.stderr
            print(f"\n$ govern why {SILENT}\n{r.stdout}")
            wait = re.search(r"your client waits (\d+)s after our greeting before it says EHLO", r.stdout)
            assert wait is not None and int(wait.group(1)) >= 2, r.stdout
            assert re.search(
                rf"{SILENT}:\d+ +25  ESTABLISHED +\d+s ago +never +0/1 +0/{len(srv.banner)}  yes", r.stdout
            )
            assert "198.18.7.1 is a stranger" in r.stdout

            doc = json.loads(govern(lab.mx, "why", SILENT, "--json", "--config", str(cfg)).stdout)
            (sess,) = doc["sessions"]
            assert sess["waiting"] and sess["segs_in"] == 0 and sess["bytes_out"] == len(srv.banner)
            assert sess["server_sent_ms"] >= 2000 and sess["local_port"] == 25
            assert sess["remote_port"] == socks[0].getsockname()[1]
            assert doc["snapshot"]["held"] == 1 and doc["limits"]["max_connections"] == 20
            assert [a["rule"] for a in doc["advice"]] == ["silent-after-greeting"]

            r = govern(lab.mx, "why", SILENT6, "--config", str(cfg))
            assert r.returncode == 0 and "2001:db8:bad:7::1 (source 2001:db8:bad:7::/64)" in r.stdout, r.stdout
            assert f"[{SILENT6}]:" in r.stdout and "after our greeting before it says EHLO" in r.stdout

            r = govern(lab.mx, "why", BLOCKED, "--config", str(cfg))
            assert r.returncode == 0, r.stderr
            print(f"$ govern why {BLOCKED}\n{r.stdout}")
            assert "  - an operator blocked you by hand: customer complaint #4711 (for another 59m" in r.stdout
            assert (
                "blocked by hand since" in r.stdout and "block 198.18.9.9: manual: customer complaint #4711" in r.stdout
            )

            r = govern(lab.mx, "why", TALKER, "--config", str(cfg))
            assert r.returncode == 0 and "  - nothing wrong seen" in r.stdout, r.stdout
            assert re.search(rf"{TALKER}:\d+ +25  ESTABLISHED .* 4/4 +{sent}/{received}  no", r.stdout), r.stdout
            r = govern(lab.mx, "why", "192.0.2.10", "--config", str(cfg))
            assert r.returncode == 0 and "192.0.2.10 is allowlisted (192.0.2.0/24)" in r.stdout, r.stdout

            for bad, needle in (
                ("mx.example", "'mx.example' is not an IPv4/IPv6 address or prefix"),
                ("198.18.0.0/16", "198.18.0.0/16 is wider than one source"),
            ):
                r = govern(lab.mx, "why", bad, "--config", str(cfg))
                assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, (bad, r.stderr)
            # A malformed request straight to the socket: an error reply, and the daemon keeps answering.
            assert d.ask(cmd="why", addr=["198.18.7.1"])["ok"] is False
            assert d.ask(cmd="why", addr=SILENT)["ok"]
        started = time.monotonic()
        r = govern(lab.mx, "why", SILENT, "--config", str(cfg))
        assert r.returncode == 3 and "daemon is not running" in r.stderr and time.monotonic() - started < 10
    finally:
        for s in socks:
            s.close()
        srv.close()
