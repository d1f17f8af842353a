"""The watchdog's state file as `sentinel status` reads it. Apart from watchdog.py so that
`status` reads one small file without importing the daemon's logging (structlog, rich)."""

from __future__ import annotations

import time
from typing import Any

STATE_FILE = "watchdog.json"
STALE_AFTER = 10.0  # `status`: a watchdog file older than this means nobody is checking


def read_status(now: float | None = None) -> dict[str, Any] | None:
    """What `sentinel status` shows: None when no daemon ever ran a watchdog here (or it
    stopped cleanly); else `ok` is False while any part is lost or the file went stale."""
    from sentinel.store.state import read_json

    try:
        state = read_json(STATE_FILE)
    except Exception:  # noqa: BLE001 - unreadable: say so, never a traceback
        return {"ok": False, "problem": f"{STATE_FILE} is unreadable"}
    if not state or state.get("stopped"):
        return None
    now = time.time() if now is None else now
    age = now - float(state.get("checked_at") or 0)
    lost = state.get("lost") or {}
    problem = None
    if age > STALE_AFTER:
        problem = f"the daemon's watchdog last checked {age:.0f} s ago (is sentinel run alive?)"
    elif lost:
        problem = "monitor lost: " + "; ".join(
            f"{name}: {info.get('reason')}" for name, info in sorted(lost.items())
        )
    return {"ok": problem is None, "problem": problem, "lost": lost, "age": round(age, 1)}
