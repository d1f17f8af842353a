"""The report's grouped counts (sentinel/evidence/tally.py) against their plain definitions in
Python, over a generated store plus rows made to test the grouping's edges: DNS and guard rows
that are not attempts (heartbeats, drops, an `info` verdict), netfilter rows of any kind and
verdict, canary probes of both families, and one destination reached by several kinds (the
groups do not key on `kind`). Windows that cover the whole store and windows inside it (the
two forms of the grouped SQL)."""

from __future__ import annotations

import time

import pytest
from test_report_scale import APPLIED, KERNEL, _expected, assert_counts_match, scope_events

from sentinel.evidence import report as rep
from sentinel.lab import bigstore
from sentinel.store import events as ev
from sentinel.store.events import Event

NOW = time.time()


def _edges(now: float) -> list[Event]:
    out = []
    for i in range(300):
        ts = now - 3500 + i * 11.3
        ip, port = f"198.18.9.{i % 7 + 1}", 443
        out += [
            Event("netfilter", "egress_attempt", "blocked", "tcp", ip, port, ts=ts, family=4,
                  packets=1 + i % 3),
            Event("netfilter", "tamper", "info", "tcp", ip, port, ts=ts + 0.1, family=4),
            Event("netfilter", "odd_kind", "audited", "udp", ip, port, ts=ts + 0.2, family=6,
                  packets=2),
            Event("canary", "canary_result", "info", "udp", ip, port, ts=ts + 0.3,
                  family=4 if i % 2 else 6, packets=1 + i % 5),
            Event("dns", "dns_refused", "blocked", "dns", None, 53, f"h{i % 5}.example",
                  ts=ts + 0.4),
            Event("dns", "egress_attempt", "blocked", "dns", None, 53, f"h{i % 5}.example",
                  ts=ts + 0.5),
            Event("dns", "dns_dropped", "info", "dns", None, 53, ts=ts + 0.6,
                  detail={"udp_dropped": 1}),
            Event("dns", "egress_attempt", "info", "dns", None, 53, f"h{i % 5}.example",
                  ts=ts + 0.7),
            Event("guard", "connect_blocked", "blocked", "tcp", ip, port, ts=ts + 0.8, pid=7),
            Event("guard", "egress_attempt", "blocked", "tcp", ip, port, ts=ts + 0.9, pid=7),
            Event("guard", "guard_heartbeat", "info", None, ip, port, ts=ts + 1.0, pid=7,
                  detail={"interval": 5.0, "state": "running"}),
        ]  # fmt: skip
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("tallystore") / "events.db"
    bigstore.build(path, 6_000, NOW, span=3600, seed=11, dests=30, names=9)
    conn = ev.connect(path)
    try:
        ev.write_events(conn, _edges(NOW), {})
    finally:
        conn.close()
    return path


def _stored(events, window) -> dict[str, int]:
    """NFLOG packets the store holds in the window per family, by their definition."""
    out = {"ipv4": 0, "ipv6": 0}
    for e in events:
        family = f"ipv{e.family}"
        if e.layer in ("netfilter", "canary") and window.since <= e.ts < window.until:
            out[family] = out.get(family, 0) + (e.packets or 0)
    return {"ipv4": out["ipv4"], "ipv6": out["ipv6"]}


@pytest.mark.parametrize("since_ago, until_ago", [(5000, -10), (3600, 0), (2000, 900), (400, 0)])
def test_grouped_counts_match_the_plain_definitions(store, since_ago, until_ago):
    window = rep.Window(NOW - since_ago, NOW - until_ago)
    events = scope_events(store, window)
    want = _expected(events, window)
    got = rep.build_report(window, store, APPLIED, KERNEL)
    assert_counts_match(got, want)
    stored = got["coverage_detail"]["window_counters"]["nflog_packets_stored"]
    assert stored == _stored(events, window)
    assert want["attempts_total"] > 0 and stored["ipv6"] > 0
