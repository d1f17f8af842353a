"""The bounded, persisted outbox: one SQLite row per (alert, sink) until the sink accepted it.

Alerts survive a restart and are delivered afterwards. The bound is per sink: when a sink's
queue is full the lowest-priority, oldest row is evicted, and the eviction is counted twice —
`dropped:SINK` (lifetime) and `unreported:SINK` (not yet told). Every alert the sink delivers
carries the unreported count, which is settled once the sink has accepted it, so a drop is
always reported by the next delivered alert.

WAL mode, schema version in `PRAGMA user_version`, forward-only migrations (`migrate`).
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sentinel.alerts.model import PRIORITY, Alert
from sentinel.alerts.outboxread import (  # noqa: F401 - re-exported
    FILENAME,
    MIGRATIONS,
    SCHEMA_VERSION,
    read_summary,
)
from sentinel.errors import SentinelError
from sentinel.lazylog import get_logger

log = get_logger("sentinel.alerts.outbox")  # `report` reads the outbox: no structlog import


class OutboxError(SentinelError):
    pass


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to SCHEMA_VERSION; returns the version found before."""
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found > SCHEMA_VERSION:
        raise OutboxError(
            f"alert outbox schema v{found} is newer than this sentinel (v{SCHEMA_VERSION})"
        )
    for version in range(found, SCHEMA_VERSION):
        with conn:  # one transaction per step: a crash leaves a consistent version
            conn.executescript("BEGIN;" + MIGRATIONS[version])
            conn.execute(f"PRAGMA user_version = {version + 1}")
    return found


@dataclass(frozen=True)
class Row:
    id: int
    sink: str
    alert: Alert
    created: float
    next_at: float
    attempts: int


