"""A fresh deployment's first report: the time before its state dir's store existed is not a
coverage gap (compose, first minutes after `up`), but everything after it still is."""

from __future__ import annotations

import time

from sentinel.evidence import report as rep
from sentinel.store import events as ev
from tests.test_report import APPLIED, KERNEL, beat


def _store(tmp_path, beats_from: float, until: float):
    path = tmp_path / "events.db"
    conn = ev.connect(path)  # a new store: records when it was created
    created = ev.created_at(conn)
    beats = [beat(t) for t in range(int(beats_from), int(until), 5)]
    ev.write_events(conn, beats, {})
    conn.close()
    return path, created


def _report(path, now):
    applied = {**APPLIED, "applied_at": now - 30}
    kernel = {**KERNEL, "nflog_packets": {4: 0, 6: 0}}  # nothing blocked: all accounted
    return rep.build_report(rep.Window(now - 600, now), path, applied=applied, kernel=kernel)


def test_time_before_the_store_existed_is_not_a_gap(tmp_path):
    now = time.time()
    path, created = _store(tmp_path, now - 1, now + 60)  # beats from the store's first second
    report = _report(path, now + 60)
    detail = report["coverage_detail"]
    assert report["coverage"] == "complete", detail["problems"]
    assert detail["monitor_gaps"] == []
    assert detail["before_store_seconds"] >= 530  # the window reached ~9 min before it
    assert detail["store_created"] == rep._iso(created)


def test_a_gap_after_the_store_existed_still_counts(tmp_path):
    now = time.time()
    path, _ = _store(tmp_path, now + 40, now + 90)  # 40 s with nothing watching after creation
    report = _report(path, now + 90)
    assert report["coverage"] == "partial"
    (gap,) = report["coverage_detail"]["monitor_gaps"]
    assert 38 <= gap["seconds"] <= 41, gap


def test_an_empty_fresh_store_is_never_complete(tmp_path):
    now = time.time()
    path, _ = _store(tmp_path, now, now)  # created, no heartbeat at all
    report = _report(path, now + 1)
    assert report["coverage"] == "partial"
    assert "no monitor heartbeat in the window" in report["coverage_detail"]["problems"]


def test_retention_keeps_the_creation_marker(tmp_path):
    now = time.time()
    path, created = _store(tmp_path, now, now + 20)
    conn = ev.connect(path)
    assert ev.prune(conn, retention=1, now=now + 3600) >= 4
    assert ev.created_at(conn) == created
    conn.close()


def test_stores_without_the_marker_are_judged_as_before(tmp_path):
    now = time.time()
    path, _ = _store(tmp_path, now, now + 60)
    conn = ev.connect(path)
    with ev.transaction(conn):
        conn.execute("DELETE FROM events WHERE kind = ?", (ev.STORE_CREATED,))
    conn.close()
    report = _report(path, now + 60)
    assert report["coverage"] == "partial"  # ~9 min before the first heartbeat: unvouched


def test_unaccounted_kernel_packets_make_coverage_partial():
    # seen under a real engine: a SIGKILLed sentinel restarted within one heartbeat gap; the 5
    # packets blocked meanwhile were in the kernel's NFLOG counters only
    from tests.test_report import NOW

    beats = [beat(t) for t in range(int(NOW - 60), int(NOW), 5)]
    window = rep.Window(NOW - 60, NOW)
    for unaccounted, coverage in ((0, "complete"), (5, "partial")):
        check = {"checked": True, "unaccounted_packets": unaccounted}
        report = rep.assemble(window, beats, {}, check, KERNEL, APPLIED)
        assert report["coverage"] == coverage, report["coverage_detail"]["problems"]
