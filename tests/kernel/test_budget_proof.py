"""Issue 11's kernel mechanisms, with the real daemon in a namespace: the slot budget holds strangers to a number of
live connections during a wave while allowlisted and proven sources are not counted; proof comes from the MTA's
positive replies, never from the client's bytes; sessions that do not advance are cut (silent, dripping, babbling)
while a slow client that progresses keeps its session, and a stranger cut twice in a wave is blocked."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.kernel.daemon_harness import established, govern, nft_set, running, wait_for, write_config
from tests.netns import Lab, SmtpListener, connect, converse

MX4 = "203.0.113.25"
MX6 = "2001:db8:25::25"
DIALOGUE = (b"EHLO relay.example", b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@example.net>")


def attempt(src: str, dst: str = MX4, timeout: float = 2.5) -> socket.socket | None:
    """One connection that completes its handshake within `timeout`, or None (dropped by the budget). A first
    contact's first SYN is dropped in a wave: it gets in with its retransmission, a second later."""
    try:
        return connect(src, dst, 25, timeout=timeout)
    except OSError:
        return None


def alive(c: socket.socket | None) -> socket.socket | None:
    """A held connection that stays alive without data (TCP keepalive every 2 s): a slot of the budget lapses after
    a minute without a packet either way, and a run slowed by a busy machine can take longer than that."""
    if c is not None:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 2)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2)
    return c


def test_the_slot_budget_holds_strangers_and_never_counts_the_allowlisted_or_proven(lab: Lab, tmp_path: Path) -> None:
    srv = SmtpListener(lab.mx, 25)
    held: list[socket.socket] = []
    # No cuts, no shedding and a budget of 6 (4 for any stranger, 2 kept for first contacts): what is measured is
    # the budget. Shedding is not a cut and runs with cuts off: the second late newcomer below once got a slot in CI
    # on a loaded machine, most likely one a shed freed (a tick that saw the swarm's sessions over what the kernel
    # counted ends one silent since its greeting for `shed_after`); the daemon's log was gone with the run.
    cfg = write_config(
        tmp_path, '[wave]\nslot_budget = 6\n[cut]\nenabled = false\nshed_after = "60s"\nshed_single_after = "60s"\n'
    )
    swarm = [f"198.18.8.{i}" for i in range(1, 5)] + [f"2001:db8:bad:8::{i}" for i in range(1, 3)]
    knockers = [f"198.18.30.{i}" for i in range(1, 101)]
    try:
        with running(lab.mx, cfg) as d:
            assert d.status()["budget"] | {"basis": ""} == {
                "slots": 6,
                "newcomers": 2,
                "crowds": 0,
                "capacity": 4096,
                "basis": "",
                "before_wave": True,
            }
            assert d.status()["scanner"] == "BPF iterator"  # what the budget's figures below are read by
            with lab.net.entered():
                # A sender proves itself before the wave with a dialogue the MTA answered (4 positive replies).
                s = connect("198.51.100.7", MX4, 25)
                converse(s, *DIALOGUE)
                s.close()
                # The swarm knocks before the wave: the kernel has seen its sources.
                for src in swarm + knockers:
                    c = attempt(src, MX6 if ":" in src else MX4)
                    assert c is not None
                    c.close()
            assert wait_for(lambda: "198.51.100.7" in nft_set(lab.mx, "proven4"), timeout=5)
            assert d.status()["slots"]["in_budget"] == 0  # out of a wave the budget admits no one
            assert govern(lab.mx, "wave", "on", "--for", "2m", "--config", str(cfg)).returncode == 0
            with lab.net.entered():
                # Twelve connections of the swarm, over both families: four get in, whatever the family.
                tries = [alive(attempt(src, MX6 if ":" in src else MX4)) for src in swarm for _ in range(2)]
                got = [c for c in tries if c is not None]
                held += got
                assert len(got) == 4, len(got)
                # Forged SYNs (never sent again): from 40 new sources, each a single SYN. None takes a slot.
                for i in range(1, 41):
                    assert attempt(f"198.18.20.{i}", timeout=0.3) is None
                # A source never seen that opens two connections at once, as a swarm's source does, is a crowd: with
                # a lane of 2 no part of it is a crowd's (govern.nft.ruleset.first_contact_lanes), and the common
                # lane is full.
                pair = at_once("198.51.100.40")
                assert pair == [None, None], pair
                assert "198.51.100.40" in nft_set(lab.mx, "crowd4")
                assert not nft_set(lab.mx, "newslots")
                # Senders the host has never seen get the first contacts' lane, which the swarm cannot hold; in a
                # wave their first SYN is dropped, their second (a second later) admitted.
                t0 = time.monotonic()
                first = [alive(attempt("198.51.100.30")), alive(attempt("2001:db8:51::30", MX6))]
                assert all(first)
                assert 1.5 <= time.monotonic() - t0 < 4.0
                held += [c for c in first if c is not None]
                assert attempt("198.51.100.31") is None  # that lane is full too now
            # The kernel's own count of the budget, as the core reads it each tick: the swarm's 4 and the 2 first
            # contacts; nothing of the forged SYNs or of the refused.
            assert wait_for(lambda: d.status()["slots"].get("in_budget") == 6, timeout=5), d.status()["slots"]
            with lab.net.entered():
                # A flood of refused SYNs leaves nothing behind in the budget: 2,000 non-blocking connects from 100
                # sources the kernel has seen (each under the wave's rate limit; refused: the budget is full), then
                # one of the swarm's admitted connections leaves, and the next one of the swarm gets its slot.
                for i in range(2000):
                    src = knockers[i % 100]
                    f = socket.socket()
                    f.bind((src, 0))
                    f.setblocking(False)
                    with contextlib.suppress(BlockingIOError):
                        f.connect((MX4, 25))
                    f.close()
                got[0].close()
                time.sleep(0.3)
                again = alive(attempt(swarm[1]))
                assert again is not None
                held.append(again)
                # The allowlisted and the proven are not counted, and not held back.
                partner = [attempt("192.0.2.10") for _ in range(5)]
                proven = [attempt("198.51.100.7") for _ in range(5)]
                held += [c for c in partner + proven if c is not None]
                assert all(partner) and all(proven)
                # A newcomer that leaves frees its slot for the next one.
                assert first[0] is not None
                first[0].close()
                time.sleep(0.5)
                late = [alive(attempt("198.51.100.32")), alive(attempt("198.51.100.33"))]
                held += [c for c in late if c is not None]
                assert [c is not None for c in late] == [True, False]
            assert established(lab.mx, "198.18.") + established(lab.mx, "2001:db8:bad:") == 4
            # A reload with another budget makes the budget's sets again, with their new sizes.
            cfg.write_text(cfg.read_text().replace("slot_budget = 6", "slot_budget = 9"))
            assert d.proc is not None
            os.kill(d.proc.pid, signal.SIGHUP)
            assert wait_for(lambda: d.status()["budget"]["slots"] == 9, timeout=10)
            assert '"size": 6' in lab.mx.sh("nft", "-j", "list", "set", "inet", "govern", "slots")
            # Out of the wave, the budget is a cap, made again empty by the reload: four more get in at once.
            assert govern(lab.mx, "wave", "off", "--config", str(cfg)).returncode == 0
            with lab.net.entered():
                more = [attempt(f"198.18.10.{i}") for i in range(1, 5)]
                held += [c for c in more if c is not None]
                assert all(more)
    finally:
        for c in held:
            c.close()
        srv.close()


