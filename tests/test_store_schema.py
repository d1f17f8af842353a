"""The store's schema 4 (integer rowid key, the UUIDv4 id an unindexed column, fold updates
found by (ts, id)) on real SQLite files: a store written by the schema 3 writer
(tests/data/store_v3.db, made by `EventStore` of the tree before schema 4) is read as it is by
readers and migrated by the next writer, with every row, rowid and count kept; and the store
redacts each event once, never letting an unredacted one reach the file."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest

from sentinel.evidence import report as rep
from sentinel.redact import add_secret
from sentinel.run.context import Context
from sentinel.run.services import put_each
from sentinel.store import events as ev
from sentinel.store import model, rows
from sentinel.store.events import Event, EventStore

V3 = Path(__file__).parent / "data" / "store_v3.db"
T = 1_780_000_000.0  # the times the v3 file's events carry
FOLDED = "11111111-1111-4111-8111-111111111111"  # a kernel attempt with a fold update (4 pkts)
APPLIED = {"mode": "audit", "ruleset_sha256": "r" * 64, "applied_at": T - 100, "pins": {}}
KERNEL = {"present": True, "sha256": "r" * 64, "nflog_packets": {4: 5, 6: 0}, "set_counters": {}}
WINDOW = rep.Window(T - 60, T + 60)
COUNTS = ("attempts_total", "attempts_by_layer", "external_calls", "blocked_attempts",
          "unaccounted_packets", "attempts_by_destination")  # fmt: skip


@pytest.fixture
def v3(tmp_path):
    path = tmp_path / "events.db"
    shutil.copyfile(V3, path)
    return path


def _rows(path: Path) -> list[tuple]:
    conn = sqlite3.connect(ev.readonly_uri(path), uri=True)
    try:
        return conn.execute(
            "SELECT rowid, id, ts, layer, kind, verdict, packets, last_ts, detail FROM events "
            "ORDER BY rowid"
        ).fetchall()
    finally:
        conn.close()


def _version(path: Path) -> int:
    conn = sqlite3.connect(ev.readonly_uri(path), uri=True)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def _report(path: Path) -> dict:
    got = rep.build_report(WINDOW, path, APPLIED, KERNEL)
    return {k: got[k] for k in COUNTS} | {"ids": [a["id"] for a in got["attempts"]]}


def test_a_schema_3_store_is_read_as_it_is(v3):
    before = hashlib.sha256(v3.read_bytes()).hexdigest()
    assert _version(v3) == 3
    got = _report(v3)
    assert got["attempts_total"] == 3 and got["external_calls"] == 1  # guard + kernel joined
    assert got["unaccounted_packets"] == 0  # 4 + 1 kernel packets stored of the 5 counted
    conn = ev.connect(v3, readonly=True)
    assert {e.id: e.packets for e in ev.query(conn, T - 1, T + 10)}[FOLDED] == 4
    conn.close()
    assert hashlib.sha256(v3.read_bytes()).hexdigest() == before  # readers never migrate
    assert _version(v3) == 3


def test_the_next_writer_migrates_a_schema_3_store_keeping_every_row(v3):
    rows, report, marker = _rows(v3), _report(v3), None
    conn = ev.connect(v3, readonly=True)
    marker = ev.created_at(conn)
    conn.close()
    store = EventStore(v3, retention=3650 * 86400).start()  # migrates 3 -> 4 first
    kernel = next(e for e in ev.query(store._conn, T - 1, T + 1) if e.id == FOLDED)
    assert store.put(replace(kernel, packets=6, last_ts=T + 3))  # a later fold update
    fresh = Event(layer="netfilter", kind="egress_attempt", dst_ip="198.18.5.9", ts=T + 30)
    assert store.put(fresh)
    assert store.flush()
    store.stop()
    assert _version(v3) == 4
    after = _rows(v3)
    assert [r[0] for r in after[: len(rows)]] == [r[0] for r in rows]  # rowids kept
    want = [r if r[1] != FOLDED else (*r[:6], 6, T + 3, r[8]) for r in rows]
    assert after[: len(rows)] == want  # the update found the migrated row: no second one
    assert after[len(rows)][1] == fresh.id and len(after) == len(rows) + 1
    conn = ev.connect(v3, readonly=True)
    assert ev.created_at(conn) == marker
    assert conn.execute("SELECT COUNT(*) FROM writers").fetchone()[0] == 2  # both sessions
    indexes = {
        name: [c[2] for c in conn.execute(f"PRAGMA index_info({name})")]
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        if not name.startswith("sqlite_autoindex_writers")
    }
    unique = {r[1]: r[2] for r in conn.execute("PRAGMA index_list(events)")}
    conn.close()
    assert indexes == {
        "events_ts": ["ts", "id"],  # no index on the id alone: its random keys cost ingest
        "events_layer_ts": ["layer", "ts"],
        "events_kind_ts": ["kind", "ts"],
        "shed_ts": ["ts"],
    }
    assert unique["events_ts"] == 1
    migrated = _report(v3)
    assert migrated["attempts_total"] == report["attempts_total"] + 1
    assert migrated["unaccounted_packets"] == 0 and migrated["ids"][:-1] == report["ids"]
    assert [d["packets"] for d in migrated["attempts_by_destination"]
            if d["destination"] == "198.18.5.5:443/tcp"] == [6]  # fmt: skip


def test_a_new_store_is_schema_4_and_its_rowids_follow_the_writes(tmp_path):
    path = tmp_path / "events.db"
    store = EventStore(path).start()
    events = [Event(layer="netfilter", kind="egress_attempt", dst_port=i) for i in range(50)]
    assert all(store.put(e) for e in events)
    assert store.flush()
    store.stop()
    assert _version(path) == ev.SCHEMA_VERSION == 4
    stored = [r[1] for r in _rows(path) if r[4] != ev.STORE_CREATED]
    assert stored == [e.id for e in events]


def test_an_update_is_the_same_ts_and_id_a_repeat_is_stored_once(tmp_path):
    conn = ev.connect(tmp_path / "e.db")
    first = Event(layer="netfilter", kind="egress_attempt", dst_port=1, ts=T)
    ev.write_events(conn, [first, first], {})  # twice in one batch
    ev.write_events(conn, [first], {})  # and again later
    ev.write_events(conn, [replace(first, packets=3, last_ts=T + 2)], {})
    # the same id at another time is another sighting (a guard message sent again later):
    # stored as its own row, never over the first one's counts
    ev.write_events(conn, [replace(first, ts=T + 50)], {})
    got = [(e.ts, e.packets) for e in ev.query(conn, 0, T + 100) if e.id == first.id]
    conn.close()
    assert got == [(T, 3), (T + 50, 1)]


@pytest.mark.parametrize("at", [0, 1, rows.MULTI - 1, rows.MULTI, 2 * rows.MULTI + 7])
def test_a_stored_row_inside_a_many_row_statement_is_updated_every_other_row_once(tmp_path, at):
    # rows go MULTI to an INSERT: one already stored (a fold update) anywhere in a statement
    # rolls that statement back whole, and from there the batch is upserted, every row once
    conn = ev.connect(tmp_path / "e.db")
    n = 3 * rows.MULTI + 11
    events = [Event("netfilter", "egress_attempt", dst_port=i, ts=T + i) for i in range(n)]
    ev.write_events(conn, [events[at]], {})
    batch = list(events)
    batch[at] = replace(events[at], packets=7, last_ts=T + at + 1)
    ev.write_events(conn, batch, {})
    got = [(e.id, e.packets) for e in ev.query(conn, 0, T + n + 1) if e.kind == "egress_attempt"]
    conn.close()
    assert sorted(got) == sorted((e.id, 7 if i == at else 1) for i, e in enumerate(events))


def test_a_value_sqlite_cannot_hold_in_a_many_row_statement_fails_no_row(tmp_path):
    conn = ev.connect(tmp_path / "e.db")
    n = 2 * rows.MULTI + 3
    events = [Event("netfilter", "egress_attempt", dst_port=i, ts=T + i) for i in range(n)]
    events[rows.MULTI + 2] = replace(events[rows.MULTI + 2], dst_port=2**70)
    ev.write_events(conn, events, {})
    got = {e.id: e.dst_port for e in ev.query(conn, 0, T + n + 1) if e.kind == "egress_attempt"}
    conn.close()
    assert set(got) == {e.id for e in events} and got[events[rows.MULTI + 2].id] is None
    assert sum(1 for p in got.values() if p is not None) == n - 1


SECRET = "sk-proj-ABCDEFGHIJKLMNOPQRSTUV"


def _secret_event() -> Event:
    return Event("dns", "dns_refused", protocol="dns", dst_name=f"{SECRET}.example.org",
                 detail={"api_token": "hunter2hunter2"})  # fmt: skip


def _on_disk(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def test_the_store_redacts_what_the_bus_did_not_and_only_that(tmp_path, monkeypatch):
    add_secret("hunter2hunter2")
    calls: list[str] = []
    real = model.redact_event

    def counted(event: Event) -> Event:
        calls.append(event.id)
        return real(event)

    monkeypatch.setattr(model, "redact_event", counted)  # the store's redaction
    monkeypatch.setattr("sentinel.run.context.redact_event", counted)  # the bus's
    path = tmp_path / "events.db"
    store = EventStore(path).start()
    ctx = Context(None, tmp_path, "nft", sinks=[store.put])  # type: ignore[arg-type]
    through_bus, direct = _secret_event(), _secret_event()
    ctx.emit(through_bus)  # redacted by the bus once; the store keeps that event as it is
    assert calls == [through_bus.id]
    store.put(direct)  # straight to the store (no bus): the store redacts it
    assert calls == [through_bus.id, direct.id]
    assert store.flush()
    on_disk = _on_disk(path)  # the database, its WAL and shared memory, before the close
    store.stop()
    conn = ev.connect(path, readonly=True)
    stored = {e.id: e for e in ev.query(conn, 0, time.time() + 1)}
    conn.close()
    assert set(stored) == {through_bus.id, direct.id}
    for e in stored.values():
        assert SECRET not in e.dst_name and "hunter2" not in str(e.detail)
    for raw in (on_disk, _on_disk(path)):
        assert SECRET.encode() not in raw and b"hunter2hunter2" not in raw


def test_an_event_equal_to_the_bus_one_but_not_it_is_still_redacted(tmp_path):
    # identity, not equality: a copy of the bus's event made elsewhere is not trusted
    path = tmp_path / "events.db"
    store = EventStore(path).start()
    event = _secret_event()
    token = model.BUS_REDACTED.set(replace(event))  # an equal, different object
    try:
        store.put(event)
    finally:
        model.BUS_REDACTED.reset(token)
    assert store.flush()
    store.stop()
    assert SECRET.encode() not in _on_disk(path)


def test_put_many_redacts_a_batch_that_is_not_the_bus_one(tmp_path):
    # `put_many` without redacted=True (anything but the bus' batch form): each event with
    # free text is redacted before it is queued; a batch through the bus is stored as it is
    add_secret("hunter2hunter2")
    path = tmp_path / "events.db"
    store = EventStore(path).start()
    ctx = Context(None, tmp_path, "nft")  # type: ignore[arg-type]
    ctx.add_sink(store.put, many=put_each(store))
    sighting = Event("netfilter", "egress_attempt", dst_ip="198.18.5.5", dst_port=443)
    direct = [_secret_event(), sighting, _secret_event()]
    through_bus = [_secret_event(), _secret_event()]
    assert store.put_many(direct) == 3
    ctx.emit_many(through_bus)
    assert store.flush()
    on_disk = _on_disk(path)
    store.stop()
    conn = ev.connect(path, readonly=True)
    stored = {e.id: e for e in ev.query(conn, 0, time.time() + 1)}
    conn.close()
    assert {e.id for e in direct + through_bus} <= set(stored)
    assert stored[sighting.id] == sighting
    for e in [e for e in direct + through_bus if e is not sighting]:
        assert SECRET not in stored[e.id].dst_name and "hunter2" not in str(stored[e.id].detail)
    for raw in (on_disk, _on_disk(path)):
        assert SECRET.encode() not in raw and b"hunter2hunter2" not in raw


def test_a_detail_is_stored_as_json_dumps_writes_it_and_a_cycle_still_raises():
    odd = object()
    details = [
        {"qtype": "A"},
        {"b": [1.5, None, True], "a": {"z": 'é\n"<', "y": float("nan")}, "o": odd},
        {"inf": float("inf"), "big": 2**70, "t": (1, 2)},
    ]
    cyclic: dict = {"n": 1}
    cyclic["self"] = cyclic
    for detail in (*details, cyclic, *details):  # after the failure: still the same text
        if detail is cyclic:
            with pytest.raises(ValueError, match="Circular"):
                rows._row(Event("dns", "dns_refused", detail=detail))
            continue
        want = json.dumps(detail, sort_keys=True, default=str)
        assert rows._row(Event("dns", "dns_refused", detail=detail))[-1] == want
