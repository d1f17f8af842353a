"""The guard receiver's record of guarded processes as `sentinel status` reads it: one small
JSON file. Apart from receiver.py so that `status` reads it without the receiver's imports
(the event store, the wire format, the identity checks)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

PROCESSES_FILE = "guard_processes.json"


def guard_processes(state_dir: str | Path | None = None, max_age: float = 10.0) -> dict[str, Any]:
    """What the receiver last wrote (for `sentinel status`); guard_active re-judged by age."""
    if not state_dir:
        from sentinel.store.state import state_dir as default_state_dir

        state_dir = default_state_dir()
    path = Path(state_dir) / PROCESSES_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {"processes": {}}
    now = time.time()
    for proc in data.get("processes", {}).values():
        if now - float(data.get("written_at", 0)) > max_age:
            proc["guard_active"] = False  # the receiver itself stopped updating
    return data