def test_before_a_wave_the_budget_caps_strangers_and_its_filling_calls_the_wave(lab: Lab, tmp_path: Path) -> None:
    srv = SmtpListener(lab.mx, 25)
    held: list[socket.socket] = []
    # A budget of 4 (3 for any stranger, 1 kept for first contacts in a wave), no cuts: what is measured is the cap.
    cfg = write_config(tmp_path, "[wave]\nslot_budget = 4\n[cut]\nenabled = false\n")
    try:
        with running(lab.mx, cfg) as d:
            with lab.net.entered():
                # Before any wave, strangers' connections take the budget's slots at once: no first SYN is dropped.
                t0 = time.monotonic()
                first = [alive(attempt(f"198.18.70.{i}")) for i in (1, 2, 3)]
                assert all(first) and time.monotonic() - t0 < 1.0
                held += [c for c in first if c is not None]
            assert wait_for(lambda: d.status()["slots"].get("in_budget") == 3, timeout=5), d.status()["slots"]
            time.sleep(1.5)  # a tick or two: three of four is pressure that calls no wave
            assert d.status()["mode"] == "normal"
            with lab.net.entered():
                fourth = alive(attempt("2001:db8:bad:70::1", MX6))  # IPv6 shares the budget
                assert fourth is not None
                held.append(fourth)
                # The budget is full: a stranger's next connection is dropped in the kernel, never queued.
                assert attempt("198.18.70.9", timeout=2.5) is None
                # The allowlisted are not counted, and not held back.
                partner = [attempt("192.0.2.70") for _ in range(3)]
                held += [c for c in partner if c is not None]
                assert all(partner)
            assert established(lab.mx, "198.18.70.") + established(lab.mx, "2001:db8:bad:70:") == 4
            # A full budget is pressure: it calls the wave, whose shedding is all that frees the budget's slots.
            assert wait_for(lambda: d.status()["mode"] == "wave", timeout=5), d.status()["mode"]
            assert "of their slot budget" in d.status()["mode_detail"]["reason"], d.status()["mode_detail"]
            # A stranger that leaves frees its slot for the next one.
            held[0].close()
            time.sleep(0.5)
            with lab.net.entered():
                nxt = alive(attempt("198.18.70.1"))
            assert nxt is not None
            held.append(nxt)
    finally:
        for c in held:
            c.close()
        srv.close()


def test_proof_is_the_mta_answering_a_dialogue_never_the_clients_bytes(lab: Lab, tmp_path: Path) -> None:
    srv = SmtpListener(lab.mx, 25)
    try:
        with running(lab.mx, write_config(tmp_path)), lab.net.entered():
            junk = connect("198.18.11.1", MX4, 25)
            junk.recv(100)
            junk.sendall(b"x" * 300)  # 300 bytes that never make a command: no reply at all
            lines = connect("198.18.11.2", MX4, 25)
            # Junk lines: each gets an error, never a positive reply.
            replies = converse(lines, b"GARBAGE " + b"y" * 90, b"MORE " + b"z" * 90, b"\x01\x02\x03" * 30)
            assert all(r.startswith(b"502") for r in replies[1:]), replies
            talker = connect("2001:db8:51::7", MX6, 25)
            converse(talker, *DIALOGUE, b"DATA")
            talker.sendall(b"Subject: hi\r\n\r\nbody\r\n.\r\n")
            assert talker.recv(100).startswith(b"250")
            assert wait_for(lambda: "2001:db8:51::" in nft_set(lab.mx, "proven6"), timeout=5)
            time.sleep(1)
            proven4 = nft_set(lab.mx, "proven4")
            assert "198.18.11.1" not in proven4 and "198.18.11.2" not in proven4, proven4
            for s in (junk, lines, talker):
                s.close()
    finally:
        srv.close()


