"""The commands answered without typer (check, apply, status, report): one table of their
arguments and options, and the one function that runs each.

Both command lines are built from the table: cli.py makes the typer commands (help, usage
errors, `--help`), entry.py the small start-up parser that answers a plain call without
importing typer, click or rich. Neither lists an option of its own. Light on purpose: no
import here may pull in the CLI framework (tests/test_entry.py checks).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sentinel.enforce.kernelstate import DEFAULT_BACKEND

ARGUMENT, VALUE, FLAG, LIST = "argument", "value", "flag", "list"  # how a parameter is given


class Param:
    """One argument or option. A plain class: a dataclass costs the fast path ~2 ms to build."""

    __slots__ = ("name", "kind", "flags", "type", "default", "help")

    def __init__(
        self,
        name: str,  # the command function's parameter, and the key the fast parser returns
        kind: str = VALUE,  # ARGUMENT (positional), VALUE (--opt X), FLAG (--opt), LIST (repeats)
        flags: tuple[str, ...] = (),  # option names, the long one first; () for an ARGUMENT
        type: type = str,  # str or Path: what a given value becomes
        default: Any = None,
        help: str = "",
    ) -> None:
        self.name, self.kind, self.flags = name, kind, flags
        self.type, self.default, self.help = type, default, help


class Command:
    __slots__ = ("help", "params")

    def __init__(self, help: str, params: tuple[Param, ...]) -> None:
        self.help, self.params = help, params


POLICY = Param(
    "policy", flags=("--policy", "-p"), type=Path, help="Policy file (default: $SENTINEL_POLICY)"
)  # also `run`, `export`, ...
BACKEND = Param(
    "backend",
    flags=("--backend",),
    default=DEFAULT_BACKEND,
    help="netfilter backend: nft or legacy",
)  # also `run`
_SINCE_HELP = "ISO time, epoch, or a duration ago"
_FORMAT_HELP = "json or table"

# fmt: off
COMMANDS: dict[str, Command] = {
    "check": Command(
        "Validate a policy and run its own tests (exit 2 on bad input, 1 on failed tests).",
        (Param("file", ARGUMENT, type=Path),),
    ),
    "apply": Command(
        "Apply the policy once (atomic per table and family).",
        (
            POLICY,
            Param("dry_run", FLAG, ("--dry-run",), bool, False,
                  "print the ruleset, change nothing"),
            BACKEND,
            Param("pin", LIST, ("--pin",), help="NAME=IP: a static pin, skips DNS"),
        ),
    ),
    "status": Command(
        "Mode, policy hash, expected vs kernel ruleset hash (exit 1 when they differ).",
        (Param("fmt", VALUE, ("--format",), str, "table", _FORMAT_HELP),),
    ),
    "report": Command(
        "Evidence for a window (default last 10m); exit 1 on external calls or ruleset drift.",
        (
            Param("last", flags=("--last",), help="window length ending now, e.g. 10m"),
            Param("since", flags=("--since",), help=_SINCE_HELP),
            Param("until", flags=("--until",), help=_SINCE_HELP),
            Param("fmt", VALUE, ("--format",), str, "json", _FORMAT_HELP),
            Param("results", flags=("--results",), type=Path,
                  help="merge the `sentinel` section into this results.json"),
            Param("bundle", flags=("--bundle",), type=Path, help="write an evidence bundle here"),
        ),
    ),
}
# fmt: on


def complete(command: str, given: dict[str, Any]) -> dict[str, Any]:
    """Every parameter of `command`: the given ones as their type, the rest their default."""
    values = {}
    for param in COMMANDS[command].params:
        if param.name not in given:
            values[param.name] = param.default
        elif param.kind in (ARGUMENT, VALUE):
            values[param.name] = param.type(given[param.name])
        else:
            values[param.name] = given[param.name]
    return values


def run(command: str, values: dict[str, Any], echo: Callable[..., None]) -> None:
    """Run one command with every parameter given (`complete`); bodies are shared with the
    daemon-side code in policy/commands.py and evidence/commands.py."""
    if command in ("check", "apply"):
        from sentinel.policy import commands as policy_cmds

        if command == "check":
            policy_cmds.run_check(values["file"], echo)
            return
        policy, dry_run, backend = values["policy"], values["dry_run"], values["backend"]
        policy_cmds.run_apply(policy, dry_run, backend, values["pin"] or [], echo)
        return
    from sentinel.evidence import commands

    if command == "status":
        commands.run_status(values["fmt"], echo)
        return
    v = values
    commands.run_report(
        v["last"], v["since"], v["until"], v["fmt"], v["results"], v["bundle"], echo
    )
