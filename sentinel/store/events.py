"""The event store's public face: one event schema for every layer, and its SQLite store.

The parts live by job: `model` (the Event, ids, redaction), `schema` (the file, migrations,
connections), `rows` (writes and pruning), `reads` (queries) and `writer` (EventStore, the
non-blocking batching writer the daemon feeds). Callers import from here.
"""

from __future__ import annotations

from sentinel.store.model import (
    COLUMNS,
    LAYERS,
    VERDICTS,
    Event,
    destination_text,
    new_id,
    redact_event,
    redact_once,
)
from sentinel.store.reads import _event, last_before, query
from sentinel.store.rows import PRUNE_CHUNK, UPSERT, prune, write_events
from sentinel.store.schema import (
    DB_NAME,
    MIGRATIONS,
    SCHEMA_VERSION,
    STORE_CREATED,
    connect,
    created_at,
    db_path,
    migrate,
    readonly_uri,
    shed_counts,
    transaction,
)
from sentinel.store.writer import DEFAULT_QUEUE, DEFAULT_RETENTION, EventStore, store_service

__all__ = [
    "COLUMNS",
    "DB_NAME",
    "DEFAULT_QUEUE",
    "DEFAULT_RETENTION",
    "LAYERS",
    "MIGRATIONS",
    "PRUNE_CHUNK",
    "SCHEMA_VERSION",
    "STORE_CREATED",
    "UPSERT",
    "VERDICTS",
    "_event",  # a row -> Event (the report's store view reads rows itself)
    "Event",
    "EventStore",
    "connect",
    "created_at",
    "db_path",
    "destination_text",
    "last_before",
    "migrate",
    "new_id",
    "prune",
    "query",
    "readonly_uri",
    "redact_event",
    "redact_once",
    "shed_counts",
    "store_service",
    "transaction",
    "write_events",
]
