"""Prometheus exposition: names under sentinel_, label values never carry destinations."""

from __future__ import annotations

from prometheus_client import generate_latest

from sentinel.evidence import metrics
from sentinel.store.events import Event


class _Fake:
    def __init__(self, stats):
        self._stats = stats

    def stats(self):
        return self._stats


def test_exposition_has_the_standard_set_without_destinations():
    metrics.observe_event(
        Event(
            layer="netfilter",
            kind="egress_attempt",
            protocol="tcp",
            dst_ip="198.18.5.5",
            dst_port=443,
            dst_name="evil.example",
        )
    )
    metrics.observe_event(Event(layer="dns", kind="egress_attempt", protocol="weird-proto"))
    metrics.observe_event(Event(layer="sentinel", kind="monitor_heartbeat", verdict="info"))
    metrics.REQUESTS.labels(metrics.component("resolver")).inc()
    metrics.ERRORS.labels(metrics.component("alerts")).inc()
    metrics.LATENCY.labels(metrics.component("resolver")).observe(0.002)
    metrics.CACHE_HIT_RATE.labels(metrics.component("resolver")).set(0.5)
    metrics.set_rules_in_sync(True)
    metrics.watch_store(_Fake({"shed": 3, "queue_depth": 7}))
    metrics.watch_monitor(_Fake({"lost": 1, "overruns": 0, "malformed": 2}))
    text = generate_latest(metrics.REGISTRY).decode()
    names = {line.split("{")[0].split()[0] for line in text.splitlines() if line[:1] != "#"}
    assert all(n.startswith("sentinel_") for n in names)
    for wanted in (
        "sentinel_request_count_total",
        "sentinel_latency_seconds_bucket",
        "sentinel_error_count_total",
        "sentinel_queue_depth",
        "sentinel_cache_hit_rate",
        "sentinel_blocked_attempts_total",
        "sentinel_rules_in_sync",
        "sentinel_events_shed_total",
        "sentinel_nflog_lost_total",
    ):
        assert wanted in names, wanted
    assert "198.18" not in text and "evil" not in text and "weird" not in text
    assert 'sentinel_blocked_attempts_total{layer="dns",protocol="other",verdict="blocked"}' in text
    assert 'sentinel_queue_depth{component="store"} 7.0' in text
    assert "monitor_heartbeat" not in text
