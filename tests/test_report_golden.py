"""The whole report over a generated store, pinned: a digest of its JSON (all but the time it
was made and the capabilities of the processes on this machine) as the report made it before
its reads were trimmed for a day's million events (tally, join, bookkeeping, heartbeat gaps
and rulesets in sections of their own; the digests were made by the tree before). The store
and windows are fixed (sentinel/lab/bigstore.py with a seed, its creation marker set), so a
change in anything the report says or counts changes a digest."""

from __future__ import annotations

import hashlib
import json

import pytest

from sentinel.evidence import report as rep
from sentinel.lab import bigstore
from sentinel.store import events as ev

UNTIL = 1_800_000_000.0
APPLIED = {"mode": "audit", "ruleset_sha256": "r" * 64, "applied_at": UNTIL - 7300, "pins": {}}
KERNEL = {"present": True, "sha256": "r" * 64, "nflog_packets": {4: 10, 6: 0}, "set_counters": {}}

# (since, until) relative to UNTIL -> sha256 of the report's JSON, made by the tree before
DIGESTS = {
    (-7300, 60): "088f1d8750da9482d2d1776d9108a7fbfdaf88441bd4a02a01e638ac23070691",
    (-3000, -1200): "f6014596c3806470a38f22c65c3571f0b4fffe9202fe3e7393825b814e369cba",
    (-600, 0): "2c3503e2bafa60d4c32ade7b23382c8d3d6f8bc712a010b779ca0a5174142e19",
}


def _edges() -> list[ev.Event]:
    """Heartbeats the generated store has none of: a monitor that stops and comes back with
    another ruleset, a guard process claiming a long interval (clamped), one that exits."""
    out = []
    for i in range(40):
        ts = UNTIL - 2000 + i * 20.0
        out.append(
            ev.Event(
                "sentinel",
                "monitor_heartbeat",
                "info",
                ts=ts,
                detail={
                    "state": "stopped" if i == 10 else "running",
                    "interval": 5.0 if i % 3 else 7.5,
                    "ruleset_sha256": "s" * 64 if i > 20 else "r" * 64,
                    "mode": "enforce",
                    "pid": 8,
                    "started_at": UNTIL - 2100,
                    "stats": {"lost": i, "overruns": 0, "malformed": 0},
                },
            )
        )
        for pid, interval, state in (
            (3001, 1e9, "running"),
            (3002, 5.0, "exit" if i == 30 else "running"),
        ):
            if pid == 3002 and i > 30:
                continue
            out.append(
                ev.Event(
                    "guard",
                    "guard_heartbeat",
                    "info",
                    ts=ts + 0.3,
                    pid=pid,
                    detail={
                        "interval": interval,
                        "state": state,
                        "counters": {"dropped_total": i // 7},
                        "sender": {"identity": f"pid:{pid}:9", "verified": pid == 3001},
                    },
                )
            )
    return out  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("golden") / "events.db"
    bigstore.build(path, 20_000, UNTIL, span=7200, seed=23, dests=3000, names=300)
    conn = ev.connect(path)
    try:
        ev.write_events(conn, _edges(), {})
        # the creation marker says when the store was made: fixed here, before the events
        conn.execute("UPDATE events SET ts = ? WHERE kind = ?", (UNTIL - 7250, ev.STORE_CREATED))
    finally:
        conn.close()
    return path


def digest(report: dict) -> str:
    report = {k: v for k, v in report.items() if k not in ("generated_at", "capabilities")}
    return hashlib.sha256(json.dumps(report, sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize("window", sorted(DIGESTS))
def test_the_report_says_what_it_said_before(store, window):
    since, until = window
    got = rep.build_report(rep.Window(UNTIL + since, UNTIL + until), store, APPLIED, KERNEL)
    assert got["attempts_total"] > 0
    assert digest(got) == DIGESTS[window]
