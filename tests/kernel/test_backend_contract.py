"""One contract for every firewall backend: the same plan in, the same packets dropped and passed, nothing of
govern's left behind after teardown. Each case runs against each backend in a fresh namespace pair (tests.netns.Lab).

A dropped SYN shows as a connect timeout (short, so a drop costs well under a second); a passed one as a
connection the listener accepts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from govern.addr import Prefix
from govern.config import from_mapping
from govern.edges import Enforcer
from govern.ipt.backend import IptBackend
from govern.model import Action, ActionKind, FirewallSpec, Plan, State
from govern.nft.backend import NftBackend
from govern.wiring import DEFAULT_OBJECT
from govern.xdp.layer import XdpLayer
from govern.xdp.loader import XdpProgram
from tests.netns import MX4, MX6, Lab, Listener, connect

P = Prefix.parse
DROP_TIMEOUT = 0.6
BLOCK32, BLOCK24, BLOCK64 = P("198.18.0.7"), P("198.18.1.0/24"), P("2001:db8:bad:1::/64")
ALLOWED_INSIDE = "198.18.1.77"
THROTTLED = P("198.51.100.9")
UNPROTECTED_PORT = 2525


@dataclass(frozen=True)
class Kind:
    """How to make one backend and how to see, from the kernel's own tools, what it left behind."""

    make: Callable[[Lab, str], Enforcer]  # (lab, a pin root on a bpffs of the test's own) -> backend
    leftovers: Callable[[Lab, str], str]
    # Someone else's hands on the backend's kernel objects, with the kernel's own tools: each way, one at a time.
    tampers: tuple[Callable[[Lab], object], ...] = ()


def _nft_left(lab: Lab, pin_root: str = "") -> str:
    return lab.mx.sh("nft", "list", "tables").strip() and lab.mx.sh(
        "nft", "list", "table", "inet", "govern", check=False
    )


def _ipt_left(lab: Lab, pin_root: str = "") -> str:
    rules = [
        line
        for tool in ("iptables-legacy-save", "ip6tables-legacy-save")
        for line in lab.mx.sh(tool, "-t", "raw").splitlines()
        if "GOVERN" in line
    ]
    sets = [n for n in lab.mx.sh("ipset", "list", "-n").split() if n.startswith("govern-")]
    return "\n".join(rules + sets)


def _xdp(lab: Lab, pin_root: str) -> Enforcer:
    iface = f"v{lab.mx.name[-6:]}m"
    return XdpLayer(NftBackend(), lambda: XdpProgram(str(DEFAULT_OBJECT), pin_root), [iface], pin_root)


def _xdp_left(lab: Lab, pin_root: str) -> str:
    left = [_nft_left(lab)] + [line for line in lab.mx.sh("ip", "link", "show").splitlines() if "xdp" in line]
    return "\n".join(filter(None, [*left, pin_root if Path(pin_root).exists() else ""]))


NFT_TAMPERS = (
    lambda lab: lab.mx.sh("nft", "delete", "table", "inet", "govern"),
    lambda lab: lab.mx.sh("nft", "flush", "ruleset"),
    lambda lab: lab.mx.sh("nft", "flush", "chain", "inet", "govern", "guard"),
)
IPT_TAMPERS = (
    lambda lab: lab.mx.sh("iptables-legacy", "-t", "raw", "-F", "GOVERN"),
    lambda lab: lab.mx.sh("ip6tables-legacy", "-t", "raw", "-D", "PREROUTING", "1"),
)

KINDS = {
    "nftables": Kind(lambda lab, _: NftBackend(), _nft_left, NFT_TAMPERS),
    "iptables": Kind(lambda lab, _: IptBackend(), _ipt_left, IPT_TAMPERS),
    "xdp+nftables": Kind(
        _xdp,
        _xdp_left,
        (lambda lab: lab.mx.sh("ip", "link", "set", "dev", f"v{lab.mx.name[-6:]}m", "xdp", "off"), *NFT_TAMPERS[:1]),
    ),
}


def config() -> FirewallSpec:
    return from_mapping({"protect": {"ports": [25]}, "throttle": {"rate_per_minute": 1, "burst": 2}}).firewall()


@pytest.fixture(params=sorted(KINDS))
def kind(request: pytest.FixtureRequest) -> Kind:
    return KINDS[str(request.param)]


@pytest.fixture
def served(lab: Lab) -> Iterator[Lab]:
    listeners = [Listener(lab.mx, 25), Listener(lab.mx, UNPROTECTED_PORT)]
    try:
        yield lab
    finally:
        for listener in listeners:
            listener.close()


def passes(lab: Lab, src: str, port: int = 25) -> bool:
    dst = MX6 if ":" in src else MX4
    with lab.net.entered():
        try:
            connect(src, dst, port, timeout=DROP_TIMEOUT).close()
        except TimeoutError:
            return False
    return True


