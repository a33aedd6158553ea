"""The example config is every key with its default, commented: as installed it changes nothing, and each line,
uncommented, is valid."""

from __future__ import annotations

import tomllib

from govern.config import SCHEMA, from_mapping
from govern.example import example_toml


def test_the_example_as_installed_is_the_defaults() -> None:
    text = example_toml()
    assert tomllib.loads(text) == {}
    assert from_mapping(tomllib.loads(text)).raw == from_mapping({}).raw


def test_uncommented_the_example_is_valid_and_names_every_key_with_its_default() -> None:
    text = example_toml()
    live = "\n".join(
        line[2:] for line in text.splitlines() if line.startswith("# [") or (line.startswith("# ") and " = " in line)
    )
    data = tomllib.loads(live)
    assert {s: set(k) for s, k in data.items()} == {s: set(k) for s, k in SCHEMA.items()}
    assert from_mapping(data).raw == from_mapping({}).raw
