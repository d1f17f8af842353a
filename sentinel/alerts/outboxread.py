"""The alert outbox's file and schema, and the read-only summary `sentinel report` prints.

Light on purpose: the report reads the outbox's counters without importing the outbox itself
(its Alert model, dataclasses, threading, the logger). outbox.py re-exports these names.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sentinel.errors import SentinelError

FILENAME = "alerts.db"

# MIGRATIONS[i] takes the schema from version i to i + 1. Append only; never edit a shipped one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        sink TEXT NOT NULL,
        priority INTEGER NOT NULL,
        alert TEXT NOT NULL,
        created REAL NOT NULL,
        next_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX outbox_head ON outbox (sink, priority, id);
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    """,
    # v2: the router's open incidents (dedup key, last seen) and open digests, so resolves
    # and digests still go out after a restart, an alert reload or a SIGKILL
    """
    CREATE TABLE router_state (name TEXT PRIMARY KEY, value TEXT NOT NULL, saved REAL NOT NULL);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def read_summary(state_dir: str | Path) -> dict[str, dict[str, int]]:
    """Per-sink counters (sent, failed, retries, dropped, unreported, pending) from the outbox
    in a state directory, for reports made outside the daemon; {} when there is none.

    Read-only (`mode=ro`): nothing is created, migrated or set aside. A damaged outbox raises
    a SentinelError with exit code 2 naming the file; the file stays as it is."""
    from sentinel.errors import EXIT_BAD_INPUT
    from sentinel.store.schema import readonly_uri

    path = Path(state_dir) / FILENAME
    if not path.exists():
        return {}
    try:
        conn = sqlite3.connect(readonly_uri(path), uri=True, timeout=10)
    except sqlite3.Error as exc:
        raise SentinelError(f"alert outbox {path} is unreadable: {exc}", EXIT_BAD_INPUT) from None
    try:
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        if found > SCHEMA_VERSION:
            raise SentinelError(
                f"alert outbox {path} has schema v{found}, newer than this sentinel",
                EXIT_BAD_INPUT,
            )
        out: dict[str, dict[str, int]] = {}
        if found == 0:
            return out  # created but never migrated: nothing in it
        for name, value in conn.execute("SELECT name, value FROM counters").fetchall():
            counter, _, sink = name.partition(":")
            out.setdefault(sink, {})[counter] = value
        rows = conn.execute("SELECT sink, COUNT(*) FROM outbox GROUP BY sink").fetchall()
        for sink, n in rows:
            out.setdefault(sink, {})["pending"] = n
        return out
    except sqlite3.Error as exc:
        raise SentinelError(f"alert outbox {path} is unreadable: {exc}", EXIT_BAD_INPUT) from None
    finally:
        conn.close()
