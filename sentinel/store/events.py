"""One event schema for every layer (netfilter, dns, guard, tamper, ...), and its store.

The store is SQLite in WAL mode under the state directory. Writers never block: `put()` drops
the event into a bounded queue and returns; a single writer thread commits batches in one
transaction each. When the queue is full the event is shed and counted, and the count itself is
written to the database so the report can show it. An event whose id is already stored is an
update (the monitor folds retransmits and raises the packet count later); it replaces the row.
"""

from __future__ import annotations

import json
import math
import operator
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sentinel.errors import EXIT_BAD_INPUT, EXIT_VIOLATION, SentinelError

LAYERS = ("netfilter", "dns", "guard", "tamper", "sentinel", "canary")
VERDICTS = ("blocked", "audited", "info")
DB_NAME = "events.db"
SCHEMA_VERSION = 2
STORE_CREATED = "store_created"  # one row, written when the store is made (see migrate)
DEFAULT_QUEUE = 50_000
DEFAULT_RETENTION = 7 * 86400.0


def destination_text(
    name: str | None, ip: str | None, port: int | None, protocol: str | None
) -> str:
    """The one way a destination is written (reports, alerts, explain): host:port/protocol,
    an IPv6 literal in brackets, '?' for what is unknown."""
    host = name or ip or "?"
    if ":" in host:
        host = f"[{host}]"
    port_text = f":{port}" if port is not None else ""
    return f"{host}{port_text}/{protocol or '?'}"


@dataclass(frozen=True)
class Event:
    layer: str  # one of LAYERS
    kind: str  # "egress_attempt", "dns_refused", "tamper", "pin_changed", "reload_rejected", ...
    verdict: str = "blocked"  # blocked | audited | info
    protocol: str | None = None  # tcp | udp | icmp | icmpv6 | dns
    dst_ip: str | None = None
    dst_port: int | None = None
    dst_name: str | None = None  # when known (DNS layer, guard)
    packets: int = 1
    pid: int | None = None
    exe: str | None = None
    stack: str | None = None  # the Python frame that made the call (guard)
    detail: dict[str, Any] = field(default_factory=dict, hash=False)
    ts: float = field(default_factory=time.time)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))  # also the correlation id
    family: int | None = None  # 4 | 6 (network layer)
    src_ip: str | None = None
    src_port: int | None = None
    last_ts: float | None = None  # last folded packet (retransmits), None = single packet

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def redact_event(event: Event) -> Event:
    """The event as it may be stored: secrets, e-mails, phones masked and user ids hashed in
    its free-text fields (name, executable, stack, detail). Addresses, ports and ids stay."""
    from sentinel.redact import redact_obj, redact_text

    if not (event.dst_name or event.exe or event.stack or event.detail):
        return event  # a kernel sighting: nothing free-text to redact (the hot path)
    return replace(
        event,
        dst_name=redact_text(event.dst_name) if event.dst_name else event.dst_name,
        exe=redact_text(event.exe) if event.exe else event.exe,
        stack=redact_text(event.stack) if event.stack else event.stack,
        detail=redact_obj(event.detail) if event.detail else event.detail,
    )


COLUMNS = tuple(f.name for f in fields(Event))

# Index i holds the script that takes the schema from version i to i + 1.
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
)
assert len(MIGRATIONS) == SCHEMA_VERSION


def db_path(directory: Path | None = None) -> Path:
    from sentinel.store.state import state_dir

    return (directory or state_dir()) / DB_NAME


def readonly_uri(path: Path) -> str:
    """A `mode=ro` URI that never creates, migrates or changes anything. Without a -wal file
    (the writer closed cleanly) the file is also `immutable`, so SQLite does not leave -wal
    and -shm files behind; with one (a writer is running, or was killed) they already exist."""
    wal = path.with_name(path.name + "-wal")
    return f"file:{quote(str(path))}?mode=ro" + ("" if wal.exists() else "&immutable=1")


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    """A connection with the schema migrated (writers) or checked (readers). A reader never
    creates a missing store; a damaged one is an error with exit code 2."""
    try:
        if readonly:
            conn = sqlite3.connect(readonly_uri(path), uri=True, timeout=10)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints
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
    for target in range(version + 1, SCHEMA_VERSION + 1):
        with transaction(conn):
            for statement in MIGRATIONS[target - 1].split(";"):
                if statement.strip():
                    conn.execute(statement)
            if version == 0 and target == 1:
                conn.execute(
                    "INSERT INTO events (id, ts, layer, kind, verdict) VALUES (?, ?, ?, ?, ?)",
                    (str(uuid.uuid4()), time.time(), "store", STORE_CREATED, "info"),
                )
            conn.execute(f"PRAGMA user_version = {target}")
    return SCHEMA_VERSION


