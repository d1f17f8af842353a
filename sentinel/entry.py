"""The `sentinel` executable. `status`, `report`, `check` and `apply` are answered without
importing typer, click or rich (they cost more start-up than the commands' own work); anything
else, and any argument list this small parser does not fully understand (--help, unknown or
repeated options), goes to the full CLI in `sentinel.cli`, which then prints its usual usage
errors. Both read the one table of these commands' options and run the same bodies
(fastcmds.py)."""

from __future__ import annotations

import gc
import os
import sys

from sentinel.fastcmds import ARGUMENT, COMMANDS, FLAG, LIST, complete, run


def parse_fast(argv: list[str]) -> tuple[str, dict] | None:
    """(command, {parameter: value}) when argv is a plain call of a fast command, else None."""
    if not argv or argv[0] not in COMMANDS:
        return None
    params = COMMANDS[argv[0]].params
    args = argv[1:]
    positional = [p.name for p in params if p.kind == ARGUMENT]
    if positional:  # `check FILE`: exactly the argument, no options
        plain = len(args) == len(positional) and all(a[:1] != "-" for a in args)
        return (argv[0], dict(zip(positional, args, strict=True))) if plain else None
    known = {flag: p for p in params for flag in p.flags}
    out: dict = {}
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        param = known.get(name)
        if param is None or (param.name in out and param.kind != LIST):
            return None
        if eq and not name.startswith("--"):
            return None  # click reads "-p=x" as the value "=x": leave it to click
        if param.kind == FLAG:
            if eq:
                return None
            out[param.name] = True
            i += 1
            continue
        if not eq:
            if i + 1 == len(args) or args[i + 1].startswith("-"):
                return None
            i += 1
            value = args[i]
        if param.kind == LIST:
            out.setdefault(param.name, []).append(value)
        else:
            out[param.name] = value
        i += 1
    return argv[0], out


# Commands that read a whole policy and exit: the cyclic GC only costs them time (10,000
# entries allocate ~100,000 containers and start ~90 collections, ~15 ms of an apply, that find
# nothing: reference counting frees what they build). The process ends after the command,
# without the interpreter's teardown (`_leave`).
ONE_SHOT = ("check", "apply")
# Commands that read the kernel (and the store) and exit: the GC's first generation runs every
# 20,000 new containers instead of 700 (start-up and a 20,000-entry set dump started dozens of
# collections that found nothing, ~1.5% of a report); it still runs, so a report over a big
# store frees cyclic garbage as before. They too end without the teardown (~4% of a report).
READS = ("status", "report")
READS_GC_THRESHOLD = 20_000


def _echo(text: str, nl: bool = True, err: bool = False) -> None:
    (sys.stderr if err else sys.stdout).write(text + ("\n" if nl else ""))


def main() -> None:
    fast = parse_fast(sys.argv[1:])
    if fast is None:
        from sentinel.cli import main as full

        full()
        return
    from sentinel.errors import SentinelError

    command, given = fast
    if command in ONE_SHOT:
        gc.disable()
    else:
        gc.set_threshold(READS_GC_THRESHOLD, *gc.get_threshold()[1:])
    try:
        run(command, complete(command, given), _echo)
    except SentinelError as exc:
        sys.stdout.flush()
        sys.stderr.write(f"sentinel: {exc.message}\n")
        _leave(exc.code)
        sys.exit(exc.code)
    sys.stdout.flush()
    _leave()


def _leave(code: int = 0) -> None:
    """The command is done: exit without the interpreter's teardown (freeing the objects one
    by one, module clean-up and a last full collection: ~50 ms of an apply, ~4% of a report).
    What a normal exit does that matters is done first: both streams flushed, the atexit
    handlers run. With another thread alive, the normal exit (it joins them)."""
    sys.stderr.flush()
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        return
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
