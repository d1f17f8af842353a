"""The report over a generated store (sentinel/lab/bigstore.py): its SQL counts and joins
agree with the plain definitions computed over every event in Python (`join_attempts` plus
counting, what the report did before it counted in SQL); long lists are bounded and say how
much they left out; the store is not changed."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections import Counter

import pytest

from sentinel.evidence import report as rep
from sentinel.evidence.tally import MAX_DESTINATIONS
from sentinel.lab import bigstore
from sentinel.store import events as ev
from sentinel.store.events import destination_text

NOW = time.time()
APPLIED = {"mode": "audit", "ruleset_sha256": "r" * 64, "applied_at": NOW - 7300, "pins": {}}
KERNEL = {"present": True, "sha256": "r" * 64, "nflog_packets": {4: 10, 6: 0}, "set_counters": {}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("bigstore") / "events.db"
    bigstore.build(path, 12_000, NOW, span=3600, seed=5, dests=40, names=12)
    return path


def _all_events(path):
    conn = ev.connect(path, readonly=True)
    try:
        return ev.query(conn, float("-inf"), float("inf"))
    finally:
        conn.close()


def _expected(events, window):
    """The report's counts by their plain definition, over Python objects."""
    joined = rep.join_attempts(events)
    inside = [a for a in joined if window.since <= a["ts"] < window.until]
    last10 = [a for a in joined if a["ts"] >= window.until - 600]
    dests: dict[str, dict] = {}
    for a in inside:
        d = dests.setdefault(
            destination_text(a["dst_name"], a["dst_ip"], a["dst_port"], a["protocol"]),
            {"attempts": 0, "packets": 0, "layers": Counter(), "verdicts": Counter()},
        )
        d["attempts"] += 1
        d["packets"] += a["packets"] or 0
        d["layers"].update(a["layers"])
        d["verdicts"][a["verdict"]] += 1
    rows = sorted(dests.items(), key=lambda kv: (-kv[1]["attempts"], kv[0]))
    return {
        "attempts_total": len(inside),
        "attempts_by_layer": dict(sorted(Counter(x for a in inside for x in a["layers"]).items())),
        "attempts_by_protocol": dict(sorted(Counter(a["protocol"] or "?" for a in inside).items())),
        "external_calls": sum("netfilter" in a["layers"] and a["verdict"] == "audited" for a in inside),
        "blocked_attempts": sum(a["verdict"] == "blocked" for a in inside),
        "external_calls_last_10m": sum(
            "netfilter" in a["layers"] and a["verdict"] == "audited" for a in last10
        ),
        "blocked_attempts_last_10m": sum(a["verdict"] == "blocked" for a in last10),
        "destinations": [
            (k, v["attempts"], v["packets"], dict(v["layers"]), dict(v["verdicts"])) for k, v in rows
        ],
        "ids": [a["id"] for a in inside][-rep.MAX_LISTED :],
        "joined": sum(len(a["layers"]) == 2 for a in inside),
    }  # fmt: skip


def scope_events(path, window) -> list:
    """The events a report over `window` reads: the window, and the ten minutes before its
    end when the window is shorter."""
    since = min(window.since, window.until - 600)
    return [e for e in _all_events(path) if since <= e.ts < window.until]


def assert_counts_match(got: dict, want: dict) -> None:
    """The report's counts and destinations against _expected's plain definitions."""
    for key in (
        "attempts_total",
        "attempts_by_layer",
        "attempts_by_protocol",
        "external_calls",
        "blocked_attempts",
        "external_calls_last_10m",
        "blocked_attempts_last_10m",
    ):
        assert got[key] == want[key], key
    dests = [
        (d["destination"], d["attempts"], d["packets"], d["layers"], d["verdicts"])
        for d in got["attempts_by_destination"]
    ]
    assert dests == want["destinations"][:MAX_DESTINATIONS]
    assert got["destinations_total"] == len(want["destinations"])


@pytest.mark.parametrize("since_ago, until_ago", [(600, 0), (120, 0), (3000, 1200), (4000, 0)])
def test_sql_counts_match_the_plain_definitions(store, since_ago, until_ago):
    window = rep.Window(NOW - since_ago, NOW - until_ago)
    want = _expected(scope_events(store, window), window)
    got = rep.build_report(window, store, APPLIED, KERNEL)
    assert_counts_match(got, want)
    assert [a["id"] for a in got["attempts"]] == want["ids"]
    assert sum(len(a["layers"]) == 2 for a in got["attempts"]) <= want["joined"]
    if since_ago == 4000:
        assert want["joined"] > 0  # the store holds audited guard calls the kernel also saw


def test_the_listing_and_the_destinations_are_bounded_and_say_so(tmp_path):
    path = tmp_path / "events.db"
    bigstore.build(path, 30_000, NOW, span=3600, seed=9, dests=3000, names=300)
    got = rep.build_report(rep.Window(NOW - 3600, NOW), path, APPLIED, KERNEL)
    assert got["attempts_listed"] == rep.MAX_LISTED < got["attempts_total"]
    assert got["destinations_listed"] == MAX_DESTINATIONS < got["destinations_total"]
    assert len(got["attempts_by_destination"]) == MAX_DESTINATIONS
    counts = [d["attempts"] for d in got["attempts_by_destination"]]
    assert counts == sorted(counts, reverse=True)


def test_the_netflow_lists_the_busiest_entries_and_counts_all(store):
    sets = {("sentinel-allow4", f"198.19.{i // 250}.{i % 250},tcp:443"): (i, i * 60)
            for i in range(1000)}  # fmt: skip
    kernel = {**KERNEL, "set_counters": sets}
    got = rep.build_report(rep.Window(NOW - 600, NOW), store, APPLIED, kernel)
    summary = got["netflow_summary"]
    # the store's readings name 3 more entries (bigstore: sets=3)
    assert summary["entries"] == 1003 and summary["listed"] == len(got["netflow"]) == 100
    assert summary["left_out"] == 903
    assert summary["packets_since_apply"] == sum(range(1000))
    assert (
        min(
            r["packets_since_apply"] or 0 for r in got["netflow"] if r["entry"].startswith("198.19")
        )
        >= 900
    )
    entries = [r["entry"] for r in got["netflow"]]
    assert entries == sorted(entries)


def test_the_report_never_changes_the_store(store):
    before = hashlib.sha256(store.read_bytes()).hexdigest()
    rep.build_report(rep.Window(NOW - 3600, NOW), store, APPLIED, KERNEL)
    assert hashlib.sha256(store.read_bytes()).hexdigest() == before
    assert not store.with_name("events.db-wal").exists()


def test_a_store_of_schema_1_is_read_as_it_is(tmp_path):
    # stores made before the events_kind_ts index (schema 2): read without it, not migrated
    path = tmp_path / "events.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in ev.MIGRATIONS[0].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    attempt = ev.Event(layer="netfilter", kind="egress_attempt", dst_ip="198.18.5.5",
                       dst_port=443, protocol="tcp", ts=NOW - 5)  # fmt: skip
    ev.write_events(conn, [attempt], {})
    conn.close()
    got = rep.build_report(rep.Window(NOW - 600, NOW), path, APPLIED, KERNEL)
    assert got["attempts_total"] == 1 and got["blocked_attempts_last_10m"] == 1
    version = sqlite3.connect(f"file:{path}?mode=ro", uri=True).execute("PRAGMA user_version")
    assert version.fetchone()[0] == 1
