"""The event store: real SQLite files, no root."""

from __future__ import annotations

import sqlite3
import time

import pytest

from sentinel.errors import SentinelError
from sentinel.store import events as ev
from sentinel.store.events import Event, EventStore


def _attempt(**kw) -> Event:
    base = dict(
        layer="netfilter",
        kind="egress_attempt",
        protocol="tcp",
        dst_ip="198.18.5.5",
        dst_port=443,
        family=4,
    )
    return Event(**{**base, **kw})


def test_roundtrip_and_update_by_id(tmp_path):
    store = EventStore(tmp_path / "e.db").start()
    first = _attempt(detail={"icmp_type": None, "note": "x"})
    assert store.put(first)
    assert store.put(Event(layer="dns", kind="dns_refused", protocol="dns", dst_name="evil.test"))
    assert store.flush()
    # the fold update: same id, more packets
    from dataclasses import replace

    store.put(replace(first, packets=3, last_ts=first.ts + 1))
    assert store.flush()
    store.stop()
    conn = ev.connect(tmp_path / "e.db", readonly=True)
    got = ev.query(conn, 0, time.time() + 1)
    assert len(got) == 2
    stored = next(e for e in got if e.id == first.id)
    assert stored.packets == 3 and stored.last_ts == pytest.approx(first.ts + 1)
    assert stored.detail == {"icmp_type": None, "note": "x"} and stored.family == 4
    assert ev.query(conn, 0, time.time() + 1, layer="dns")[0].dst_name == "evil.test"


def test_wal_mode_and_schema_version(tmp_path):
    ev.connect(tmp_path / "e.db").close()
    conn = sqlite3.connect(tmp_path / "e.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == ev.SCHEMA_VERSION


def test_newer_schema_is_refused(tmp_path):
    ev.connect(tmp_path / "e.db").close()
    conn = sqlite3.connect(tmp_path / "e.db")
    conn.execute(f"PRAGMA user_version = {ev.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SentinelError, match="newer"):
        ev.connect(tmp_path / "e.db")


def test_full_queue_sheds_without_blocking_and_counts_it(tmp_path):
    store = EventStore(tmp_path / "e.db", maxsize=5)  # writer not started: the queue fills
    start = time.monotonic()
    results = [store.put(_attempt()) for _ in range(50)]
    assert time.monotonic() - start < 0.5  # never blocks
    assert results.count(True) == 5 and results.count(False) == 45
    assert store.stats()["shed"] == 45
    store.start()
    assert store.flush()
    store.put(_attempt())  # another batch persists the shed count
    assert store.flush()
    store.stop()
    conn = ev.connect(tmp_path / "e.db", readonly=True)
    assert ev.shed_counts(conn, 0, time.time() + 1) == {"netfilter": 45}
    assert len(ev.query(conn, 0, time.time() + 1)) == 6


def test_retention_prunes_old_rows(tmp_path):
    conn = ev.connect(tmp_path / "e.db")
    now = time.time()
    ev.write_events(conn, [_attempt(ts=now - 100), _attempt(ts=now - 1)], {"dns": 2})
    assert ev.prune(conn, retention=50, now=now) == 1
    assert len(ev.query(conn, 0, now + 1)) == 1


def test_prune_with_a_limit_removes_the_oldest_first(tmp_path):
    conn = ev.connect(tmp_path / "e.db")
    now = time.time()
    ev.write_events(conn, [_attempt(ts=now - 100 - i) for i in range(5)], {})
    assert ev.prune(conn, retention=50, now=now, limit=2) == 2
    left = sorted(e.ts for e in ev.query(conn, 0, now + 1))
    assert left == sorted(now - 100 - i for i in range(3))  # the two oldest went first


def test_store_prunes_a_big_backlog_in_chunks_and_keeps_new_events(tmp_path):
    path = tmp_path / "e.db"
    conn = ev.connect(path)
    now = time.time()
    old = [_attempt(ts=now - 1000 - i * 0.001) for i in range(ev.PRUNE_CHUNK * 2 + 7)]
    ev.write_events(conn, old, {})
    conn.close()
    store = ev.EventStore(path, retention=500).start()
    fresh = [_attempt(ts=now) for _ in range(50)]
    for e in fresh:
        assert store.put(e)
    deadline = time.monotonic() + 60
    reader = ev.connect(path, readonly=True)
    while time.monotonic() < deadline:  # chunks follow each other without the 60 s pause
        if len(ev.query(reader, 0, now + 1)) == len(fresh):  # the store_created marker stays
            break
        time.sleep(0.05)
    store.stop()
    assert {e.id for e in ev.query(reader, 0, now + 1)} == {e.id for e in fresh}


def test_failed_transaction_rolls_back(tmp_path):
    conn = ev.connect(tmp_path / "e.db")
    with pytest.raises(RuntimeError), ev.transaction(conn):
        conn.execute("INSERT INTO shed (ts, layer, count) VALUES (1, 'x', 1)")
        raise RuntimeError("boom")
    assert conn.execute("SELECT COUNT(*) FROM shed").fetchone()[0] == 0


def test_store_as_daemon_service(tmp_path, monkeypatch):
    monkeypatch.setenv("SENTINEL_STATE_DIR", str(tmp_path))
    from types import SimpleNamespace

    from sentinel.policy.load import MonitorSettings

    sinks = []
    ctx = SimpleNamespace(policy=SimpleNamespace(monitor=MonitorSettings()), add_sink=sinks.append)
    store = ev.store_service(ctx)
    store.start()
    sinks[0](_attempt())
    assert store.flush()
    store.stop()
    assert (tmp_path / ev.DB_NAME).exists()
