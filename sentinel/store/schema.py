"""The event store's file: where it lives, its schema and migrations, and how to open it.

SQLite in WAL mode under the state directory, `synchronous=NORMAL`: a committed transaction
survives the process being killed (it is in the WAL, written before COMMIT returns); a power
loss or kernel crash may roll back the transactions since the WAL was last synced (each
checkpoint). Readers open the file `mode=ro` and never create, migrate or change it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from sentinel.errors import EXIT_BAD_INPUT, EXIT_VIOLATION, SentinelError

DB_NAME = "events.db"
SCHEMA_VERSION = 4
STORE_CREATED = "store_created"  # one row, written when the store is made (see migrate)

_EVENT_COLUMNS = """
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL, ts REAL NOT NULL, layer TEXT NOT NULL,
    kind TEXT NOT NULL, verdict TEXT NOT NULL, protocol TEXT, family INTEGER, src_ip TEXT,
    src_port INTEGER, dst_ip TEXT, dst_port INTEGER, dst_name TEXT,
    packets INTEGER NOT NULL DEFAULT 1, last_ts REAL, pid INTEGER, exe TEXT, stack TEXT,
    detail TEXT NOT NULL DEFAULT '{}'
"""
_COPIED = (
    "id, ts, layer, kind, verdict, protocol, family, src_ip, src_port, dst_ip, dst_port, "
    "dst_name, packets, last_ts, pid, exe, stack, detail"
)
_EVENT_INDEXES = """
    CREATE UNIQUE INDEX events_ts ON events (ts, id);
    CREATE INDEX events_layer_ts ON events (layer, ts);
    CREATE INDEX events_kind_ts ON events (kind, ts);
"""

# Index i holds the script that takes the schema from version i to i + 1. Append only; never
# edit a shipped one (a store at version i has run exactly scripts 0 .. i - 1).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE events (
        id TEXT PRIMARY KEY, ts REAL NOT NULL, layer TEXT NOT NULL, kind TEXT NOT NULL,
        verdict TEXT NOT NULL, protocol TEXT, family INTEGER, src_ip TEXT, src_port INTEGER,
        dst_ip TEXT, dst_port INTEGER, dst_name TEXT, packets INTEGER NOT NULL DEFAULT 1,
        last_ts REAL, pid INTEGER, exe TEXT, stack TEXT, detail TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_ts ON events (ts);
    CREATE INDEX events_layer_ts ON events (layer, ts);
    CREATE TABLE shed (ts REAL NOT NULL, layer TEXT NOT NULL, count INTEGER NOT NULL);
    CREATE INDEX shed_ts ON shed (ts);
    """,
    # v2 (reportscale, for the report's reads): bookkeeping kinds, counter readings and the
    # store_created marker by kind; appends within each kind, so it costs ingest ~nothing
    """
    CREATE INDEX IF NOT EXISTS events_kind_ts ON events (kind, ts);
    """,
    # v3: one row per writer session, updated in each batch's transaction (store/sessions.py)
    """
    CREATE TABLE writers (
        id TEXT PRIMARY KEY, started REAL NOT NULL, seen REAL NOT NULL,
        accepted INTEGER NOT NULL DEFAULT 0, settled INTEGER NOT NULL DEFAULT 0,
        closed INTEGER NOT NULL DEFAULT 0
    );
    """,
    # v4 (storefast): the table's key is its integer rowid, in write order; the id stays a text
    # column with no index of its own. A random UUIDv4 key made every insert a write into a
    # random page of a primary-key index (SQLite's insert rate halved, the WAL grew with it).
    # Fold updates and repeats are found by (ts, id) along events_ts (store/rows.py). The
    # rowids are kept (the report orders ties by rowid).
    f"""
    CREATE TABLE events_v4 ({_EVENT_COLUMNS});
    INSERT INTO events_v4 (seq, {_COPIED}) SELECT rowid, {_COPIED} FROM events ORDER BY rowid;
    DROP TABLE events;
    ALTER TABLE events_v4 RENAME TO events;
    {_EVENT_INDEXES}
    """,
)
assert len(MIGRATIONS) == SCHEMA_VERSION

# The writer's connection: WAL, no fsync per commit (see the module text), an 8 MB page
# cache so the indexes' right edges stay in memory, temporary b-trees in memory, and a WAL
# file cut back to 64 MB after it was reset (it is reused from its start after a checkpoint).
WRITER_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA cache_size=-8192",
    "PRAGMA temp_store=MEMORY",
    "PRAGMA journal_size_limit=67108864",
)


def db_path(directory: Path | None = None) -> Path:
    from sentinel.store.state import state_dir

    return (directory or state_dir()) / DB_NAME


