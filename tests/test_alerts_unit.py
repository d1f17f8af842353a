"""Pure parts of alerting: severity table, router (dedup, roll-ups, caps, digests, resolves),
the PRD breaker with an injected clock, token bucket, Retry-After parsing, outbox on a real
SQLite file (bound, eviction order, counters, migrations, restart)."""

from __future__ import annotations

import sqlite3

import pytest

from sentinel.alerts.breaker import CLOSED, HALF_OPEN, OPEN, BreakerSettings, CircuitBreaker
from sentinel.alerts.http import OK, REJECTED, RETRY, classify, parse_retry_after
from sentinel.alerts.model import P1, P2, P3, RESOLVE, Alert, severity_of
from sentinel.alerts.outbox import SCHEMA_VERSION, Outbox, OutboxError, migrate
from sentinel.alerts.ratelimit import TokenBucket
from sentinel.alerts.router import Router
from sentinel.store.events import Event


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def attempt(dst="198.18.5.5", port=443, exe="/usr/bin/python3", layer="netfilter", **kw):
    return Event(layer=layer, kind="egress_attempt", dst_ip=dst, dst_port=port, exe=exe, **kw)


# --- severity -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "severity"),
    [
        ("egress_attempt", P1),
        ("tamper", P1),
        ("guard_fail_closed", P1),
        ("monitor_lost", P1),
        ("dns_upstream_failing", P2),
        ("stale_pins", P2),
        ("reload_rejected", P2),
        ("sink_degraded", P2),
        ("queue_saturation", P3),
        ("pin_changed", None),
    ],
)
def test_severity_table(kind, severity):
    assert severity_of(kind) == severity


# --- router ---------------------------------------------------------------------------------
def test_one_attempt_one_alert_then_rollup_with_count():
    r = Router(dedup_window=60)
    first = r.route(attempt(), 0.0)
    assert len(first) == 1 and first[0].count == 1 and not first[0].rollup
    for i in range(999):
        assert r.route(attempt(), 1.0 + i * 0.01) == []
    assert r.tick(59.0) == []
    rollups = r.tick(60.0)
    assert len(rollups) == 1
    roll = rollups[0]
    assert roll.rollup and roll.count == 999 and "999 more egress attempts" in roll.title
    assert roll.dedup_key == first[0].dedup_key  # same PagerDuty incident
    assert roll.correlation_id == first[0].correlation_id
    assert r.stats.deduped == 999 and r.stats.rollups == 1
    assert r.tick(120.0) == []  # quiet window: nothing, entry settled
    assert r.windows == {}


def test_dedup_key_is_destination_layer_process():
    r = Router(dedup_window=60)
    keys = set()
    for ev in (
        attempt(),
        attempt(port=80),
        attempt(layer="guard"),
        attempt(exe="/usr/bin/curl"),
        attempt(),  # duplicate of the first
    ):
        keys |= {a.dedup_key for a in r.route(ev, 1.0)}
    assert len(keys) == 4 and r.stats.alerts == 4 and r.stats.deduped == 1


def test_window_reopens_after_quiet():
    r = Router(dedup_window=10)
    assert len(r.route(attempt(), 0)) == 1
    assert r.tick(10) == []
    assert len(r.route(attempt(), 11)) == 1  # a new window: a new alert


def test_late_tick_settles_old_window_before_new_event():
    r = Router(dedup_window=10)
    r.route(attempt(), 0)
    r.route(attempt(), 1)
    out = r.route(attempt(), 25)  # no tick ran in between
    assert [a.rollup for a in out] == [True] and out[0].count == 1
    assert r.flush(26)[0].count == 1  # the third attempt is not lost


def test_port_scan_is_capped_per_process():
    r = Router(dedup_window=60, per_process_cap=10)
    alerts = []
    for port in range(1, 1001):
        alerts += r.route(attempt(port=port), 1.0)
    assert len(alerts) == 11  # 10 destinations + one "other destinations" alert
    assert alerts[-1].destination == "other destinations"
    roll = [a for a in r.tick(61.0) if a.rollup]
    assert sum(a.count for a in roll) == 1000 - 11


def test_digests_group_p2_and_p3():
    r = Router(dedup_window=60, digest_windows={P2: 100, P3: 200})
    for kind in ("stale_pins", "stale_pins", "reload_rejected", "queue_saturation"):
        assert r.route(Event(layer="dns", kind=kind, verdict="info"), 1.0) == []
    assert r.tick(100.0) == []
    p2 = r.tick(101.0)
    assert len(p2) == 1 and p2[0].severity == P2 and p2[0].count == 3
    assert p2[0].details["counts"] == {"stale_pins": 2, "reload_rejected": 1}
    p3 = r.tick(201.0)
    assert len(p3) == 1 and p3[0].severity == P3 and p3[0].count == 1