def test_in_a_wave_a_crowd_is_proven_only_by_a_delivery_and_a_single_sender_by_its_dialogue(
    lab: Lab, tmp_path: Path
) -> None:
    # A swarm's bots can hold a spam bot's dialogue up to DATA as cheaply as silence: proof earned so in a wave would
    # let them past the budget and the gate (the lab's `provers`). A sender the host has never seen opens one
    # connection, and its next message must pass the budget once it delivered.
    srv = SmtpListener(lab.mx, 25)
    cfg = write_config(tmp_path, "[cut]\nenabled = false\n")
    held: list[socket.socket] = []
    try:
        with running(lab.mx, cfg), lab.net.entered():
            assert govern(lab.mx, "wave", "on", "--for", "2m", "--config", str(cfg)).returncode == 0
            pair = [c for c in at_once("198.51.100.50") if c is not None]  # two at once: a crowd
            held += pair
            assert pair and "198.51.100.50" in nft_set(lab.mx, "crowd4")
            converse(pair[0], *DIALOGUE, b"DATA")  # the banner and four positive answers, then 354: five
            single = attempt("198.51.100.51")
            assert single is not None
            held.append(single)
            converse(single, *DIALOGUE)  # four
            assert wait_for(lambda: "198.51.100.51" in nft_set(lab.mx, "proven4"), timeout=5)
            assert "198.51.100.50" not in nft_set(lab.mx, "proven4")
            # The crowd delivers its message: the sixth positive reply proves it, in the wave, but into the pending
            # set; the daemon moves it to the proven set, which passes the gate and the budget, after a probation
            # in which it was not cut (govern.proving.PROBATION, 8 s; a read every 2 s in a wave). It holds one
            # session by then: seen holding several, it would stay on probation until the wave is over (below).
            for c in pair[1:]:
                c.close()
            pair[0].sendall(b"Subject: hi\r\n\r\nbody\r\n.\r\n")
            assert pair[0].recv(100).startswith(b"250")
            assert wait_for(lambda: "198.51.100.50" in nft_set(lab.mx, "provenc4"), timeout=5)
            proved = time.monotonic()
            assert "198.51.100.50" not in nft_set(lab.mx, "proven4")
            assert wait_for(lambda: "198.51.100.50" in nft_set(lab.mx, "proven4"), timeout=15)
            assert time.monotonic() - proved >= 5, "promoted before its probation"
            assert "198.51.100.50" not in nft_set(lab.mx, "provenc4")
            # A source proven in the wave and then seen holding several sessions at once is recalled until the
            # pressure is over (govern.proving.recall): out of the proven set, and held off from the kernel's own
            # count, so its next dialogue proves nothing meanwhile.
            second = attempt("198.51.100.51")  # still proven: past the budget
            assert second is not None
            held.append(second)
            assert wait_for(lambda: "198.51.100.51" not in nft_set(lab.mx, "proven4"), timeout=6)
            assert "198.51.100.51" in nft_set(lab.mx, "unproven4")
            converse(second, *DIALOGUE)
            time.sleep(1)
            assert "198.51.100.51" not in nft_set(lab.mx, "proven4")
            assert govern(lab.mx, "wave", "off", "--config", str(cfg)).returncode == 0
            assert wait_for(lambda: "198.51.100.51" in nft_set(lab.mx, "proven4"), timeout=6)
    finally:
        for c in held:
            c.close()
        srv.close()


@contextlib.contextmanager
def clients(stop: threading.Event, *bodies: object) -> Iterator[list[threading.Thread]]:
    threads = [threading.Thread(target=b, daemon=True) for b in bodies if callable(b)]
    for t in threads:
        t.start()
    try:
        yield threads
    finally:
        stop.set()
        for t in threads:
            t.join(10)


def test_sessions_without_progress_are_cut_and_a_slow_progressing_client_keeps_its_own(
    lab: Lab, tmp_path: Path
) -> None:
    srv = SmtpListener(lab.mx, 25)
    cfg = write_config(tmp_path)
    stop = threading.Event()
    fates: dict[str, str] = {}

    def fate(name: str, s: socket.socket, act: object) -> None:
        try:
            while not stop.is_set():
                assert callable(act)
                act()
            # Whether the server ended the session while the bot waited.
            s.settimeout(0.05)
            try:
                fates[name] = "cut (closed)" if s.recv(100) == b"" else "kept"
            except TimeoutError:
                fates[name] = "kept"
        except OSError as exc:
            fates[name] = f"cut ({exc.__class__.__name__})"
        finally:
            s.close()

    def bot(name: str, src: str, step: bytes, every: float) -> object:
        with lab.net.entered():
            s = connect(src, MX4, 25)
        s.settimeout(30)
        s.recv(100)

        def act() -> None:
            s.sendall(step)
            if stop.wait(every):
                return
            s.settimeout(0.01)
            with contextlib.suppress(TimeoutError):
                if s.recv(100) == b"":
                    raise ConnectionResetError("closed")

        return lambda: fate(name, s, act)

    def slow() -> None:
        # A slow, patient MTA: 1.5 s before each command, every one answered.
        with lab.net.entered():
            s = connect("198.51.100.20", MX4, 25)
        try:
            converse(s, b"EHLO slow.example", b"MAIL FROM:<a@slow.example>", pause=1.5)
            while not stop.wait(1.5):
                s.sendall(b"NOOP\r\n")
                if not s.recv(100):
                    raise ConnectionResetError("closed")
            fates["slow"] = "kept"
        except OSError as exc:
            fates["slow"] = f"cut ({exc.__class__.__name__})"
        finally:
            s.close()

    try:
        with running(lab.mx, cfg) as d:
            assert govern(lab.mx, "wave", "on", "--for", "2m", "--config", str(cfg)).returncode == 0
            with (
                lab.net.entered(),
                clients(
                    stop,
                    bot("drip", "198.18.12.1", b"E", 0.5),  # a byte every half second, never a line
                    bot("babble", "198.18.12.2", b"q" * 300, 30),  # 300 bytes of no command, then waits
                    bot("silent", "198.18.12.3", b"", 0.5),
                    slow,
                ),
            ):
                assert wait_for(lambda: established(lab.mx, "198.18.12.") == 0, timeout=15)
                time.sleep(3)
                assert established(lab.mx, "198.51.100.20") == 1
            st = d.status()
            assert st["cut_sessions"] >= 3
            for name in ("drip", "babble", "silent"):
                assert fates.get(name, "").startswith("cut"), fates
            assert fates.get("slow") == "kept", fates
            assert "198.51.100.20" not in nft_set(lab.mx, "tight4") | nft_set(lab.mx, "block4")
            # Each bot's source is throttled at the wave's rate; one that comes back and stalls again is blocked.
            assert {"198.18.12.1", "198.18.12.2", "198.18.12.3"} <= nft_set(lab.mx, "tight4")
            with lab.net.entered():
                again = connect("198.18.12.3", MX4, 25)
                again.recv(100)
            assert wait_for(lambda: "198.18.12.3" in nft_set(lab.mx, "block4"), timeout=10)
            again.close()
    finally:
        stop.set()
        srv.close()


def listening(lab: Lab) -> socket.socket:
    """A bare listener on port 25 in the MX namespace (both families), for a test to accept from as it pleases."""
    with lab.mx.entered():
        mta = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        mta.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        mta.bind(("::", 25))
        mta.listen(64)
    return mta


