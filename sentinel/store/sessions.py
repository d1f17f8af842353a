"""Writer sessions: what a killed writer lost is counted when the next one starts.

Each `EventStore` is a session: a row in `writers` and a lock file it holds (flock) while it
runs. Every batch's transaction also records `accepted` (events `put()` took so far) and
`settled` (of those, committed or already counted as shed). A writer that stops cleanly closes
its row. One that was killed leaves it open with its lock free: the next writer to start counts
`accepted - settled` (what sat in the killed writer's queue at its last commit) as shed, layer
"store", at the time of that commit, so the report and metrics show it. Only events put after
a writer's last commit go uncounted.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sentinel.store.schema import transaction

OPEN, CLOSED, RECOVERED = 0, 1, 2
LOST_LAYER = "store"


@dataclass
class Session:
    id: str
    lock_path: Path
    lock_fd: int


def _lock_path(db: Path, session_id: str) -> Path:
    return db.with_name(f"{db.name}.writer-{session_id}.lock")


def _held_elsewhere(path: Path) -> bool:
    """True while another live process holds this lock file (a running writer)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we may have taken
    return False


def recover(conn: sqlite3.Connection, db: Path) -> int:
    """Count what killed writers lost (their rows are open, their locks free); returns it."""
    lost = 0
    rows = conn.execute(
        "SELECT id, seen, accepted - settled FROM writers WHERE closed = ?", (OPEN,)
    ).fetchall()
    for session_id, seen, unsettled in rows:
        path = _lock_path(db, session_id)
        if _held_elsewhere(path):
            continue
        with transaction(conn):
            if unsettled > 0:
                conn.execute(
                    "INSERT INTO shed (ts, layer, count) VALUES (?, ?, ?)",
                    (seen, LOST_LAYER, unsettled),
                )
                lost += unsettled
            conn.execute("UPDATE writers SET closed = ? WHERE id = ?", (RECOVERED, session_id))
        path.unlink(missing_ok=True)
    return lost


def open_session(conn: sqlite3.Connection, db: Path) -> Session:
    session_id = str(uuid.uuid4())
    path = _lock_path(db, session_id)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new file: never contended
    now = time.time()
    with transaction(conn):
        conn.execute(
            "INSERT INTO writers (id, started, seen) VALUES (?, ?, ?)", (session_id, now, now)
        )
    return Session(session_id, path, fd)


def record(conn: sqlite3.Connection, session: Session, accepted: int, settled: int) -> None:
    """Inside a batch's transaction: the session's counts as of this commit."""
    conn.execute(
        "UPDATE writers SET seen = ?, accepted = ?, settled = ? WHERE id = ?",
        (time.time(), accepted, settled, session.id),
    )


def close_session(conn: sqlite3.Connection, session: Session, accepted: int, settled: int) -> None:
    """A clean stop: the final counts, the row closed, the lock released and removed."""
    with transaction(conn):
        record(conn, session, accepted, settled)
        conn.execute("UPDATE writers SET closed = ? WHERE id = ?", (CLOSED, session.id))
    session.lock_path.unlink(missing_ok=True)
    os.close(session.lock_fd)


def prune_sessions(conn: sqlite3.Connection, cutoff: float) -> None:
    conn.execute("DELETE FROM writers WHERE closed != ? AND seen < ?", (OPEN, cutoff))
