"""The `[fleet]` section: every bad value refused naming its key, and `govern config check` exits 2 for it; the
URLs it takes (govern.fleet.url): one server, a Cluster node, Sentinels."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from govern import config
from govern.errors import ConfigError
from govern.fleet import url
from govern.fleet.link import shown_url

ROOT = Path(__file__).resolve().parents[2]
KEY = "k" * 32


def key_file(tmp_path: Path, text: str = KEY, mode: int = 0o600, name: str = "fleet.key") -> str:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def fleet(**keys: object) -> config.Config:
    return config.from_mapping({"fleet": keys})


def test_off_by_default() -> None:
    c = config.from_mapping({})
    assert c["fleet"]["url"] == ""
    assert c["fleet"]["share"] == ("blocks",)


@pytest.mark.parametrize(
    "url",
    [
        "redis://10.0.0.1:6379/0",
        "rediss://redis.example:6380",
        "unix:///run/redis/redis.sock",
        "REDIS://h",
        "redis+cluster://node1.example:7000",
        "rediss+sentinel://fleet:pw@s1:26379,s2,[2001:db8::1]:26380/mx-fleet/2",
    ],
)
def test_good_urls(tmp_path: Path, url: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("the key file must be root's")
    assert fleet(url=url, key_file=key_file(tmp_path))["fleet"]["url"] == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://h:6379", "redis://, rediss://, unix://, redis\\+cluster:// or redis\\+sentinel://"),
        ("h:6379", "redis://, rediss://"),
        ("redis+cluster://h:7000/3", "only database 0"),
        ("redis+sentinel://s1:26379", "names no master"),
        ("redis+sentinel://s1:263790/m", "no valid port"),
        ("redis+sentinel://s1,,s2/m", "names no sentinel"),
        ("redis+sentinel://s1/m/x", "database that is not a number"),
        ("redis+sentinel://s1/m?timeout=3", "unknown parameter 'timeout'"),
        ("redis://", "names no server"),
        ("redis://:pw@/0", "names no server"),
        ("redis://h:99999", "no valid port"),
        ("rediss://h:port", "no valid port"),
        ("unix://run/redis.sock", "absolute socket path"),
        ("redis://h 1", "space"),
        (6379, "expected a non-empty string"),
    ],
)
def test_bad_urls_name_the_key(url: object, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as exc:
        fleet(url=url)
    assert exc.value.key == "fleet.url"


def test_a_url_needs_a_key_file() -> None:
    with pytest.raises(ConfigError, match=r"set fleet\.key_file") as exc:
        fleet(url="redis://h")
    assert exc.value.key == "fleet.url"


@pytest.mark.parametrize(
    ("text", "mode", "problem"),
    [
        (KEY, 0o644, "mode 0644"),
        (KEY, 0o640, "must be 0600"),
        ("", 0o600, "is empty"),
        ("  \n", 0o600, "is empty"),
        ("short", 0o600, "shorter than 16 bytes"),
    ],
)
def test_bad_key_files(tmp_path: Path, text: str, mode: int, problem: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("the key file must be root's")
    with pytest.raises(ConfigError, match=problem) as exc:
        fleet(url="redis://h", key_file=key_file(tmp_path, text, mode))
    assert exc.value.key == "fleet.key_file"


def test_a_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as exc:
        fleet(url="redis://h", key_file=str(tmp_path / "nope"))
    assert exc.value.key == "fleet.key_file"


def test_a_key_file_not_roots_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a file away")
    path = key_file(tmp_path)
    os.chown(path, 65534, 65534)
    with pytest.raises(ConfigError, match="belongs to uid 65534"):
        fleet(url="redis://h", key_file=path)


def test_a_directory_or_a_link_as_key_file(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the key file must be root's")
    with pytest.raises(ConfigError, match="not a regular file"):
        fleet(url="redis://h", key_file=str(tmp_path))
    (tmp_path / "link").symlink_to(key_file(tmp_path))
    with pytest.raises(ConfigError, match="cannot open"):
        fleet(url="redis://h", key_file=str(tmp_path / "link"))


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("share", ["blocks", "votes"], "'votes' is not something a fleet shares"),
        ("accept", ["trust", "trust"], "trust is listed twice"),
        ("share", "blocks", "expected a list"),
        ("name", "mx 1", "letters, digits"),
        ("name", "x" * 65, "up to 64"),
        ("namespace", "a/b", "letters, digits"),
    ],
)
def test_bad_values_name_their_key(key: str, value: object, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as exc:
        fleet(**{key: value})
    assert exc.value.key == f"fleet.{key}"


def test_config_check_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "govern.toml"
    path.write_text('[fleet]\nurl = "http://h"\n')
    run = subprocess.run(
        [sys.executable, "-m", "govern", "config", "check", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert run.returncode == 2, run.stderr
    assert "fleet.url" in run.stderr and "Traceback" not in run.stderr


def test_a_sentinel_url_names_its_sentinels_master_and_credentials() -> None:
    t = url.parse("rediss+sentinel://fleet:p%40ss@s1:26379,s2,[2001:db8::1]:26380/mx-fleet/2?sentinel_password=sp")
    assert t.mode == "sentinel" and t.tls
    assert t.hosts == (("s1", 26379), ("s2", 26379), ("2001:db8::1", 26380))
    assert (t.service, t.db, t.username, t.password, t.sentinel_password) == ("mx-fleet", 2, "fleet", "p@ss", "sp")


def test_a_cluster_url_is_redis_pys_own_for_one_node() -> None:
    t = url.parse("rediss+cluster://u:pw@node1:7000")
    assert (t.mode, t.url, t.tls) == ("cluster", "rediss://u:pw@node1:7000", True)


def test_an_error_never_shows_the_password() -> None:
    with pytest.raises(ValueError) as exc:
        url.parse("redis+cluster://u:secret@h:7000/5")
    assert "secret" not in str(exc.value) and "***" in str(exc.value)


def test_the_log_shows_a_url_without_credentials() -> None:
    assert shown_url("redis+sentinel://u:secret@s1,s2:26380/m/1") == "redis+sentinel://s1:26379,s2:26380/m"
    assert shown_url("rediss://u:secret@h:6380/0") == "rediss://h:6380/0"
