"""The example config an install puts at /etc/govern/govern.toml when there is none: every section and key, each
commented out with its default and what it does, so the file changes nothing until the operator uncomments a line.
Made from the config's schema, so it cannot drift from it. `python -m govern.example` prints it."""

from __future__ import annotations

import textwrap

from govern.config import DEFAULT_PATH, SCHEMA, _toml_value


def example_toml() -> str:
    lines = [
        f"# {DEFAULT_PATH}: govern's config. Every key is shown with its default, commented out: this file as",
        "# installed changes nothing. Uncomment and edit what you need, then `govern config check` and",
        "# `systemctl reload govern`. Every key is described in docs/configuration.md.",
    ]
    for section, keys in SCHEMA.items():
        lines += ["", f"# [{section}]"]
        for key, spec in keys.items():
            lines += [f"# {line}" for line in textwrap.wrap(spec.doc, 110)]
            lines.append(f"# {key} = {_toml_value(spec.default)}")
    return "\n".join(lines) + "\n"


def main() -> None:
    print(example_toml(), end="")


if __name__ == "__main__":
    main()
