"""Kernel tests run as root in namespaces they create; without root they are skipped with a reason."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from govern_lab import topology
from tests.netns import Lab, Listener


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/kernel/" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)
            if os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason="kernel test: needs root for network namespaces"))


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        yield lab.up()
    finally:
        lab.down()


@pytest.fixture(scope="module")
def lab_module() -> Iterator[topology.Lab]:
    """The product's flood-lab topology (govern_lab.topology) with a unique tag, once per test module."""
    lab = topology.Lab(f"gvt-{secrets.token_hex(3)}")
    try:
        yield lab.up()
    finally:
        lab.down()


@pytest.fixture
def served(lab: Lab) -> Iterator[Lab]:
    """The lab with something listening on the MX's port 25, so a connection that passes govern completes."""
    srv = Listener(lab.mx, 25)
    try:
        yield lab
    finally:
        srv.close()


@pytest.fixture
def pin_root(tmp_path: Path) -> Iterator[str]:
    """A pin root for the XDP maps on a bpffs mounted for this test alone (the host's /sys/fs/bpf is not touched)."""
    mnt = tmp_path / "bpffs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(mnt)], check=True)
    try:
        yield str(mnt / "govern")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> str:
    """govern's Debian package built from this tree by .ci/build-deb, once for the tests that install it; where
    `.ci/setup test` started that build already (GOVERN_TEST_DEB_DIR), its result."""
    started = os.environ.get("GOVERN_TEST_DEB_DIR")
    if started:
        rc = Path(started) / "rc"
        deadline = time.monotonic() + 600
        while not rc.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert rc.exists() and rc.read_text().strip() == "0", (Path(started) / "build.err").read_text()[-2000:]
        return (Path(started) / "build.out").read_text().strip().splitlines()[-1]
    out = tmp_path_factory.mktemp("dist")
    repo = Path(__file__).parents[2]
    built = subprocess.run(
        ["bash", str(repo / ".ci" / "build-deb"), str(out)], capture_output=True, text=True, timeout=600
    )
    assert built.returncode == 0, built.stderr[-2000:]
    return built.stdout.strip().splitlines()[-1]
