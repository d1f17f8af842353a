"""Prometheus metrics, all under `sentinel_`. Label values come from small fixed sets (layer,
protocol, component, outcome): never a destination address or name, which would leak what the
app tried to reach and give the metric unbounded cardinality.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily

from sentinel.store.events import LAYERS, Event

COMPONENTS = ("resolver", "alerts", "store", "monitor", "guard", "apply")
PROTOCOLS = ("tcp", "udp", "icmp", "icmpv6", "dns", "other")
OTHER = "other"

REGISTRY = CollectorRegistry(auto_describe=True)
REQUESTS = Counter("sentinel_request_count", "Requests handled", ["component"], registry=REGISTRY)
ERRORS = Counter("sentinel_error_count", "Errors", ["component"], registry=REGISTRY)
LATENCY = Histogram(
    "sentinel_latency_seconds",
    "Latency of one unit of work",
    ["component"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge("sentinel_queue_depth", "Items waiting", ["component"], registry=REGISTRY)
CACHE_HIT_RATE = Gauge(
    "sentinel_cache_hit_rate", "Cache hits / lookups (0..1)", ["component"], registry=REGISTRY
)
BLOCKED = Counter(
    "sentinel_blocked_attempts",
    "Egress attempts seen",
    ["layer", "protocol", "verdict"],
    registry=REGISTRY,
)
RULES_IN_SYNC = Gauge(
    "sentinel_rules_in_sync", "1 when the kernel holds the applied ruleset", registry=REGISTRY
)
UNACCOUNTED = Gauge(
    "sentinel_unaccounted_packets",
    "Kernel NFLOG packets missing from the store",
    registry=REGISTRY,
)


def _one_of(value: str | None, allowed: tuple[str, ...]) -> str:
    return value if value in allowed else OTHER


def component(name: str) -> str:
    return _one_of(name, COMPONENTS)


def observe_event(event: Event) -> None:
    """Count an attempt by layer, protocol and verdict; heartbeats and info events are skipped."""
    if event.verdict not in ("blocked", "audited") or event.last_ts is not None:
        return  # an event with last_ts is a fold update of one already counted
    layer, protocol = _one_of(event.layer, LAYERS), _one_of(event.protocol, PROTOCOLS)
    BLOCKED.labels(layer, protocol, event.verdict).inc()


class _StatsCollector:
    """Read the store's and monitor's own counters at scrape time (no bookkeeping twice)."""

    def __init__(self) -> None:
        self.store: Callable[[], dict[str, Any]] | None = None
        self.monitor: Callable[[], dict[str, Any]] | None = None

    def collect(self):
        shed = CounterMetricFamily("sentinel_events_shed", "Events the store had to drop")
        lost = CounterMetricFamily(
            "sentinel_nflog_lost", "NFLOG messages lost or unreadable", labels=["reason"]
        )
        if self.store:
            shed.add_metric([], self.store().get("shed", 0))
        if self.monitor:
            stats = self.monitor()
            for reason in ("lost", "overruns", "malformed"):
                lost.add_metric([reason], stats.get(reason, 0))
        yield shed
        yield lost


_STATS = _StatsCollector()
REGISTRY.register(_STATS)


def watch_store(store: Any) -> None:
    _STATS.store = store.stats
    QUEUE_DEPTH.labels("store").set_function(lambda: store.stats()["queue_depth"])


def watch_monitor(monitor: Any) -> None:
    _STATS.monitor = monitor.stats


def set_rules_in_sync(ok: bool) -> None:
    RULES_IN_SYNC.set(1 if ok else 0)


def serve(port: int, addr: str = "127.0.0.1") -> None:
    """Expose /metrics (port 0 = off). Loopback by default: scrape it from the pod/namespace."""
    if port:
        start_http_server(port, addr=addr, registry=REGISTRY)