def readonly_uri(path: Path, wal: bool | None = None) -> str:
    """A `mode=ro` URI that never creates, migrates or changes anything. Without a -wal file
    (the writer closed cleanly) the file is also `immutable`, so SQLite does not leave -wal
    and -shm files behind; with one (a writer is running, or was killed) they already exist.
    An immutable read takes no locks: `read_stable` reads again if a writer came meanwhile.
    `wal`: whether the -wal file exists, when the caller has just looked."""
    if wal is None:
        wal = path.with_name(path.name + "-wal").exists()
    return f"file:{quote(str(path))}?mode=ro" + ("" if wal else "&immutable=1")


T = TypeVar("T")
READ_ATTEMPTS = 3


def _file_state(path: Path) -> tuple:
    """What a writer changes: the file (identity, size, time) and whether its -wal exists."""
    try:
        st = os.stat(path)
    except OSError:
        return (None, path.with_name(path.name + "-wal").exists())
    key = (st.st_ino, st.st_size, st.st_mtime_ns)
    return (key, path.with_name(path.name + "-wal").exists())


def read_stable(path: Path, read: Callable[[sqlite3.Connection], T]) -> T:
    """`read(conn)` over a read-only connection to the store. One opened while no writer ran is
    immutable (no locks); a daemon that starts meanwhile (its migration, its batches, a
    checkpoint into the main file) may change pages under it: what it read then ("database
    disk image is malformed", or counts from torn pages) is set aside and the store read
    again, at most READ_ATTEMPTS times (a writer's -wal exists then: SQLite's locks hold)."""
    for _ in range(READ_ATTEMPTS):
        before = _file_state(path)
        locked = before[1]  # a -wal file: mode=ro with SQLite's own locks, a consistent read
        conn = connect(path, readonly=True, uri=readonly_uri(path, wal=locked))
        try:
            result = read(conn)
        except Exception:
            if locked or _file_state(path) == before:
                raise
            continue  # a writer changed the file under an unlocked read: read again
        finally:
            conn.close()
        if locked or _file_state(path) == before:
            return result
    raise SentinelError(
        f"event store {path} changed under {READ_ATTEMPTS} reads in a row (writers starting "
        "and stopping): run the report again"
    )


def connect(path: Path, readonly: bool = False, uri: str | None = None) -> sqlite3.Connection:
    """A connection with the schema migrated (writers) or checked (readers). A reader never
    creates a missing store; a damaged one is an error with exit code 2. `uri`: the reader's
    (readonly_uri) when the caller chose it."""
    try:
        if readonly:
            conn = sqlite3.connect(uri or readonly_uri(path), uri=True, timeout=10)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
            for pragma in WRITER_PRAGMAS:
                conn.execute(pragma)
            migrate(conn)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        code = EXIT_BAD_INPUT if readonly else EXIT_VIOLATION
        raise SentinelError(f"cannot open event store {path}: {exc}", code) from None
    if version > SCHEMA_VERSION:
        conn.close()
        raise SentinelError(
            f"event store {path} has schema {version}, newer than this sentinel ({SCHEMA_VERSION})"
        )
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """The one way to write: BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to SCHEMA_VERSION, each step in its own transaction. A new store
    records when it was created (STORE_CREATED, never pruned): nothing watched from this state
    dir before then, so the report does not call that time a coverage gap."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version >= SCHEMA_VERSION:
        return SCHEMA_VERSION
    # a migration that copies or indexes a big table sorts on disk, not in the writer's memory
    temp_store = conn.execute("PRAGMA temp_store").fetchone()[0]
    conn.execute("PRAGMA temp_store=FILE")
    try:
        _steps(conn, version)
    finally:
        conn.execute(f"PRAGMA temp_store={int(temp_store)}")
    return SCHEMA_VERSION


def _steps(conn: sqlite3.Connection, version: int) -> None:
    from sentinel.ids import new_id  # a new store's marker (uuid would import platform)

    for target in range(version + 1, SCHEMA_VERSION + 1):
        with transaction(conn):
            for statement in MIGRATIONS[target - 1].split(";"):
                if statement.strip():
                    conn.execute(statement)
            if version == 0 and target == 1:
                conn.execute(
                    "INSERT INTO events (id, ts, layer, kind, verdict) VALUES (?, ?, ?, ?, ?)",
                    (new_id(), time.time(), "store", STORE_CREATED, "info"),
                )
            conn.execute(f"PRAGMA user_version = {target}")


def created_at(conn: sqlite3.Connection) -> float | None:
    """When this store was created (None for stores made before the marker existed)."""
    row = conn.execute("SELECT MIN(ts) FROM events WHERE kind = ?", (STORE_CREATED,)).fetchone()
    return row[0] if row else None


def shed_counts(conn: sqlite3.Connection, since: float, until: float) -> dict[str, int]:
    """Events shed per layer in [since, until) (the `shed` table); a read like created_at,
    here so the report reads both without the Event model."""
    rows = conn.execute(
        "SELECT layer, SUM(count) FROM shed WHERE ts >= ? AND ts < ? GROUP BY layer", (since, until)
    )
    return {layer: int(n) for layer, n in rows}