def created_at(conn: sqlite3.Connection) -> float | None:
    """When this store was created (None for stores made before the marker existed)."""
    row = conn.execute("SELECT MIN(ts) FROM events WHERE kind = ?", (STORE_CREATED,)).fetchone()
    return row[0] if row else None


_VALUES = operator.attrgetter(*COLUMNS)  # one C call for every column (asdict deep-copies)
_DETAIL = COLUMNS.index("detail")
_encode = json.JSONEncoder(sort_keys=True, default=str).encode  # = json.dumps(..., same args)


def _row(event: Event) -> tuple:
    values = list(_VALUES(event))
    values[_DETAIL] = _encode(event.detail) if event.detail else "{}"
    return tuple(values)


_INT64 = 2**63


def _storable(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int):
        return -_INT64 <= value < _INT64
    return value is None or isinstance(value, str)


def _clean(column: str, value: Any) -> Any:
    """A value SQLite cannot hold (NaN, inf, an integer past 64 bits, an odd type) must not
    fail the batch it is in: the time becomes now, anything else NULL (or text for strings)."""
    if _storable(value):
        return value
    if column == "ts":
        return time.time()
    if column == "packets":
        return 1
    if column in ("layer", "kind", "verdict"):
        return str(value)
    return None


def _clean_row(row: tuple) -> tuple:
    return tuple(_clean(c, v) for c, v in zip(COLUMNS, row, strict=True))


_UPSERT = (
    f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
    "ON CONFLICT(id) DO UPDATE SET packets = excluded.packets, last_ts = excluded.last_ts, "
    "detail = excluded.detail"
)


def write_events(conn: sqlite3.Connection, events: list[Event], shed: dict[str, int]) -> None:
    rows = [_row(e) for e in events]
    if not all(math.isfinite(e.ts) for e in events):  # NaN binds as NULL, inf hides the row
        rows = [_clean_row(r) for r in rows]
    with transaction(conn):
        try:
            conn.executemany(_UPSERT, rows)
        except (OverflowError, ValueError, TypeError, sqlite3.IntegrityError):
            # one value SQLite cannot hold (an integer past 64 bits, ...) must not fail the
            # batch: the rows already written are upserted again, the rest stored cleaned
            conn.executemany(_UPSERT, [_clean_row(r) for r in rows])
        now = time.time()
        conn.executemany(
            "INSERT INTO shed (ts, layer, count) VALUES (?, ?, ?)",
            [(now, layer, n) for layer, n in shed.items() if n],
        )


PRUNE_CHUNK = 5000  # rows per prune transaction: new events commit between chunks


def prune(
    conn: sqlite3.Connection, retention: float, now: float | None = None, limit: int | None = None
) -> int:
    """Delete events older than the retention; at most `limit` (oldest first) when given."""
    cutoff = (now or time.time()) - retention
    with transaction(conn):
        if limit is None:
            gone = conn.execute(
                "DELETE FROM events WHERE ts < ? AND kind != ?", (cutoff, STORE_CREATED)
            ).rowcount
        else:
            gone = conn.execute(
                "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events WHERE ts < ? "
                "AND kind != ? ORDER BY ts LIMIT ?)",
                (cutoff, STORE_CREATED, limit),
            ).rowcount
        conn.execute("DELETE FROM shed WHERE ts < ?", (cutoff,))
    return gone


def query(
    conn: sqlite3.Connection, since: float, until: float, layer: str | None = None
) -> list[Event]:
    sql = f"SELECT {', '.join(COLUMNS)} FROM events WHERE ts >= ? AND ts < ? AND kind != ?"
    args: list[Any] = [since, until, STORE_CREATED]  # the marker is not an event: created_at()
    if layer:
        sql += " AND layer = ?"
        args.append(layer)
    return [_event(values) for values in conn.execute(sql + " ORDER BY ts", args)]


def _event(values: tuple) -> Event:
    """A row (COLUMNS order = the dataclass's field order) -> Event, detail decoded."""
    row = list(values)
    detail = row[_DETAIL]
    row[_DETAIL] = json.loads(detail) if detail and detail != "{}" else {}
    return Event(*row)


def last_before(conn: sqlite3.Connection, kind: str, ts: float) -> list[Event]:
    """The latest event of `kind` before `ts` (a baseline reading), as a 0- or 1-item list."""
    sql = f"SELECT {', '.join(COLUMNS)} FROM events WHERE kind = ? AND ts < ? ORDER BY ts DESC"
    row = conn.execute(sql + " LIMIT 1", (kind, ts)).fetchone()
    return [] if row is None else [_event(row)]


