"""Malformed and hostile config files, allowlist files and socket places (issue 13, item 3): each gets one clear
line naming what is wrong and exit status 2, quickly, and nothing is changed; FIFOs and devices are never read."""

from __future__ import annotations

import os
import queue
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from govern import config
from govern.addr import Prefix
from govern.allow.files import WatchedFile
from govern.allow.postfix import LogFollower
from govern.allow.sources import AllowSources
from govern.control import ControlServer, Request
from govern.errors import ConfigError, UsageError
from govern.fakes import FakeResolver, InlineExecutor

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "govern.toml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def check(path: str) -> subprocess.CompletedProcess[str]:
    """`govern config check PATH` as an operator runs it, bounded so that a hang fails instead of blocking."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "govern", "config", "check", path], capture_output=True, text=True, timeout=20, env=env
    )


BAD_FILES = [
    ("[limits]\nmax_new_per_minute = " + "9" * 5000 + "\n", "whole number is out of range"),
    ("[limits]\nmax_new_per_minute = 0x" + "f" * 5000 + "\n", "limits.max_new_per_minute: a whole number out of range"),
    ("[block]\nduration = " + "9" * 400 + "\n", "block.duration: a whole number out of range"),
    ("[block]\nduration = " + "9" * 300 + ".0\n", "a number is longer than 40 characters"),
    ('[block]\nduration = "' + "9" * 400 + 's"\n', "block.duration: '999"),
    ("[allow]\ncidrs = " + "[" * 2000 + "]" * 2000 + "\n", "nested deeper than 4 levels"),
    ("x = " + "{a=" * 2000 + "1" + "}" * 2000 + "\n", "nested deeper than 4 levels"),
    ("[allow]\ncidrs = [[[[[]]]]]\n", "allow.cidrs[0][0][0]: nested deeper than 4 levels"),
    ("[protect]\nports = [" + ",".join(str(p) for p in range(1, 65536)) + "]\n", "a list of at most 10000 items"),
    ('[daemon]\nstate_dir = "/' + "a" * 5000 + '"\n', "daemon.state_dir: a string of at most 4096 characters"),
    ("[limits]\n" + "k" * 100 + " = 1\n", "a key is at most 64 printable characters"),
    ("[limits]\nmax_new_per_minute = 60\n" + "#" * (1 << 20) + "\n", "is larger than 1 MiB"),
]


BAD_IDS = [
    "int-5000-digits",
    "hex-5000-digits",
    "duration-400-digits",
    "float-300-digits",
    "duration-text-400",
    "arrays-2000-deep",
    "tables-2000-deep",
    "arrays-5-deep",
    "list-65535-items",
    "string-5000",
    "key-100",
    "file-over-1MiB",
]


@pytest.mark.parametrize(("text", "problem"), BAD_FILES, ids=BAD_IDS)
def test_oversized_and_overdeep_configs_are_refused_in_one_line(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text)
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert time.monotonic() - t0 < 1.0
    msg = str(caught.value)
    assert msg.startswith(path) and problem in msg, msg
    assert "\n" not in msg and len(msg) < 300, msg


def test_config_check_exits_2_without_a_traceback_for_each_bad_file(tmp_path: Path) -> None:
    for i, (text, problem) in enumerate(BAD_FILES[:8]):
        r = check(write(tmp_path, text, f"bad{i}.toml"))
        assert r.returncode == 2, (problem, r.stderr[-500:])
        assert problem in r.stderr and "Traceback" not in r.stderr, r.stderr[-500:]


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda p: os.mkfifo(p), "is a FIFO, not a regular file"),
        (lambda p: os.symlink("/dev/zero", p), "is a character device, not a regular file"),
        (lambda p: os.mkdir(p), "is a directory, not a regular file"),
    ],
    ids=["fifo", "dev-zero", "directory"],
)
def test_config_check_refuses_fifos_and_devices_at_once(tmp_path: Path, make: Callable[[str], None], kind: str) -> None:
    target = tmp_path / "govern.toml"
    make(str(target))
    r = check(str(target))  # a FIFO used to hang here, /dev/zero to end in MemoryError
    assert r.returncode == 2 and r.stderr.strip() == f"govern: {target}: {kind}", r.stderr[-500:]


def test_an_allowlist_file_that_is_a_fifo_is_refused_at_load(tmp_path: Path) -> None:
    fifo = tmp_path / "partners.fifo"
    os.mkfifo(fifo)
    r = check(write(tmp_path, f'[allow]\nfiles = ["{fifo}"]\n'))
    assert r.returncode == 2
    assert f"{fifo}: allow.files[0]: is a FIFO, not a regular file" in r.stderr


def test_a_watched_allowlist_file_replaced_by_a_fifo_keeps_its_entries(tmp_path: Path) -> None:
    f = tmp_path / "partners.txt"
    f.write_text("192.0.2.10\n")
    w = WatchedFile(str(f))
    assert w.check()
    f.unlink()
    os.mkfifo(f)
    t0 = time.monotonic()
    assert not w.check()  # used to block in open() until a writer came
    assert time.monotonic() - t0 < 1.0
    assert "is a FIFO, not a regular file" in w.error
    assert [str(e.prefix) for e in w.entries] == ["192.0.2.10"]


def test_a_postfix_log_that_is_a_fifo_is_not_followed(tmp_path: Path) -> None:
    fifo = tmp_path / "maillog"
    os.mkfifo(fifo)
    follower = LogFollower(str(fifo))
    assert follower.lines() == []  # used to block in open()
    assert "not a regular file" in follower.error


# -- everything `run` refuses, loading refuses ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("daemon", "problem"),
    [
        ('socket = "/tmp/' + "s" * 200 + '.sock"', "daemon.socket: a unix socket's path is at most 107 bytes"),
        ('state_dir = "/var/lib/gov\\u0000ern"', "daemon.state_dir: a path cannot contain a NUL character"),
        ('state_dir = "/proc/govern"', "daemon.state_dir: '/proc/govern' is under /proc"),
        ('state_dir = "/sys/fs/govern"', "daemon.state_dir: '/sys/fs/govern' is under /sys"),
        ('socket = "/proc/self/govern.sock"', "daemon.socket: '/proc/self/govern.sock' is under /proc"),
        ('socket = "/run/govern/"', "daemon.socket: expected the socket's file name"),
        ("[backend]\nxdp = true", "backend.xdp_interfaces: xdp is on but no interface"),
        ('[backend]\nxdp = true\nxdp_interfaces = ["eth0"]\nxdp_object = "/nonexistent/x.o"', "is not a file"),
    ],
    ids=[
        "socket-too-long",
        "state-dir-nul",
        "state-dir-proc",
        "state-dir-sys",
        "socket-proc",
        "socket-dir",
        "xdp-no-interface",
        "xdp-no-object",
    ],
)
def test_what_run_would_refuse_config_check_refuses(tmp_path: Path, daemon: str, problem: str) -> None:
    text = daemon if daemon.startswith("[") else f"[daemon]\n{daemon}"
    with pytest.raises(ConfigError, match=problem.replace("(", r"\(")):
        config.load(write(tmp_path, text + "\n"))


def test_a_socket_in_a_directory_others_may_write_is_refused_by_check_and_by_the_server(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    sock = shared / "govern.sock"
    with pytest.raises(ConfigError, match="may be written by others without the sticky bit"):
        config.load(write(tmp_path, f'[daemon]\nsocket = "{sock}"\n'))
    with pytest.raises(UsageError, match="may be written by others without the sticky bit"):
        ControlServer(str(sock), queue.Queue())
    assert stat.S_IMODE(shared.stat().st_mode) == 0o777 and not sock.exists()


def test_an_existing_directory_is_never_chmodded(tmp_path: Path) -> None:
    """With socket = "/tmp/govern.sock" the server used to chmod /tmp to 0700; a sticky shared directory is used as
    it is, and only a directory govern creates is made 0700."""
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    q: queue.Queue[Request | None] = queue.Queue()
    srv = ControlServer(str(sticky / "govern.sock"), q)
    try:
        assert stat.S_IMODE(sticky.stat().st_mode) == 0o1777
        assert stat.S_IMODE((sticky / "govern.sock").stat().st_mode) == 0o600
    finally:
        srv.close()
    made = tmp_path / "new" / "run"
    srv = ControlServer(str(made / "govern.sock"), q)
    try:
        assert stat.S_IMODE(made.stat().st_mode) == 0o700
    finally:
        srv.close()


def test_a_file_at_the_socket_path_is_never_replaced(tmp_path: Path) -> None:
    victim = tmp_path / "important"
    victim.write_text("keep me\n")
    with pytest.raises(ConfigError, match="exists and is not a socket"):
        config.load(write(tmp_path, f'[daemon]\nsocket = "{victim}"\n'))
    with pytest.raises(UsageError, match="exists and is not a socket"):
        ControlServer(str(victim), queue.Queue())
    assert victim.read_text() == "keep me\n"


# -- the allowlist guard on every path that reads entries ------------------------------------------------------


def test_allow_files_re_read_at_runtime_skip_entries_wider_than_the_guard(tmp_path: Path) -> None:
    f = tmp_path / "partners.txt"
    f.write_text("192.0.2.10\n")
    s = AllowSources(
        config.from_mapping({"allow": {"files": [str(f)]}}).allow_section(), FakeResolver(), InlineExecutor()
    )
    s.refresh(0.0)
    f.write_text("192.0.2.10\n0.0.0.0/1\n2000::/8\n")
    os.utime(f, ns=(0, 10**9))
    s.refresh(1.0)
    assert {str(p) for p in s.prefixes()} == {"192.0.2.10"}
    err = s.errors()[f"file {f}"]
    assert "0.0.0.0/1 is wider than /8 (guard.allow_ipv4_widest)" in err and "2000::/8 is wider than /16" in err
    assert f"{f}:2: skipped" in err


def test_a_reload_that_widens_the_guard_reads_the_files_again(tmp_path: Path) -> None:
    f = tmp_path / "partners.txt"
    f.write_text("192.0.2.10\n")
    narrow = {"allow": {"files": [str(f)]}, "guard": {"allow_ipv4_widest": 16}}
    s = AllowSources(config.from_mapping(narrow).allow_section(), FakeResolver(), InlineExecutor())
    s.refresh(0.0)
    f.write_text("192.0.2.10\n10.0.0.0/12\n")
    s.refresh(1.0)
    assert Prefix.parse("10.0.0.0/12") not in s.prefixes()
    s.configure(config.from_mapping({"allow": {"files": [str(f)]}}).allow_section())  # the default guard admits a /12
    assert s.refresh(2.0) and Prefix.parse("10.0.0.0/12") in s.prefixes()
    assert not s.errors()


def test_spf_ranges_wider_than_the_configured_guard_are_skipped() -> None:
    r = FakeResolver()
    r.set("partner.example", "TXT", "v=spf1 ip4:198.51.0.0/16 ip4:192.0.2.0/24 -all")
    cfg = config.from_mapping({"allow": {"spf_domains": ["partner.example"]}, "guard": {"allow_ipv4_widest": 20}})
    s = AllowSources(cfg.allow_section(), r, InlineExecutor())
    s.refresh(0.0)
    assert {str(p) for p in s.prefixes()} == {"192.0.2.0/24"}
    notes = s.status()[-1]["notes"]
    assert any("198.51.0.0/16 is wider than /20" in n for n in notes), notes


@pytest.mark.parametrize("path", ["/var/lib/x\ny", "/var/lib/\x1b[2J", "/var/lib/\x7f"])
def test_a_path_with_a_control_character_is_refused(path: str) -> None:
    """A newline in a path used to be accepted, and `config show` then printed a line of the operator's choosing
    (and TOML that did not load)."""
    with pytest.raises(ConfigError, match=r"daemon\.state_dir: .* contains a control character"):
        config.from_mapping({"daemon": {"state_dir": path}})


@pytest.mark.parametrize("text", ["a\nb = 1", "\x1b[2J", "\x7f", '"quoted" \\ back\u2603'])
def test_config_show_writes_any_string_as_toml_that_reads_back(text: str) -> None:
    """What `config show` prints loads back as the same value, and a newline cannot start a line of its own."""
    shown = config._toml_value(text)
    assert "\n" not in shown
    assert tomllib.loads(f"x = {shown}")["x"] == text
