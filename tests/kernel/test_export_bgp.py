"""The export against real BGP speakers: govern's daemon and ExaBGP (driven by `govern export --follow`) in the MX
namespace, BIRD 2 in the router namespace playing the ISP. BIRD's FlowSpec table must get a rule for each blocked
source and lose it on unblock and on expiry; the `bird` output must pass BIRD's own config check; the pull feed
must refuse a request without its token."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.daemon_harness import Daemon, govern, running, wait_for, write_config
from tests.netns import MX4, Lab

pytestmark = pytest.mark.skipif(
    not shutil.which("bird")
    or not shutil.which("birdc")
    or not shutil.which("exabgp", path=os.path.dirname(sys.executable)),
    reason="needs bird2 (Debian) and exabgp (PyPI, the test extra)",
)
ROUTER4 = "203.0.113.1"
REPO = Path(__file__).parents[2]

BIRD_CONF = """
router id {router};
log "{log}" all;
flow4 table flowtab4;
protocol device {{ }}
protocol bgp mx {{
  local {router} as 64511;
  neighbor {mx} as 64512;
  hold time 30;
  flow4 {{ table flowtab4; import all; export none; }};
}}
"""

EXABGP_CONF = """
process govern {{
  run {python} -m govern export --format exabgp --follow --config {config};
  encoder text;
}}
neighbor {router} {{
  router-id {mx};
  local-address {mx};
  local-as 64512;
  peer-as 64511;
  family {{ ipv4 flow; }}
  api {{ processes [ govern ]; }}
}}
"""


class Proc:
    """A process started in a namespace, stopped by its PID (ip netns exec execs the command)."""

    def __init__(self, ns: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        with open(log, "ab") as fh:
            self.p = subprocess.Popen(["ip", "netns", "exec", ns, *args], stdout=fh, stderr=subprocess.STDOUT, env=env)

    def stop(self) -> None:
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.p.pid, signal.SIGKILL)
                self.p.wait(5)


@pytest.fixture
def isp(lab: Lab, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """BIRD in the router namespace; yields (its control socket, its log)."""
    conf, sock, log = tmp_path / "bird.conf", tmp_path / "bird.ctl", tmp_path / "bird.log"
    conf.write_text(BIRD_CONF.format(router=ROUTER4, mx=MX4, log=log))
    # -f: stay in the foreground, so the PID we hold is BIRD's own.
    bird = Proc(lab.net.name, ["bird", "-f", "-c", str(conf), "-s", str(sock), "-P", str(tmp_path / "bird.pid")], log)
    try:
        assert wait_for(sock.exists, 10), log.read_text() if log.exists() else "bird did not start"
        yield sock, log
    finally:
        bird.stop()


def flowtab(sock: Path) -> str:
    res = subprocess.run(
        ["birdc", "-s", str(sock), "show", "route", "table", "flowtab4", "all"], capture_output=True, text=True
    )
    return res.stdout


def bgp_up(sock: Path) -> bool:
    res = subprocess.run(["birdc", "-s", str(sock), "show", "protocols", "mx"], capture_output=True, text=True)
    return "Established" in res.stdout


def test_flowspec_rules_reach_bird_and_leave_on_unblock_and_expiry(
    lab: Lab, tmp_path: Path, isp: tuple[Path, Path]
) -> None:
    sock, bird_log = isp
    cfg = write_config(tmp_path, '[export]\nmin_age = "1s"\npoll = "0.5s"\n')
    exa_conf = tmp_path / "exabgp.conf"
    exa_conf.write_text(EXABGP_CONF.format(python=sys.executable, config=cfg, router=ROUTER4, mx=MX4))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        # ExaBGP drops to `nobody` by default; the follower must reach root's control socket.
        "exabgp_daemon_user": "root",
        "exabgp_daemon_drop": "false",
        "exabgp_log_destination": "stdout",
    }
    exa_log = tmp_path / "exabgp.log"
    with running(lab.mx, cfg) as daemon:
        exa = Proc(lab.mx.name, [os.path.join(os.path.dirname(sys.executable), "exabgp"), str(exa_conf)], exa_log, env)
        try:
            assert wait_for(lambda: bgp_up(sock), 30), exa_log.read_text()[-3000:] + bird_log.read_text()[-2000:]
            assert govern(lab.mx, "block", "198.18.0.7", "--config", str(cfg)).returncode == 0
            assert govern(lab.mx, "block", "198.18.4.9", "--for", "4s", "--config", str(cfg)).returncode == 0
            # An allowlisted address is refused by the daemon; one inside an exported prefix never reaches BIRD.
            rule7 = "src 198.18.0.7/32"
            assert wait_for(lambda: rule7 in flowtab(sock) and "198.18.4.9/32" in flowtab(sock), 15), (
                flowtab(sock) + exa_log.read_text()[-3000:]
            )
            table = flowtab(sock)
            assert f"dst {MX4}/32" in table and "proto 6" in table and "dport" in table
            # Expiry: the 4 s block lapses in the daemon and its rule is withdrawn; the other stays.
            assert wait_for(lambda: "198.18.4.9/32" not in flowtab(sock), 20), flowtab(sock)
            assert rule7 in flowtab(sock)
            # A daemon restart withdraws nothing: the follower keeps what it announced while the daemon is away.
            daemon.stop()
            assert rule7 in flowtab(sock)
            restarted = Daemon(lab.mx, cfg).start()
            try:
                assert rule7 in flowtab(sock)
                assert govern(lab.mx, "unblock", "198.18.0.7", "--config", str(cfg)).returncode == 0
                assert wait_for(lambda: rule7 not in flowtab(sock), 15), flowtab(sock)
            finally:
                restarted.stop()
            announced = [ln for ln in exa_log.read_text().splitlines() if "198.18.0.7/32" in ln and "announce" in ln]
            assert exa.p.poll() is None, exa_log.read_text()[-3000:]
        finally:
            exa.stop()
    assert len(announced) <= 2  # ExaBGP may log a command once as received and once as sent; a restart adds none


def test_bird_output_passes_birds_own_config_check(lab: Lab, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[export]\nmin_age = "1s"\n')
    with running(lab.mx, cfg):
        for p in ("198.18.0.7", "198.18.0.0/24", "2001:db8:bad::/64"):
            assert govern(lab.mx, "block", p, "--config", str(cfg)).returncode == 0
        # The blocks are exported once they have lasted export.min_age.
        assert wait_for(lambda: govern(lab.mx, "export", "--config", str(cfg)).stdout.count("\n") == 2, 10)
        for extra in ([], ["--rtbh"]):
            out = tmp_path / "govern-bird.conf"
            res = govern(lab.mx, "export", "--format", "bird", "--output", str(out), *extra, "--config", str(cfg))
            assert res.returncode == 0, res.stderr
            text = out.read_text()
            assert "198.18.0.0/24" in text and "2001:db8:bad::/64" in text and "198.18.0.7" not in text
            check = subprocess.run(["bird", "-p", "-c", str(out)], capture_output=True, text=True)
            assert check.returncode == 0, check.stderr + text


def test_the_feed_serves_behind_its_token_only(lab: Lab, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token-for-the-isp\n")
    token.chmod(0o600)
    cfg = write_config(tmp_path, f'[export]\nmin_age = "1s"\nlisten = "{MX4}:8025"\ntoken_file = "{token}"\n')
    with running(lab.mx, cfg):
        assert govern(lab.mx, "block", "198.18.0.7", "--config", str(cfg)).returncode == 0

        def get(auth: str | None) -> tuple[int, str]:
            req = urllib.request.Request(f"http://{MX4}:8025/plain")
            if auth is not None:
                req.add_header("Authorization", auth)
            try:
                with lab.net.entered(), urllib.request.urlopen(req, timeout=5) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, ""

        assert wait_for(lambda: get("Bearer s3cret-token-for-the-isp") == (200, "198.18.0.7/32\n"), 10)
        assert get(None)[0] == 401
        assert get("Bearer s3cret-token-for-the-isX")[0] == 401
    token.chmod(0o644)
    res = govern(lab.mx, "run", "--config", str(cfg))
    assert res.returncode == 2 and "0600" in res.stderr, res.stderr
