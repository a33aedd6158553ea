"""Backlog awareness: which listeners' own backlog caps their queue below the planned somaxconn, and the MTA
setting to change."""

from __future__ import annotations

from govern.model import ListenerStats
from govern.sysctl.backlog import EXIM, OPENSMTPD, POSTFIX, identify, plan_warnings, warnings


def test_identify_the_mta_from_its_processes() -> None:
    assert identify([("master", "/usr/lib/postfix/sbin/master"), ("smtpd", "/usr/lib/postfix/sbin/smtpd")]) == POSTFIX
    assert identify([("exim4", "/usr/sbin/exim4")]) == EXIM
    assert identify([("smtpd", "/usr/sbin/smtpd")]) == OPENSMTPD
    assert identify([("python3", "/usr/bin/python3.11")]) is None
    assert identify([]) is None


def test_a_listener_capped_by_its_mta_names_the_setting() -> None:
    pf = ListenerStats("0.0.0.0", 25, 0, 100)
    ex = ListenerStats("::", 587, 0, 20)
    ok = ListenerStats("203.0.113.25", 465, 0, 8192)
    out = warnings([pf, ex, ok], 4096, 8192, {("0.0.0.0", 25): POSTFIX, ("::", 587): EXIM})
    assert len(out) == 2
    assert out[0].startswith("listener 0.0.0.0:25 (Postfix): accept backlog 100 < somaxconn 8192")
    assert "default_process_limit" in out[0] and "maxproc" in out[0]
    assert out[1].startswith("listener [::]:587 (Exim)") and "smtp_connect_backlog" in out[1]


def test_a_listener_capped_by_the_old_somaxconn_needs_a_restart_not_a_setting() -> None:
    out = warnings([ListenerStats("::", 25, 0, 4096)], 4096, 8192, {})
    assert out == [
        "listener [::]:25: accept backlog 4096 < somaxconn 8192: capped by somaxconn when it started listening; "
        "restart the MTA after applying"
    ]


def test_no_warning_when_the_backlog_reaches_somaxconn() -> None:
    assert warnings([ListenerStats("::", 25, 3, 4096)], 4096, 4096, {}) == []
    assert warnings([ListenerStats("::", 25, 3, 10)], None, None, {}) == []


def test_a_plan_s_somaxconn_is_what_listeners_are_held_to() -> None:
    from govern.sysctl.planner import SOMAXCONN, Item, Status

    plan = (Item(SOMAXCONN, 4096, 8192, Status.CHANGE, "sized"),)
    out = plan_warnings([ListenerStats("::", 25, 0, 4096)], plan)
    # (Which MTA owns [::]:25 is read from this host's /proc: the test leaves that part of the line alone.)
    assert len(out) == 1 and out[0].startswith("listener [::]:25") and "accept backlog 4096 < somaxconn 8192" in out[0]
    assert plan_warnings([ListenerStats("::", 25, 0, 4096)], ()) == []  # no somaxconn in the plan: nothing to hold to
