"""The ExaBGP follower and the feed's token file, without a daemon: what goes out on each poll."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from govern.errors import ConfigError, DaemonUnavailable
from govern.export.feed import read_token
from govern.export.follow import Follower


class Daemon:
    """Stands in for the daemon's export request: a route list, or away."""

    def __init__(self) -> None:
        self.routes: list[str] | None = []

    def __call__(self) -> list[str]:
        if self.routes is None:
            raise DaemonUnavailable("not running")
        return list(self.routes)


def test_announce_on_block_withdraw_on_release_and_nothing_twice_across_a_daemon_restart() -> None:
    d, out = Daemon(), io.StringIO()
    f = Follower(d, out)
    d.routes = ["flow route A", "flow route B"]
    assert f.step() == 2
    d.routes = None  # the daemon restarts: nothing is withdrawn meanwhile
    assert f.step() == 0
    d.routes = ["flow route A", "flow route B"]  # it restored the same blocks
    assert f.step() == 0
    d.routes = ["flow route B", "flow route C"]
    f.step()
    assert out.getvalue().splitlines() == [
        "announce flow route A",
        "announce flow route B",
        "withdraw flow route A",
        "announce flow route C",
    ]


def test_a_fresh_follower_announces_the_current_set_once() -> None:
    d, out = Daemon(), io.StringIO()
    d.routes = ["flow route A", "flow route A"]
    f = Follower(d, out)
    f.step()
    f.step()
    assert out.getvalue() == "announce flow route A\n"


def test_the_token_file_must_be_private(tmp_path: Path) -> None:
    tok = tmp_path / "token"
    tok.write_text("0123456789abcdef-token\n")
    tok.chmod(0o640)
    with pytest.raises(ConfigError, match="0600"):
        read_token(str(tok))
    tok.chmod(0o600)
    assert read_token(str(tok)) == b"0123456789abcdef-token"
    with pytest.raises(ConfigError, match="does not exist"):
        read_token(str(tmp_path / "none"))
