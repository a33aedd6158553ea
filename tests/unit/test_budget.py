"""The slot budget's sizing (govern.observe.mta.budget) and its lanes: pure arithmetic over the config and the
listeners govern reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from govern import autos, config
from govern.errors import ConfigError
from govern.model import ListenerStats
from govern.nft.ruleset import budget_lanes, first_contact_lanes, ruleset, slot_budget
from govern.observe.mta import budget
from govern.observe.postfix import greet_action, holders, main_cf_value, postfix_log


def wave(**keys: object) -> config.Config:
    return config.from_mapping({"wave": keys})


def test_auto_is_a_share_of_the_tightest_listener_backlog() -> None:
    listeners = [ListenerStats("203.0.113.25", 25, 0, 50), ListenerStats("::", 25, 3, 4096)]
    b = budget(wave()["wave"], listeners)
    assert (b.slots, b.capacity, b.newcomers) == (30, 50, 10)
    assert "60% of 50 slots" in b.basis and "203.0.113.25:25" in b.basis


def test_explicit_slots_and_explicit_capacity_win() -> None:
    listeners = [ListenerStats("::", 25, 0, 4096)]
    assert budget(wave(mta_slots=100)["wave"], listeners).slots == 60
    assert budget(wave(slot_budget=7)["wave"], listeners).slots == 7
    assert budget(wave(slot_budget=0)["wave"], listeners).slots == 0


def test_behind_a_pregreet_wait_the_budget_counts_the_time_strangers_spend_in_postscreen() -> None:
    listeners = [ListenerStats("::", 25, 0, 50)]
    b = budget(wave()["wave"], listeners, greet_wait=6.0, cut_after=3.0)
    # 30 x (6 + 3) / 6. The lanes by the time a connection holds a slot: a returning stranger (postscreen passes
    # it at once) only its session's 3 s, a first contact the wait and then that: the common lane is 20 x 3 / 9.
    assert (b.slots, b.capacity, b.newcomers) == (45, 50, 38)
    assert budget(wave()["wave"], listeners).newcomers == 10  # 34% of 30 without the wait
    assert budget(wave(newcomer_share=0.0)["wave"], listeners, greet_wait=6.0).newcomers == 0  # no lane wanted
    assert "x1.5: strangers spend a 6s pregreet wait in postscreen" in b.basis
    assert budget(wave()["wave"], listeners, greet_wait=2.0, cut_after=3.0).slots == 50  # 30 x 5 / 3
    assert budget(wave(slot_budget=7)["wave"], listeners, greet_wait=6.0).slots == 7  # explicit: as it is
    assert budget(wave()["wave"], listeners, greet_wait=0.0).slots == 30


def test_no_listener_falls_back_to_postfix_defaults() -> None:
    b = budget(wave(budget_share=0.5)["wave"], [])
    assert (b.slots, b.capacity) == (50, 100) and "no listener" in b.basis
    assert slot_budget(wave().firewall()) == 60  # before the daemon resolved "auto"


@pytest.mark.parametrize(
    ("total", "share", "lanes"),
    [
        (30, 0.34, (20, 10)),
        (6, 0.34, (4, 2)),
        (2, 0.34, (1, 1)),
        (1, 0.34, (1, 0)),
        (10, 0.0, (10, 0)),
        (3, 0.9, (1, 2)),
    ],
)
def test_lanes_never_take_the_whole_budget(total: int, share: float, lanes: tuple[int, int]) -> None:
    assert budget_lanes(total, share) == lanes


@pytest.mark.parametrize(("newcomers", "parts"), [(10, (7, 3)), (38, (26, 12)), (3, (2, 1)), (2, (2, 0)), (0, (0, 0))])
def test_crowds_get_a_third_of_the_first_contacts_lane_and_none_of_a_small_one(
    newcomers: int, parts: tuple[int, int]
) -> None:
    assert first_contact_lanes(newcomers) == parts


def test_the_ruleset_carries_the_budget_only_when_enforcing() -> None:
    text = ruleset(wave(slot_budget=30).firewall())
    assert "add set inet govern slots { typeof ct id; size 20;" in text
    assert "add set inet govern newslots { typeof ct id; size 7;" in text
    assert "add set inet govern crowdslots { typeof ct id; size 3;" in text
    # A crowd's first contact tries only the crowds' part; a single connection's its own first.
    order = ("!= @crowd4 add @newslots", "@fresh4 add @crowdslots", "admit add @slots")
    assert [text.index(r) for r in order] == sorted(text.index(r) for r in order)
    assert "admit add @slots { ct id timeout 5s } accept" in text and "jump admit" in text
    assert "delete set inet govern slots" not in text
    assert "delete set inet govern slots\n" in ruleset(wave(slot_budget=30).firewall(), resize=["slots"]) + "\n"
    assert "jump admit" not in ruleset(wave(slot_budget=30).firewall(), enforce=False)
    assert "jump calm" not in ruleset(wave(slot_budget=30).firewall(), enforce=False)
    assert "jump calm" not in ruleset(wave(slot_budget=30, budget_before_wave=False).firewall())
    assert "jump admit" in ruleset(wave(slot_budget=30, budget_before_wave=False).firewall())
    assert "ct id" not in ruleset(wave(slot_budget=0).firewall())
    assert "newslots" not in ruleset(wave(slot_budget=30, newcomer_share=0).firewall())


def test_before_a_wave_the_budget_caps_strangers_in_any_lane_the_common_one_first() -> None:
    text = ruleset(wave(slot_budget=30).firewall())
    # The open gate (no wave) sends a stranger's SYN to the cap; the allowlisted and the proven never go there.
    assert "ip saddr != @gate4 ip saddr != @allow4 ip saddr != @proven4 jump calm" in text
    assert "ip6 saddr != @gate6 ip6 saddr != @allow6 ip6 saddr & ffff:ffff:ffff:ffff:: != @proven6 jump calm" in text
    calm = [line.split(" calm ", 1)[1] for line in text.splitlines() if line.startswith("add rule inet govern calm ")]
    assert calm == [
        "ct id @slots accept",
        "ct id @newslots accept",
        "ct id @crowdslots accept",
        "add @slots { ct id timeout 5s } accept",
        "add @newslots { ct id timeout 5s } accept",
        "add @crowdslots { ct id timeout 5s } accept",
        "counter drop",
    ]


@pytest.mark.parametrize("bad", ["many", -1, 1.5, True])
def test_bad_budgets_are_refused_naming_the_key(bad: object) -> None:
    with pytest.raises(ConfigError, match="slot_budget"):
        wave(slot_budget=bad)


LISTENING = (ListenerStats("127.0.0.1", 25, 0, 100, inode=4242),)  # as sock_diag reads it


def fake_proc(root: Path, comm: str, inode: int = 4242) -> str:
    """A /proc holding one process (pid 321) of this name with socket `inode` open."""
    fd = root / "321" / "fd"
    fd.mkdir(parents=True)
    (root / "321" / "comm").write_text(comm + "\n")
    (fd / "6").symlink_to(f"socket:[{inode}]")
    return str(root)


def test_postfixs_processes_are_found_by_the_listening_socket_they_hold(tmp_path: Path) -> None:
    assert holders(LISTENING, fake_proc(tmp_path / "a", "postscreen")) == {"postscreen": "321"}
    assert holders(LISTENING, fake_proc(tmp_path / "c", "postscreen", inode=4343)) == {}  # another socket
    assert holders((), fake_proc(tmp_path / "d", "postscreen")) == {}  # nothing listens
    assert holders(LISTENING, fake_proc(tmp_path / "f", "exim4")) == {}  # not Postfix
    # A listener from the BPF iterator's scan has no inode to look for.
    assert holders([LISTENING[0]._replace(inode=0)], fake_proc(tmp_path / "e", "postscreen")) == {}
    # One walk finds each of Postfix's holders: master made the socket, postscreen answers on it.
    proc = fake_proc(tmp_path / "b", "master")
    fd = tmp_path / "b" / "400" / "fd"
    fd.mkdir(parents=True)
    (tmp_path / "b" / "400" / "comm").write_text("postscreen\n")
    (fd / "3").symlink_to("socket:[4242]")
    assert holders(LISTENING, proc) == {"master": "321", "postscreen": "400"}


def postscreen_proc(root: Path, argv: list[str], env: dict[str, str], comm: str = "postscreen") -> str:
    """A /proc holding one postscreen process (pid 321) with this command line and environment."""
    proc = fake_proc(root, comm)
    (root / "321" / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (root / "321" / "environ").write_bytes(b"".join(f"{k}={v}\0".encode() for k, v in env.items()))
    return proc


def test_postscreens_greet_action_is_read_as_the_running_process_has_it(tmp_path: Path) -> None:
    conf = tmp_path / "pf"
    conf.mkdir()
    (conf / "main.cf").write_text(
        "# postscreen_greet_action = drop\n"
        "postscreen_greet_action = ignore\n"
        "smtpd_banner = $myhostname\n"
        "postscreen_greet_action =\n    enforce\n"  # the last one counts, continued on the next line
    )
    argv = ["postscreen", "-n", "smtp", "-t", "inet"]
    proc = postscreen_proc(tmp_path / "a", argv, {"MAIL_CONFIG": str(conf)})
    assert greet_action("321", proc) == "enforce"
    # master.cf's -o, passed on postscreen's command line, overrides main.cf
    proc = postscreen_proc(tmp_path / "b", [*argv, "-o", "postscreen_greet_action=drop"], {"MAIL_CONFIG": str(conf)})
    assert greet_action("321", proc) == "drop"
    # -c names the config directory too
    other = tmp_path / "other"
    other.mkdir()
    (other / "main.cf").write_text("myhostname = mx.example\n")
    proc = postscreen_proc(tmp_path / "c", [*argv, "-c", str(other)], {"MAIL_CONFIG": str(conf)})
    assert greet_action("321", proc) == "ignore"  # Postfix's default
    # what govern cannot read or judge is "unknown": it then waits for talkers as for the silent
    proc = postscreen_proc(tmp_path / "d", argv, {"MAIL_CONFIG": str(tmp_path / "missing")})
    assert greet_action("321", proc) == "unknown"
    (conf / "main.cf").write_text("postscreen_greet_action = $my_action\n")
    proc = postscreen_proc(tmp_path / "e", argv, {"MAIL_CONFIG": str(conf)})
    assert greet_action("321", proc) == "unknown"
    assert greet_action("999", proc) == "unknown"


def test_main_cf_values_follow_postfixs_line_rules() -> None:
    text = "a = 1\n  # a = 3\nb = x\n   y\n#a = 4\n\na=2\n"
    assert main_cf_value(text, "a") == "2"
    assert main_cf_value(text, "b") == "x y"
    assert main_cf_value(text, "c") is None


def log_of(proc: str, syslog: str) -> tuple[str, str]:
    """Where the Postfix holding LISTENING logs, as trust's "auto" looks for it."""
    return postfix_log(holders(LISTENING, proc), proc, syslog)


