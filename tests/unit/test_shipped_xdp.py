"""The XDP object the package carries is the build of the source in bpf/ as it stands (bpf/Makefile's `ship`)."""

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