def test_resolve_after_quiet_period():
    r = Router(dedup_window=10, resolve_after=100)
    first = r.route(attempt(), 0)[0]
    assert r.tick(50) == []
    out = r.tick(100)
    assert len(out) == 1 and out[0].action == RESOLVE and out[0].dedup_key == first.dedup_key
    assert r.windows == {}


def test_flush_emits_pending_rollups_and_digests():
    r = Router(dedup_window=60)
    r.route(attempt(), 0)
    r.route(attempt(), 1)
    r.route(Event(layer="dns", kind="stale_pins"), 1)
    out = r.flush(2)
    assert sorted((a.severity, a.count) for a in out) == [(P1, 1), (P2, 1)]


def test_alert_text_is_redacted():
    r = Router()
    ev = attempt(dst=None, dst_name="AKIAABCDEFGHIJKLMNOP.exfil.example", exe="/app/run.py")
    ev2 = Event(
        layer="guard",
        kind="egress_attempt",
        dst_name="x.example",
        detail={"url": "https://u:hunter2@x.example/?token=abc", "email": "bob@example.com"},
    )
    a = r.route(ev, 0)[0]
    b = r.route(ev2, 0)[0]
    assert "AKIAABCDEFGHIJKLMNOP" not in a.title + a.to_json()
    text = b.to_json()
    assert "hunter2" not in text and "bob@example.com" not in text


# --- breaker --------------------------------------------------------------------------------
def test_breaker_opens_after_5_consecutive_failures_and_recovers_after_3_successes():
    clock = Clock()
    changes = []
    b = CircuitBreaker(clock=clock, on_change=lambda old, new: changes.append(new))
    for _ in range(4):
        b.record_failure()
    assert b.state == CLOSED
    b.record_failure()
    assert b.state == OPEN and not b.allow()
    clock.advance(29.9)
    assert b.state == OPEN and b.retry_in() == pytest.approx(0.1)
    clock.advance(0.1)
    assert b.state == HALF_OPEN and b.allow()
    b.record_success()
    b.record_success()
    assert b.state == HALF_OPEN
    b.record_success()
    assert b.state == CLOSED
    assert changes == [OPEN, HALF_OPEN, CLOSED]


def test_breaker_half_open_failure_reopens():
    clock = Clock()
    b = CircuitBreaker(clock=clock)
    for _ in range(5):
        b.record_failure()
    clock.advance(30)
    assert b.state == HALF_OPEN
    b.record_success()
    b.record_failure()
    assert b.state == OPEN
    clock.advance(29)
    assert b.state == OPEN
    clock.advance(1)
    assert b.state == HALF_OPEN


def test_breaker_error_rate_above_10_percent_in_a_minute():
    clock = Clock()
    b = CircuitBreaker(clock=clock)
    for _ in range(20):
        b.record_success()
        clock.advance(1)
    b.record_failure()
    b.record_failure()  # 2 of 22 = 9%: not above 10%, stays closed
    assert b.state == CLOSED
    b.record_failure()  # 3 of 23 = 13% > 10%
    assert b.state == OPEN


def test_breaker_error_rate_forgets_calls_older_than_a_minute():
    clock = Clock()
    b = CircuitBreaker(clock=clock)
    for _ in range(3):
        b.record_failure()
        b.record_success()
    clock.advance(61)
    for _ in range(20):
        b.record_success()
    b.record_failure()  # 1 of 21 within the minute
    assert b.state == CLOSED


def test_breaker_needs_min_calls_for_rate():
    b = CircuitBreaker(BreakerSettings(min_calls=10), clock=Clock())
    b.record_success()
    b.record_failure()  # 50% of 2 calls: too few to judge, and not 5 in a row
    assert b.state == CLOSED


# --- rate limit, retry-after ----------------------------------------------------------------
def test_token_bucket():
    clock = Clock()
    bucket = TokenBucket(rate=1.0, burst=1, clock=clock)
    assert bucket.wait_time() == 0
    bucket.take()
    assert bucket.wait_time() == pytest.approx(1.0)
    clock.advance(0.5)
    assert bucket.wait_time() == pytest.approx(0.5)
    clock.advance(0.5)
    assert bucket.wait_time() == 0
    pd = TokenBucket(rate=2.0, burst=2, clock=clock)  # 120/min
    pd.take()
    pd.take()
    assert pd.wait_time() == pytest.approx(0.5)


