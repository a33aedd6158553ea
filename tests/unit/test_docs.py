"""Every config key is documented with its real default, so docs/configuration.md cannot drift from the schema."""

from __future__ import annotations

from pathlib import Path

from govern.config import SCHEMA, _toml_value

DOC = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()


def test_every_key_is_documented_with_its_default() -> None:
    for section, keys in SCHEMA.items():
        body = DOC.split(f"## [{section}]", 1)[1].split("\n## ", 1)[0]
        for key, spec in keys.items():
            assert f"| `{key}` | `{_toml_value(spec.default)}` |" in body, f"{section}.{key}"
