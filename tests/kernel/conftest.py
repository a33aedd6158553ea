"""Kernel tests run as root in namespaces they create; without root they are skipped with a reason."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.netns import Lab


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