def shed_counts(conn: sqlite3.Connection, since: float, until: float) -> dict[str, int]:
    rows = conn.execute(
        "SELECT layer, SUM(count) FROM shed WHERE ts >= ? AND ts < ? GROUP BY layer", (since, until)
    )
    return {layer: int(n) for layer, n in rows}


class EventStore:
    """Non-blocking writer: `put()` never waits; a thread commits batches."""

    def __init__(
        self,
        path: Path | None = None,
        maxsize: int = DEFAULT_QUEUE,
        retention: float = DEFAULT_RETENTION,
        batch: int = 2000,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.path = path or db_path()
        self.retention = retention
        self.batch = batch
        self.on_error = on_error
        self._queue: queue.Queue[Event | None] = queue.Queue(maxsize=maxsize)
        self._shed: dict[str, int] = {}  # not yet persisted
        self._lock = threading.Lock()
        self._counts = {"put": 0, "written": 0, "shed": 0, "batches": 0, "errors": 0}
        self._max_depth = 0
        self._conn = connect(self.path)  # fail early, in the caller's thread
        self._thread = threading.Thread(target=self._run, name="event-store", daemon=True)
        self._started = False
        self.last_loop = time.monotonic()

    def start(self) -> EventStore:
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def put(self, event: Event) -> bool:
        """Queue an event, redacted; False (and counted) when the queue is full. Never blocks."""
        try:
            self._queue.put_nowait(redact_event(event))
        except queue.Full:
            with self._lock:
                self._shed[event.layer] = self._shed.get(event.layer, 0) + 1
                self._counts["shed"] += 1
            return False
        depth = self._queue.qsize()
        with self._lock:
            self._counts["put"] += 1
            self._max_depth = max(self._max_depth, depth)
        return True

    __call__ = put  # usable directly as an emit callback

    def stats(self) -> dict[str, int]:
        with self._lock:
            depth = self._queue.qsize()
            return {**self._counts, "queue_depth": depth, "max_depth": self._max_depth}

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is committed (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    def stop(self, timeout: float = 10.0) -> None:
        if self._started and self._thread.is_alive():
            self.flush(timeout)
            self._queue.put(None)  # may wait briefly: stop is not on the hot path
            self._thread.join(timeout)
        self._conn.close()

    def _run(self) -> None:
        next_prune = 0.0
        while True:
            self.last_loop = time.monotonic()  # the watchdog's sign of life
            try:
                first = self._queue.get(timeout=0.5)
            except queue.Empty:
                first = ...
            items = [] if first is ... else [first]
            while len(items) < self.batch:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in items
            events = [e for e in items if isinstance(e, Event)]
            try:
                self._commit(events)
            except Exception as exc:  # noqa: BLE001 - the writer must outlive any one batch
                self._lost(events, exc)
            for _ in items:
                self._queue.task_done()
            if time.monotonic() >= next_prune:  # in chunks: a big prune never holds up events
                next_prune = time.monotonic() + (0 if self._prune_chunk() else 60)
            if stop:
                return

    def _prune_chunk(self) -> bool:
        """One chunk of retention pruning; True when there may be more to delete."""
        gone: list[int] = []
        self._guard(lambda: gone.append(prune(self._conn, self.retention, limit=PRUNE_CHUNK)))
        return bool(gone) and gone[0] >= PRUNE_CHUNK

    def _commit(self, events: list[Event]) -> None:
        with self._lock:
            shed, self._shed = self._shed, {}
        if not events and not shed:
            return
        if self._guard(lambda: write_events(self._conn, events, shed)):
            with self._lock:
                self._counts["written"] += len(events)
                self._counts["batches"] += 1
        else:  # the batch is lost: count it as shed so the report shows it
            with self._lock:
                for e in events:
                    self._shed[e.layer] = self._shed.get(e.layer, 0) + 1
                self._counts["shed"] += len(events)
                for layer, n in shed.items():
                    self._shed[layer] = self._shed.get(layer, 0) + n

    def _lost(self, events: list[Event], exc: Exception) -> None:
        with self._lock:
            for e in events:
                self._shed[e.layer] = self._shed.get(e.layer, 0) + 1
            self._counts["shed"] += len(events)
            self._counts["errors"] += 1
        if self.on_error:
            self.on_error(exc)

    def _guard(self, fn: Callable[[], Any]) -> bool:
        try:
            fn()
            return True
        except (sqlite3.Error, ValueError, OverflowError, TypeError) as exc:
            with self._lock:
                self._counts["errors"] += 1
            if self.on_error:
                self.on_error(exc)
            time.sleep(0.1)  # a locked or full database: do not spin
            return False


def store_service(ctx: Any) -> EventStore:
    """Factory for `run.services.SERVICES`: the store subscribes to the context's event bus."""
    store = EventStore(db_path(), retention=ctx.policy.monitor.retention)
    ctx.add_sink(store.put)
    return store
