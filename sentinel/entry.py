"""The `sentinel` executable. `status` and `report` are answered without importing typer, click
or rich (they cost more start-up than the commands' own work); anything else, and any argument
list this small parser does not fully understand (--help, unknown or repeated options), goes to
the full CLI in `sentinel.cli`, which then prints its usual usage errors."""

from __future__ import annotations

import sys
from pathlib import Path

# command -> {option: parameter}; every option takes one value
_FAST = {
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


def parse_fast(argv: list[str]) -> tuple[str, dict[str, str]] | None:
    """(command, {parameter: value}) when argv is a plain status/report call, else None."""
    if not argv or argv[0] not in _FAST:
        return None
    known, out = _FAST[argv[0]], {}
    args = argv[1:]
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if name not in known or known[name] in out:
            return None
        if not eq:
            if i + 1 == len(args) or args[i + 1].startswith("-"):
                return None
            i += 1
            value = args[i]
        out[known[name]] = value
        i += 1
    return argv[0], out


def _run_fast(command: str, opts: dict[str, str]) -> None:
    from sentinel.evidence import commands

    def echo(text: str) -> None:
        sys.stdout.write(text + "\n")

    if command == "status":
        commands.run_status(opts.get("fmt", "table"), echo)
        return
    commands.run_report(
        opts.get("last"),
        opts.get("since"),
        opts.get("until"),
        opts.get("fmt", "json"),
        Path(opts["results"]) if "results" in opts else None,
        Path(opts["bundle"]) if "bundle" in opts else None,
        echo,
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
