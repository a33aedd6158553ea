"""The tarpit on a real kernel: banner latency measured per source, allowlist precedence, release, refusal of an
operator's qdisc, and a teardown that leaves nothing behind."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from govern.addr import Prefix
from govern.errors import RefusedError
from govern.nft.libnft import Nft
from govern.nft.netlink import ElemOp, NftNetlink
from govern.tarpit import Shape, TcTarpit
from govern.tarpit.shape import ROOT_HANDLE
from tests.netns import MX4, MX6, Lab, Listener, connect

DELAY = 1.5
PORTS = frozenset({25})
BOT4, BOT6 = "198.18.0.7", "2001:db8:bad::7"
LEGIT4, LEGIT6 = "198.51.100.7", "2001:db8:51::7"

# A fast banner takes ~0.2 ms; on a busy 2-CPU CI machine a thread switch can add a few hundred ms. Well under
# the tarpit's delay either way, so "not tarpitted" stays unambiguous.
FAST = 0.5


def banner_seconds(lab: Lab, src: str) -> float:
    """Time from the start of connect() to the whole banner line, from `src`."""
    dst = MX6 if ":" in src else MX4
    with lab.net.entered():
        t0 = time.monotonic()
        s = connect(src, dst, 25, timeout=10)
    try:
        buf = b""
        while not buf.endswith(b"\r\n"):
            chunk = s.recv(512)
            assert chunk, "the server closed before its banner"
            buf += chunk
        return time.monotonic() - t0
    finally:
        s.close()


def mx_dev(lab: Lab) -> str:
    return f"v{lab.mx.name[-6:]}m"  # as tests.netns.Lab names it


def root_qdiscs(lab: Lab) -> str:
    return lab.mx.sh("tc", "qdisc", "show", "root")


@pytest.fixture
def tarpit(lab: Lab) -> Iterator[TcTarpit]:
    with lab.mx.entered():
        tp = TcTarpit(Shape(delay=DELAY, buckets=4), v4_len=32, v6_len=64)
        try:
            tp.setup(PORTS)
        except BaseException:
            tp.close()
            raise
    try:
        yield tp
    finally:
        with lab.mx.entered():
            tp.teardown()
            tp.close()


@pytest.fixture
def listener(lab: Lab) -> Iterator[Listener]:
    ls = Listener(lab.mx)
    try:
        yield ls
    finally:
        ls.close()


def tarpit_apply(lab: Lab, tp: TcTarpit, add: dict[str, float], remove: tuple[str, ...] = ()) -> None:
    with lab.mx.entered():
        tp.apply({Prefix.parse(a): s for a, s in add.items()}, [Prefix.parse(r) for r in remove])


def test_banner_is_delayed_for_tarpitted_sources_only(lab: Lab, tarpit: TcTarpit, listener: Listener) -> None:
    tarpit_apply(lab, tarpit, {BOT4: 60, BOT6: 60})
    for bot, legit in ((BOT4, LEGIT4), (BOT6, LEGIT6)):
        fast = banner_seconds(lab, legit)
        slow = banner_seconds(lab, bot)
        fast_after = banner_seconds(lab, legit)
        assert slow >= 1.0, f"{bot}: banner after {slow:.3f}s, expected the tarpit's {DELAY}s"
        # The server retransmits a banner that waits in the tarpit (its RTO is far shorter than the delay), and each
        # copy costs the bucket a delay too; on a busy machine the first copy can be the one the queue's limit
        # drops. A few delays, then; never the client's patience (minutes for an MTA).
        assert slow < 5 * DELAY, f"{bot}: banner after {slow:.3f}s, far beyond the tarpit's {DELAY}s"
        assert fast < FAST and fast_after < FAST, f"{legit}: banner after {fast:.3f}s/{fast_after:.3f}s"


def test_release_restores_fast_banners(lab: Lab, tarpit: TcTarpit, listener: Listener) -> None:
    tarpit_apply(lab, tarpit, {BOT4: 60})
    assert banner_seconds(lab, BOT4) >= 1.0
    tarpit_apply(lab, tarpit, {}, (BOT4,))
    assert tarpit.tarpitted() == frozenset()
    assert banner_seconds(lab, BOT4) < FAST


def test_allowlisted_source_is_never_slowed(lab: Lab, tarpit: TcTarpit, listener: Listener) -> None:
    tarpit_apply(lab, tarpit, {"198.18.0.0/24": 60})
    with lab.mx.entered(), NftNetlink() as nl:
        nl.commit([ElemOp(True, "allow4", Prefix.parse(BOT4))], interval_sets=frozenset({"allow4"}))
    assert banner_seconds(lab, BOT4) < FAST
    assert banner_seconds(lab, "198.18.0.8") >= 1.0


def test_kernel_timeout_ends_the_tarpit(lab: Lab, tarpit: TcTarpit, listener: Listener) -> None:
    tarpit_apply(lab, tarpit, {BOT4: 1})
    deadline = time.monotonic() + 5
    while "198.18.0.7" in lab.mx.sh("nft", "list", "set", "inet", "govern", "tarpit4"):
        assert time.monotonic() < deadline, "the element did not expire"
        time.sleep(0.2)
    assert banner_seconds(lab, BOT4) < FAST


def test_a_patient_client_completes_a_dialogue_and_uploads_at_full_speed(lab: Lab, tarpit: TcTarpit) -> None:
    """Replies wait, ACKs do not: 1 MB goes up as fast as without the tarpit; only the replies cost DELAY each."""
    body = b"x" * 1_000_000
    stop = threading.Event()
    with lab.mx.entered():
        srv = socket.create_server(("0.0.0.0", 25))
    srv.settimeout(0.2)

    def serve() -> None:
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except TimeoutError:
                continue
            with c:
                c.sendall(b"220 mx ESMTP\r\n")
                f = c.makefile("rb")
                f.readline()  # MAIL
                c.sendall(b"250 ok\r\n")
                got = 0
                while got < len(body):
                    got += len(f.read1(65536))
                c.sendall(b"250 queued\r\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    tarpit_apply(lab, tarpit, {BOT4: 60})
    try:
        with lab.net.entered():
            s = connect(BOT4, MX4, 25, timeout=30)
        with contextlib.closing(s):
            f = s.makefile("rb")
            t0 = time.monotonic()
            assert f.readline().startswith(b"220")
            s.sendall(b"MAIL FROM:<a@example.org>\r\n")
            assert f.readline().startswith(b"250")
            t_up = time.monotonic()
            s.sendall(body)
            assert f.readline().startswith(b"250")
            t_end = time.monotonic()
    finally:
        stop.set()
        t.join(timeout=2)
        srv.close()
    # Three replies, each DELAY behind the previous marked packet; the upload adds well under a second.
    assert 3 * DELAY - 0.3 <= t_end - t0 < 3 * DELAY + 1.0, f"dialogue took {t_end - t0:.2f}s"
    assert t_end - t_up < DELAY + 1.0, f"upload and reply took {t_end - t_up:.2f}s"


def test_teardown_leaves_no_tc_or_nft_objects(lab: Lab) -> None:
    before = root_qdiscs(lab)
    assert "htb" not in before
    with lab.mx.entered():
        tp = TcTarpit(Shape(delay=DELAY, buckets=2))
        tp.setup(PORTS)
        tp.setup(PORTS)  # converging an existing tree is fine
        assert tp.tarpitted() == frozenset()
    assert f"htb {ROOT_HANDLE >> 16:x}:" in root_qdiscs(lab)
    assert "tarpit" in lab.mx.sh("nft", "list", "ruleset")
    with lab.mx.entered():
        assert tp.teardown() is True
        assert tp.teardown() is False
        tp.close()
    assert root_qdiscs(lab) == before
    assert lab.mx.sh("tc", "class", "show", "dev", mx_dev(lab)) == ""
    assert lab.mx.sh("nft", "list", "ruleset").strip() == ""


def test_teardown_keeps_the_enforcers_table(lab: Lab) -> None:
    with lab.mx.entered():
        nft = Nft()
        nft.run("add table inet govern\nadd chain inet govern guard { type filter hook prerouting priority raw; }\n")
        tp = TcTarpit(Shape(delay=DELAY, buckets=2))
        tp.setup(PORTS)
        tp.teardown()
        tp.close()
        nft.close()
    rules = lab.mx.sh("nft", "list", "table", "inet", "govern")
    assert "chain guard" in rules
    assert "tarpit" not in rules


def test_operator_root_qdisc_is_refused_and_nothing_changes(lab: Lab) -> None:
    dev = mx_dev(lab)
    lab.mx.sh("tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "tbf", "rate", "1gbit", "burst", "64k",
              "latency", "50ms")  # fmt: skip
    with lab.mx.entered():
        tp = TcTarpit(Shape(delay=DELAY, buckets=2))
        with pytest.raises(RefusedError, match=rf"{dev} \(root qdisc tbf 1:0\)"):
            tp.setup(PORTS)
        tp.teardown()
        tp.close()
    assert f"qdisc tbf 1: dev {dev} root" in root_qdiscs(lab)
    assert lab.mx.sh("nft", "list", "ruleset").strip() == ""
