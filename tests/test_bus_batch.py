"""The bus' batch path (`Context.emit_many`, the NFLOG monitor's read of up to 100 messages)
gives every sink what `emit` event by event gives: the same redacted log lines, byte for byte
but for the time stamp, the same stored rows (a real SQLite store), the same metrics, each
plain sink its events with their correlation id bound; a failing sink stops no other."""

from __future__ import annotations

import io
import json
import re
import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel.detect.flows import flow_event
from sentinel.detect.packets import Flow
from sentinel.evidence import metrics
from sentinel.log import _CID, configure, info_redacted
from sentinel.redact import add_secret
from sentinel.run import eventlines
from sentinel.run.context import Context, quiet_log_sink
from sentinel.run.services import put_each
from sentinel.store.events import COLUMNS, Event, EventStore

SECRET = "sk-proj-ABCDEFGHIJKLMNOPQRSTUV"
STAMP = re.compile(r'"timestamp": "[^"]*"')


def _events() -> list[Event]:
    sightings = [
        flow_event(Flow(4, "udp", "198.18.0.10", "198.18.5.5", 40000, port), "blocked", 7.25)
        for port in range(10000, 10005)
    ]
    icmp = Flow(6, "icmpv6", "2001:db8::10", "2001:db8::5", icmp_type=128, icmp_id=3)
    return [
        *sightings,
        flow_event(icmp, "audited", 7.5),
        Event("dns", "dns_refused", protocol="dns", dst_name=f"{SECRET}.example.org", ts=8.0),
        Event(
            "guard",
            "egress_attempt",
            protocol="tcp",
            dst_ip="198.18.5.5",
            dst_port=443,
            pid=77,
            exe="/home/alice.smith@example.com/app.py",
            stack='fetch at "/srv/userId=4242/app.py":3\n\té',
            detail={"note": "call 555-123-4567", "api_token": "hunter2hunter2", "n": [1.5, None]},
            ts=8.5,
        ),
        Event("netfilter", "egress_attempt", packets=4, ts=8.75, last_ts=9.0),  # an update
        Event("sentinel", "monitor_heartbeat", "info", detail={"state": "running"}, ts=9.5),
    ]


def _run(tmp_path, name: str, batch: bool) -> dict:
    log = io.StringIO()
    configure("info", log)
    store = EventStore(tmp_path / f"{name}.db").start()
    plain: list[tuple[str, str | None]] = []
    ctx = Context(None, tmp_path, "nft", sinks=[quiet_log_sink])  # type: ignore[arg-type]
    ctx.add_sink(store.put, many=put_each(store))
    ctx.add_sink(lambda e: plain.append((e.id, _CID.get())))  # no batch form: event by event
    events = _events()
    try:
        if batch:
            ctx.emit_many(events)
        else:
            for event in events:
                ctx.emit(event)
        assert store.flush(30)
    finally:
        store.stop()
        configure("info")
    with sqlite3.connect(tmp_path / f"{name}.db") as conn:
        rows = conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM events WHERE kind != 'store_created' ORDER BY id"
        ).fetchall()
    return {"log": STAMP.sub("T", log.getvalue()), "rows": rows, "plain": plain, "ids": events}


def test_a_batch_gives_every_sink_what_one_by_one_gives(tmp_path):
    add_secret("hunter2hunter2")
    one, many = _run(tmp_path, "one", batch=False), _run(tmp_path, "many", batch=True)
    # same ids on both runs (the events are made once per run: compare by position)
    ids = {a.id: b.id for a, b in zip(one["ids"], many["ids"], strict=True)}
    text = one["log"]
    for a, b in ids.items():
        text = text.replace(a, b)
    assert text == many["log"] and text.count("\n") == 8  # the heartbeat, update: not logged
    by_id = {row[COLUMNS.index("id")]: row for row in many["rows"]}
    rows = [tuple(ids.get(v, v) for v in row) for row in one["rows"]]
    assert {row[COLUMNS.index("id")]: row for row in rows} == by_id and len(rows) == 10
    for planted in (SECRET, "alice.smith@example.com", "4242", "555-123-4567", "hunter2"):
        assert planted not in many["log"] + json.dumps(many["rows"]), planted
    # a sink without a batch form: each event, in order, with its own correlation id bound
    assert many["plain"] == [(e.id, e.id) for e in many["ids"]]


def test_a_failing_sink_stops_no_other_in_a_batch(tmp_path):
    configure("info", io.StringIO())
    got: list[Event] = []

    def broken(_events: list[Event]) -> None:
        raise RuntimeError("sink down")

    ctx = Context(None, tmp_path, "nft")  # type: ignore[arg-type]
    ctx.add_sink(lambda e: None, many=broken)
    ctx.add_sink(lambda e: 1 / 0)  # fails for each event alone
    ctx.add_sink(got.append)
    ctx.emit_many(_events())
    assert [e.kind for e in got] == [e.kind for e in _events()]


def test_batch_metrics_count_what_one_by_one_counts():
    events = _events()
    before = dict(metrics.ATTEMPTS.counts)
    for event in events:
        metrics.observe_event(event)
    middle = dict(metrics.ATTEMPTS.counts)
    metrics.observe_events(events)
    after = metrics.ATTEMPTS.counts
    one = {k: middle[k] - before.get(k, 0) for k in middle}
    many = {k: after[k] - middle.get(k, 0) for k in after}
    assert one == many and sum(one.values()) == 8  # the update (last_ts) is not new


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=12),
    st.dictionaries(
        st.text(max_size=5), st.one_of(st.none(), st.integers(), st.text()), max_size=3
    ),
    st.lists(st.integers(), max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({name: values for name in COLUMNS if name != "id"}), st.uuids())
def test_batch_log_lines_are_the_lines_info_redacted_writes(fields, uid):
    event = Event(**fields, id=str(uid))
    out = io.StringIO()
    configure("info", out)
    try:
        state = dict(vars(event))
        state["event_id"] = state.pop("id")
        state["cid"] = event.id
        info_redacted("daemon", "event", state)
    finally:
        configure("info")
    line = STAMP.sub("T", out.getvalue())
    stamp = "2026-12-01T15:00:00.5Z"
    assert STAMP.sub("T", eventlines.lines([event, event], stamp)) == line * 2
    assert STAMP.sub("T", eventlines.event_line(event, stamp)) == line
