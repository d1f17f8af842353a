"""Issue 13 item 11: packets the kernel logged that never became stored events make coverage
partial (they stayed "complete" with 23 and 30 unaccounted). A real SQLite store; the kernel
reading is the input (the netns version of the same path: tests/test_monitor_netns.py)."""

from __future__ import annotations

import time

import pytest

from sentinel.evidence import report as rep
from sentinel.store.events import Event, EventStore

APPLIED = {
    "mode": "enforce",
    "backend": "nft",
    "ruleset_sha256": "r" * 64,
    "applied_at": time.time() - 3600,
    "pins": {},
}


def beat(ts: float) -> Event:
    detail = {"state": "running", "interval": 5.0, "pid": 1, "started_at": 0, "stats": {}}
    return Event(layer="sentinel", kind="monitor_heartbeat", verdict="info", ts=ts, detail=detail)


def attempt(ts: float, port: int) -> Event:
    return Event(
        layer="netfilter", kind="egress_attempt", verdict="blocked", ts=ts, protocol="udp",
        dst_ip="198.18.5.5", dst_port=port, family=4,
    )  # fmt: skip


@pytest.mark.parametrize("unaccounted", [0, 23, 30])
def test_unaccounted_packets_make_coverage_partial(tmp_path, unaccounted):
    now = time.time()
    store = EventStore(tmp_path / "events.db").start()
    for t in range(60, 0, -5):
        store.put(beat(now - t))
    for i in range(5):
        store.put(attempt(now - 30 + i, 20000 + i))
    assert store.flush()
    store.stop()
    kernel = {
        "present": True,
        "sha256": "r" * 64,
        "nflog_packets": {4: 5 + unaccounted, 6: 0},
        "set_counters": {},
    }
    got = rep.build_report(rep.Window(now - 60, now), tmp_path / "events.db", APPLIED, kernel)
    assert got["unaccounted_packets"] == unaccounted
    if unaccounted:
        assert got["coverage"] == "partial"
        assert (
            f"{unaccounted} NFLOG packet(s) not accounted for" in got["coverage_detail"]["problems"]
        )
    else:
        assert got["coverage"] == "complete", got["coverage_detail"]