def plan(now: float) -> Plan:
    until = now + 600
    return Plan(
        (
            Action(ActionKind.BLOCK, BLOCK32, "contract", until=until),
            Action(ActionKind.BLOCK, BLOCK24, "contract", until=until),
            Action(ActionKind.BLOCK, BLOCK64, "contract", until=until),
            Action(ActionKind.THROTTLE, THROTTLED, "contract", until=until),
        )
    )


def test_same_plan_same_packets(served: Lab, kind: Kind, pin_root: str) -> None:
    lab, now = served, time.time()
    with lab.mx.entered():
        backend = kind.make(lab, pin_root)
        try:
            backend.setup(config(), [P(ALLOWED_INSIDE)], State(), now)
            backend.apply(plan(now), now)
            counted_before = backend.syn_counts().get(P("198.51.100.10"), 0)
        finally:
            backend.close()
    assert not passes(lab, "198.18.0.7"), "a blocked /32 passed"
    assert not passes(lab, "198.18.1.5"), "an address in a blocked /24 passed"
    assert not passes(lab, "2001:db8:bad:1::5"), "an address in a blocked /64 passed"
    assert passes(lab, ALLOWED_INSIDE), "an allowlisted address inside a blocked /24 was dropped"
    assert passes(lab, "198.18.0.8"), "a neighbour of a blocked /32 was dropped"
    assert passes(lab, "2001:db8:bad:2::5"), "an IPv6 neighbour of a blocked /64 was dropped"
    assert passes(lab, "198.18.0.7", UNPROTECTED_PORT), "a blocked source lost an unprotected port"
    # Throttled at 1/minute with a burst of 2: the first two connections pass, then the source is held back.
    throttled = [passes(lab, str(THROTTLED)) for _ in range(4)]
    assert throttled[:2] == [True, True] and throttled[3] is False, throttled
    for _ in range(3):
        assert passes(lab, "198.51.100.10")
    with lab.mx.entered():
        backend = kind.make(lab, pin_root)
        try:
            backend.setup(config(), [P(ALLOWED_INSIDE)], State(), now)
            assert backend.syn_counts().get(P("198.51.100.10"), 0) - counted_before == 3
        finally:
            backend.close()


def test_release_and_teardown(served: Lab, kind: Kind, pin_root: str) -> None:
    lab, now = served, time.time()
    with lab.mx.entered():
        backend = kind.make(lab, pin_root)
        try:
            adopted = backend.setup(config(), [], State(), now)
            assert adopted.actions == ()
            backend.apply(plan(now), now)
            backend.apply(Plan((Action(ActionKind.UNBLOCK, BLOCK32, "contract"),)), now)
            # A fresh backend finds what the kernel holds and hands it back for adoption.
            again = kind.make(lab, pin_root)
            found = {a.prefix for a in again.setup(config(), [], State(), now).actions}
            again.close()
            assert found == {BLOCK24, BLOCK64, THROTTLED}
        finally:
            backend.close()
    assert passes(lab, "198.18.0.7"), "an unblocked source is still dropped"
    assert not passes(lab, "198.18.1.5")
    with lab.mx.entered():
        backend = kind.make(lab, pin_root)
        try:
            assert backend.teardown() is True
            assert backend.teardown() is False
        finally:
            backend.close()
    assert kind.leftovers(lab, pin_root) == ""
    assert passes(lab, "198.18.1.5"), "a source blocked before teardown is still dropped"


def test_changes_by_someone_else_are_seen_and_setup_restores_what_was_enforced(
    served: Lab, kind: Kind, pin_root: str
) -> None:
    """`changed` is None while the objects are as the backend made them, names what someone else removed or changed
    (each way in turn), and a new `setup` with the state restores the objects and the blocks in them."""
    lab, now = served, time.time()
    state = State()
    state.record(plan(now), now)
    with lab.mx.entered():
        backend = kind.make(lab, pin_root)
        try:
            backend.setup(config(), [P(ALLOWED_INSIDE)], State(), now)
            backend.apply(plan(now), now)
            assert backend.changed() is None
            backend.set_allow([P(ALLOWED_INSIDE)])
            assert backend.changed() is None  # its own element changes are not someone else's
            for tamper in kind.tampers:
                tamper(lab)
                what = backend.changed()
                assert what, f"{kind}: not seen"
                backend.setup(config(), [P(ALLOWED_INSIDE)], state, now)
                assert backend.changed() is None
        finally:
            backend.close()
    assert not passes(lab, "198.18.0.7"), "a block did not come back"
    assert not passes(lab, "198.18.1.5") and not passes(lab, "2001:db8:bad:1::5")
    assert passes(lab, ALLOWED_INSIDE)
