"""README keeps exactly two set-up commands at the top, and CI runs the second one."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def top_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README must start with a bash block of set-up commands"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_exactly_two_commands():
    commands = top_commands()
    assert len(commands) == 2, commands
    assert commands[0].startswith("bash .ci/setup && ")
    assert commands[1].startswith("bash .ci/setup && ")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci/run").read_text()
    assert top_commands()[1] in ci.splitlines()