def at_once(src: str, n: int = 2, gap: float = 0.05) -> list[socket.socket | None]:
    """`n` connections from `src` opened together, as a program opens them (each a few ms after the other), or
    `gap` seconds apart."""
    with ThreadPoolExecutor(n) as pool:
        opened = []
        for _ in range(n):
            opened.append(pool.submit(attempt, src))
            time.sleep(gap)
        return [f.result() for f in opened]


def test_only_connections_at_once_make_a_never_seen_source_a_crowd(lab: Lab, tmp_path: Path) -> None:
    """A swarm's source opens its sessions together; a sender the host has never seen that sends its next message
    while its first contact is still pending (its first SYN dropped, the retransmission a second later) is not a
    crowd, and both its connections get through."""
    srv = SmtpListener(lab.mx, 25)
    held: list[socket.socket] = []
    cfg = write_config(tmp_path, "[wave]\nslot_budget = 9\n[cut]\nenabled = false\n")
    try:
        with running(lab.mx, cfg):
            assert govern(lab.mx, "wave", "on", "--for", "2m", "--config", str(cfg)).returncode == 0
            with lab.net.entered():
                later = at_once("198.51.100.70", gap=0.7)  # the second 0.7 s on: the first still pending
                together = at_once("198.51.100.71")
            held += [c for c in later + together if c is not None]
            assert all(later), later
            crowds = nft_set(lab.mx, "crowd4")
            assert "198.51.100.70" not in crowds and "198.51.100.71" in crowds, crowds
    finally:
        for c in held:
            c.close()
        srv.close()


def test_a_crowds_first_contacts_take_only_their_part_of_the_first_contacts_lane(lab: Lab, tmp_path: Path) -> None:
    srv = SmtpListener(lab.mx, 25)
    held: list[socket.socket] = []
    # A budget of 9: 6 for any stranger, 3 kept for first contacts (2 for a source's only connection, 1 for a
    # crowd's); no cuts, so what is measured is the budget.
    cfg = write_config(tmp_path, "[wave]\nslot_budget = 9\n[cut]\nenabled = false\n")
    swarm = [f"198.18.9.{i}" for i in range(1, 7)]
    try:
        with running(lab.mx, cfg) as d:
            assert d.status()["budget"]["newcomers"] == 3
            with lab.net.entered():
                for src in swarm:  # the kernel has seen them before the wave
                    c = attempt(src)
                    assert c is not None
                    c.close()
            assert govern(lab.mx, "wave", "on", "--for", "2m", "--config", str(cfg)).returncode == 0
            with lab.net.entered():
                common = [alive(attempt(src)) for src in swarm]  # the common lane, full
                held += [c for c in common if c is not None]
                assert all(common)
                # A never-seen source opening two connections at once is a crowd: one of them takes the crowds'
                # slot; a second crowd finds it taken.
                pair = at_once("198.51.100.50")
                held += [c for c in pair if c is not None]
                assert sum(c is not None for c in pair) == 1, pair
                assert {"198.51.100.50"} <= nft_set(lab.mx, "crowd4")
                assert len(nft_set(lab.mx, "crowdslots")) == 1
                assert at_once("198.51.100.51") == [None, None]
                # Sources opening one connection each take their own part, which no crowd took.
                lone = [alive(attempt("198.51.100.60")), alive(attempt("198.51.100.61"))]
                held += [c for c in lone if c is not None]
                assert all(lone) and len(nft_set(lab.mx, "newslots")) == 2
                assert attempt("198.51.100.62") is None  # every part of the lane full
                # The crowd's connection ends: the next single source's first contact takes the crowds' slot.
                crowd = next(c for c in pair if c is not None)
                held.remove(crowd)
                crowd.close()
                time.sleep(0.3)
                late = alive(attempt("198.51.100.63"))
                assert late is not None
                held.append(late)
                assert "198.51.100.63" not in nft_set(lab.mx, "crowd4")
            assert wait_for(lambda: d.status()["slots"].get("in_budget") == 9, timeout=5), d.status()["slots"]
    finally:
        for c in held:
            c.close()
        srv.close()


def test_a_wave_counts_the_connections_strangers_opened_before_it_against_the_common_lane(
    lab: Lab, tmp_path: Path
) -> None:
    srv = SmtpListener(lab.mx, 25)
    stop = threading.Event()
    early: list[socket.socket] = []
    # A budget of 4 (3 for any stranger, 1 kept for first contacts), no cuts; the early sessions keep talking, so
    # nothing sheds them (no loop shedding either: their NOOPs would be a loop's after six, or after ten seconds):
    # what is measured is what the budget admits while they hold the MTA.
    # No cap before the wave (wave.budget_before_wave), as where govern starts during a flood: strangers hold
    # more than the budget when the wave starts.
    cfg = write_config(
        tmp_path,
        "[wave]\nslot_budget = 4\nbudget_before_wave = false\n"
        "[cut]\nenabled = false\nloop_replies = 0\nloop_after = 0\n",
    )
    try:
        with running(lab.mx, cfg) as d:
            with lab.net.entered():
                early = [connect(f"198.18.61.{i}", MX4, 25) for i in range(1, 4)]  # three strangers, before the wave
                early += [connect("192.0.2.61", MX4, 25) for _ in range(2)]  # allowlisted: never counted
                connect("198.18.62.1", MX4, 25).close()  # a stranger the kernel has seen: not a first contact
            for c in early:
                c.settimeout(5)
                assert c.recv(100).startswith(b"220")
                threading.Thread(target=keep_talking, args=(c, stop), daemon=True).start()
            assert govern(lab.mx, "wave", "on", "--for", "2m", "--config", str(cfg)).returncode == 0
            # The strangers' next segments with data take the common lane's slots: all three; the allowlisted none.
            assert wait_for(lambda: len(nft_set(lab.mx, "slots")) == 3, timeout=5), d.status()["slots"]
            assert wait_for(lambda: d.status()["slots"].get("in_budget") == 3, timeout=5), d.status()["slots"]
            with lab.net.entered():
                assert attempt("198.18.62.1") is None  # no room in the common lane while the early ones hold it
                first = attempt("198.51.100.62")  # a first contact: its lane was kept for it
            assert first is not None
            first.close()
            # Two early sessions end: their slots free and stay free (the last ACKs of the closes carry no data
            # and take no slot again), and the stranger turned away before gets in.
            for c in early[:2]:
                c.close()
            assert wait_for(lambda: len(nft_set(lab.mx, "slots")) == 1, timeout=5), nft_set(lab.mx, "slots")
            time.sleep(1.2)
            assert len(nft_set(lab.mx, "slots")) == 1 and not nft_set(lab.mx, "newslots")
            with lab.net.entered():
                late = attempt("198.18.62.1")
            assert late is not None
            late.close()
    finally:
        stop.set()
        for c in early:
            c.close()
        srv.close()


