"""What govern tells systemd: journald priorities on log lines when stderr is the journal."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

from govern.systemd import JournalFormatter, journal_stderr


def test_log_lines_carry_journald_priorities() -> None:
    fmt = JournalFormatter("%(levelname)s %(message)s")

    def line(level: int, msg: str) -> str:
        return fmt.format(logging.LogRecord("govern", level, __file__, 1, msg, None, None))

    assert line(logging.ERROR, "act failed") == "<3>ERROR act failed"
    assert line(logging.WARNING, "mode normal -> wave") == "<4>WARNING mode normal -> wave"
    assert line(logging.INFO, "block 198.18.0.1") == "<6>INFO block 198.18.0.1"
    assert line(logging.DEBUG, "tick") == "<7>DEBUG tick"
    # Each line of a multi-line message keeps the priority, so journald does not file the rest as info.
    assert line(logging.ERROR, "a\nb") == "<3>ERROR a\n<3>b"


def test_the_journal_is_recognised_only_by_its_stream(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    st = os.fstat(sys.stderr.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert journal_stderr()
    other = os.stat(tmp_path)
    monkeypatch.setenv("JOURNAL_STREAM", f"{other.st_dev}:{other.st_ino}")
    assert not journal_stderr()  # inherited by a child whose stderr went elsewhere
    monkeypatch.delenv("JOURNAL_STREAM")
    assert not journal_stderr()
