"""The report's verdict for CI (exit 1 on a violation) and its section in a results.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sentinel.atomic import write_atomic
from sentinel.errors import BadInput


def violation(report: dict[str, Any]) -> str | None:
    """Why the report should fail a CI gate, or None."""
    if report["external_calls"]:
        return f"{report['external_calls']} external call(s) left the host in the window"
    if report["drift"]:
        return "ruleset drift: the kernel does not hold the applied ruleset"
    if (report.get("canary") or {}).get("escaped"):
        return f"{report['canary']['escaped']} bypass canary probe(s) got out"
    return None


def results_section(report: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "external_calls_last_10m",
        "blocked_attempts_last_10m",
        "coverage",
        "mode",
        "policy_sha256",
        "ruleset_sha256",
        "rules_in_sync",
        "unaccounted_packets",
        "shed_events",
        "attempts_by_layer",
    )
    return {
        **{k: report[k] for k in keys},
        "window": report["window"],
        "report_generated_at": report["generated_at"],
    }


def merge_results(path: Path, report: dict[str, Any]) -> None:
    """Update only the `sentinel` section of a results.json; other keys stay as they are."""
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError) as exc:
        raise BadInput(f"--results {path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadInput(f"--results {path}: the top level is not a JSON object")
    section = data.get("sentinel") if isinstance(data.get("sentinel"), dict) else {}
    data["sentinel"] = {**section, **results_section(report)}
    if not path.parent.is_dir():  # a mistyped directory is bad input, not created silently
        raise BadInput(f"--results {path}: cannot write (no directory {path.parent})")
    try:
        write_atomic(path, json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        raise BadInput(f"--results {path}: cannot write ({exc.strerror or exc})") from None
