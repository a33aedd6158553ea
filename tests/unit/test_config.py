"""Config loading: embedded defaults, overrides, and errors that name the file, the key and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from govern import config
from govern.addr import Prefix
from govern.durations import format_duration, parse_duration
from govern.errors import ConfigError


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "govern.toml"
    p.write_text(text)
    return str(p)


def test_defaults_need_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "DEFAULT_PATH", str(tmp_path / "absent.toml"))
    c = config.load()
    assert c.path is None
    assert c["protect"]["ports"] == (25, 465, 587)
    assert c["limits"]["max_connections_per_source"] == 20
    assert c["limits"]["max_new_per_minute"] == 60
    assert c["block"]["duration"] == 600 and c["block"]["max_duration"] == 86400
    assert c["daemon"]["tick"] == 1.0 and c["daemon"]["dry_run"] is False
    assert c["daemon"]["state_dir"] == "/var/lib/govern"
    assert c["daemon"]["socket"] == "/run/govern/govern.sock"


def test_file_overrides_only_what_it_names(tmp_path: Path) -> None:
    c = config.load(write(tmp_path, '[limits]\nmax_new_per_minute = 30\n[block]\nduration = "1h"\n'))
    assert c["limits"]["max_new_per_minute"] == 30
    assert c["limits"]["max_connections_per_source"] == 20
    assert c["block"]["duration"] == 3600


def test_allowlist_from_cidrs_and_files(tmp_path: Path) -> None:
    f = tmp_path / "partners.txt"
    f.write_text("# partners\n192.0.2.10\n\n2001:db8:2::/48  # relay\n")
    c = config.load(write(tmp_path, f'[allow]\ncidrs = ["192.0.2.128/25"]\nfiles = ["{f}"]\n'))
    pol = c.policy()
    assert pol.allow.covers(Prefix.parse("192.0.2.10"))
    assert pol.allow.covers(Prefix.parse("192.0.2.200"))
    assert pol.allow.covers(Prefix.parse("2001:db8:2:7::/64"))
    assert not pol.allow.covers(Prefix.parse("192.0.2.11"))


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[limits]\nmax_conn = 3\n", "limits.max_conn", "unknown key"),
        ("[limitz]\n", "[limitz]", "unknown section"),
        ('[limits]\nmax_connections_per_source = "20"\n', "limits.max_connections_per_source", "whole number"),
        ("[limits]\nmax_connections_per_source = 0\n", "limits.max_connections_per_source", "between 1 and"),
        ("[protect]\nports = [25, 70000]\n", "protect.ports", "not a TCP port"),
        ("[protect]\nports = []\n", "protect.ports", "non-empty list"),
        ('[allow]\ncidrs = ["192.0.2.300"]\n', "allow.cidrs", "not an IPv4/IPv6 address"),
        ('[allow]\ncidrs = ["192.0.2.1/24"]\n', "allow.cidrs", "host bits set"),
        ('[allow]\ncidrs = ["0.0.0.0/0"]\n', "allow.cidrs", "every address"),
        ('[block]\nduration = "10 minutes"\n', "block.duration", "not a duration"),
        ('[block]\nduration = "2d"\nmax_duration = "1d"\n', "block.max_duration", "shorter than block.duration"),
        ("[daemon]\ndry_run = 1\n", "daemon.dry_run", "true or false"),
        ('[daemon]\nstate_dir = "relative"\n', "daemon.state_dir", "absolute path"),
        ('[daemon]\ntick = "0s"\n', "daemon.tick", "positive"),
        ('[daemon]\nqueue_poll = "20ms"\n', "daemon.queue_poll", "between 50ms and 10s"),
        ("[daemon]\ncalm_scan_every = 0\n", "daemon.calm_scan_every", "between 1 and 60"),
        ('[daemon]\nqueue_poll = "soon"\n', "daemon.queue_poll", "not a duration"),
        ("limits = 3\n", "limits", "expected a table"),
    ],
)
def test_bad_config_names_file_key_and_problem(tmp_path: Path, text: str, key: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert err.value.exit_code == 2
    msg = str(err.value)
    assert msg.startswith(f"{path}: {key}: ") and problem in msg, msg


def test_not_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits\n")
    with pytest.raises(ConfigError, match=rf"^{path}: not valid TOML"):
        config.load(path)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(str(tmp_path / "nope.toml"))


def test_bad_allow_file_line_is_named(tmp_path: Path) -> None:
    f = tmp_path / "allow.txt"
    f.write_text("192.0.2.1\nnot-an-address\n")
    with pytest.raises(ConfigError, match=rf"^{f}:2: 'not-an-address' is not"):
        config.load(write(tmp_path, f'[allow]\nfiles = ["{f}"]\n'))
    with pytest.raises(ConfigError, match=r"absent\.txt: allow\.files\[0\]: does not exist"):
        config.load(write(tmp_path, f'[allow]\nfiles = ["{tmp_path}/absent.txt"]\n'))


def test_show_round_trips_through_toml(tmp_path: Path) -> None:
    c = config.load(write(tmp_path, '[limits]\nmax_new_per_minute = 30\n[allow]\ncidrs = ["192.0.2.0/24"]\n'))
    again = config.load(write(tmp_path, c.to_toml()))
    assert again.values == c.values


@pytest.mark.parametrize(
    ("text", "seconds"), [("10m", 600), ("1h30m", 5400), ("500ms", 0.5), ("7d", 604800), (3, 3), ("2.5s", 2.5)]
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "m", "10 minutes", "1h-5m", "-3s", True, "0s"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0.25, 59, 600, 5400, 90061)] == ["250ms", "59s", "10m", "1h30m", "1d1h1m1s"]


def test_sysctl_section_defaults_and_an_unknown_excluded_key_is_refused(tmp_path: Path) -> None:
    c = config.from_mapping({})
    assert c["sysctl"]["expected_sessions"] == 2000 and c["sysctl"]["apply_at_start"] is True
    assert c["sysctl"]["exclude"] == frozenset()
    c = config.load(write(tmp_path, '[sysctl]\nexclude = ["net.core.somaxconn"]\n'))
    assert c["sysctl"]["exclude"] == frozenset({"net.core.somaxconn"})
    with pytest.raises(ConfigError, match=r"sysctl\.exclude: item 0: 'net\.core\.rmem_max' is not a key govern tunes"):
        config.load(write(tmp_path, '[sysctl]\nexclude = ["net.core.rmem_max"]\n'))


def test_the_queue_poll_is_a_short_duration_or_off() -> None:
    assert config.from_mapping({})["daemon"]["queue_poll"] == 0.25
    for off in (0, "0", "0s", "off"):
        assert config.from_mapping({"daemon": {"queue_poll": off}})["daemon"]["queue_poll"] == 0.0