def test_the_log_of_the_postfix_holding_a_protected_port_is_found_for_trust(tmp_path: Path) -> None:
    conf = tmp_path / "pf"
    conf.mkdir()
    (conf / "main.cf").write_text("maillog_file = /var/log/postfix-lab.log\n")
    master = ["/usr/lib/postfix/sbin/master", "-w"]
    proc = postscreen_proc(tmp_path / "a", master, {"MAIL_CONFIG": str(conf)}, comm="master")
    no_syslog = str(tmp_path / "no-mail.log")
    assert log_of(proc, no_syslog) == ("/var/log/postfix-lab.log", f"maillog_file in {conf}/main.cf")
    # No maillog_file: syslog's mail log where there is one, else none, and why.
    (conf / "main.cf").write_text("myhostname = mx.example\n")
    syslog = tmp_path / "mail.log"
    syslog.write_text("")
    assert log_of(proc, str(syslog))[0] == str(syslog)
    path, why = log_of(proc, no_syslog)
    assert path == "" and "logs to syslog" in why and "set trust.postfix_log" in why
    # A value govern cannot judge (a $parameter) is not guessed at.
    (conf / "main.cf").write_text("maillog_file = $queue_directory/log\n")
    path, why = log_of(proc, str(syslog))
    assert path == "" and "not a plain path" in why
    # Another MTA on the port: no Postfix log.
    other = postscreen_proc(tmp_path / "b", ["exim4", "-bd"], {}, comm="exim4")
    assert log_of(other, str(syslog)) == ("", "no Postfix process holds a protected port")


def test_autos_look_again_only_for_what_they_did_not_find(tmp_path: Path) -> None:
    def unread() -> tuple[ListenerStats, ...]:
        raise AssertionError("the listeners were read though nothing is missing")

    explicit = config.from_mapping({"cut": {"greet_wait": 0, "pregreet": "wait"}, "trust": {"postfix_log": ""}})
    assert autos.found_since(explicit, autos.MtaView(), unread) == []
    proc = fake_proc(tmp_path / "a", "postscreen")
    defaults = config.from_mapping({})
    assert autos.found_since(defaults, autos.MtaView(postscreen=True), lambda: LISTENING, proc) == []
    found = autos.found_since(defaults, autos.MtaView(), lambda: LISTENING, proc)
    assert len(found) == 1 and found[0].startswith("postscreen holds a protected port")