def answer_lines(conn: socket.socket, stop: threading.Event) -> None:
    """A stand-in smtpd's dialogue: "250" to whatever the client sends, until it closes or `stop`."""
    conn.settimeout(0.2)
    with contextlib.suppress(OSError):
        while not stop.is_set():
            try:
                if not conn.recv(100):
                    return
            except TimeoutError:
                continue
            conn.sendall(b"250 2.0.0 Ok\r\n")


def greeted(lab: Lab, mta: socket.socket, src: str) -> list[socket.socket]:
    """A connection from `src` that the stand-in MTA accepts and greets: [client end, server end]."""
    with lab.net.entered():
        client = connect(src, MX4, 25)
    conn, _ = mta.accept()
    conn.sendall(b"220 mx.test ESMTP\r\n")
    client.recv(100)
    return [client, conn]


def talk_while(s: socket.socket, waiting: Callable[[], bool], until: float) -> None:
    """A client whose session advances (a NOOP every 0.5 s, each answered) while `waiting` holds, up to `until`."""
    while waiting() and time.monotonic() < until:
        s.sendall(b"NOOP\r\n")
        assert s.recv(100).startswith(b"250")
        time.sleep(0.5)


def keep_talking(s: socket.socket, stop: threading.Event) -> None:
    """A client whose session advances: a NOOP every 0.3 s, each answered, until `stop` or the session ends."""
    with contextlib.suppress(OSError):
        while not stop.wait(0.3):
            s.sendall(b"NOOP\r\n")
            s.recv(100)


def keep_babbling(s: socket.socket, stop: threading.Event) -> None:
    """A client that keeps its session busy with lines the server refuses (502): data both ways, never a proof."""
    with contextlib.suppress(OSError):
        while not stop.wait(0.1):
            s.sendall(b"XYZZY\r\n")
            s.recv(100)


def test_a_sender_whose_only_connection_knocked_just_before_the_wave_is_still_a_first_contact(
    lab: Lab, tmp_path: Path
) -> None:
    srv = SmtpListener(lab.mx, 25, backlog=1)
    stop = threading.Event()
    held: list[socket.socket] = []
    # A budget of 5 (3 for any stranger, 2 kept for first contacts), no cuts. Three strangers' sessions from before
    # the wave fill the common lane once it begins; the MTA's accept queue is full when two more knock. No loop
    # shedding either: the babblers' refused lines, each answered, are a loop's (docs/wave.md), and they must hold.
    # No cap before the wave (wave.budget_before_wave), as where govern starts during a flood: with it, the two
    # knocks may take the budget's last two slots before the wave, as connections it admitted, and a retransmission
    # of theirs then passes in the wave (the stranger's got in, once in two CI runs).
    cfg = write_config(
        tmp_path,
        "[wave]\nslot_budget = 5\nbudget_before_wave = false\n"
        "[cut]\nenabled = false\nloop_replies = 0\nloop_after = 0\n",
    )
    try:
        with running(lab.mx, cfg) as d:
            assert d.status()["budget"]["newcomers"] == 2
            with lab.net.entered():
                held += [connect(f"198.18.74.{i}", MX4, 25) for i in range(1, 4)]
                connect("198.18.73.1", MX4, 25).close()  # a stranger's connection the kernel counted before
            for c in held:
                c.settimeout(5)
                assert c.recv(100).startswith(b"220")
                threading.Thread(target=keep_babbling, args=(c, stop), daemon=True).start()
            srv.accepting.clear()
            time.sleep(0.5)
            with lab.net.entered():
                held += [connect("192.0.2.74", MX4, 25) for _ in range(2)]  # the accept queue (of 2) is full
            t0 = time.monotonic()
            with ThreadPoolExecutor(2) as pool:
                # A sender's only connection, and the stranger's second: the kernel counts both SYNs and the full
                # queue drops them. They retransmit at 1, 3, 7 and 15 s.
                with lab.net.entered():  # the pool's threads are made in the client's namespace
                    sender = pool.submit(attempt, "198.51.100.74", timeout=18)
                    other = pool.submit(attempt, "198.18.73.1", timeout=18)
                assert wait_for(lambda: {"198.51.100.74", "198.18.73.1"} <= nft_set(lab.mx, "seen4"), timeout=1)
                assert nft_set(lab.mx, "twice4") & {"198.51.100.74", "198.18.73.1"} == {"198.18.73.1"}
                # The wave begins between the retransmissions at 3 and 7 s, and the babblers' next segments take
                # the common lane's three slots; then the MTA accepts again.
                time.sleep(max(0.0, t0 + 3.3 - time.monotonic()))
                assert govern(lab.mx, "wave", "on", "--for", "2m", "--config", str(cfg)).returncode == 0
                assert wait_for(lambda: len(nft_set(lab.mx, "slots")) == 3, timeout=2), d.status()["slots"]
                assert time.monotonic() - t0 < 6.5, "the wave began too late for the retransmission at 7 s"
                srv.accepting.set()
                got, refused = sender.result(), other.result()
            # The sender's retransmission took the first contacts' lane; the stranger, whose earlier connection the
            # kernel counted, waited for the common lane the babblers hold: timed out at connect.
            assert got is not None
            held.append(got)
            assert refused is None
            assert len(nft_set(lab.mx, "newslots")) == 1
    finally:
        stop.set()
        for c in held:
            c.close()
        srv.close()


