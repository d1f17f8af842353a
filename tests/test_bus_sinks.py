"""The event bus redacts each event once and every sink gets that one redacted event: the log
line and the stored row carry the same text (driven through the real log sink and a real
SQLite store). The log line written without structlog's chain is the line the chain writes."""

from __future__ import annotations

import io
import json
import sqlite3

from sentinel.log import configure, correlation, get_logger
from sentinel.redact import add_secret
from sentinel.run.context import Context, log_sink, quiet_log_sink
from sentinel.store.events import Event, EventStore

SECRET = "sk-proj-ABCDEFGHIJKLMNOPQRSTUV"


def _events() -> list[Event]:
    return [
        Event("dns", "dns_refused", protocol="dns", dst_name=f"{SECRET}.example.org"),
        Event("dns", "dns_refused", protocol="dns", dst_name="user_id=4242.example.org"),
        Event(
            "guard",
            "egress_attempt",
            protocol="tcp",
            dst_ip="198.18.5.5",
            dst_port=443,
            exe="/home/alice.smith@example.com/app.py",
            stack="fetch at /srv/userId=4242/app.py:3",
            detail={"note": "call 555-123-4567", "api_token": "hunter2hunter2"},
        ),
        Event("netfilter", "egress_attempt", protocol="udp", dst_ip="198.18.5.5", dst_port=9),
    ]


def test_log_line_and_stored_row_carry_the_same_redacted_text(tmp_path):
    buf = io.StringIO()
    add_secret("hunter2hunter2")
    configure("info", buf, log_file=tmp_path / "sentinel.log")
    store = EventStore(tmp_path / "events.db").start()
    seen: list[Event] = []
    ctx = Context(None, tmp_path, "nft", sinks=[quiet_log_sink, store.put, seen.append])  # type: ignore[arg-type]
    try:
        for event in _events():
            ctx.emit(event)
        assert store.flush(30)
    finally:
        store.stop()
        configure("info")
    lines = {}
    for raw in (tmp_path / "sentinel.log").read_text().splitlines():
        line = json.loads(raw)
        if line["event"] == "event":
            lines[line["event_id"]] = line
    conn = sqlite3.connect(tmp_path / "events.db")
    cols = ("id", "dst_name", "exe", "stack", "detail")
    rows = [
        dict(zip(cols, r, strict=True))
        for r in conn.execute(f"SELECT {','.join(cols)} FROM events WHERE kind != 'store_created'")
    ]
    conn.close()
    assert len(rows) == len(lines) == 4
    for row in rows:
        line = lines[row["id"]]
        assert line["cid"] == row["id"]  # the correlation id is the event's
        for col in ("dst_name", "exe", "stack"):
            assert line[col] == row[col], col
        assert line["detail"] == json.loads(row["detail"])
    text = json.dumps([rows, list(lines.values())]) + buf.getvalue()
    for planted in (SECRET, "alice.smith@example.com", "4242", "555-123-4567", "hunter2"):
        assert planted not in text, planted
    # every sink (here a plain list) was handed that one redacted event
    handed = {e.id: e for e in seen}
    for row in rows:
        for col in ("dst_name", "exe", "stack"):
            assert getattr(handed[row["id"]], col) == row[col], col


def test_bus_log_line_is_the_line_structlogs_chain_writes(tmp_path):
    event = _events()[2]
    fast, chain = io.StringIO(), io.StringIO()
    configure("info", fast)
    try:
        Context(None, tmp_path, "nft", sinks=[log_sink]).emit(event)  # type: ignore[arg-type]
        configure("info", chain)
        fields = dict(vars(event))
        fields.pop("id")
        with correlation(event.id):
            get_logger("daemon").info("event", event_id=event.id, **fields)
    finally:
        configure("info")
    a, b = json.loads(fast.getvalue()), json.loads(chain.getvalue())
    assert a.pop("timestamp").endswith("Z") and b.pop("timestamp").endswith("Z")
    assert a == b
    assert list(a) == sorted(a)  # sorted keys, as the JSONRenderer writes them


def test_bus_log_lines_follow_the_configured_level(tmp_path):
    buf = io.StringIO()
    configure("warning", buf)
    try:
        Context(None, tmp_path, "nft", sinks=[log_sink]).emit(_events()[3])  # type: ignore[arg-type]
    finally:
        configure("info")
    assert buf.getvalue() == ""
