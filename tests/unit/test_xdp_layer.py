"""The XDP layer when XDP cannot start (no bpf filesystem, a refused program): the firewall behind it goes on
protecting alone, the failure is a warning, a failure of component `xdp`, a line in `govern status` and
`govern_feature_up{feature="xdp"} 0`, never the end of the daemon; the next setup tries again (issue 14, item 2)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import pytest

from govern import config, reports
from govern.addr import Prefix
from govern.daemon import Governor
from govern.errors import KernelError
from govern.fakes import FakeClock, FakeCounters, FakeEnforcer, FakeSockets
from govern.model import Action, ActionKind, Block, Plan, State
from govern.store import Store
from govern.wiring import DEFAULT_OBJECT
from govern.xdp.layer import XdpLayer
from govern.xdp.loader import XdpProgram
from tests.unit.test_metrics import scrape, value

NOW = 1_700_000_000.0
BOT = Prefix.parse("198.18.0.7")
SPEC = config.from_mapping({}).firewall()


class Program:
    """What XdpLayer uses of a loaded XdpProgram, in memory."""

    def __init__(self) -> None:
        self.blocks: dict[Prefix, float] = {}
        self.allow: set[Prefix] = set()
        self.attached: tuple[str, ...] = ()
        self.ifindexes: list[int] = []

    def set_ports(self, ports: Iterable[int]) -> None:
        pass

    def prefixes(self, kind: str) -> set[Prefix]:
        return set(self.blocks) if kind == "block" else set(self.allow)

    def update(self, kind: str, add: Iterable[Prefix] | Mapping[Prefix, float], remove: Iterable[Prefix] = ()) -> None:
        held: dict[Prefix, float] = self.blocks if kind == "block" else dict.fromkeys(self.allow, 0.0)
        for p in remove:
            held.pop(p, None)
        held.update(add if isinstance(add, Mapping) else dict.fromkeys(add, 0.0))
        if kind == "allow":
            self.allow = set(held)

    def tidy(self) -> int:
        return 0

    def detach(self) -> None:
        self.attached = ()

    def attach(self, ifaces: Iterable[str]) -> None:
        self.attached = tuple(ifaces)

    def close(self) -> None:
        pass


def failing(exc: BaseException) -> Callable[[], XdpProgram]:
    def make() -> XdpProgram:
        raise exc

    return make


def block_plan(p: Prefix) -> Plan:
    return Plan((Action(ActionKind.BLOCK, p, "manual: test", NOW + 600),))


def test_xdp_that_cannot_start_leaves_the_firewall_protecting_and_says_why() -> None:
    inner = FakeEnforcer()
    layer = XdpLayer(inner, failing(KernelError("loading govern_xdp.o: Operation not permitted", 1)), ["gvx0"], "/x")
    state = State()
    state.blocks[BOT] = Block(BOT, "manual: test", NOW, NOW + 600, 1)
    layer.setup(SPEC, [], state, NOW)
    assert layer.name == "fake"  # what protects: the firewall alone
    assert layer.unavailable() == {"xdp": "loading govern_xdp.o: Operation not permitted"}
    assert BOT in inner.blocks  # the firewall restored the state's blocks all the same
    other = Prefix.parse("198.18.0.8")
    layer.apply(block_plan(other), NOW)
    assert other in inner.blocks


def test_an_os_error_is_named_with_its_path_and_the_next_setup_tries_again() -> None:
    prog = Program()
    outcomes: list[BaseException | None] = [OSError(30, "Read-only file system", "/sys/fs/bpf"), None]

    def make() -> XdpProgram:
        exc = outcomes.pop(0)
        if exc is not None:
            raise exc
        return prog  # type: ignore[return-value]

    layer = XdpLayer(FakeEnforcer(), make, ["gvx0"], "/x")
    layer.setup(SPEC, [], State(), NOW)
    assert layer.unavailable() == {"xdp": "Read-only file system: /sys/fs/bpf"}
    layer.setup(SPEC, [], State(), NOW)  # a reload, or the repair after someone touched govern's objects
    assert layer.unavailable() == {} and layer.name == "xdp+fake"
    assert prog.attached == ("gvx0",)
    layer.apply(block_plan(BOT), NOW)
    assert BOT in prog.blocks


def test_the_pin_directory_that_cannot_be_made_is_a_kernel_error_naming_it() -> None:
    # /proc takes no new directories, whoever asks (root included), as a read-only /sys takes none.
    with pytest.raises(KernelError, match=r"cannot make /proc/govern-none/pins for the XDP maps' pins: .*mount -t bpf"):
        XdpProgram(str(DEFAULT_OBJECT), "/proc/govern-none/pins")


def test_the_daemon_warns_counts_shows_and_exports_a_feature_that_is_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config.from_mapping(
        {
            "daemon": {"state_dir": str(tmp_path / "state")},
            "backend": {"xdp": True, "xdp_interfaces": ["gvx0"]},
            "modes": {"auto": False},
        }
    )
    why = "cannot make /sys/fs/bpf/govern for the XDP maps' pins: Read-only file system"
    layer = XdpLayer(FakeEnforcer(), failing(KernelError(why, 30)), ["gvx0"], "/x")
    gov = Governor(cfg, Store(cfg["daemon"]["state_dir"]), FakeSockets(), layer, FakeCounters(), clock=FakeClock())
    with caplog.at_level(logging.WARNING):
        gov.start()
    assert f"xdp off: {why}" in caplog.text
    st = reports.status(gov)
    assert st["backend"] == "fake" and st["unavailable"] == {"xdp": why}
    assert st["failures"].get("xdp") == 1
    s, _ = scrape(gov)
    assert value(s, "govern_feature_up", feature="xdp") == 0
    gov.tick()  # the daemon lives on, protecting with the firewall
    assert gov.ticks == 1
