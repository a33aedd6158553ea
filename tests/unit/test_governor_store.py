"""A state store that cannot be written (a full disk) never stops govern: its own decisions are enforced and held in
memory, written whole when the store takes writes again; an operator's decision is recorded before the kernel acts,
or refused with nothing changed; and a block the store last recorded as unblocked is never adopted back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from govern import config, reports
from govern.addr import Prefix
from govern.core.decide import manual_unblock
from govern.daemon import Governor
from govern.errors import StoreError
from govern.fakes import FakeClock, FakeCounters, FakeEnforcer, FakeSockets
from govern.keeping import STORE_RETRY_EVERY
from govern.model import Plan, SockCounts, State
from govern.protocol import Block as BlockRequest
from govern.protocol import Unblock as UnblockRequest
from govern.protocol import to_wire
from govern.store import Store

BOT = Prefix.parse("198.18.0.7")
OTHER = Prefix.parse("198.18.0.9")
OPERATOR = Prefix.parse("203.0.113.77")


def hog(n: int) -> SockCounts:
    return SockCounts(held=n, established=n, syn_recv=0, idle=n, max_idle_ms=30_000)


def make(tmp_path: Path) -> tuple[Governor, Store, FakeSockets, FakeEnforcer, FakeClock]:
    cfg = config.from_mapping({"daemon": {"state_dir": str(tmp_path / "state")}, "modes": {"auto": False}})
    store, socks, enf, clock = Store(cfg["daemon"]["state_dir"]), FakeSockets(), FakeEnforcer(), FakeClock()
    gov = Governor(cfg, store, socks, enf, FakeCounters(), clock=clock)
    gov.start()
    return gov, store, socks, enf, clock


def ask(gov: Governor, req: BlockRequest | UnblockRequest) -> dict[str, object]:
    return gov.handle(to_wire(req))


def test_a_full_store_never_stops_enforcement_and_catches_up_when_space_returns(tmp_path: Path) -> None:
    gov, store, socks, enf, clock = make(tmp_path)
    failing = FailingStore(store)
    gov.store = failing  # type: ignore[assignment]
    failing.mode = "all"
    socks.sources = {BOT: hog(30)}
    for _ in range(8):
        gov.tick()
        clock.advance(1.0)
    assert BOT in enf.blocks and BOT in gov.state.blocks  # enforced, held in memory
    assert BOT not in store.load().blocks and not store.load().throttles
    st = reports.status(gov)
    assert st["store"]["state"] == "behind" and "disk is full" in st["store"]["error"]
    assert failing.replaced == 0  # no attempt to write it all before STORE_RETRY_EVERY: not one a tick
    # An operator's decision is not taken while it cannot be recorded: nothing changes, kernel or memory.
    reply = ask(gov, BlockRequest(str(OPERATOR)))
    assert failing.replaced == 1  # the request tried at once
    assert reply["ok"] is False and "nothing was changed" in str(reply["error"])
    assert OPERATOR not in enf.blocks and OPERATOR not in gov.state.blocks
    reply = ask(gov, UnblockRequest(str(BOT)))
    assert reply["ok"] is False and BOT in enf.blocks and BOT in gov.state.blocks
    # Space returns: within STORE_RETRY_EVERY the whole state is written, and the operator is heard again.
    failing.mode = ""
    clock.advance(STORE_RETRY_EVERY)
    gov.tick()
    assert reports.status(gov)["store"] == {"state": "ok"}
    assert store.load().blocks.keys() == gov.state.blocks.keys() == {BOT}
    assert ask(gov, UnblockRequest(str(BOT)))["ok"] is True
    assert BOT not in enf.blocks and BOT not in store.load().blocks


class FailingStore:
    """The real store, failing as on a full disk: mode "all" fails every write before it is made, "commit" fails
    the commit after the work inside `pending` (the kernel's commit) was done."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.mode = ""
        self.replaced = 0

    @contextlib.contextmanager
    def pending(self, plan: Plan, now: float) -> Iterator[None]:
        if self.mode == "all":
            raise StoreError("cannot record the plan in the state store: database or disk is full")
        if self.mode == "commit":
            yield
            raise StoreError("cannot commit the plan: database or disk is full", committing=True)
        with self.inner.pending(plan, now):
            yield

    def save(self, plan: Plan, now: float) -> None:
        with self.pending(plan, now):
            pass

    def replace(self, state: State, now: float) -> None:
        self.replaced += 1
        if self.mode:
            raise StoreError("cannot write the whole state in the state store: database or disk is full")
        self.inner.replace(state, now)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_a_commit_that_fails_after_the_kernel_acted_keeps_the_decision_in_memory(tmp_path: Path) -> None:
    gov, store, socks, enf, clock = make(tmp_path)
    wrapped = FailingStore(store)
    gov.store = wrapped  # type: ignore[assignment]
    wrapped.mode = "commit"
    socks.sources = {BOT: hog(30)}
    gov.tick()
    assert BOT in enf.throttles and BOT in gov.state.throttles  # the kernel's commit stands, and memory knows it
    st = reports.status(gov)
    assert st["store"]["state"] == "behind" and st["failures"]["store"] >= 1
    wrapped.mode = ""
    clock.advance(STORE_RETRY_EVERY)
    gov.tick()
    loaded = store.load()
    assert reports.status(gov)["store"] == {"state": "ok"}
    assert BOT in loaded.throttles.keys() | loaded.blocks.keys()
    assert loaded.throttles.keys() == gov.state.throttles.keys() and loaded.blocks.keys() == gov.state.blocks.keys()


def test_an_unblock_the_store_recorded_is_not_undone_by_a_crash_before_the_kernel_acted(tmp_path: Path) -> None:
    gov, store, _socks, enf, clock = make(tmp_path)
    assert ask(gov, BlockRequest(str(OPERATOR)))["ok"] is True
    assert ask(gov, BlockRequest(str(OTHER)))["ok"] is True
    # The crash: the store has the unblock, the kernel never heard of it.
    store.save(manual_unblock(OPERATOR, gov.state), clock())
    assert OPERATOR in enf.blocks
    store.close()
    cfg = gov.config
    store2 = Store(cfg["daemon"]["state_dir"])
    gov2 = Governor(cfg, store2, FakeSockets(), enf, FakeCounters(), clock=clock)
    gov2.start()
    assert OPERATOR not in enf.blocks and OPERATOR not in gov2.state.blocks and OPERATOR not in store2.load().blocks
    assert OTHER in enf.blocks and OTHER in gov2.state.blocks  # a block the store knows stays
    # A block the kernel holds that the store never recorded (a crash between the kernel's commit and the
    # store's) is adopted, as before.
    stray = Prefix.parse("198.18.0.200")
    enf.blocks[stray] = clock() + 600
    store2.close()
    gov3 = Governor(cfg, Store(cfg["daemon"]["state_dir"]), FakeSockets(), enf, FakeCounters(), clock=clock)
    gov3.start()
    assert stray in gov3.state.blocks and stray in enf.blocks
