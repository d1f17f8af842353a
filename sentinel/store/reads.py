"""Reading events back: a time window (optionally one layer) and the latest of a kind before a
moment (the shed counts: schema.py). Rows come back as `Event`s with their detail decoded."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from sentinel.store.model import COLUMNS, Event
from sentinel.store.schema import STORE_CREATED

_DETAIL = COLUMNS.index("detail")
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM events"


def query(
    conn: sqlite3.Connection, since: float, until: float, layer: str | None = None
) -> list[Event]:
    sql = f"{_SELECT} WHERE ts >= ? AND ts < ? AND kind != ?"
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
    sql = f"{_SELECT} WHERE kind = ? AND ts < ? ORDER BY ts DESC"
    row = conn.execute(sql + " LIMIT 1", (kind, ts)).fetchone()
    return [] if row is None else [_event(row)]