def test_a_wave_sheds_what_a_flood_holds_beyond_the_budget_and_spares_single_senders_and_talkers(
    lab: Lab, tmp_path: Path
) -> None:
    # An MTA whose processes are all busy: it takes two connections and no other, so the rest wait in its accept
    # queue, as a flood leaves them when the wave starts. It answers each line of the first.
    mta = listening(lab)
    mta.settimeout(5)
    # No loop shedding: the talker's NOOPs, each answered, are a loop's after six (docs/wave.md, "Sessions that loop
    # without a message"; tests/kernel/test_sockdiag.py); this is about the shedding of what does not advance.
    # No cap before the wave (wave.budget_before_wave), as where govern starts during a flood: strangers hold
    # more than the budget when the wave starts.
    cfg = write_config(
        tmp_path,
        "[wave]\nslot_budget = 4\nbudget_before_wave = false\n"
        "[cut]\nenabled = false\nloop_replies = 0\nloop_after = 0\n",
    )
    held: list[socket.socket] = []
    stop = threading.Event()

    try:
        with running(lab.mx, cfg) as d:
            for src in ("198.18.40.1", "198.18.40.2"):
                held += greeted(lab, mta, src)
            threading.Thread(target=answer_lines, args=(held[1], stop), daemon=True).start()
            # .1 talks; .2 stays silent
            threading.Thread(target=keep_talking, args=(held[0], stop), daemon=True).start()
            with lab.net.entered():
                held += [connect(f"198.18.40.{i}", MX4, 25) for i in (1, 2, 3) for _ in range(3)]
                held.append(connect("198.51.100.40", MX4, 25))  # a sender the host has never seen: one session
                held += [connect("192.0.2.10", MX4, 25) for _ in range(3)]  # allowlisted
            assert established(lab.mx, "198.18.40.") == 11
            time.sleep(1.5)  # .2's greeted session is silent, and will be for `cut.shed_after` (2 s) soon
            assert govern(lab.mx, "wave", "on", "--for", "2m", "--config", str(cfg)).returncode == 0
            # Strangers hold 12 sessions against a budget of 4: those not advancing of the sources holding the
            # most go (.1's three queued, .2's four; the next tick, still over, .3's three). .1's talker stays.
            assert wait_for(lambda: established(lab.mx, "198.18.40.") == 1, timeout=10)
            time.sleep(2.5)
            assert established(lab.mx, "198.18.40.1") == 1
            assert established(lab.mx, "198.18.40.") == 1
            assert established(lab.mx, "198.51.100.40") == 1
            assert established(lab.mx, "192.0.2.10") == 3
            assert d.status()["cut_sessions"] == 10
            # Shedding judges nothing the sources did: none is throttled or blocked for it.
            punished = nft_set(lab.mx, "tight4") | nft_set(lab.mx, "throttle4") | nft_set(lab.mx, "block4")
            assert not {s for s in punished if s.startswith("198.18.40.")}, punished
            why = json.loads(govern(lab.mx, "why", "198.18.40.2", "--json", "--config", str(cfg)).stdout)
            assert "shed" in {a["rule"] for a in why["advice"]}, why["advice"]
    finally:
        stop.set()
        for c in held:
            c.close()
        mta.close()


