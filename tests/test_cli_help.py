"""Every command's `--help` prints its usage and exits 0 (help text is rich markup: a bracket
in an option's help once made `sentinel explain --help` crash with a MarkupError)."""

from __future__ import annotations

import pytest
import typer.main
from typer.testing import CliRunner

from sentinel.cli import app


def _command_paths() -> list[list[str]]:
    root = typer.main.get_command(app)
    paths: list[list[str]] = []

    def walk(group, prefix: list[str]) -> None:
        for name, sub in sorted(group.commands.items()):
            paths.append([*prefix, name])
            if hasattr(sub, "commands"):
                walk(sub, [*prefix, name])

    walk(root, [])
    return paths


@pytest.mark.parametrize("path", _command_paths(), ids=" ".join)
def test_help_of_every_command(path: list[str]) -> None:
    done = CliRunner().invoke(app, [*path, "--help"])
    assert done.exit_code == 0, done.output
    assert "Usage:" in done.output
