"""The coverage check the daemon runs with each tamper check: kernel NFLOG packets since the
last apply against the packets the event store holds (the report's `unaccounted_packets`).

Read-only: the store is opened with `mode=ro`, the kernel is only read.
"""

from __future__ import annotations

from sentinel.evidence.report import completeness, kernel_facts
from sentinel.store import events as ev
from sentinel.store.state import APPLIED, read_json


def unaccounted_packets(backend: str | None = None) -> int | None:
    """Packets the kernel logged that the store does not hold; None when it cannot tell."""
    applied = read_json(APPLIED)
    if backend and applied is not None:
        applied = {**applied, "backend": backend}
    kernel = kernel_facts(applied)
    path = ev.db_path()
    if not path.exists():
        return None
    conn = ev.connect(path, readonly=True)
    try:
        return completeness(conn, kernel, applied).get("unaccounted_packets")
    finally:
        conn.close()