def test_retry_after_parsing_and_classification():
    assert parse_retry_after("7") == 7
    assert parse_retry_after("100000") == 900  # capped
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert classify(202, {}, "", 0).outcome == OK
    assert classify(400, {}, "bad", 0).outcome == REJECTED
    assert classify(404, {}, "channel_not_found", 0).outcome == REJECTED
    r = classify(429, {"retry-after": "3"}, "", 0)
    assert r.outcome == RETRY and r.retry_after == 3
    assert classify(500, {}, "", 0).outcome == RETRY
    assert classify(503, {"retry-after": "2"}, "", 0).retry_after == 2


# --- outbox ---------------------------------------------------------------------------------
def _alert(severity=P1, title="t") -> Alert:
    return Alert(severity=severity, kind="x", title=title, dedup_key="k", correlation_id="c")


def test_outbox_fifo_by_priority_and_survives_reopen(tmp_path):
    path = tmp_path / "alerts.db"
    box = Outbox(path)
    box.put("slack", _alert(P3, "p3"))
    box.put("slack", _alert(P1, "a"))
    box.put("slack", _alert(P1, "b"))
    box.put("webhook", _alert(P1, "w"))
    box.close()
    box = Outbox(path)
    assert box.pending() == 4 and box.pending("slack") == 3
    order = []
    while (row := box.head("slack")) is not None:
        order.append(row.alert.title)
        box.delivered(row, 0)
    assert order == ["a", "b", "p3"]
    assert box.counter("sent:slack") == 3
    box.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_outbox_bound_evicts_lowest_priority_oldest_and_counts(tmp_path):
    box = Outbox(tmp_path / "a.db", max_rows=3)
    box.put("s", _alert(P1, "p1-old"))
    box.put("s", _alert(P3, "p3"))
    box.put("s", _alert(P1, "p1-mid"))
    assert box.put("s", _alert(P1, "p1-new")) == 1  # evicts the P3
    assert box.put("s", _alert(P1, "p1-newest")) == 1  # then the oldest P1
    titles = []
    while (row := box.head("s")) is not None:
        titles.append(row.alert.title)
        box.delivered(row, box.counter("unreported:s"))
    assert titles == ["p1-mid", "p1-new", "p1-newest"]
    assert box.counter("dropped:s") == 2
    assert box.counter("unreported:s") == 0  # reported by the first delivered alert


def test_outbox_retry_failed_expire(tmp_path):
    clock = Clock()
    box = Outbox(tmp_path / "a.db", max_age=100, clock=clock)
    box.put("s", _alert())
    row = box.head("s")
    box.retry_at(row, clock() + 5)
    row = box.head("s")
    assert row.attempts == 1 and row.next_at == clock() + 5
    box.failed(row)
    assert box.pending("s") == 0 and box.counter("failed:s") == 1
    box.put("s", _alert())
    clock.advance(101)
    assert box.expire("s") == 1 and box.counter("dropped:s") == 1


def test_outbox_migrations(tmp_path):
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    assert migrate(conn) == 0
    assert migrate(conn) == SCHEMA_VERSION  # idempotent
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(OutboxError):
        migrate(conn)


def test_corrupt_outbox_is_moved_aside(tmp_path):
    path = tmp_path / "alerts.db"
    path.write_bytes(b"this is not a database" * 100)
    box = Outbox(path)
    box.put("s", _alert())
    assert box.pending() == 1
    assert list(tmp_path.glob("alerts.db.corrupt-*"))


def test_many_processes_fold_into_one_entry_past_max_windows():
    r = Router(dedup_window=60, max_windows=50)
    alerts = []
    for i in range(5000):
        alerts += r.route(attempt(exe=f"/bin/p{i}"), 1.0)
    assert len(alerts) == 51 and alerts[-1].process == "many processes"
    assert len(r.windows) == 51  # memory bounded
    roll = r.tick(61.0)
    assert sum(a.count for a in roll) == 5000 - 51
    assert r.tick(200.0) == [] and r.windows == {} and not r._per_process


def test_unreadable_outbox_row_is_dropped_and_counted_not_stuck(tmp_path):
    box = Outbox(tmp_path / "a.db")
    box.put("s", _alert(P1, "bad"))
    box.put("s", _alert(P1, "good"))
    with box._lock:
        box._conn.execute("UPDATE outbox SET alert = '{not json' WHERE id = 1")
    row = box.head("s")
    assert row.alert.title == "good"
    assert box.counter("dropped:s") == 1 and box.counter("unreported:s") == 1


def test_alert_json_ignores_keys_from_newer_versions():
    text = _alert().to_json().replace('"action"', '"future_field": 1, "action"')
    assert Alert.from_json(text).title == "t"
