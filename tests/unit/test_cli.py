"""The command line as its user meets it (issue 14, item 7): --version, shell completion, help that renders the
config's section names literally, --json on every command that changes something, `govern allow --list`, read-only
commands that take no lock and write nothing, and `govern config show` printing valid TOML for any value. The
daemon behind the socket is a Governor over fakes, answering from a thread as the real one does."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from govern import cli, config
from govern.daemon import Governor
from govern.fakes import FakeClock, FakeCounters, FakeEnforcer, FakeSockets
from govern.store import Store
from tests.unit.test_sysctl_manager import tree

ROOT = Path(__file__).parents[2]


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli.app, list(args), prog_name="govern")


class FakeDaemon:
    """A control socket answered by `Governor.handle` (teardown as the main loop answers it)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.config = directory / "govern.toml"
        sock = directory / "run" / "govern.sock"
        self.config.write_text(
            '[allow]\ncidrs = ["192.0.2.0/24"]\n'
            f'[daemon]\nstate_dir = "{directory}/state"\nsocket = "{sock}"\n'
            f'[sysctl]\nroot = "{directory}/sys"\nmodules_root = "{directory}/module"\n'
        )
        cfg = config.load(str(self.config))
        store = Store(cfg["daemon"]["state_dir"])
        self.gov = Governor(cfg, store, FakeSockets(), FakeEnforcer(), FakeCounters(), clock=FakeClock())
        self.gov.start()
        sock.parent.mkdir()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(sock))
        self.server.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                raw = b""
                while not raw.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    raw += chunk
                body = json.loads(raw)
                if body.get("cmd") == "teardown":
                    reply: dict[str, Any] = {"ok": True, "message": "removed table inet govern"}
                else:
                    reply = self.gov.handle(body)
                conn.sendall(json.dumps(reply, default=str).encode() + b"\n")

    def close(self) -> None:
        self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self.thread.join(5)


@pytest.fixture
def daemon() -> Iterator[FakeDaemon]:
    # A short directory of its own: a unix socket's path must fit in 108 bytes.
    d = Path(tempfile.mkdtemp(prefix="gvcli-"))
    tree(d)
    fake = FakeDaemon(d)
    try:
        yield fake
    finally:
        fake.close()
        shutil.rmtree(d)


# -- --version, completion, help ----------------------------------------------------------------------------


def test_version_comes_from_the_package_metadata() -> None:
    res = invoke("--version")
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == f"govern {metadata.version('govern')}"


def test_shell_completion_is_offered_and_completes_commands() -> None:
    res = invoke("--help")
    assert "--install-completion" in res.stdout and "--show-completion" in res.stdout
    res = invoke("--show-completion", "bash")
    assert res.exit_code == 0 and "_GOVERN_COMPLETE=complete_bash" in res.stdout
    # What the shell runs on a TAB: the installed script's prog name, asked through the environment.
    env = {**os.environ, "_GOVERN_COMPLETE": "complete_bash", "COMP_WORDS": "govern sysctl p", "COMP_CWORD": "2"}
    code = "import sys; from govern.cli import app; sys.argv = ['govern']; app()"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert out.stdout.split() == ["plan"], out


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_help_shows_the_bracketed_section_names_its_text_contains() -> None:
    """Rich markup took `[export]` for a style tag and printed nothing; help is rendered as written now."""
    seen = set()
    for path, cmd in _commands(get_command(cli.app)):
        written = " ".join([cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params])
        names = set(re.findall(r"\[[a-z_]+\]", written)) - {"[lab]"}
        if not names:
            continue
        out = invoke(*path, "--help").stdout
        for name in names:
            assert name in out, (path, name, out)
            seen.add(name)
    assert {"[export]", "[block]"} <= seen
    assert "[export]" in invoke("export", "--help").stdout
    assert "duration in [block]" in " ".join(invoke("block", "--help").stdout.split())


# -- --json and allow --list --------------------------------------------------------------------------------


