"""SPF expansion (govern.allow.spf) against a fake DNS: what it allows, what it skips, and the RFC 7208 limits that
keep a hostile or broken record from costing unbounded lookups."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from govern.addr import Prefix
from govern.allow.spf import MAX_LOOKUPS, SpfError, expand
from govern.fakes import FakeResolver


def dns(**txt: str) -> FakeResolver:
    r = FakeResolver()
    for name, record in txt.items():
        r.set(name.replace("_", ".") if "." not in name else name, "TXT", record)
    return r


def prefixes(domain: str, r: FakeResolver) -> set[str]:
    return {str(p) for p, _ in expand(domain, r.query).prefixes}


def test_ip_terms_include_and_redirect_are_followed() -> None:
    r = FakeResolver()
    r.set("partner.example", "TXT", "v=spf1 ip4:192.0.2.0/25 include:_spf.partner.example -all")
    r.set("_spf.partner.example", "TXT", "v=spf1 ip6:2001:db8:2::/48 redirect=relay.partner.example")
    r.set("relay.partner.example", "TXT", "v=spf1 ip4:192.0.2.200 ~all")
    res = expand("partner.example", r.query)
    assert {str(p) for p, _ in res.prefixes} == {"192.0.2.0/25", "2001:db8:2::/48", "192.0.2.200"}
    assert res.lookups == 2  # include and redirect; the first TXT query is not a term
    via = dict(res.prefixes)[Prefix.parse("192.0.2.200")]
    assert "include:_spf.partner.example" in via and "redirect=relay.partner.example" in via


def test_a_and_mx_are_resolved_with_their_cidr_lengths() -> None:
    r = FakeResolver()
    r.set("partner.example", "TXT", "v=spf1 a mx/28//64 a:out.partner.example -all")
    r.set("partner.example", "A", "192.0.2.1")
    r.set("partner.example", "MX", "mx1.partner.example", "mx2.partner.example")
    r.set("mx1.partner.example", "A", "192.0.2.17")
    r.set("mx2.partner.example", "AAAA", "2001:db8:2:5::9")
    r.set("out.partner.example", "AAAA", "2001:db8:2::25")
    assert prefixes("partner.example", r) == {
        "192.0.2.1",
        "192.0.2.16/28",
        "2001:db8:2:5::/64",
        "2001:db8:2::25",
    }


def test_only_pass_terms_allow_and_all_stops_the_walk() -> None:
    r = FakeResolver()
    r.set("p.example", "TXT", "v=spf1 -ip4:192.0.2.1 ~ip4:192.0.2.2 ?ip4:192.0.2.3 +ip4:192.0.2.4 -all ip4:192.0.2.5")
    assert prefixes("p.example", r) == {"192.0.2.4"}


def test_plus_all_short_prefixes_ptr_exists_and_macros_are_skipped_with_a_note() -> None:
    r = FakeResolver()
    r.set("p.example", "TXT", "v=spf1 ip4:10.0.0.0/7 ip6:2001::/12 ptr exists:%{i}.x.example a:%{d}.example +all")
    res = expand("p.example", r.query)
    assert res.prefixes == ()
    text = " | ".join(res.notes)
    for word in ("/7", "shorter than /8", "2001::/12", "ptr", "exists", "macros", "every address"):
        assert word in text, text
    assert res.lookups == 3  # ptr, exists and a still count against the limit


def test_redirect_is_ignored_when_the_record_has_all() -> None:
    r = FakeResolver()
    r.set("p.example", "TXT", "v=spf1 ip4:192.0.2.1 -all redirect=other.example")
    r.set("other.example", "TXT", "v=spf1 ip4:192.0.2.99")
    assert prefixes("p.example", r) == {"192.0.2.1"}
    assert ("other.example", "TXT") not in r.calls


def test_a_failing_include_makes_the_whole_walk_fail() -> None:
    r = FakeResolver()
    r.set("p.example", "TXT", "v=spf1 ip4:192.0.2.1 include:gone.example")
    with pytest.raises(SpfError, match=r"gone\.example: no SPF record") as err:
        expand("p.example", r.query)
    assert not err.value.temporary
    r.set("gone.example", "TXT", "v=spf1 ip4:192.0.2.2")
    r.fail("gone.example", "TXT")
    with pytest.raises(SpfError, match="SERVFAIL") as err:
        expand("p.example", r.query)
    assert err.value.temporary


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ("v=spf1 ip4:192.0.2.300", "not an address"),
        ("v=spf1 ip4:2001:db8::1", "not an IPv4 address"),
        ("v=spf1 a/33", "bad cidr length"),
        ("v=spf1 foo:bar", "unknown mechanism"),
        ("v=spf1 redirect=a.example redirect=b.example", "redirect= given twice"),
        ("v=spf1 include", "needs a domain"),
    ],
)
def test_syntax_errors_are_permanent(record: str, problem: str) -> None:
    r = FakeResolver()
    r.set("p.example", "TXT", record)
    with pytest.raises(SpfError, match=problem):
        expand("p.example", r.query)


def test_no_record_and_two_records_are_errors_other_txt_is_ignored() -> None:
    r = FakeResolver()
    r.set("p.example", "TXT", "google-site-verification=abc")
    with pytest.raises(SpfError, match="no SPF record"):
        expand("p.example", r.query)
    r.set("p.example", "TXT", "v=spf1 ip4:192.0.2.1", "v=spf1 ip4:192.0.2.2")
    with pytest.raises(SpfError, match="2 SPF records"):
        expand("p.example", r.query)
    r.set("p.example", "TXT", "v=spf10 ip4:192.0.2.9", "v=spf1 ip4:192.0.2.1")
    assert prefixes("p.example", r) == {"192.0.2.1"}


def test_the_eleventh_lookup_is_an_error() -> None:
    r = FakeResolver()
    r.set("p.example", "TXT", "v=spf1 " + " ".join(f"include:i{n}.example" for n in range(11)))
    for n in range(11):
        r.set(f"i{n}.example", "TXT", f"v=spf1 ip4:192.0.2.{n}")
    with pytest.raises(SpfError, match="more than 10 DNS-querying terms"):
        expand("p.example", r.query)
    assert ("i10.example", "TXT") not in r.calls  # stopped before the query, not after
    r.set("p.example", "TXT", "v=spf1 " + " ".join(f"include:i{n}.example" for n in range(10)))
    assert len(prefixes("p.example", r)) == 10


def test_the_third_void_lookup_is_an_error() -> None:
    r = FakeResolver()
    r.set("p.example", "TXT", "v=spf1 a:v1.example a:v2.example ip4:192.0.2.1")
    assert prefixes("p.example", r) == {"192.0.2.1"}
    r.set("p.example", "TXT", "v=spf1 a:v1.example a:v2.example mx:v3.example ip4:192.0.2.1")
    with pytest.raises(SpfError, match="void lookups"):
        expand("p.example", r.query)


def test_more_than_ten_mx_hosts_is_an_error() -> None:
    r = FakeResolver()
    r.set("p.example", "TXT", "v=spf1 mx")
    r.set("p.example", "MX", *(f"mx{n}.p.example" for n in range(11)))
    with pytest.raises(SpfError, match="11 MX hosts"):
        expand("p.example", r.query)


@pytest.mark.parametrize(
    "records",
    [
        {"a.example": "v=spf1 include:a.example"},
        {"a.example": "v=spf1 include:b.example", "b.example": "v=spf1 redirect=a.example"},
        {"a.example": "v=spf1 redirect=b.example", "b.example": "v=spf1 include:A.example."},
    ],
)
def test_loops_are_detected(records: dict[str, str]) -> None:
    r = FakeResolver()
    for name, rec in records.items():
        r.set(name, "TXT", rec)
    with pytest.raises(SpfError, match="loop"):
        expand("a.example", r.query)


def test_the_same_domain_twice_in_different_branches_is_not_a_loop() -> None:
    r = FakeResolver()
    r.set("p.example", "TXT", "v=spf1 include:x.example include:y.example")
    r.set("x.example", "TXT", "v=spf1 include:z.example")
    r.set("y.example", "TXT", "v=spf1 include:z.example")
    r.set("z.example", "TXT", "v=spf1 ip4:192.0.2.7")
    assert prefixes("p.example", r) == {"192.0.2.7"}


def test_ttl_is_the_smallest_answer_used() -> None:
    r = FakeResolver()
    r.set("p.example", "TXT", "v=spf1 include:q.example a:h.p.example", ttl=3600)
    r.set("q.example", "TXT", "v=spf1 ip4:192.0.2.1", ttl=900)
    r.set("h.p.example", "A", "192.0.2.2", ttl=120)
    assert expand("p.example", r.query).ttl == 120


# -- properties over random universes of records -------------------------------------------------------------

NAMES = [f"d{n}.example" for n in range(8)]
term = st.one_of(
    st.sampled_from(NAMES).map(lambda d: f"include:{d}"),
    st.sampled_from(NAMES).map(lambda d: f"a:{d}"),
    st.sampled_from(NAMES).map(lambda d: f"mx:{d}"),
    st.sampled_from(["ptr", "exists:x.example", "-all", "~all"]),
    st.integers(0, 255).map(lambda n: f"ip4:198.51.100.{n}"),
    st.sampled_from(["", "-", "~", "?"]).flatmap(lambda q: st.integers(0, 9).map(lambda n: f"{q}ip4:192.0.2.{n}")),
)
record = st.tuples(st.lists(term, max_size=8), st.one_of(st.none(), st.sampled_from(NAMES))).map(
    lambda t: " ".join(["v=spf1", *t[0], *([f"redirect={t[1]}"] if t[1] else [])])
)
universe = st.fixed_dictionaries(
    # Mostly present records, so walks go deep; the first domain always has one.
    {n: record if n == NAMES[0] else st.one_of(record, record, record, st.none()) for n in NAMES},
    optional={f"mx-{n}": st.lists(st.sampled_from(NAMES), max_size=12) for n in NAMES},
)


def build(u: dict[str, object]) -> FakeResolver:
    r = FakeResolver()
    for n, name in enumerate(NAMES):
        rec = u.get(name)
        if isinstance(rec, str):
            r.set(name, "TXT", rec)
        if n % 2:
            r.set(name, "A", f"203.0.113.{n}")
        mx = u.get(f"mx-{name}")
        if isinstance(mx, list):
            r.set(name, "MX", *mx)
    return r


@settings(max_examples=400, deadline=None)
@given(universe, st.integers(1, MAX_LOOKUPS))
def test_limits_are_never_exceeded_and_every_walk_terminates(u: dict[str, object], limit: int) -> None:
    r = build(u)
    try:
        res = expand(NAMES[0], r.query, max_lookups=limit)
    except SpfError:
        pass
    else:
        assert res.lookups <= limit
        assert res.voids <= 2
    # each counted term queries at most once for itself plus A and AAAA for each of at most 10 exchanges
    assert len(r.calls) <= 1 + limit * (1 + 2 * 10)


@settings(max_examples=300, deadline=None)
@given(universe)
def test_every_allowed_prefix_is_a_pass_term_or_an_answer_of_the_records(u: dict[str, object]) -> None:
    r = build(u)
    try:
        res = expand(NAMES[0], r.query)
    except SpfError:
        return
    words = [w for rec in u.values() if isinstance(rec, str) for w in rec.split()]
    written = {w.partition(":")[2] for w in words if w.startswith("ip4:")}
    answers = {a for (_, t), recs in r.records.items() if t == "A" for a in recs}
    for p, via in res.prefixes:
        assert str(p) in written | answers, (p, via)
        assert not str(p).startswith("192.0.2.") or via.endswith(f"> ip4:{p}")  # 192.0.2.x: from pass terms only
