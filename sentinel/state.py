"""The state directory: what was applied (for status, report, tamper check) and where."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import SentinelError

DEFAULT_STATE_DIR = "/var/lib/sentinel"
APPLIED = "applied.json"


def state_dir() -> Path:
    return Path(os.environ.get("SENTINEL_STATE_DIR", DEFAULT_STATE_DIR))


def write_json(name: str, data: Any) -> Path:
    """Atomic write (temp file + rename) so a reader never sees half a file."""
    directory = state_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
        os.replace(tmp, directory / name)
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
