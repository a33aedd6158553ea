"""The lab is an extra: `govern lab` says how to get it when it or its dependencies are missing (exit 2, one line, no
traceback), and the product never imports the lab, matplotlib or scapy except through the command line's one hook."""

from __future__ import annotations

import ast
import importlib.util
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from govern import cli

PRODUCT = Path(__file__).parents[2] / "govern"
LAB_COMMANDS = [["lab"], ["lab", "run", "--short"], ["lab", "demo", "--out", "/tmp/x"], ["lab", "--help"]]


def _app_without_lab(monkeypatch: pytest.MonkeyPatch, missing: str) -> typer.Typer:
    """A command line registered as if `missing` (the lab package, or one of its dependencies) were not installed."""
    monkeypatch.delitem(sys.modules, "govern_lab.cli", raising=False)  # imported afresh, so it looks again
    if missing == "govern_lab":
        monkeypatch.setitem(sys.modules, "govern_lab", None)  # `import govern_lab` now fails as if absent
    else:
        real = importlib.util.find_spec

        def find_spec(name: str, package: str | None = None) -> ModuleSpec | None:
            return None if name == missing else real(name, package)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    app = typer.Typer()
    app.command("status")(lambda: None)  # a second command, so that `lab` stays a subcommand
    cli.add_lab(app)
    return app


@pytest.mark.parametrize("missing", ["govern_lab", "matplotlib", "scapy"])
@pytest.mark.parametrize("argv", LAB_COMMANDS)
def test_lab_without_the_extra_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, missing: str, argv: list[str]
) -> None:
    res = CliRunner().invoke(_app_without_lab(monkeypatch, missing), argv)
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit)  # a clean exit, not an exception's traceback
    assert res.output.strip().splitlines() == [
        f"govern: the flood lab is not installed ({missing} is missing); install it with: pip install 'govern[lab]'"
    ]


def test_lab_with_the_extra_has_its_commands() -> None:
    res = CliRunner().invoke(cli.app, ["lab", "--help"])
    assert res.exit_code == 0
    assert all(name in res.output for name in ("run", "demo", "provision"))


def _imports(path: Path) -> list[str]:
    """The absolute modules a file imports, wherever in the file (lazy imports too)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


def test_the_product_imports_the_lab_only_through_the_cli_hook() -> None:
    found = [
        (str(path.relative_to(PRODUCT.parent)), module)
        for path in sorted(PRODUCT.rglob("*.py"))
        for module in _imports(path)
        if module.split(".")[0] in ("govern_lab", "matplotlib", "scapy")
    ]
    assert found == [("govern/cli.py", "govern_lab.cli")]