def _json(*args: str, code: int = 0) -> Any:
    res = invoke(*args)
    assert res.exit_code == code, (args, res.stdout, res.stderr)
    return json.loads(res.stdout)


def test_json_on_every_command_that_changes_something(daemon: FakeDaemon) -> None:
    c = ("--config", str(daemon.config), "--json")
    r = _json("block", "198.18.0.1", "--for", "1h", "--reason", "test", *c)
    assert r["ok"] and r["message"].startswith("blocked 198.18.0.1") and r["actions"]
    assert _json("unblock", "198.18.0.1", *c)["message"] == "unblocked 198.18.0.1"
    assert _json("allow", "198.51.100.9", "--note", "partner", *c)["message"] == "198.51.100.9 is allowlisted"
    assert _json("allow", "198.51.100.9", "--remove", *c)["ok"]
    assert _json("wave", "on", "--for", "10m", *c)["mode"]["mode"] == "wave"
    assert _json("wave", "off", *c)["message"].startswith("wave off")
    assert _json("config", "check", *c) == {"ok": True, "path": str(daemon.config)}
    r = _json("teardown", *c)
    assert r["daemon_stopped"] and r["message"] == "removed table inet govern"
    r = _json("sysctl", "apply", *c)
    assert r["ok"] and r["what"] == "apply base" and any(o["done"] == "wrote" for o in r["sysctls"])
    r = _json("sysctl", "restore", *c)
    assert r["ok"] and r["what"] == "restore" and all(o["done"] != "failed" for o in r["sysctls"])
    # Refusals keep their exit code and their one line on stderr; stdout stays empty.
    res = invoke("block", "192.0.2.10", *c)
    assert res.exit_code == 2 and res.stdout == "" and "allowlisted" in res.stderr


def test_allow_list_says_where_each_entry_comes_from(daemon: FakeDaemon) -> None:
    c = ("--config", str(daemon.config))
    assert invoke("allow", "198.51.100.0/28", *c).exit_code == 0
    rows = {e["prefix"]: e["sources"] for e in _json("allow", "--list", *c, "--json")}
    assert rows == {"192.0.2.0/24": ["allow.cidrs"], "198.51.100.0/28": ["govern allow"]}
    text = invoke("allow", "--list", *c).stdout.splitlines()
    assert text[0].split() == ["prefix", "from"]
    assert [line.split() for line in text[1:]] == [
        ["192.0.2.0/24", "allow.cidrs"],
        ["198.51.100.0/28", "govern", "allow"],
    ]
    res = invoke("allow", "--list", "192.0.2.1", *c)
    assert res.exit_code == 2 and "--list takes no address" in res.stderr
    res = invoke("allow", *c)
    assert res.exit_code == 2 and "--list" in res.stderr


def test_a_command_without_the_daemon_exits_3(tmp_path: Path) -> None:
    cfg = tmp_path / "govern.toml"
    cfg.write_text(f'[daemon]\nsocket = "{tmp_path}/none.sock"\nstate_dir = "{tmp_path}/state"\n')
    for args in (("allow", "--list"), ("block", "198.18.0.1", "--json"), ("top",)):
        res = invoke(*args, "--config", str(cfg))
        assert res.exit_code == 3 and "daemon is not running" in res.stderr, args
    assert not (tmp_path / "state").exists()


# -- read-only commands -------------------------------------------------------------------------------------


def _read_only_config(tmp_path: Path) -> Path:
    root, modules = tree(tmp_path)
    cfg = tmp_path / "govern.toml"
    cfg.write_text(
        f'[daemon]\nstate_dir = "{tmp_path}/state"\nsocket = "{tmp_path}/run/govern.sock"\n'
        f'[sysctl]\nroot = "{root}"\nmodules_root = "{modules}"\n'
    )
    return cfg