def _degradable(method: Callable) -> Callable:
    """A write the state directory refuses (read-only, disk full, I/O error) moves the outbox
    into memory, pending rows included, and is retried there: alerting must go on when the
    disk does not. What is in memory is lost on a restart; `degraded` says so."""

    @functools.wraps(method)
    def wrapper(self: Outbox, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.OperationalError as exc:
            if self.degraded:
                raise
            self._to_memory(str(exc))
            return method(self, *args, **kwargs)

    return wrapper


class Outbox:
    def __init__(
        self,
        path: str | Path,
        max_rows: int = 10_000,
        max_age: float = 86_400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.max_rows = max_rows  # per sink
        self.max_age = max_age
        self.clock = clock
        self._lock = threading.Lock()
        self.degraded: str | None = None  # why the outbox lives in memory, if it does
        self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return self._connect()
        except (OSError, sqlite3.OperationalError) as exc:  # read-only or full state dir
            self.degraded = str(exc)
            log.error("outbox_in_memory", path=str(self.path), error=self.degraded)
            return self._memory()
        except sqlite3.DatabaseError as exc:
            return self._set_aside(exc)

    def _memory(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            "file::memory:", uri=True, check_same_thread=False, isolation_level=None
        )
        migrate(conn)
        return conn

    def _to_memory(self, reason: str) -> None:
        """Copy what the file holds (reading still works) into memory and carry on there."""
        with self._lock:
            conn = self._memory()
            try:
                conn.execute("ATTACH DATABASE ? AS disk", (f"file:{self.path}?mode=ro",))
                conn.execute("INSERT INTO outbox SELECT * FROM disk.outbox")
                conn.execute("INSERT INTO counters SELECT * FROM disk.counters")
                conn.execute("INSERT INTO router_state SELECT * FROM disk.router_state")
                conn.execute("DETACH DATABASE disk")
            except sqlite3.Error as exc:  # unreadable too: start empty, and say so
                reason += f"; pending rows not copied: {exc}"
            self._conn.close()
            self._conn, self.degraded = conn, reason
        log.error("outbox_in_memory", path=str(self.path), error=reason)

    def _set_aside(self, exc: sqlite3.DatabaseError) -> sqlite3.Connection:
        """A corrupt outbox must not stop alerting: keep it aside for forensics, start anew."""
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        self.path.rename(aside)
        log.error("outbox_corrupt", path=str(self.path), moved_to=str(aside), error=str(exc))
        return self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across app crashes
        conn.execute("PRAGMA busy_timeout=5000")
        migrate(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # --- writing ---------------------------------------------------------------------------
    @_degradable
    def put(self, sink: str, alert: Alert) -> int:
        """Queue an alert for a sink; returns how many rows the bound evicted."""
        now = self.clock()
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(
                "INSERT INTO outbox (sink, priority, alert, created, next_at) VALUES (?,?,?,?,?)",
                (sink, PRIORITY.get(alert.severity, 9), alert.to_json(), now, now),
            )
            count = self._conn.execute(
                "SELECT COUNT(*) FROM outbox WHERE sink = ?", (sink,)
            ).fetchone()[0]
            excess = count - self.max_rows
            if excess > 0:
                # lowest priority first (P3 before P2 before P1), oldest first within it
                self._conn.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE sink = ? "
                    "ORDER BY priority DESC, id ASC LIMIT ?)",
                    (sink, excess),
                )
                self._count_dropped(sink, excess)
        return max(0, excess)

    @_degradable
    def add_dropped(self, sink: str, n: int) -> None:
        """Alerts lost before reaching the outbox (e.g. the submit queue overflowed)."""
        if n > 0:
            with self._lock, self._conn:
                self._conn.execute("BEGIN IMMEDIATE")
                self._count_dropped(sink, n)

    @_degradable
    def delivered(self, row: Row, reported_dropped: int) -> None:
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("DELETE FROM outbox WHERE id = ?", (row.id,))
            self._bump(f"sent:{row.sink}", 1)
            if reported_dropped:
                self._bump(f"unreported:{row.sink}", -reported_dropped)

    @_degradable
    def failed(self, row: Row) -> None:
        """Rejected for good (e.g. 400): removed and counted; the sink said no."""
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("DELETE FROM outbox WHERE id = ?", (row.id,))
            self._bump(f"failed:{row.sink}", 1)

    @_degradable
    def retry_at(self, row: Row, when: float) -> None:
        with self._lock, self._conn:
            self._conn.execute(
                "UPDATE outbox SET next_at = ?, attempts = attempts + 1 WHERE id = ?",
                (when, row.id),
            )
            self._bump(f"retries:{row.sink}", 1)

    @_degradable
    def expire(self, sink: str) -> int:
        """Drop rows older than max_age (a sink down for a day): counted as dropped."""
        cutoff = self.clock() - self.max_age
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            n = self._conn.execute(
                "DELETE FROM outbox WHERE sink = ? AND created < ?", (sink, cutoff)
            ).rowcount
            if n:
                self._count_dropped(sink, n)
        return n

    @_degradable
    def save_state(self, name: str, value: str) -> None:
        """The router's open incidents/digests (JSON), replaced whole."""
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(
                "INSERT INTO router_state (name, value, saved) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value, saved = excluded.saved",
                (name, value, self.clock()),
            )

    def load_state(self, name: str) -> str | None:
        with self._lock:
            found = self._conn.execute(
                "SELECT value FROM router_state WHERE name = ?", (name,)
            ).fetchone()
        return found[0] if found else None

    # --- reading ---------------------------------------------------------------------------
    @_degradable
    def head(self, sink: str) -> Row | None:
        """The next row for a sink: highest priority, then oldest (FIFO keeps trigger/resolve
        order within a priority)."""
        with self._lock:
            found = self._conn.execute(
                "SELECT id, sink, alert, created, next_at, attempts FROM outbox WHERE sink = ? "
                "ORDER BY priority ASC, id ASC LIMIT 1",
                (sink,),
            ).fetchone()
        if found is None:
            return None
        rid, sink, text, created, next_at, attempts = found
        try:
            alert = Alert.from_json(text)
        except (ValueError, TypeError) as exc:
            # an unreadable row must not block the sink forever: drop it, and say so
            log.error("outbox_bad_row", sink=sink, row=rid, error=type(exc).__name__)
            with self._lock, self._conn:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.execute("DELETE FROM outbox WHERE id = ?", (rid,))
                self._count_dropped(sink, 1)
            return self.head(sink)
        return Row(rid, sink, alert, created, next_at, attempts)

    def pending(self, sink: str | None = None) -> int:
        with self._lock:
            if sink is None:
                return self._conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            return self._conn.execute(
                "SELECT COUNT(*) FROM outbox WHERE sink = ?", (sink,)
            ).fetchone()[0]

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._conn.execute("SELECT name, value FROM counters").fetchall())

    def counter(self, name: str) -> int:
        with self._lock:
            found = self._conn.execute(
                "SELECT value FROM counters WHERE name = ?", (name,)
            ).fetchone()
        return found[0] if found else 0

    # --- internals (lock and transaction held) ---------------------------------------------
    def _count_dropped(self, sink: str, n: int) -> None:
        self._bump(f"dropped:{sink}", n)
        self._bump(f"unreported:{sink}", n)

    def _bump(self, name: str, delta: int) -> None:
        self._conn.execute(
            "INSERT INTO counters (name, value) VALUES (?, MAX(0, ?)) "
            "ON CONFLICT(name) DO UPDATE SET value = MAX(0, value + ?)",
            (name, delta, delta),
        )