def pregreet_mta(lab: Lab, stop: threading.Event, conns: list[socket.socket], wait: float = 3.0) -> socket.socket:
    """A stand-in for postscreen in front of smtpd: "220-" at once, the real "220 " banner after the pregreet
    `wait`, then "250" to every line; each accepted connection goes into `conns`, until `stop`."""
    mta = listening(lab)
    mta.settimeout(0.2)

    def serve(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(b"220-mx.test ESMTP\r\n")
            if stop.wait(wait):
                return
            conn.sendall(b"220 mx.test ESMTP\r\n")
            answer_lines(conn, stop)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = mta.accept()
            except (TimeoutError, OSError):
                continue
            conns.append(conn)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return mta


def test_behind_a_pregreet_no_one_is_cut_for_waiting_and_a_silent_client_goes_after_the_real_banner(
    lab: Lab, tmp_path: Path
) -> None:
    stop = threading.Event()
    conns: list[socket.socket] = []
    mta = pregreet_mta(lab, stop, conns)
    # The pregreet wait is 3 s (the floor: 4 s); the wave's cut 2 s, so a floor that did not hold would show.
    cfg = write_config(tmp_path, '[cut]\ngreet_wait = "3s"\nwave_idle_after = "2s"\n')
    try:
        with running(lab.mx, cfg):
            assert govern(lab.mx, "wave", "on", "--for", "2m", "--config", str(cfg)).returncode == 0
            with lab.net.entered():
                silent = attempt("198.18.50.1")
                t_silent = time.monotonic()  # its "220-" went out as it connected
                patient = attempt("198.51.100.50")
            assert silent is not None and patient is not None
            t0 = time.monotonic()
            patient.settimeout(10)
            assert patient.recv(100).startswith(b"220-")  # a good client waits out the pregreet, silent
            # Through the pregreet wait nobody is cut, though both are silent past the wave's 2 s.
            while time.monotonic() - t0 < 2.9:
                assert established(lab.mx, "198.18.50.1") == 1
                assert established(lab.mx, "198.51.100.50") == 1
                time.sleep(0.3)
            assert patient.recv(100).startswith(b"220 ")
            for line in (b"EHLO patient.example\r\n", b"MAIL FROM:<a@patient.example>\r\n"):
                patient.sendall(line)
                assert patient.recv(100).startswith(b"250")
            # After the real banner, the silent one has the wave's 2 s: it goes; the patient client, talking, stays.
            talk_while(patient, lambda: established(lab.mx, "198.18.50.1") > 0, until=t0 + 10)
            assert established(lab.mx, "198.18.50.1") == 0
            assert time.monotonic() - t_silent >= 4.5  # the 3 s wait, then the wave's 2 s after the real banner
            assert established(lab.mx, "198.51.100.50") == 1
            patient.close()
            silent.close()
    finally:
        stop.set()
        for c in conns:
            c.close()
        mta.close()


@pytest.mark.parametrize("pregreet", ["cut", "wait"])
def test_behind_an_enforced_pregreet_a_client_that_talks_during_the_wait_is_cut_without_waiting_it_out(
    lab: Lab, tmp_path: Path, pregreet: str
) -> None:
    stop = threading.Event()
    conns: list[socket.socket] = []
    mta = pregreet_mta(lab, stop, conns)
    # The pregreet wait is 3 s (the floor: 4 s), the wave's cut 2 s. With "cut" (what "auto" resolves to where
    # postscreen enforces its test) the talker goes after the wave's 2 s; with "wait", not before the floor. (Silent
    # and patient clients behind the same wait: the test above.)
    cfg = write_config(tmp_path, f'[cut]\ngreet_wait = "3s"\nwave_idle_after = "2s"\npregreet = "{pregreet}"\n')
    try:
        with running(lab.mx, cfg) as d:
            assert govern(lab.mx, "wave", "on", "--for", "2m", "--config", str(cfg)).returncode == 0
            with lab.net.entered():
                talker = attempt("198.18.51.1")
            t0 = time.monotonic()  # its "220-" went out as it connected
            assert talker is not None
            talker.settimeout(10)
            assert talker.recv(100).startswith(b"220-")
            talker.sendall(b"x" * 300)  # a babbler: bytes that never make a command, before the real banner
            if pregreet == "cut":
                assert wait_for(lambda: established(lab.mx, "198.18.51.1") == 0, timeout=3.6)
                assert 2.0 <= time.monotonic() - t0 < 3.8  # the wave's 2 s, before the floor (4 s) would allow it
                assert d.status()["pregreet_cut"] is True
            else:
                while time.monotonic() - t0 < 3.6:
                    assert established(lab.mx, "198.18.51.1") == 1
                    time.sleep(0.2)
                assert d.status()["pregreet_cut"] is False
            talker.close()
    finally:
        stop.set()
        for c in conns:
            c.close()
        mta.close()


def test_single_sessions_are_shed_only_when_silent_after_the_greeting_and_only_they_are_events(
    lab: Lab, tmp_path: Path
) -> None:
    mta = listening(lab)
    mta.settimeout(5)
    # No loop shedding: the talker's NOOPs would be a loop's after six (as above).
    # No cap before the wave (wave.budget_before_wave), as where govern starts during a flood: strangers hold
    # more than the budget when the wave starts.
    cfg = write_config(
        tmp_path,
        "[wave]\nslot_budget = 1\nbudget_before_wave = false\n"
        "[cut]\nenabled = false\nloop_replies = 0\nloop_after = 0\n",
    )
    held: list[socket.socket] = []
    stop = threading.Event()

    try:
        with running(lab.mx, cfg) as d:
            # Four single sessions the MTA greets (one talks, two stay silent, one pauses after its EHLO was
            # answered, as a slow MTA does between commands), one single session left queued.
            for src in ("198.18.41.1", "198.18.41.2", "198.18.41.3", "198.18.41.5"):
                held += greeted(lab, mta, src)
                threading.Thread(target=answer_lines, args=(held[-1], stop), daemon=True).start()
            threading.Thread(target=keep_talking, args=(held[0], stop), daemon=True).start()
            held[6].sendall(b"EHLO slow.example\r\n")
            assert held[6].recv(100).startswith(b"250")
            with lab.net.entered():
                held.append(connect("198.18.41.4", MX4, 25))
            time.sleep(1.5)
            assert govern(lab.mx, "wave", "on", "--for", "2m", "--config", str(cfg)).returncode == 0
            # 5 sessions, a budget of 1, no source holding two: every single one is asked; those silent since the
            # greeting go.
            assert wait_for(lambda: established(lab.mx, "198.18.41.") == 3, timeout=10)
            time.sleep(2.5)
            assert established(lab.mx, "198.18.41.1") == 1  # it talks
            assert established(lab.mx, "198.18.41.4") == 1  # it waits in the queue for its greeting
            assert established(lab.mx, "198.18.41.5") == 1  # past the greeting: left to the cuts (off here)
            assert d.status()["cut_sessions"] == 2
            for src, shed in (("198.18.41.1", False), ("198.18.41.2", True), ("198.18.41.4", False)):
                why = json.loads(govern(lab.mx, "why", src, "--json", "--config", str(cfg)).stdout)
                assert ("shed" in {a["rule"] for a in why["advice"]}) is shed, (src, why["advice"])
    finally:
        stop.set()
        for c in held:
            c.close()
        mta.close()


def test_behind_a_pregreet_a_wave_over_its_budget_sheds_who_never_spoke_after_the_real_banner(
    lab: Lab, tmp_path: Path
) -> None:
    # Behind postscreen the greeting is two segments: "220-", then the real banner after the pregreet wait. A client
    # silent after both has not got past the greeting, and is shed as one silent after a plain banner would be.
    stop = threading.Event()
    conns: list[socket.socket] = []
    mta = pregreet_mta(lab, stop, conns)
    # No cuts: only shedding can end a session here. The floor is the pregreet wait (3 s) plus 1 s.
    # No cap before the wave (wave.budget_before_wave), as where govern starts during a flood: strangers hold
    # more than the budget when the wave starts.
    cfg = write_config(
        tmp_path, '[wave]\nslot_budget = 2\nbudget_before_wave = false\n[cut]\nenabled = false\ngreet_wait = "3s"\n'
    )
    held: list[socket.socket] = []
    try:
        with running(lab.mx, cfg):
            with lab.net.entered():
                held += [connect("198.18.60.1", MX4, 25) for _ in range(3)]
                patient = connect("198.51.100.60", MX4, 25)
            t0 = time.monotonic()
            # Strangers hold 4 sessions against a budget of 2, during a wave.
            assert govern(lab.mx, "wave", "on", "--for", "2m", "--config", str(cfg)).returncode == 0
            patient.settimeout(10)
            assert patient.recv(100).startswith(b"220-")
            while time.monotonic() - t0 < 2.9:  # the pregreet wait: nobody is shed for it
                assert established(lab.mx, "198.18.60.1") == 3
                time.sleep(0.3)
            assert patient.recv(100).startswith(b"220 ")
            patient.sendall(b"EHLO patient.example\r\n")
            assert patient.recv(100).startswith(b"250")
            talk_while(patient, lambda: established(lab.mx, "198.18.60.1") > 0, until=t0 + 10)
            # The silent three went `cut.shed_after` (1 s) after the real banner (3 s); the client that spoke stays.
            assert established(lab.mx, "198.18.60.1") == 0
            assert time.monotonic() - t0 >= 3.9
            assert established(lab.mx, "198.51.100.60") == 1
            patient.close()
    finally:
        stop.set()
        for c in held + conns:
            c.close()
        mta.close()


def test_a_wave_over_its_budget_sheds_a_session_that_loops_and_spares_a_sender_in_its_message(
    lab: Lab, tmp_path: Path
) -> None:
    # The lab's lone-loopers: one session a source, advancing (each command answered), never a message. Shedding
    # of silence spares it and no cut takes it; the loop's question does, after cut.loop_replies (6) replies. A
    # sender that pipelined to its message and is sending it (no reply until its end) stays.
    srv = SmtpListener(lab.mx, 25)
    # No cap before the wave (wave.budget_before_wave), as where govern starts during a flood: strangers hold
    # more than the budget when the wave starts.
    cfg = write_config(tmp_path, "[wave]\nslot_budget = 1\nbudget_before_wave = false\n[cut]\nenabled = false\n")
    stop = threading.Event()
    held: list[socket.socket] = []
    try:
        with running(lab.mx, cfg):
            with lab.net.entered():
                looper = connect("198.18.43.1", MX4, 25)
                sender = connect("198.51.100.43", MX4, 25)
            held += [looper, sender]
            converse(sender, b"EHLO sender.example", b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@lab.test>\r\nDATA")
            looper.settimeout(5)
            assert looper.recv(100).startswith(b"220")
            assert govern(lab.mx, "wave", "on", "--for", "2m", "--config", str(cfg)).returncode == 0

            def body() -> None:
                with contextlib.suppress(OSError):
                    while not stop.wait(0.3):
                        sender.sendall(b"X-Line: part of a message body, long enough to be one\r\n")

            threading.Thread(target=body, daemon=True).start()
            t0, replies = time.monotonic(), 0
            with contextlib.suppress(OSError):
                for k in range(40):  # a recipient every 0.3 s, each answered
                    looper.sendall(b"EHLO l.example\r\n" if k == 0 else f"RCPT TO:<r{k}@lab.test>\r\n".encode())
                    if not looper.recv(100):
                        break
                    replies += 1
                    time.sleep(0.3)
            # Shed once six were answered (and a tick), long before its forty: the sender stays, in no govern set.
            assert 6 <= replies < 20, replies
            assert time.monotonic() - t0 < 8
            assert established(lab.mx, "198.18.43.1") == 0
            assert established(lab.mx, "198.51.100.43") == 1
            punished = nft_set(lab.mx, "tight4") | nft_set(lab.mx, "throttle4") | nft_set(lab.mx, "block4")
            assert not punished & {"198.18.43.1", "198.51.100.43"}, punished
            why = json.loads(govern(lab.mx, "why", "198.18.43.1", "--json", "--config", str(cfg)).stdout)
            # A stranger's shed, or, if the daemon read the kernel's proof of it first (four positive replies: a
            # race with the sixth), the shed of a loop proven in the wave (the next test makes that one sure).
            loop = [a["text"] for a in why["advice"] if a["rule"] == "shed"]
            assert loop and "kept us answering commands" in loop[0] and "with no message" in loop[0], why["advice"]
    finally:
        stop.set()
        for c in held:
            c.close()
        srv.close()


def test_a_loop_proven_by_the_kernels_count_of_replies_in_a_wave_is_shed_and_loses_its_proof(
    lab: Lab, tmp_path: Path
) -> None:
    # Where govern follows no MTA log, the kernel proves a source by its server's positive replies: the banner and
    # three answers. A looper whose recipients are accepted has them in its first second; trusted, it passed the
    # budget and held its slot for the whole wave. Proven in the wave, its loop is asked the loop's questions all
    # the same (cut.loop_replies: 6), and the shed takes its proof.
    srv = SmtpListener(lab.mx, 25)
    cfg = write_config(tmp_path, "[wave]\nslot_budget = 1\n[cut]\nenabled = false\n")
    held: list[socket.socket] = []
    try:
        with running(lab.mx, cfg) as d:
            assert govern(lab.mx, "wave", "on", "--for", "2m", "--config", str(cfg)).returncode == 0
            with lab.net.entered():
                looper = connect("198.18.43.1", MX4, 25)  # in the wave: it takes the budget's one slot
            held.append(looper)
            looper.settimeout(5)
            assert looper.recv(100).startswith(b"220")
            commands = iter([b"EHLO l.example\r\n", *(f"RCPT TO:<r{k}@lab.test>\r\n".encode() for k in range(40))])
            replies = 0

            def say() -> bool:
                nonlocal replies
                looper.sendall(next(commands))
                if not looper.recv(100):
                    return False
                replies += 1
                return True

            for _ in range(3):  # EHLO and two recipients: with the banner, the kernel's proof
                assert say()
            assert wait_for(lambda: "198.18.43.1" in nft_set(lab.mx, "proven4"), timeout=5)
            assert wait_for(lambda: d.status()["trust"]["trusted"] >= 1, timeout=5), d.status()["trust"]
            with contextlib.suppress(OSError):
                while replies < 40 and say():
                    time.sleep(0.3)
            assert 6 <= replies < 15, replies
            assert established(lab.mx, "198.18.43.1") == 0
            assert wait_for(lambda: "198.18.43.1" not in nft_set(lab.mx, "proven4"), timeout=5)
            assert d.status()["trust"]["revoked"] == 1
            # Its next dialogue does not prove it again in the kernel while the daemon holds it off (an hour).
            assert "198.18.43.1" in nft_set(lab.mx, "unproven4")
            with lab.net.entered():
                again = connect("198.18.43.1", MX4, 25)  # the slot it held is free again
            held.append(again)
            converse(
                again, b"EHLO l.example", b"MAIL FROM:<a@x.example>", b"RCPT TO:<r@lab.test>", b"RCPT TO:<s@lab.test>"
            )
            time.sleep(0.5)
            assert "198.18.43.1" not in nft_set(lab.mx, "proven4")
            # Shedding judges nothing: no throttle, no block; the operator hears why it lost its standing.
            punished = nft_set(lab.mx, "tight4") | nft_set(lab.mx, "throttle4") | nft_set(lab.mx, "block4")
            assert "198.18.43.1" not in punished, punished
            why = json.loads(govern(lab.mx, "why", "198.18.43.1", "--json", "--config", str(cfg)).stdout)
            lost = [a["text"] for a in why["advice"] if a["rule"] == "unproven"]
            assert lost and "kept us answering more of them with no message" in lost[0], why["advice"]
    finally:
        for c in held:
            c.close()
        srv.close()