def test_read_only_commands_take_no_lock_and_write_nothing(tmp_path: Path) -> None:
    """`govern sysctl plan` took the journal's lock: as root it made state_dir and its lock file."""
    cfg = _read_only_config(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    for args in (
        ("sysctl", "plan"),
        ("sysctl", "plan", "--wave", "--json"),
        ("sysctl", "verify"),
        ("config", "check"),
        ("config", "show"),
        ("status",),
        ("list",),
        ("why", "198.18.0.1"),
        ("allow", "--list"),
    ):
        res = invoke(*args, "--config", str(cfg))
        assert res.exit_code in (0, 1, 3), (args, res.stdout, res.stderr)
        assert sorted(p.name for p in tmp_path.iterdir()) == before, args


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the command as another user: needs root")
def test_sysctl_plan_works_as_any_user_beside_roots_state_dir() -> None:
    """As non-root it failed on the lock in root's state_dir; it plans, and says what is in force is unknown."""
    home = Path(tempfile.mkdtemp(prefix="gvplan-"))  # pytest's own tmp_path is root's alone
    try:
        _plan_as_nobody(home)
    finally:
        shutil.rmtree(home)


def _plan_as_nobody(home: Path) -> None:
    home.chmod(0o755)
    cfg = _read_only_config(home)
    for p in home.rglob("*"):
        p.chmod(p.stat().st_mode | 0o444 | (0o111 if p.is_dir() else 0))
    state = home / "state"
    state.mkdir(mode=0o700)
    (state / "sysctl-journal.json").write_text("{}")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "govern", "sysctl", "plan", "--config", str(cfg)]
    res = subprocess.run(cmd, user=65534, env=env, cwd="/", capture_output=True, text=True, check=False)
    if res.returncode and "govern:" not in res.stderr:
        pytest.skip(f"govern cannot run as nobody here: {res.stderr.strip()[-300:]}")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("profile: base   in force: unknown (")
    assert "net.core.somaxconn" in res.stdout
    assert sorted(p.name for p in state.iterdir()) == ["sysctl-journal.json"]


# -- config show ----------------------------------------------------------------------------------------------


VALUES = ["a\nb", "tab\there", "üñíçødé — 😀", 'say "hi" \\ back', "\x00\x1f\x7f\r\b\f", "[x] = 1 # no comment"]


def test_config_show_is_valid_toml_whatever_a_value_holds() -> None:
    """Only backslash and quote were escaped: a newline in a value broke the TOML that `config show` prints."""
    base = config.load(None)
    raw = {s: dict(k) for s, k in base.raw.items()}
    raw["daemon"]["state_dir"] = VALUES[0]
    raw["allow"]["files"] = VALUES
    raw["allow"]["hosts"] = ["relay.example"]
    shown = config.Config(values=base.values, raw=raw, path="/etc/gov\nern.toml").to_toml()
    back = tomllib.loads(shown)
    assert back["daemon"]["state_dir"] == VALUES[0] and back["allow"]["files"] == VALUES
    assert back == {s: dict(k) for s, k in raw.items()}


def test_config_show_round_trips_a_file_with_quotes_and_unicode(tmp_path: Path) -> None:
    d = tmp_path / 'dir "quoted" ünïcode'
    d.mkdir()
    cfg = d / "govern.toml"
    cfg.write_text(f"[daemon]\nstate_dir = {json.dumps(str(d / 'state'))}\n", encoding="utf-8")
    res = invoke("config", "show", "--config", str(cfg))
    assert res.exit_code == 0, res.stderr
    assert tomllib.loads(res.stdout)["daemon"]["state_dir"] == str(d / "state")


def test_every_help_renders(monkeypatch: pytest.MonkeyPatch) -> None:
    for path, _cmd in _commands(get_command(cli.app)):
        if path[:1] == ("lab",) and len(path) > 1:
            continue
        res = invoke(*path, "--help")
        assert res.exit_code == 0 and "Usage: govern" in res.stdout, path
    assert isinstance(cli.app, typer.Typer)


