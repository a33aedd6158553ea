"""The BPF objects the package carries (XDP, the socket iterator) are the builds of the sources in bpf/ as they stand
(bpf/Makefile's `ship`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from govern.wiring import DEFAULT_OBJECT

BPF = Path(__file__).parents[2] / "bpf"


def test_the_shipped_object_comes_from_the_current_source() -> None:
    source = (BPF / "govern_xdp.c").read_bytes() + (BPF / "govern_maps.h").read_bytes()
    recorded = Path(f"{DEFAULT_OBJECT}.source-sha256").read_text().strip()
    assert recorded == hashlib.sha256(source).hexdigest(), "bpf/ changed: run `make -C bpf ship` and commit"
    assert DEFAULT_OBJECT.read_bytes()[:4] == b"\x7fELF"


def test_the_shipped_socket_iterator_comes_from_the_current_source() -> None:
    from govern.observe.sockiter import OBJECT

    recorded = Path(f"{OBJECT}.source-sha256").read_text().strip()
    assert recorded == hashlib.sha256((BPF / "govern_sockets.c").read_bytes()).hexdigest(), "run `make -C bpf ship`"
    assert OBJECT.read_bytes()[:4] == b"\x7fELF"
