"""The state directory: what was applied (for status, report, tamper check) and where."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentinel.atomic import write_json_atomic
from sentinel.errors import SentinelError

if TYPE_CHECKING:
    from sentinel.enforce.render import Ruleset
    from sentinel.policy.load import Policy

DEFAULT_STATE_DIR = "/var/lib/sentinel"
APPLIED = "applied.json"


def state_dir() -> Path:
    return Path(os.environ.get("SENTINEL_STATE_DIR", DEFAULT_STATE_DIR))


def write_json(name: str, data: Any) -> Path:
    """Atomic write (temp file + rename) so a reader never sees half a file."""
    directory = state_dir()
    try:
        write_json_atomic(directory / name, data, indent=2)
    except OSError as exc:
        raise SentinelError(f"cannot write {directory / name}: {exc.strerror or exc}") from None
    return directory / name


def read_json(name: str) -> Any | None:
    path = state_dir() / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SentinelError(f"cannot read {path}: {exc}") from None


def record_applied(
    policy: Policy,
    ruleset: Ruleset,
    backend: str,
    pins: dict,
    created_tables: list[str],
    full: bool = True,
    pins_valid_until: dict | None = None,
    reset_at: float | None = None,
) -> None:
    """State for `status`, the report and teardown. `full=False` (a pin change: sets only)
    keeps `applied_at`, the moment the kernel's rule counters were last reset.
    `pins_valid_until` (name -> type -> epoch, the end of each pin's last good answer) lets a
    later apply keep a pin whose lookup fails, until `stale_grace` past it. `reset_at`: when the
    apply replaced the rules (their NFLOG counters start there), else now: `applied_at` must not
    be later than what the new counters count, or the report calls the attempts the monitor
    stamped meanwhile unaccounted (a flow's whole folded count with its first packet)."""
    previous = read_json(APPLIED) or {}
    if pins_valid_until is None:
        pins_valid_until = previous.get("pins_valid_until", {})
    pins_valid_until = {k: v for k, v in pins_valid_until.items() if k in pins}
    write_json(
        APPLIED,
        {
            # tables our first apply created stay "ours" across re-applies, for teardown
            "created_tables": sorted(set(previous.get("created_tables", [])) | set(created_tables)),
            "applied_at": (reset_at or time.time())
            if full
            else previous.get("applied_at", time.time()),
            "backend": backend,
            "mode": policy.mode,
            "policy": policy.source,
            "policy_sha256": policy.sha256,
            "ruleset_sha256": ruleset.sha256(),
            "pins": {k: [str(a) for a in v] for k, v in pins.items()},
            "pins_valid_until": pins_valid_until,
            "ruleset_text": ruleset.text(),
        },
    )