def test_status_and_a_piped_top_show_the_slots(daemon: FakeDaemon) -> None:
    c = ("--config", str(daemon.config))
    assert invoke("block", "198.18.0.1", *c).exit_code == 0
    assert "slots now: 0 established, 0 held by strangers" in invoke("status", *c).stdout
    res = invoke("top", *c)  # not a terminal: one frame, then exit
    assert res.exit_code == 0, res.stderr
    assert "govern top  mode  NORMAL" in res.stdout and "budget 60 of 100" in res.stdout
    assert "by reason operator 1" in res.stdout and "198.18.0.1  manual: blocked by the operator" in res.stdout


def test_the_tick_line_says_how_and_when_the_sockets_were_walked() -> None:
    from govern.cli import _walk

    assert _walk({"scanner": "BPF iterator", "sockets_walked_ago": 2.0}) == " (read by BPF iterator; walked 2 s ago)"
    assert _walk({"scanner": "BPF iterator", "sockets_walked_ago": None}) == " (read by BPF iterator)"  # no tick yet
    # A deferred read of the SYN counts (docs/configuration.md, calm_scan_every): said once it is 2 s old.
    st = {"scanner": "sock_diag", "sockets_walked_ago": 0.0, "counts_read_ago": 1.0}
    assert _walk(st) == " (read by sock_diag; walked 0 s ago)"
    st["counts_read_ago"] = 7.0
    assert _walk(st) == " (read by sock_diag; walked 0 s ago; new connections counted 7 s ago)"
    assert _walk({}) == ""  # an older daemon's status


def test_the_trust_line_says_what_proves_a_sender() -> None:
    from govern.cli import _trust_line

    line = _trust_line(
        {"trusted": 3, "postfix_log": "/var/log/mail.log", "postfix_log_basis": "set in the config",
         "deliveries_learned": 5, "from_sessions": False, "revoked": 2}
    )  # fmt: skip
    assert line == (
        "trust: 3 sources, proven by deliveries in /var/log/mail.log (5 so far; set in the config); the kernel's "
        "count of replies: off; 2 proofs revoked in waves"
    )
    assert _trust_line({"withheld": 4}).endswith("; 4 crowds' proofs on probation, out of the kernel's proven sets")
    unread = _trust_line({"postfix_log": "/var/log/mail.log", "log_error": "/var/log/mail.log: Permission denied"})
    assert "LOG NOT READ: /var/log/mail.log: Permission denied" in unread
    none = _trust_line({"postfix_log": "", "postfix_log_basis": "no Postfix process holds a protected port",
                        "from_sessions": True})  # fmt: skip
    assert none.endswith("no Postfix log followed (no Postfix process holds a protected port); the kernel's count of "
                         "replies: on")  # fmt: skip


def test_the_budget_line_says_how_postscreen_talkers_are_judged() -> None:
    from govern.cli import _budget_line
    from govern.observe.mta import Budget

    # The budget as the daemon reports it: the crowds' part of the lane comes with it.
    def budget(newcomers: int) -> dict[str, Any]:
        return Budget(slots=45, capacity=50, basis="60% of 50 slots, x1.5", newcomers=newcomers).to_dict()

    st: dict[str, Any] = {
        "backend": "nftables",
        "budget": budget(38),
        "postscreen": True,
        "postscreen_greet_action": "enforce",
        "pregreet_cut": True,
    }
    line = _budget_line(st)
    assert line.startswith(
        "slot budget: strangers hold at most 45 slots, before a wave too, 38 of them kept for first contacts in a wave"
        " (12 of those for sources opening several at once)"
    )
    assert "of those" not in _budget_line({**st, "budget": budget(2)})  # no crowds' part
    calm_off = _budget_line({**st, "budget": {**budget(38), "before_wave": False}})
    assert calm_off.startswith("slot budget: strangers hold at most 45 slots in a wave, 38 of them")
    assert "no silent client cut before its greet wait, clients that talk during it cut" in line
    assert "(postscreen_greet_action = enforce)" in line
    ignored = _budget_line({**st, "postscreen_greet_action": "ignore", "pregreet_cut": False})
    assert "clients that talk during it waited for too (postscreen_greet_action = ignore)" in ignored
    assert "postscreen" not in _budget_line({**st, "postscreen": False})
