"""The bodies of `sentinel status` and `sentinel report`, free of typer/click/rich.

`sentinel.cli` (typer) and `sentinel.entry` (the start-up fast path that answers these two
commands without importing the CLI framework) both call these, so both print the same bytes and
exit with the same codes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from sentinel.enforce import kernelread
from sentinel.enforce.kernelstate import DEFAULT_BACKEND
from sentinel.errors import EXIT_VIOLATION, BadInput, SentinelError
from sentinel.store.state import APPLIED, read_json

Echo = Callable[[str], object]


def check_format(name: str) -> str:
    if name not in ("json", "table"):
        raise BadInput(f"--format: {name!r} is not one of: json, table")
    return name


def status_data() -> dict:
    applied = read_json(APPLIED)
    if applied and "ruleset_sha256" not in applied:  # torn down since
        applied = None
    backend = (applied or {}).get("backend", DEFAULT_BACKEND)
    kernel = kernelread.read_state(backend)
    kernel_sha = kernel.sha256() if kernel.present else None  # once: 20,000 entries to hash
    expected = (applied or {}).get("ruleset_sha256")
    return {
        "applied": applied is not None,
        "mode": (applied or {}).get("mode"),
        "backend": backend,
        "policy": (applied or {}).get("policy"),
        "policy_sha256": (applied or {}).get("policy_sha256"),
        "ruleset_sha256_expected": expected,
        "ruleset_sha256_kernel": kernel_sha,
        "in_sync": bool(expected) and kernel.present and kernel_sha == expected,
        "pins": (applied or {}).get("pins", {}),
        "guard": guard_status(),
        "capabilities": caps_summary(),
        "monitoring": monitoring_status(),
    }


def caps_summary() -> dict:
    from sentinel.evidence.caps import summary

    return summary()


def monitoring_status() -> dict | None:
    """The running daemon's watchdog (parts lost, or the watchdog itself gone stale)."""
    from sentinel.run.watchstatus import read_status

    return read_status()


def guard_status() -> dict:
    """guard_active per guarded process, from what the guard receiver last wrote."""
    from sentinel.guard.processes import guard_processes
    from sentinel.store.state import state_dir

    procs = guard_processes(state_dir()).get("processes", {})
    return {
        "processes": len(procs),
        "active": sum(bool(p.get("guard_active")) for p in procs.values()),
        "per_process": {
            pid: {k: p.get(k) for k in ("exe", "mode", "guard_active", "fail_closed")}
            for pid, p in procs.items()
        },
    }


def run_status(fmt: str, echo: Echo) -> None:
    fmt = check_format(fmt)  # arguments first: bad input never reaches the kernel
    data = status_data()
    if fmt == "json":
        echo(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            echo(f"{key:26} {value}")
    if not data["in_sync"]:
        raise SentinelError(
            "kernel rules do not match the applied ruleset"
            if data["applied"]
            else "nothing applied (no state in the state directory)"
        )
    if data["monitoring"] and not data["monitoring"]["ok"]:
        raise SentinelError(data["monitoring"]["problem"])


_encode = json.JSONEncoder(default=str).encode  # the C encoder (indent= is pure Python)


def report_json(data: dict) -> str:
    """The report as JSON, indented two levels deep, deeper levels on one line each: with
    10,000 allowlisted upstreams a fully indented dump took seconds of pure-Python encoding."""
    lines = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            inner = ",\n".join(f"    {_encode({k: v})[1:-1]}" for k, v in value.items())
            lines.append(f"  {_encode({key: 0})[1:-4]}: {{\n{inner}\n  }}")
        else:
            lines.append(f"  {_encode({key: value})[1:-1]}")
    return "{\n" + ",\n".join(lines) + "\n}" if lines else "{}"


def run_report(
    last: str | None,
    since: str | None,
    until: str | None,
    fmt: str,
    results: Path | None,
    bundle: Path | None,
    echo: Echo,
) -> None:
    from sentinel.evidence import report as rep
    from sentinel.redact import use_key
    from sentinel.store.state import state_dir

    fmt = check_format(fmt)
    window = rep.parse_window(last, since, until)
    use_key(state_dir(), create=False)  # read-only: the daemon's key, never a new file
    data = rep.build_report(window)
    if fmt == "json":
        echo(report_json(data))
    else:
        from rich.console import Console  # only the table needs rich

        console = Console(width=max(100, Console().width))
        for table in rep.render_table(data):
            console.print(table)
    if results is not None:
        rep.merge_results(results, data)
    if bundle is not None:
        from sentinel.evidence.bundle import write_bundle

        write_bundle(bundle, data, state_dir())
    reason = rep.violation(data)
    if reason:
        raise SentinelError(f"report: {reason}", EXIT_VIOLATION)
