"""The observer's snapshot keeps the sources without sockets as columns (model.Sources): read as a Mapping it is the
dict of records the observer made before, its sums are the same, and decide judges it as it judged that dict."""

from __future__ import annotations

from unittest.mock import patch

from hypothesis import given, settings
from hypothesis import strategies as st

from govern import config
from govern.addr import Prefix
from govern.core.decide import decide, most_prolific, prolific
from govern.core.modes import totals
from govern.fakes import FakeCounters, FakeSockets
from govern.model import Block, Mode, ModeState, Snapshot, SockCounts, Sources, SourceStats, State, holding
from govern.observe import observer, rates
from govern.observe.observer import Observer
from tests.unit.test_rates import ReferenceWindow

ALLOW = ["192.0.2.0/24", "2001:db8:2::/48"]
POLICY = config.from_mapping({"allow": {"cidrs": ALLOW}, "modes": {"auto": False}}).policy()
TOP2 = config.from_mapping({"allow": {"cidrs": ALLOW}, "modes": {"auto": False}, "wave": {"top_n": 2}}).policy()
NOW = 1_700_000_000.0

# Bots in both families, two allowlisted sources, and one source under a manual /24 block.
POOL = [
    *(Prefix.parse(f"198.18.0.{i}") for i in range(1, 9)),
    *(Prefix.parse(f"2001:db8:bad:{i}::/64") for i in range(1, 5)),
    Prefix.parse("192.0.2.10"),
    Prefix.parse("2001:db8:2::/64"),
    Prefix.parse("198.19.240.9"),
]
BLOCKED = Prefix.parse("198.19.240.0/24")

sock_counts = st.builds(
    lambda held, est, idle, ms: SockCounts(held, min(est, held), 0, min(idle, est), ms if idle else 0),
    st.integers(1, 30),
    st.integers(0, 30),
    st.integers(0, 5),
    st.integers(0, 400_000),
)
ticks = st.lists(
    st.tuples(
        st.sampled_from([0.5, 1.0, 1.0, 1.0, 30.0, 61.0, 130.0]),
        st.dictionaries(st.sampled_from(POOL), sock_counts, max_size=6),
        st.dictionaries(st.sampled_from(POOL), st.integers(0, 200), max_size=len(POOL)),
    ),
    min_size=1,
    max_size=12,
)


def reference(
    window: ReferenceWindow, scan: dict[Prefix, SockCounts], counts: dict[Prefix, int], now: float
) -> dict[Prefix, SourceStats]:
    """The snapshot's sources as the observer built them before its columns."""
    rates = window.update(counts, now)
    out = {p: SourceStats(*c, *rates.get(p, (0, 0))) for p, c in scan.items()}
    for p, r in rates.items():
        out.setdefault(p, SourceStats(0, 0, 0, 0, 0, *r))
    return out


@settings(max_examples=150, deadline=None)
@given(ticks)
def test_snapshot_sources_read_as_the_records_before(
    seq: list[tuple[float, dict[Prefix, SockCounts], dict[Prefix, int]]],
) -> None:
    current: dict[Prefix, int] = {}
    socks = FakeSockets()
    obs = Observer(socks, lambda: current, FakeCounters())
    ref = ReferenceWindow()
    blocks = {BLOCKED: Block(BLOCKED, "manual: ticket", NOW, NOW + 86400, 0, True)}
    wave = ModeState(Mode.WAVE, since=NOW, until=NOW + 86400, reason="test", manual=True)
    states = (State(blocks=dict(blocks)), State(blocks=dict(blocks), mode=wave))
    now = NOW
    kept: list[tuple[Snapshot, dict[Prefix, SourceStats]]] = []
    for step, scan, counts in seq:
        now += step
        socks.sources, current = scan, counts
        snap = obs.snapshot(POLICY, now)
        want = reference(ref, scan, counts, now)
        got = snap.sources
        assert isinstance(got, Sources)
        assert dict(got.items()) == want and len(got) == len(want) and set(got) == set(want)
        assert all(got[p] == s and p in got for p, s in want.items())
        assert Prefix.parse("203.0.113.25") not in got and got.get(Prefix.parse("203.0.113.25")) is None
        assert dict(holding(got)) == {p: s for p, s in want.items() if p in scan}
        assert snap.totals == totals(want, POLICY.allow.intersects)
        # The fast paths over the columns give what going over every source gives.
        plain = Snapshot(now, snap.interval, dict(got.items()), totals=snap.totals)
        for policy in (POLICY, TOP2):
            for state in states:
                assert decide(snap, state, policy, now) == decide(plain, state, policy, now)
        for n in (1, 3, 20):
            assert [prolific(s) for _, s in most_prolific(got, n)] == [prolific(s) for _, s in most_prolific(want, n)]
        kept.append((snap, want))
    # A snapshot shares the rate window's address columns: the window moving on changes none it made.
    assert all(dict(snap.sources.items()) == want for snap, want in kept)


@settings(max_examples=60, deadline=None)
@given(ticks, st.integers(1, 5), st.integers(1, 3))
def test_the_same_in_slices_of_a_few_rows(
    seq: list[tuple[float, dict[Prefix, SockCounts], dict[Prefix, int]]], rows: int, asked: int
) -> None:
    """The window's passes and the allowlist's questions go a slice of rows at a time (64k, 256k and 16k in the
    daemon): slices of a few rows, so that they end at every boundary, give the same snapshot and sums."""
    with (
        patch.object(rates, "_BATCH", rows),
        patch.object(observer, "_LOOK_AT_ONCE", rows),
        patch.object(observer, "_ASK_AT_ONCE", asked),
    ):
        test_snapshot_sources_read_as_the_records_before.hypothesis.inner_test(seq)  # type: ignore[attr-defined]


def test_old_snapshots_survive_the_window_growing_and_dropping_rows() -> None:
    current: dict[Prefix, int] = {}
    obs = Observer(FakeSockets(), lambda: current, FakeCounters())
    kept = []
    now = NOW
    for k in range(6):
        now += 70.0  # the sources of the tick before are still in their window; those of two ticks before are not
        current = {Prefix(4, 0xC6120000 + k * 10_000 + i, 32): 1 + i % 7 for i in range(10_000)}
        snap = obs.snapshot(POLICY, now)
        kept.append((snap, dict(snap.sources.items())))
    assert len(kept[-1][1]) == 20_000
    assert all(dict(snap.sources.items()) == want for snap, want in kept)
