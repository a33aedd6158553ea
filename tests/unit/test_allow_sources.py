"""The allowlist edge (govern.allow.sources, govern.allow.files): files re-read on change and kept on error,
hostnames and SPF resolved on their TTL and kept on failure, provenance for every prefix, and the config keys."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from govern import config
from govern.addr import Prefix
from govern.allow.files import WatchedFile
from govern.allow.sources import AllowSources, policy_with
from govern.errors import ConfigError
from govern.fakes import FakeResolver, InlineExecutor


def conf(**allow: Any) -> config.Config:
    return config.from_mapping({"allow": allow})


def sources(r: FakeResolver, **allow: Any) -> AllowSources:
    return AllowSources(conf(**allow).allow_section(), r, InlineExecutor())


def strs(s: AllowSources) -> set[str]:
    return {str(p) for p in s.prefixes()}


def replace_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- files ----------------------------------------------------------------------------------------------------


def test_a_changed_file_is_re_read_and_an_unchanged_one_is_not(tmp_path: Path) -> None:
    f = tmp_path / "partners.txt"
    f.write_text("192.0.2.10\n")
    w = WatchedFile(str(f))
    assert w.check() and [str(e.prefix) for e in w.entries] == ["192.0.2.10"]
    assert not w.check()
    replace_atomically(f, "# moved\n192.0.2.11\n2001:db8:2::/48\n")
    assert w.check()
    assert [(str(e.prefix), e.source) for e in w.entries] == [
        ("192.0.2.11", f"file {f}:2"),
        ("2001:db8:2::/48", f"file {f}:3"),
    ]


def test_an_in_place_edit_of_the_same_size_is_seen(tmp_path: Path) -> None:
    f = tmp_path / "partners.txt"
    f.write_text("192.0.2.10\n")
    w = WatchedFile(str(f))
    w.check()
    st = f.stat()
    with open(f, "r+") as fh:  # same inode, same size: only the mtime tells
        fh.write("192.0.2.11\n")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert w.check() and [str(e.prefix) for e in w.entries] == ["192.0.2.11"]


@pytest.mark.parametrize(
    ("bad", "problem"),
    [("192.0.2.10\n192.0.2.300\n", ":2: '192.0.2.300' is not"), ("0.0.0.0/0\n", ":1: 0.0.0.0/0 would allow every")],
)
def test_bad_content_keeps_the_previous_entries_and_says_where(tmp_path: Path, bad: str, problem: str) -> None:
    f = tmp_path / "partners.txt"
    f.write_text("192.0.2.10\n")
    w = WatchedFile(str(f))
    w.check()
    replace_atomically(f, bad)
    assert not w.check()
    assert [str(e.prefix) for e in w.entries] == ["192.0.2.10"]
    assert w.error.startswith(str(f)) and problem in w.error, w.error
    replace_atomically(f, "192.0.2.12\n")
    assert w.check() and w.error == ""
    assert [str(e.prefix) for e in w.entries] == ["192.0.2.12"]


def test_a_vanished_or_unreadable_file_keeps_its_entries(tmp_path: Path) -> None:
    f = tmp_path / "partners.txt"
    f.write_text("192.0.2.10\n")
    w = WatchedFile(str(f))
    w.check()
    f.unlink()
    assert not w.check()
    assert "No such file" in w.error and [str(e.prefix) for e in w.entries] == ["192.0.2.10"]
    f.write_bytes(b"\xff\xfe bad utf-8\n")
    assert not w.check()
    assert "cannot read" in w.error and [str(e.prefix) for e in w.entries] == ["192.0.2.10"]
    f.write_text("192.0.2.10\n192.0.2.13\n")
    assert w.check() and not w.error


# -- the edge ---------------------------------------------------------------------------------------------------


def test_every_source_contributes_and_carries_its_provenance(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_text("192.0.2.10\n192.0.2.77\n")
    r = FakeResolver()
    r.set("relay.partner.example", "A", "192.0.2.77")
    r.set("relay.partner.example", "AAAA", "2001:db8:2::25")
    r.set("partner.example", "TXT", "v=spf1 ip4:192.0.2.128/25 -all")
    s = sources(
        r, cidrs=["2001:db8:2:1::/64"], files=[str(f)], hosts=["relay.partner.example"], spf_domains=["partner.example"]
    )
    assert s.refresh(1000.0)
    assert strs(s) == {"2001:db8:2:1::/64", "192.0.2.10", "192.0.2.77", "2001:db8:2::25", "192.0.2.128/25"}
    listing = {row["prefix"]: row["sources"] for row in s.listing()}
    assert listing["192.0.2.77"] == [f"file {f}:2", "host relay.partner.example"]
    assert listing["192.0.2.128/25"] == ["spf partner.example > ip4:192.0.2.128/25"]
    assert listing["2001:db8:2:1::/64"] == ["allow.cidrs"]
    assert not s.refresh(1001.0)


def test_hosts_are_resolved_again_on_their_ttl_within_floor_and_ceiling() -> None:
    r = FakeResolver()
    r.set("relay.partner.example", "A", "192.0.2.1", ttl=600)
    s = sources(r, hosts=["relay.partner.example"], min_refresh="5m", refresh="1h")
    s.refresh(0.0)
    n = len(r.calls)
    s.refresh(599.0)
    assert len(r.calls) == n  # not due before the TTL
    r.set("relay.partner.example", "A", "192.0.2.2", ttl=10)
    assert s.refresh(600.0) and strs(s) == {"192.0.2.2"}
    s.refresh(600.0 + 299)
    assert len(r.calls) == n + 2  # a 10 s TTL is held to the 5 min floor
    s.refresh(900.0)
    assert len(r.calls) == n + 4
    r.set("relay.partner.example", "A", "192.0.2.2", ttl=86400)
    s.refresh(1200.0)
    s.refresh(1200.0 + 3599)
    assert len(r.calls) == n + 6  # a day's TTL is held to the 1 h ceiling
    s.refresh(1200.0 + 3600)
    assert len(r.calls) == n + 8


def test_a_failing_or_empty_host_keeps_its_last_good_addresses_and_retries_after_the_floor() -> None:
    r = FakeResolver()
    r.set("relay.partner.example", "A", "192.0.2.1", ttl=60)
    s = sources(r, hosts=["relay.partner.example"], min_refresh="1m")
    s.refresh(0.0)
    r.fail("relay.partner.example", "A")
    assert not s.refresh(60.0)
    assert strs(s) == {"192.0.2.1"}
    assert "SERVFAIL" in s.errors()["host relay.partner.example"]
    r.set("relay.partner.example", "A")  # now answers, with no address
    assert not s.refresh(90.0)  # not retried before the floor
    assert not s.refresh(120.0)
    assert strs(s) == {"192.0.2.1"} and "no address" in s.errors()["host relay.partner.example"]
    r.set("relay.partner.example", "A", "192.0.2.3")
    assert s.refresh(180.0) and strs(s) == {"192.0.2.3"} and not s.errors()


def test_a_broken_spf_record_keeps_the_last_good_set_and_reports_why() -> None:
    r = FakeResolver()
    r.set("partner.example", "TXT", "v=spf1 ip4:192.0.2.0/25 include:_spf.partner.example")
    r.set("_spf.partner.example", "TXT", "v=spf1 ip4:192.0.2.128/25 ptr")
    s = sources(r, spf_domains=["partner.example"], min_refresh="1m")
    s.refresh(0.0)
    assert strs(s) == {"192.0.2.0/25", "192.0.2.128/25"}
    assert any("ptr" in n for row in s.status() for n in row.get("notes", []))
    r.set("_spf.partner.example", "TXT", "v=spf1 include:partner.example")
    assert not s.refresh(3600.0)
    assert strs(s) == {"192.0.2.0/25", "192.0.2.128/25"}
    assert "loop" in s.errors()["spf partner.example"]


def test_a_reload_keeps_the_state_of_sources_it_still_names() -> None:
    r = FakeResolver()
    r.set("a.partner.example", "A", "192.0.2.1")
    r.set("b.partner.example", "A", "192.0.2.2")
    s = sources(r, hosts=["a.partner.example", "b.partner.example"])
    s.refresh(0.0)
    r.fail("a.partner.example", "A")
    s.configure(conf(hosts=["a.partner.example"]).allow_section())
    assert s.refresh(1.0)  # b's address left with b
    assert strs(s) == {"192.0.2.1"}  # a was not resolved again (not due) and kept its answer


def test_dns_runs_off_the_callers_thread_and_refresh_does_not_wait_for_it() -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    gate = threading.Event()

    class Slow(FakeResolver):
        def query(self, name: str, rdtype: Any) -> Any:
            gate.wait(5)
            return super().query(name, rdtype)

    r = Slow()
    r.set("relay.partner.example", "A", "192.0.2.1")
    pool = ThreadPoolExecutor(max_workers=1)
    s = AllowSources(conf(hosts=["relay.partner.example"]).allow_section(), r, pool)
    try:
        assert not s.refresh(0.0)  # submitted, not waited for
        assert strs(s) == set()
        gate.set()
        s.wait(5)
        assert s.refresh(0.5) and strs(s) == {"192.0.2.1"}
    finally:
        gate.set()
        s.close()
        pool.shutdown(wait=True)


def test_policy_with_uses_the_live_allowlist_not_the_files_read_at_load(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_text("192.0.2.10\n")
    c = config.from_mapping({"allow": {"files": [str(f)]}})
    s = AllowSources(c.allow_section(), FakeResolver(), InlineExecutor())
    s.refresh(0.0)
    replace_atomically(f, "192.0.2.11\n")
    s.refresh(1.0)
    pol = policy_with(c, s, (Prefix.parse("198.51.100.7"),))
    assert pol.allow.covers(Prefix.parse("192.0.2.11")) and pol.allow.covers(Prefix.parse("198.51.100.7"))
    assert not pol.allow.covers(Prefix.parse("192.0.2.10"))
    assert pol.max_connections == c.policy().max_connections


# -- config -----------------------------------------------------------------------------------------------------


def test_new_keys_have_their_defaults() -> None:
    c = config.from_mapping({})
    assert c["allow"]["hosts"] == () and c["allow"]["spf_domains"] == ()
    assert c["allow"]["refresh"] == 3600 and c["allow"]["min_refresh"] == 300
    assert c["trust"]["learn_for"] == 7 * 86400 and c["trust"]["factor"] == 4
    assert c["trust"]["postfix_log"] == "auto" and c["trust"]["from_sessions"] == "auto"


def test_names_are_canonical() -> None:
    c = config.from_mapping({"allow": {"hosts": ["Relay.Partner.Example."], "spf_domains": ["_spf.partner.example"]}})
    assert c["allow"]["hosts"] == ("relay.partner.example",)
    assert c["allow"]["spf_domains"] == ("_spf.partner.example",)


@pytest.mark.parametrize(
    ("section", "values", "key", "problem"),
    [
        ("allow", {"hosts": ["relay"]}, "allow.hosts", "item 0: 'relay' is not a fully qualified name"),
        ("allow", {"hosts": ["ok.example", "bad..example"]}, "allow.hosts", "item 1: 'bad..example' is not a valid"),
        ("allow", {"hosts": ["192.0.2.1"]}, "allow.hosts", "item 0: '192.0.2.1' is an address"),
        ("allow", {"hosts": ["-x.example"]}, "allow.hosts", "bad label '-x'"),
        (
            "allow",
            {"spf_domains": ["a.example", "A.example"]},
            "allow.spf_domains",
            "item 1: 'A.example' is listed twice",
        ),
        ("allow", {"spf_domains": "a.example"}, "allow.spf_domains", "expected a list of domains"),
        ("allow", {"spf_domains": [3]}, "allow.spf_domains", "item 0: expected a domain string"),
        ("allow", {"refresh": "10s"}, "allow.refresh", "between 1m and 7d"),
        ("allow", {"min_refresh": "2h"}, "allow.min_refresh", "longer than allow.refresh"),
        ("trust", {"factor": 0}, "trust.factor", "between 1 and 1000"),
        ("trust", {"postfix_log": "mail.log"}, "trust.postfix_log", "absolute path"),
        ("trust", {"learn_for": "forever"}, "trust.learn_for", "not a duration"),
    ],
)
def test_bad_values_name_the_key_and_the_item(section: str, values: dict[str, Any], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.from_mapping({section: values}, path="/etc/govern/govern.toml")
    msg = str(err.value)
    assert msg.startswith(f"/etc/govern/govern.toml: {key}: ") and problem in msg, msg
