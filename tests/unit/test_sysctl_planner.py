"""The pure sysctl planner: sizes only go up, only the wave lowers anything, and what cannot be set is reported."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from govern.sysctl.planner import (
    ABORT_OVERFLOW,
    BASE,
    CONNTRACK_BUCKETS,
    CONNTRACK_MAX,
    CT_SYN_RECV,
    CT_SYN_SENT,
    FIN_TIMEOUT,
    KEYS,
    MAX_ORPHANS,
    NETDEV_BACKLOG,
    SOMAXCONN,
    SYN_BACKLOG,
    SYNACK_RETRIES,
    SYNCOOKIES,
    WAVE,
    Access,
    Expectations,
    Item,
    Reading,
    Status,
    changes,
    plan,
)

GIB = 1 << 30
DOWN_IN_WAVE = {SYNACK_RETRIES, FIN_TIMEOUT, CT_SYN_SENT, CT_SYN_RECV}


def readings(values: dict[str, int], access: Access = Access.WRITABLE) -> dict[str, Reading]:
    return {k: Reading(str(v), access) for k, v in values.items()}


def by_key(items: tuple[Item, ...]) -> dict[str, Item]:
    return {i.key: i for i in items}


values_st = st.fixed_dictionaries({k: st.integers(0, 3_000_000) for k in KEYS})
expect_st = st.builds(
    Expectations,
    sessions=st.integers(1, 1_000_000),
    memory_bytes=st.integers(0, 1 << 40),
    wave_synack_retries=st.integers(1, 5),
    wave_fin_timeout=st.integers(1, 60),
    wave_conntrack_half_open=st.integers(1, 120),
)


@given(values_st, expect_st, st.booleans())
def test_sizes_never_shrink_and_only_the_wave_lowers(values: dict[str, int], e: Expectations, wave: bool) -> None:
    for item in plan(readings(values), e, in_initial_namespace=True, wave=wave):
        assert item.current == values[item.key]
        assert item.target is not None
        if item.key in DOWN_IN_WAVE:
            if wave:
                assert item.profile == WAVE
                want = {
                    SYNACK_RETRIES: e.wave_synack_retries,
                    FIN_TIMEOUT: e.wave_fin_timeout,
                    CT_SYN_SENT: e.wave_conntrack_half_open,
                    CT_SYN_RECV: e.wave_conntrack_half_open,
                }[item.key]
                assert item.target == min(item.current, want)
            else:
                assert item.target == item.current and item.status is Status.KEEP
        else:
            assert item.target >= item.current, item
        assert (item.status is Status.CHANGE) == (item.target != item.current)


@given(values_st, expect_st)
def test_base_plan_writes_nothing_for_the_wave(values: dict[str, int], e: Expectations) -> None:
    items = plan(readings(values), e, in_initial_namespace=True)
    assert not changes(items, WAVE)
    assert {i.key for i in changes(items, BASE)}.isdisjoint(DOWN_IN_WAVE)


def test_defaults_of_a_stock_kernel_are_raised_for_2000_sessions() -> None:
    stock = {
        SOMAXCONN: 4096,
        SYN_BACKLOG: 512,
        SYNCOOKIES: 0,
        NETDEV_BACKLOG: 1000,
        CONNTRACK_MAX: 65536,
        CONNTRACK_BUCKETS: 16384,
        SYNACK_RETRIES: 5,
        FIN_TIMEOUT: 60,
        MAX_ORPHANS: 4096,
    }
    items = by_key(plan(readings(stock), Expectations(2000, 8 * GIB), in_initial_namespace=True))
    targets = {k: i.target for k, i in items.items()}
    assert targets[SOMAXCONN] == 4096  # already enough for 2000: kept
    assert targets[SYN_BACKLOG] == 4096
    assert targets[SYNCOOKIES] == 1
    assert targets[NETDEV_BACKLOG] == 8192
    assert targets[CONNTRACK_MAX] == 131072  # 64 x 2000 rounded up to a power of two
    assert targets[CONNTRACK_BUCKETS] == 131072
    assert targets[MAX_ORPHANS] == 16384
    assert targets[SYNACK_RETRIES] == 5 and targets[FIN_TIMEOUT] == 60


def test_memory_caps_conntrack_and_orphans_but_never_below_the_current_value() -> None:
    vals = dict.fromkeys(KEYS, 1)
    vals[CONNTRACK_MAX] = 50_000
    small = by_key(plan(readings(vals), Expectations(100_000, 256 << 20), in_initial_namespace=True))
    # 256 MiB / 32 / 320 B -> 26214 entries -> 16384 after rounding down: below the current 50000, so kept.
    assert small[CONNTRACK_MAX].target == 50_000
    assert small[MAX_ORPHANS].target == 1024  # 256 MiB / 4 / 64 KiB


def test_syncookies_2_is_kept_and_the_wave_forces_them_on() -> None:
    vals = dict.fromkeys(KEYS, 100)
    vals[SYNCOOKIES] = 2
    assert (
        by_key(plan(readings(vals), Expectations(10, GIB), in_initial_namespace=True, wave=True))[SYNCOOKIES].target
        == 2
    )
    vals[SYNCOOKIES] = 0
    item = by_key(plan(readings(vals), Expectations(10, GIB), in_initial_namespace=True, wave=True))[SYNCOOKIES]
    assert item.target == 1 and item.profile == WAVE and item.status is Status.CHANGE


def test_absent_read_only_host_wide_excluded_and_garbage_are_reported() -> None:
    r = readings(dict.fromkeys(KEYS, 10))
    del r[NETDEV_BACKLOG]
    del r[SOMAXCONN]
    r[CONNTRACK_MAX] = Reading("10", Access.READ_ONLY)
    r[SYN_BACKLOG] = Reading("10\t20", Access.WRITABLE)
    e = Expectations(2000, GIB, exclude=frozenset({FIN_TIMEOUT}))
    in_ns = by_key(plan(r, e, in_initial_namespace=False))
    assert in_ns[NETDEV_BACKLOG].status is Status.NOT_IN_NAMESPACE
    assert in_ns[SOMAXCONN].status is Status.ABSENT  # per-namespace key missing: the kernel lacks it
    assert in_ns[CONNTRACK_MAX].status is Status.READ_ONLY
    assert "initial network namespace" in in_ns[CONNTRACK_MAX].reason
    assert in_ns[SYN_BACKLOG].status is Status.UNREADABLE
    assert in_ns[FIN_TIMEOUT].status is Status.EXCLUDED
    host = by_key(plan(r, e, in_initial_namespace=True))
    assert host[NETDEV_BACKLOG].status is Status.ABSENT
    assert not {i.key for i in changes(tuple(in_ns.values()), BASE)} & {
        NETDEV_BACKLOG,
        SOMAXCONN,
        CONNTRACK_MAX,
        SYN_BACKLOG,
        FIN_TIMEOUT,
    }


def test_the_wave_switches_abort_on_overflow_on_and_the_base_never_touches_it() -> None:
    vals = dict.fromkeys(KEYS, 100)
    vals[ABORT_OVERFLOW] = 0
    assert by_key(plan(readings(vals), Expectations(2000, GIB), in_initial_namespace=True))[ABORT_OVERFLOW].target == 0
    wave = by_key(plan(readings(vals), Expectations(2000, GIB), in_initial_namespace=True, wave=True))
    assert wave[ABORT_OVERFLOW].target == 1 and wave[ABORT_OVERFLOW].status is Status.CHANGE
    off = Expectations(2000, GIB, wave_abort_on_overflow=False)
    assert by_key(plan(readings(vals), off, in_initial_namespace=True, wave=True))[ABORT_OVERFLOW].target == 0
    vals[ABORT_OVERFLOW] = 1  # the operator's own setting is kept either way
    for wave_on in (False, True):
        got = by_key(plan(readings(vals), off, in_initial_namespace=True, wave=wave_on))[ABORT_OVERFLOW]
        assert got.target == 1 and got.status is Status.KEEP
