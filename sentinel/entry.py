"""The `sentinel` executable. `status`, `report`, `check` and `apply` are answered without
importing typer, click or rich (they cost more start-up than the commands' own work); anything
else, and any argument list this small parser does not fully understand (--help, unknown or
repeated options), goes to the full CLI in `sentinel.cli`, which then prints its usual usage
errors. The command bodies are shared (evidence/commands.py, policy/commands.py)."""

from __future__ import annotations

import sys
from pathlib import Path

# command -> {option: parameter}; every option takes one value, except the flags and lists below
_FLAGS = {"--dry-run": "dry_run"}
_LISTS = {"--pin": "pin"}
_FAST = {
    "check": {},  # one positional FILE
    "apply": {"--policy": "policy", "-p": "policy", "--backend": "backend", **_FLAGS, **_LISTS},
    "status": {"--format": "fmt"},
    "report": {
        "--last": "last",
        "--since": "since",
        "--until": "until",
        "--format": "fmt",
        "--results": "results",
        "--bundle": "bundle",
    },
}


def parse_fast(argv: list[str]) -> tuple[str, dict] | None:
    """(command, {parameter: value}) when argv is a plain call of a fast command, else None."""
    if not argv or argv[0] not in _FAST:
        return None
    known, out = _FAST[argv[0]], {}
    args = argv[1:]
    if argv[0] == "check":
        return ("check", {"file": args[0]}) if len(args) == 1 and args[0][:1] != "-" else None
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if name not in known or (known[name] in out and name not in _LISTS):
            return None
        if eq and not name.startswith("--"):
            return None  # click reads "-p=x" as the value "=x": leave it to click
        if name in _FLAGS:
            if eq:
                return None
            out[known[name]] = True
            i += 1
            continue
        if not eq:
            if i + 1 == len(args) or args[i + 1].startswith("-"):
                return None
            i += 1
            value = args[i]
        if name in _LISTS:
            out.setdefault(known[name], []).append(value)
        else:
            out[known[name]] = value
        i += 1
    return argv[0], out


def _echo(text: str, nl: bool = True, err: bool = False) -> None:
    (sys.stderr if err else sys.stdout).write(text + ("\n" if nl else ""))


def _run_fast(command: str, opts: dict) -> None:
    if command in ("check", "apply"):
        from sentinel.policy import commands as policy_cmds

        if command == "check":
            policy_cmds.run_check(Path(opts["file"]), _echo)
            return
        from sentinel.enforce.netfilter import DEFAULT_BACKEND

        policy = Path(opts["policy"]) if "policy" in opts else None
        backend = opts.get("backend", DEFAULT_BACKEND)
        policy_cmds.run_apply(
            policy, bool(opts.get("dry_run")), backend, opts.get("pin", []), _echo
        )
        return
    from sentinel.evidence import commands

    if command == "status":
        commands.run_status(opts.get("fmt", "table"), _echo)
        return
    commands.run_report(
        opts.get("last"),
        opts.get("since"),
        opts.get("until"),
        opts.get("fmt", "json"),
        Path(opts["results"]) if "results" in opts else None,
        Path(opts["bundle"]) if "bundle" in opts else None,
        _echo,
    )


def main() -> None:
    fast = parse_fast(sys.argv[1:])
    if fast is None:
        from sentinel.cli import main as full

        full()
        return
    from sentinel.errors import SentinelError

    try:
        _run_fast(*fast)
    except SentinelError as exc:
        sys.stdout.flush()
        sys.stderr.write(f"sentinel: {exc.message}\n")
        sys.exit(exc.code)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
