"""A report that opened the store while no writer ran reads it without locks (`immutable`:
nothing of its own is left behind). A daemon that starts meanwhile (its schema migration, its
first batches, a checkpoint into the main file) changes the file under that read: the report
must not print what it read then (a "database disk image is malformed", or counts from torn
pages), but read the store again. Real SQLite files; the writer is the store's own code."""

from __future__ import annotations

import time
import uuid

from sentinel.evidence import report as rep
from sentinel.lab import bigstore
from sentinel.store import events as ev
from sentinel.store.rows import write_events

NOW = time.time()
APPLIED = {"mode": "enforce", "ruleset_sha256": "r" * 64, "applied_at": NOW - 7300, "pins": {}}
KERNEL = {"present": True, "sha256": "r" * 64, "nflog_packets": {4: 10, 6: 0}, "set_counters": {}}
NEW = 20_000  # blocked attempts the daemon writes while the report reads


def _daemon_writes(path) -> None:
    """What a daemon starting on this store does: its writer connection, a prune of old rows,
    batches of new ones, a checkpoint into the main file, then a clean close (no -wal left)."""
    conn = ev.connect(path)
    try:
        with ev.transaction(conn):
            conn.execute("DELETE FROM events WHERE ts < ?", (NOW - 1800,))
        for start in range(0, NEW, 2000):
            batch = [
                ev.Event(layer="netfilter", kind="egress_attempt", verdict="blocked",
                         protocol="tcp", dst_ip="198.18.5.5", dst_port=443,
                         ts=NOW - 30 + (start + i) * 1e-4, id=str(uuid.uuid4()))
                for i in range(2000)
            ]  # fmt: skip
            write_events(conn, batch, {})
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.close()


def test_a_report_reads_again_when_a_writer_changed_the_store_under_it(tmp_path, monkeypatch):
    path = tmp_path / "events.db"
    bigstore.build(path, 30_000, NOW - 60, span=3600, seed=3, dests=40, names=12)
    assert not path.with_name("events.db-wal").exists()  # closed cleanly: read immutable
    assert "immutable=1" in ev.readonly_uri(path)
    real, calls = rep.ev.shed_counts, []

    def shed_counts(conn, since, until):  # the daemon starts once the report has begun
        if not calls:
            _daemon_writes(path)
        calls.append(1)
        return real(conn, since, until)

    monkeypatch.setattr(rep.ev, "shed_counts", shed_counts)
    window = rep.Window(NOW - 3600, NOW)
    got = rep.build_report(window, path, APPLIED, KERNEL)
    monkeypatch.setattr(rep.ev, "shed_counts", real)
    want = rep.build_report(window, path, APPLIED, KERNEL)  # the store as it is now, unchanged
    assert got["blocked_attempts"] == want["blocked_attempts"] >= NEW, (got, want)
    assert got["attempts_total"] == want["attempts_total"]
    assert got["attempts_by_destination"] == want["attempts_by_destination"]
    assert got["attempts"] == want["attempts"]  # the listed records, ids included
