"""The adversary matrix's traffic roles without a network: address spreading, the strangers' schedule, what each bot
says on a connection (over a socketpair), message sizes, and the command line."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import random
import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from govern_lab.traffic import adversaries as adv
from govern_lab.traffic import analysis, bots, command, counters, options, smtp, sources

MX = ("--dst", "203.0.113.25", "--dst", "2001:db8:25::25", "--duration", "5")


def net(text: str) -> sources.Network:
    return ipaddress.ip_network(text)


def slash64(addr: str) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network((int(ipaddress.IPv6Address(addr)) >> 64 << 64, 64))


def test_random_v6_sources_share_64s_so_spread_gives_each_its_own() -> None:
    bad = [net("2001:db8:bad::/48")]
    # What the swarm did before --spread: random addresses of the /48, of which some share a /64 (birthday).
    plain = sources.pick_sources(bad, 2000, random.Random(0))
    assert len({slash64(a) for a in plain}) < 2000
    spread = sources.spread_sources(bad, 2000, random.Random(0), 64)
    assert len(set(spread)) == len({slash64(a) for a in spread}) == 2000
    assert all(ipaddress.ip_address(a) in bad[0] for a in spread)
    assert all(int(ipaddress.ip_address(a)) & (2**64 - 1) != 0 for a in spread)  # not the subnet-router anycast
    assert spread == sources.spread_sources(bad, 2000, random.Random(0), 64)


def test_spread_over_several_prefixes_and_limits() -> None:
    got = sources.spread_sources([net("198.18.0.0/22"), net("198.18.8.0/21")], 10, random.Random(1), 24)
    # the /22 has only four /24s: its share is capped there and the /21 gives the rest
    slash24 = Counter(a.rsplit(".", 1)[0] for a in got)
    assert len(slash24) == 10 and set(slash24.values()) == {1}
    assert sum(ipaddress.ip_address(a) in net("198.18.0.0/22") for a in got) == 4
    with pytest.raises(options.TrafficError, match="subnets"):
        sources.spread_sources([net("2001:db8:bad::/62")], 5, random.Random(0), 64)
    with pytest.raises(options.TrafficError, match="does not fit"):
        sources.spread_sources([net("198.18.0.0/16")], 5, random.Random(0), 64)


def test_spread_reaches_the_swarm_through_bot_setup() -> None:
    opts = options.HoldOptions(
        dst=("2001:db8:25::25",), duration=1, sources=("2001:db8:bad::/48",), count=500, spread=64
    )
    pairs, _ = bots.bot_setup("swarm", opts)
    assert len({slash64(s) for s, _ in pairs}) == 500 and {d for _, d in pairs} == {"2001:db8:25::25"}


def test_strangers_schedule_each_once_or_twice_shuffled() -> None:
    srcs = [f"198.51.100.{i}" for i in range(129, 229)]
    order = adv.stranger_schedule(srcs, 2, random.Random(3))
    counts = Counter(order)
    assert set(counts) == set(srcs) and set(counts.values()) == {1, 2}
    assert order != sorted(order) and order == adv.stranger_schedule(srcs, 2, random.Random(3))
    assert Counter(adv.stranger_schedule(srcs, 1, random.Random(0))) == Counter(srcs)
    with pytest.raises(options.TrafficError):
        adv.stranger_schedule(srcs, 0, random.Random(0))


def test_strangers_default_sources_are_never_seen_ones() -> None:
    opts = adv.StrangerOptions(dst=("203.0.113.25", "2001:db8:25::25"), duration=1)
    nets = adv.stranger_sources(opts)
    assert [str(n) for n in nets] == ["198.51.100.128/25", "2001:db8:51:100::/56"]
    srcs = sources.pick_sources(nets, 300, random.Random(0))
    assert len(set(srcs)) == 300 and sum(":" not in s for s in srcs) == 126  # the /25's every host, then IPv6
    for bad in ("198.51.100.0/24", "198.51.100.8/29", "2001:db8:51::/48"):
        with pytest.raises(options.TrafficError, match="known relays"):
            adv.stranger_sources(adv.StrangerOptions(dst=opts.dst, duration=1, sources=(bad,)))
    with pytest.raises(options.TrafficError, match="outside"):
        adv.stranger_sources(adv.StrangerOptions(dst=opts.dst, duration=1, sources=("198.18.0.0/24",)))


def test_junk_and_slowtalk_commands() -> None:
    j = adv.junk(random.Random(0), 5000)
    assert len(j) == 5000 and b"\r" not in j and b"\n" not in j and j.isascii() and j.isalnum()
    cmds = adv.slowtalk_commands(random.Random(0))
    first = [next(cmds) for _ in range(4)]
    assert first[0] == b"EHLO slowtalk.bots.lab.test\r\n"
    assert first[1].startswith(b"MAIL FROM:<") and first[2] == b"RCPT TO:<slow1@lab.test>\r\n"
    assert first[3] == b"RCPT TO:<slow2@lab.test>\r\n"


@pytest.mark.parametrize("size", [2048, 30_000, 61_440])
def test_message_body_has_the_size_asked_for_and_is_clean_smtp(size: int) -> None:
    body = smtp.message_body("Subject: x\r\n", "198.51.100.1", "legit", size, random.Random(size))
    assert abs(len(body) - size) < 200
    assert body.endswith(b"\r\n.\r\n")
    lines = body[:-5].split(b"\r\n")
    assert all(len(line) <= 998 for line in lines) and not any(line.startswith(b".") for line in lines)
    assert b"\n" not in body.replace(b"\r\n", b"")


def test_legit_messages_vary_in_size_and_the_old_one_line_message_stays() -> None:
    opts = options.TxnOptions(dst=("203.0.113.25",), duration=1, size_kb=(2.0, 60.0))
    txns = smtp.Transactions("legit", opts, 0.0)
    sizes = [len(txns._message(smtp._Txn(n, "198.51.100.1", "203.0.113.25"))) for n in range(40)]
    assert min(sizes) >= 2 * 1024 - 200 and max(sizes) <= 60 * 1024 + 200 and max(sizes) - min(sizes) > 20_000
    small = smtp.Transactions("trusted", options.TxnOptions(dst=("203.0.113.25",), duration=1), 0.0)
    assert len(small._message(smtp._Txn(1, "192.0.2.10", "203.0.113.25"))) < 400


def test_size_option() -> None:
    assert (
        command.size_range("2-60") == (2.0, 60.0)
        and command.size_range("8") == (8.0, 8.0)
        and command.size_range("0") == (0, 0)
    )
    for bad in ("60-2", "x", "-1", "1-99999"):
        with pytest.raises(Exception, match="size"):
            command.size_range(bad)


def parse(*argv: str) -> Any:
    return command.options(command._parser().parse_args(list(argv)))


def test_command_line_builds_each_new_roles_options() -> None:
    drip = parse("drip", *MX, "--count", "2000", "--drip", "3", "--reconnect", "1.5")
    assert isinstance(drip, adv.DripOptions) and drip.drip == 3 and drip.reconnect == 1.5 and drip.count == 2000
    assert drip.per_source == 2 and drip.max_bytes == 1000
    babble = parse("babble", *MX, "--bytes", "500")
    assert isinstance(babble, adv.BabbleOptions) and babble.bytes == 500 and babble.reconnect == 1.0
    slow = parse("slowtalk", *MX)
    assert isinstance(slow, adv.SlowtalkOptions) and (slow.pause, slow.gap, slow.reconnect) == (20.0, 8.0, 2.0)
    st = parse("strangers", *MX, "--over", "40")
    assert isinstance(st, adv.StrangerOptions) and st.over == 40 and st.max_messages == 2
    assert (st.timeout, st.banner_timeout, st.cmd_timeout, st.size_kb) == (30.0, 300.0, 300.0, (2.0, 60.0))
    sl = parse("slowlegit", *MX)
    assert isinstance(sl, options.TxnOptions) and sl.pause == 1.5 and sl.cmd_timeout == 300 and sl.rate == 0.1
    legit = parse("legit", *MX)
    assert isinstance(legit, options.TxnOptions) and legit.size_kb == (2.0, 60.0) and legit.pause == 0
    assert parse("legit", *MX, "--size", "0").size_kb == (0.0, 0.0)
    swarm = parse("swarm", *MX, "--spread", "64")
    assert isinstance(swarm, options.HoldOptions) and swarm.spread == 64
    assert set(adv.ROLES) == set(options.MATRIX_ROLES) and set(options.ALL_ROLES) >= set(options.ROLES)


@pytest.mark.parametrize(
    "argv,match",
    [
        (("drip", "--dst", "8.8.8.8", "--duration", "1"), "outside the lab's MX range"),
        (("babble", "--dst", "203.0.113.25", "--duration", "1", "--sources", "198.51.100.0/24"), "outside"),
        (("strangers", "--dst", "203.0.113.25", "--duration", "1", "--sources", "198.51.100.0/28"), "known relays"),
        (("babble", "--dst", "203.0.113.25", "--duration", "1", "--bytes", "5000"), "--bytes"),
        (("drip", "--dst", "203.0.113.25", "--duration", "99999"), "duration"),
    ],
)
def test_refused_before_anything_is_sent(argv: tuple[str, ...], match: str, capsys: pytest.CaptureFixture[str]) -> None:
    # In the root namespace the namespace check refuses first; the argument checks run before it where they can.
    assert command.main(list(argv)) == 2
    assert capsys.readouterr().err


def test_argument_checks() -> None:
    base: dict[str, Any] = {"dst": ("203.0.113.25",), "duration": 1}
    with pytest.raises(options.TrafficError, match="--bytes"):
        adv.check_bot("babble", adv.BabbleOptions(**base, bytes=0))
    with pytest.raises(options.TrafficError, match="--drip"):
        adv.check_bot("drip", adv.DripOptions(**base, drip=0))
    with pytest.raises(options.TrafficError, match="--gap"):
        adv.check_bot("slowtalk", adv.SlowtalkOptions(**base, gap=0))
    with pytest.raises(options.TrafficError, match="--per-source"):
        adv.check_bot("drip", adv.DripOptions(**base, per_source=0))
    with pytest.raises(options.TrafficError, match="known relays"):
        adv.stranger_sources(adv.StrangerOptions(**base, sources=("198.51.100.0/25",)))


class Peer:
    """The server's end of a socketpair: what a bot sent, and when."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self.got: list[tuple[float, bytes]] = []

    async def read_for(self, seconds: float, t0: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            try:
                async with asyncio.timeout(end - loop.time()):
                    data = await loop.sock_recv(self.sock, 4096)
            except TimeoutError:
                return
            if not data:
                return
            self.got.append((time.monotonic() - t0, data))

    @property
    def data(self) -> bytes:
        return b"".join(d for _, d in self.got)


async def converse(role: str, opts: Any, banner: bytes, seconds: float) -> tuple[Peer, counters.Timeline, bool]:
    """Run one bot session against the server end for `seconds`, then close the server end; whether the session
    returned by itself once the server closed."""
    a, b = socket.socketpair()
    a.setblocking(False)
    peer = Peer(b)
    t0 = time.monotonic()
    tl = counters.Timeline(adv.ADV_FIELDS, t0, seconds + 1)
    b.sendall(banner)
    task = asyncio.create_task(adv.SESSIONS[role](a, opts, random.Random(0), tl))
    await peer.read_for(seconds, t0)
    b.close()
    try:
        await asyncio.wait_for(task, 1.0)
        ended = True
    except TimeoutError:
        ended = False
    a.close()
    return peer, tl, ended


BASE: dict[str, Any] = {"dst": ("203.0.113.25",), "duration": 5}


def test_drip_session_sends_a_junk_byte_every_drip_seconds_and_never_a_line_end() -> None:
    opts = adv.DripOptions(**BASE, drip=0.1, max_bytes=8)
    peer, tl, ended = asyncio.run(converse("drip", opts, b"220 mx ESMTP\r\n", 1.2))
    assert ended
    assert len(peer.data) == 8 and b"\r" not in peer.data and b"\n" not in peer.data  # then silent
    times = [t for t, d in peer.got for _ in d]
    assert 0.08 < times[0] < 0.2 and all(0.07 < b - a < 0.14 for a, b in itertools.pairwise(times))
    assert tl.totals["bytes_sent"] == 8


def test_babble_session_sends_its_bytes_after_the_first_line_then_nothing() -> None:
    opts = adv.BabbleOptions(**BASE, bytes=300)
    peer, tl, ended = asyncio.run(converse("babble", opts, b"220 mx ESMTP\r\n", 0.6))
    assert ended and len(peer.data) == 300 and b"\n" not in peer.data and b"\r" not in peer.data
    assert peer.got[-1][0] < 0.1 and tl.totals["bytes_sent"] == 300


def test_babble_waits_for_the_servers_first_line() -> None:
    opts = adv.BabbleOptions(**BASE, bytes=50)
    peer, _, ended = asyncio.run(converse("babble", opts, b"220 partial", 0.4))
    assert ended and peer.data == b""


def test_slowtalk_session_pauses_then_one_command_a_gap() -> None:
    opts = adv.SlowtalkOptions(**BASE, pause=0.4, gap=0.2)
    peer, tl, ended = asyncio.run(converse("slowtalk", opts, b"220 mx ESMTP\r\n", 1.1))
    assert ended
    lines = peer.data.split(b"\r\n")
    assert lines[0] == b"EHLO slowtalk.bots.lab.test" and lines[1].startswith(b"MAIL FROM:")
    assert lines[2] == b"RCPT TO:<slow1@lab.test>"
    times = [t for t, _ in peer.got]
    assert 0.38 < times[0] < 0.5  # the pause before EHLO
    assert all(0.17 < b - a < 0.26 for a, b in itertools.pairwise(times))
    assert len(times) == 4 and tl.totals["commands"] == 4


def test_summary_lines_of_new_roles() -> None:
    doc: dict[str, Any] = {
        "role": "strangers",
        "duration": 3.0,
        "stopped_by": "duration",
        "totals": analysis.summarise([]),
    }
    assert command.summary_line(doc).startswith("strangers: 0 transactions")
    totals = dict.fromkeys(adv.ADV_FIELDS, 0) | {"sources": 3, "held_at_end": 2, "max_held": 4}
    doc = {"role": "drip", "duration": 3.0, "stopped_by": "duration", "totals": totals}
    assert command.summary_line(doc).startswith("drip: 3 sources; attempted 0")


def test_reply_ends_at_the_last_line_of_a_reply() -> None:
    assert adv.reply_ends(b"220 mx ESMTP\r\n") and adv.reply_ends(b"250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
    assert adv.reply_ends(b"354\r\n")
    assert not adv.reply_ends(b"250-mx\r\n250-PIPELINING\r\n")  # more lines to come
    assert not adv.reply_ends(b"220 mx ESMTP")  # no line end yet
    assert not adv.reply_ends(b"junk line\r\n")


@pytest.mark.parametrize("deliver", [False, True], ids=["up-to-data", "deliver"])
def test_prove_session_holds_a_spam_bots_dialogue_then_stays_silent(deliver: bool) -> None:
    async def run() -> tuple[list[bytes], bool, counters.Timeline]:
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        loop = asyncio.get_running_loop()
        tl = counters.Timeline(adv.ADV_FIELDS, time.monotonic(), 3)
        opts = adv.ProveOptions(**BASE, deliver=deliver)
        task = asyncio.create_task(adv.SESSIONS["prove"](a, opts, random.Random(0), tl))
        got: list[bytes] = []
        # Each command only once the last reply is whole: a multi-line greeting and EHLO reply, sent in two parts.
        await loop.sock_sendall(b, b"220-mx\r\n")
        await asyncio.sleep(0.05)
        assert not got and await _nothing(loop, b)
        await loop.sock_sendall(b, b"220 ESMTP\r\n")
        replies = [b"250-mx\r\n250 PIPELINING\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go ahead\r\n"]
        for reply in replies + ([b"250 2.0.0 Ok: queued as X\r\n"] if deliver else []):
            got.append(await asyncio.wait_for(loop.sock_recv(b, 4096), 1))
            await loop.sock_sendall(b, reply)
        silent = await _nothing(loop, b, 0.3)  # in DATA, or after its message: it says nothing more
        b.close()
        await asyncio.wait_for(task, 1)  # and ends once the server closes
        a.close()
        return got, silent, tl

    got, silent, tl = asyncio.run(run())
    assert got[0] == b"EHLO prove.bots.lab.test\r\n" and got[1].startswith(b"MAIL FROM:<")
    assert got[2].startswith(b"RCPT TO:<") and got[2].endswith(b"@lab.test>\r\n") and got[3] == b"DATA\r\n"
    if deliver:  # a whole message, ended as DATA wants, and nothing after it (no QUIT)
        assert got[4].startswith(b"Subject: ") and got[4].endswith(b"\r\n.\r\n") and len(got) == 5
    assert silent and tl.totals["commands"] == 4 + deliver


def test_a_quitting_prover_ends_its_delivery_with_quit_as_a_real_mta_does() -> None:
    async def run() -> list[bytes]:
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        loop = asyncio.get_running_loop()
        tl = counters.Timeline(adv.ADV_FIELDS, time.monotonic(), 3)
        opts = adv.ProveOptions(**BASE, deliver=True, quit_first=True)
        task = asyncio.create_task(adv._prove_session(a, opts, random.Random(0), tl, quit=True))
        got: list[bytes] = []
        await loop.sock_sendall(b, b"220 ESMTP\r\n")
        for reply in (b"250 mx\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"250 queued\r\n"):
            got.append(await asyncio.wait_for(loop.sock_recv(b, 4096), 1))
            await loop.sock_sendall(b, reply)
        got.append(await asyncio.wait_for(loop.sock_recv(b, 4096), 1))
        b.close()
        await asyncio.wait_for(task, 1)
        a.close()
        return got

    got = asyncio.run(run())
    assert got[4].endswith(b"\r\n.\r\n") and got[5] == b"QUIT\r\n"


def test_a_quit_first_slot_quits_only_its_first_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lab's quitters: the slot's first session proves the source as a real MTA would, the ones after it hold."""
    quits: list[bool] = []
    ends: list[socket.socket] = []

    async def connected(*_args: Any) -> socket.socket:
        a, b = socket.socketpair()
        ends.append(b)
        return a

    async def session(sock: socket.socket, *_args: Any, quit: bool = False) -> None:
        quits.append(quit)

    monkeypatch.setattr(adv, "open_socket", connected)
    monkeypatch.setattr(adv, "_prove_session", session)
    monkeypatch.setitem(adv.SESSIONS, "prove", session)
    opts = adv.ProveOptions(**BASE, deliver=True, quit_first=True, reconnect=0.06)
    tl = counters.Timeline(adv.ADV_FIELDS, time.monotonic(), 3)

    async def run() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(adv._slot("198.18.0.1", "203.0.113.25", "prove", opts, tl, 0, random.Random(0)), 0.5)

    asyncio.run(run())
    for e in ends:
        e.close()
    assert len(quits) >= 3 and quits[0] and not any(quits[1:])
    with pytest.raises(options.TrafficError, match="--quit-first needs --deliver"):
        adv.check_bot("prove", adv.ProveOptions(**BASE, quit_first=True))


async def _nothing(loop: asyncio.AbstractEventLoop, sock: socket.socket, wait: float = 0.05) -> bool:
    """Nothing arrives on `sock` within `wait` seconds."""
    try:
        await asyncio.wait_for(loop.sock_recv(sock, 4096), wait)
    except TimeoutError:
        return True
    return False


def test_a_prover_may_name_several_recipients_each_a_positive_reply_more() -> None:
    lines = adv.prove_commands(random.Random(0), 3)
    assert lines[0].startswith(b"EHLO") and lines[1].startswith(b"MAIL FROM:<") and lines[-1] == b"DATA\r\n"
    assert [x[:8] for x in lines[2:-1]] == [b"RCPT TO:"] * 3 and len(set(lines[2:-1])) == 3


def test_a_tls_slow_talker_says_starttls_then_loops_inside_tls(tmp_path: Path) -> None:
    """The tls-loopers' bot: EHLO and STARTTLS in the clear, then a real handshake, then EHLO again, MAIL and RCPT
    after RCPT, each inside TLS (the server here reads them only through its side of the handshake)."""
    cert, key = _self_signed(tmp_path)
    a, b = socket.socketpair()
    clear: list[bytes] = []
    inside: list[bytes] = []

    def server() -> None:
        b.settimeout(5)
        b.sendall(b"220 mx ESMTP\r\n")
        for reply in (b"250-mx\r\n250 STARTTLS\r\n", b"220 2.0.0 Ready to start TLS\r\n"):
            clear.append(b.recv(4096))
            b.sendall(reply)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        with ctx.wrap_socket(b, server_side=True) as t:
            for _ in range(4):
                inside.append(t.recv(4096))
                t.sendall(b"250 ok\r\n")

    thread = threading.Thread(target=server)
    thread.start()

    async def run() -> counters.Timeline:
        a.setblocking(False)
        tl = counters.Timeline(adv.ADV_FIELDS, time.monotonic(), 3)
        opts = adv.SlowtalkOptions(**BASE, pause=0.0, gap=0.05, starttls=True)
        # The server closes after four commands: the session ends with it.
        await asyncio.wait_for(adv.SESSIONS["slowtalk"](a, opts, random.Random(0), tl), 5)
        return tl

    tl = asyncio.run(run())
    thread.join(5)
    a.close()
    assert clear == [b"EHLO slowtalk.bots.lab.test\r\n", b"STARTTLS\r\n"]
    assert inside[0] == b"EHLO slowtalk.bots.lab.test\r\n" and inside[1].startswith(b"MAIL FROM:<slow")
    assert inside[2] == b"RCPT TO:<slow1@lab.test>\r\n" and inside[3] == b"RCPT TO:<slow2@lab.test>\r\n"
    assert tl.totals["commands"] >= 6


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days",
         "1", "-subj", "/CN=mx", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.parametrize(
    ("asked", "offered", "upgraded"), [(True, True, True), (False, True, False), (True, False, False)]
)
def test_a_legitimate_sender_takes_starttls_where_asked_and_offered(
    tmp_path: Path, asked: bool, offered: bool, upgraded: bool
) -> None:
    """The tls scenarios' senders: EHLO, STARTTLS and a real handshake, then EHLO again and the whole transaction
    inside TLS (the server here reads it only through its side of the handshake); without --starttls, or where the
    server does not offer it, all of it in the clear."""
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    clear: list[bytes] = []
    inside: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        said, tls = clear, False
        writer.write(b"220 mx ESMTP\r\n")
        while line := await reader.readline():
            said.append(line)
            if line.startswith(b"EHLO"):
                extra = b"250-STARTTLS\r\n" if offered and not tls else b""
                writer.write(b"250-mx\r\n" + extra + b"250 PIPELINING\r\n")
            elif line == b"STARTTLS\r\n":
                writer.write(b"220 2.0.0 Ready to start TLS\r\n")
                await writer.drain()
                await writer.start_tls(server_ctx)
                said, tls = inside, True
                continue
            elif line == b"DATA\r\n":
                writer.write(b"354 go ahead\r\n")
            elif line == b".\r\n":
                writer.write(b"250 2.0.0 queued\r\n")
            elif line == b"QUIT\r\n":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            elif line.startswith((b"MAIL", b"RCPT")):
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()

    async def run() -> dict[str, Any]:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        opts = options.TxnOptions(dst=("127.0.0.1",), duration=1, port=port, starttls=asked, cmd_timeout=5)
        async with server:
            return await smtp.Transactions("strangers", opts, time.monotonic()).one(1, "127.0.0.1", "127.0.0.1")

    ev = asyncio.run(run())
    assert ev["ok"], ev
    whole = inside if upgraded else clear  # the transaction, from the EHLO it offered STARTTLS in, or not
    assert whole[0] == b"EHLO relay.strangers.lab.test\r\n" and whole[-1] == b"QUIT\r\n"
    assert any(x.startswith(b"MAIL FROM:<") for x in whole) and b".\r\n" in whole
    if upgraded:
        assert clear == [b"EHLO relay.strangers.lab.test\r\n", b"STARTTLS\r\n"]
    else:
        assert inside == [] and b"STARTTLS\r\n" not in clear


def test_the_senders_take_starttls_from_the_command_line() -> None:
    for role in ("legit", "trusted", "strangers", "slowlegit"):
        on, off = parse(role, *MX, "--starttls"), parse(role, *MX)
        assert isinstance(on, options.TxnOptions) and isinstance(off, options.TxnOptions), role
        assert on.starttls and not off.starttls, role
