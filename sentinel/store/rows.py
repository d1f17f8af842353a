"""Writing rows: events as upserts (an id already stored is a fold update), shed counts, and
retention pruning in bounded chunks. Every write is one `schema.transaction`."""

from __future__ import annotations

import json
import math
import operator
import sqlite3
import time
from collections.abc import Callable
from itertools import chain
from typing import Any

from sentinel.store.model import COLUMNS, Event
from sentinel.store.schema import STORE_CREATED, transaction
from sentinel.store.sessions import prune_sessions

# A row is every column but detail (one C call; asdict deep-copies), then detail as JSON.
ROW_COLUMNS = (*(c for c in COLUMNS if c != "detail"), "detail")
_VALUES = operator.attrgetter(*ROW_COLUMNS[:-1])
_encode = json.JSONEncoder(sort_keys=True, default=str).encode  # = json.dumps(..., same args)


def _c_encoder() -> Callable[[Any, int], Any] | None:
    """What `_encode` runs inside (libjson's C encoder, the same arguments), made once rather
    than per call as `JSONEncoder.encode` makes it: ~2 us less per event with a detail."""
    make = json.encoder.c_make_encoder
    if make is None:
        return None
    return make({}, str, json.encoder.encode_basestring_ascii, None, ": ", ", ", True, False, True)


_chunks = _c_encoder()


def _encode_detail(detail: Any) -> str:
    """`_encode(detail)`. A value the C encoder refuses (a cycle) may leave its cycle markers
    behind: the encoder is made again and `_encode` gives the answer (or the error) it gave."""
    global _chunks
    if _chunks is not None:
        try:
            return "".join(_chunks(detail, 0))
        except Exception:  # noqa: BLE001 - answered (or raised) by `_encode` below
            _chunks = _c_encoder()
    return _encode(detail)


def _row(event: Event) -> tuple:
    detail = event.detail
    return (*_VALUES(event), _encode_detail(detail) if detail else "{}")


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
    if column in ("id", "layer", "kind", "verdict"):
        return str(value)
    return None


def _clean_row(row: tuple) -> tuple:
    return tuple(_clean(c, v) for c, v in zip(ROW_COLUMNS, row, strict=True))


INSERT = f"INSERT INTO events ({', '.join(ROW_COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
# An event already stored (the same ts and id: a fold update and the event it updates share
# both) is updated in place. Schema 4's unique index events_ts (ts, id) finds it (its keys
# grow with time, so it is written at its end, not at random places as the id alone was); a
# store of schema 1-3 finds it by its id, the primary key there. No conflict target: either.
UPSERT = (
    f"{INSERT} ON CONFLICT DO UPDATE SET packets = excluded.packets, "
    "last_ts = excluded.last_ts, detail = excluded.detail"
)
_ID = ROW_COLUMNS.index("id")
_ID_OF = operator.itemgetter(_ID)
_TS = operator.attrgetter("ts")
_CHANGED = tuple(ROW_COLUMNS.index(c) for c in ("packets", "last_ts", "detail"))


def write_events(
    conn: sqlite3.Connection,
    events: list[Event],
    shed: dict[str, int],
    also: Callable[[sqlite3.Connection], None] | None = None,
) -> None:
    """One transaction: the events (one already stored, the same ts and id, is an update of
    that row), the shed counts since the last one, and `also` (the writer session's counts)."""
    rows = _one_per_id(list(map(_row, events)))
    if not all(map(math.isfinite, map(_TS, events))):  # NaN binds as NULL, inf hides the row
        rows = [_clean_row(r) for r in rows]
    with transaction(conn):
        try:
            _insert(conn, rows)
        except (OverflowError, ValueError, TypeError, sqlite3.IntegrityError):
            # one value SQLite cannot hold (an integer past 64 bits, ...) must not fail the
            # batch: the rows already written are upserted again, the rest stored cleaned
            conn.executemany(UPSERT, [_clean_row(r) for r in rows])
        if shed:
            now = time.time()
            conn.executemany(
                "INSERT INTO shed (ts, layer, count) VALUES (?, ?, ?)",
                [(now, layer, n) for layer, n in shed.items() if n],
            )
        if also is not None:
            also(conn)


def _one_per_id(rows: list[tuple]) -> list[tuple]:
    """A batch holding an id twice (an event and its fold update) becomes one row per id: the
    first one's columns with the last one's changes, in the first one's place."""
    if len(set(map(_ID_OF, rows))) == len(rows):
        return rows
    first: dict[Any, int] = {}
    out: list[tuple] = []
    for r in rows:
        at = first.get(r[_ID])
        if at is None:
            first[r[_ID]] = len(out)
            out.append(r)
            continue
        merged = list(out[at])
        for i in _CHANGED:
            merged[i] = r[i]
        out[at] = tuple(merged)
    return out


# Rows go MULTI to a statement: one statement step (and one release of the GIL, which the
# monitor's thread then takes, and a wait to get it back) per MULTI rows rather than per row.
MULTI = 50
_INSERT_MULTI = f"INSERT INTO events ({', '.join(ROW_COLUMNS)}) VALUES " + ", ".join(
    [f"({', '.join('?' * len(ROW_COLUMNS))})"] * MULTI
)
_STEP = MULTI * len(ROW_COLUMNS)


def _insert(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    """Plain INSERTs (the cheaper statement) until a row is already stored: from the first
    statement holding one on, the batch is upserted (an update of a folded event, or a row
    sent twice). A failed statement is rolled back whole (SQLite's ABORT) and not counted in
    `total_changes`, so what the count says is done is a prefix of the rows."""
    before = conn.total_changes
    whole = len(rows) - len(rows) % MULTI if MULTI > 1 else 0
    try:
        if whole:
            flat = list(chain.from_iterable(rows[:whole]))
            conn.executemany(
                _INSERT_MULTI, [flat[i : i + _STEP] for i in range(0, len(flat), _STEP)]
            )
        conn.executemany(INSERT, rows[whole:])
    except sqlite3.IntegrityError:
        done = conn.total_changes - before
        conn.executemany(UPSERT, rows[done:])


PRUNE_CHUNK = 5000  # the largest chunk the writer deletes in one transaction


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
        prune_sessions(conn, cutoff)
    return gone
