"""Prometheus metrics, all under `sentinel_`. Label values come from small fixed sets (layer,
protocol, component, outcome): never a destination address or name, which would leak what the
app tried to reach and give the metric unbounded cardinality.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from sentinel.store.events import LAYERS, Event
from sentinel.store.kinds import is_attempt

COMPONENTS = ("resolver", "alerts", "store", "monitor", "guard", "apply")
PROTOCOLS = ("tcp", "udp", "icmp", "icmpv6", "dns", "other")
OTHER = "other"

REGISTRY = CollectorRegistry(auto_describe=True)
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class _Work:
    """One component's requests, errors and latency histogram as plain numbers under one lock,
    exposed at scrape time (prometheus_client's labelled Counter/Histogram cost ~15 us a call
    on these machines, measured)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = self.errors = self.count = 0
        self.total = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf

    def record(self, seconds: float | None, error: bool = False, request: bool = True) -> None:
        index = bisect_left(LATENCY_BUCKETS, seconds) if seconds is not None else 0
        with self.lock:
            self.requests += request
            self.errors += error
            if seconds is not None:
                self.count += 1
                self.total += seconds
                self.buckets[index] += 1


_WORK = {name: _Work() for name in COMPONENTS}


class _Labelled:
    """`.labels(component).inc()` / `.observe(s)` over `_WORK`, the prometheus_client shape."""

    def __init__(self, what: str) -> None:
        self.what = what

    def labels(self, name: str) -> _Bound:
        return _Bound(_WORK[component(name)] if component(name) in _WORK else _Work(), self.what)


class _Bound:
    def __init__(self, work: _Work, what: str) -> None:
        self.work, self.what = work, what

    def inc(self, amount: int = 1) -> None:
        with self.work.lock:
            if self.what == "requests":
                self.work.requests += amount
            else:
                self.work.errors += amount

    def observe(self, seconds: float) -> None:
        self.work.record(seconds, request=False)


REQUESTS, ERRORS, LATENCY = _Labelled("requests"), _Labelled("errors"), _Labelled("latency")


class _WorkCollector:
    def collect(self):
        requests = CounterMetricFamily(
            "sentinel_request_count", "Requests handled", labels=["component"]
        )
        errors = CounterMetricFamily("sentinel_error_count", "Errors", labels=["component"])
        latency = HistogramMetricFamily(
            "sentinel_latency_seconds", "Latency of one unit of work", labels=["component"]
        )
        for name, work in _WORK.items():
            with work.lock:
                n, e, count, total = work.requests, work.errors, work.count, work.total
                buckets = list(work.buckets)
            if name == "resolver":
                n += _HITS.hits()  # cache hits are requests too, counted by the resolver
            if not (n or e or count):
                continue
            requests.add_metric([name], n)
            errors.add_metric([name], e)
            cumulative, running = [], 0
            for bound, hits in zip((*LATENCY_BUCKETS, float("inf")), buckets, strict=True):
                running += hits
                cumulative.append((floatToGoString(bound), running))
            latency.add_metric([name], cumulative, total)
        yield requests
        yield errors
        yield latency


QUEUE_DEPTH = Gauge("sentinel_queue_depth", "Items waiting", ["component"], registry=REGISTRY)
CACHE_HIT_RATE = Gauge(
    "sentinel_cache_hit_rate", "Cache hits / lookups (0..1)", ["component"], registry=REGISTRY
)
RULES_IN_SYNC = Gauge(
    "sentinel_rules_in_sync", "1 when the kernel holds the applied ruleset", registry=REGISTRY
)
UNACCOUNTED = Gauge(
    "sentinel_unaccounted_packets",
    "Kernel NFLOG packets missing from the store",
    registry=REGISTRY,
)
EXTERNAL = Counter(
    "sentinel_external_calls",
    "Attempts the kernel let out (audit mode): the report's external_calls",
    registry=REGISTRY,
)
EXTERNAL_10M = Gauge(
    "sentinel_external_calls_last_10m",
    "External calls in the last 10 minutes (the report's external_calls_last_10m)",
    registry=REGISTRY,
)
SINK_LATENCY = Histogram(
    "sentinel_alert_delivery_seconds",
    "Seconds one delivery request to a sink took, per sink and outcome",
    ["sink", "outcome"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
SINKS = ("pagerduty", "slack", "webhook")
OUTCOMES = ("ok", "retry", "rejected")


def _one_of(value: str | None, allowed: tuple[str, ...]) -> str:
    return value if value in allowed else OTHER


def component(name: str) -> str:
    return _one_of(name, COMPONENTS)


class _Attempts:
    """`sentinel_blocked_attempts_total` by (layer, protocol, verdict): plain counts under one
    lock, exposed at scrape time (a labelled prometheus_client Counter costs ~15-30 us an
    attempt in a flood, issue 17). Every attempt series exists from the start at 0:
    Prometheus' increase() cannot see the first attempt of a series that appears with 1."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[tuple[str, str, str], int] = {
            (layer, protocol, verdict): 0
            for layer in ("netfilter", "dns", "guard")
            for protocol in PROTOCOLS
            for verdict in ("blocked", "audited")
        }

    def add(self, key: tuple[str, str, str]) -> None:
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1

    def add_counts(self, counts: dict[tuple[str, str, str], int]) -> None:
        with self.lock:
            for key, n in counts.items():
                self.counts[key] = self.counts.get(key, 0) + n

    def collect(self):
        family = CounterMetricFamily(
            "sentinel_blocked_attempts",
            "Egress attempts seen",
            labels=["layer", "protocol", "verdict"],
        )
        with self.lock:
            counts = sorted(self.counts.items())
        for labels, value in counts:
            family.add_metric(list(labels), value)
        yield family


ATTEMPTS = _Attempts()
REGISTRY.register(ATTEMPTS)

_external_lock = threading.Lock()
_external_times: deque[float] = deque(maxlen=100_000)


def observe_event(event: Event) -> None:
    """Count an egress attempt (exactly what the report counts: sentinel.store.kinds) by
    layer, protocol and verdict. A guard and a kernel sighting of one call count once in each
    layer, as in the report's `attempts_by_layer`; fold updates (`last_ts`) are not new."""
    if event.last_ts is not None or not is_attempt(event.layer, event.kind, event.verdict):
        return
    layer, protocol = _one_of(event.layer, LAYERS), _one_of(event.protocol, PROTOCOLS)
    ATTEMPTS.add((layer, protocol, event.verdict))
    if event.layer == "netfilter" and event.verdict == "audited":
        EXTERNAL.inc()
        with _external_lock:
            _external_times.append(event.ts)


def observe_events(events: list[Event]) -> None:
    """`observe_event` for a batch from the bus (the monitor's read of up to 100 messages):
    the same counts, taken under one lock."""
    counts: dict[tuple[str, str, str], int] = {}
    external: list[float] = []
    for event in events:
        if event.last_ts is not None or not is_attempt(event.layer, event.kind, event.verdict):
            continue
        key = (_one_of(event.layer, LAYERS), _one_of(event.protocol, PROTOCOLS), event.verdict)
        counts[key] = counts.get(key, 0) + 1
        if event.layer == "netfilter" and event.verdict == "audited":
            external.append(event.ts)
    ATTEMPTS.add_counts(counts)
    if external:
        EXTERNAL.inc(len(external))
        with _external_lock:
            _external_times.extend(external)


def _external_last_10m() -> float:
    cutoff = time.time() - 600.0
    with _external_lock:
        while _external_times and _external_times[0] < cutoff:
            _external_times.popleft()
        return float(len(_external_times))


EXTERNAL_10M.set_function(_external_last_10m)


class _Hits:
    """Resolver cache hits / queries since start. Hits are counted by the resolver itself
    (`cache_hits`, one increment on its hot path) and read at scrape time; misses here."""

    def __init__(self) -> None:
        self.misses = 0
        self.hits: Callable[[], int] = lambda: 0

    def rate(self) -> float:
        hits = self.hits()
        return hits / (hits + self.misses) if hits + self.misses else 0.0


_HITS = _Hits()
CACHE_HIT_RATE.labels("resolver").set_function(_HITS.rate)
REGISTRY.register(_WorkCollector())  # after _HITS: registering collects once
_RESOLVER_WORK = _WORK["resolver"]


def watch_resolver(resolver: Any) -> None:
    """The running resolver's cache hits (a restarted resolver starts again from 0)."""
    _HITS.hits = lambda: resolver.cache_hits


def observe_query(seconds: float, failed: bool = False) -> None:
    """One DNS query answered through the full path (a cache miss): counted and timed.
    Cache hits are only counted (timing them halved the resolver's qps in bench_dns)."""
    _RESOLVER_WORK.record(seconds, error=failed)
    _HITS.misses += 1  # under the GIL; a lost increment only nudges a ratio


def observe_apply(seconds: float, ok: bool) -> None:
    _WORK["apply"].record(seconds, error=not ok)


def observe_delivery(sink: str, seconds: float, outcome: str) -> None:
    """One delivery attempt of an alert to a sink (the dispatcher's workers)."""
    _WORK["alerts"].record(seconds, error=outcome != "ok")
    SINK_LATENCY.labels(_one_of(sink, SINKS), _one_of(outcome, OUTCOMES)).observe(seconds)


def observe_error(name: str) -> None:
    if component(name) in _WORK:
        _WORK[component(name)].record(None, error=True, request=False)


def watch_alerts(depth: Callable[[], int]) -> None:
    QUEUE_DEPTH.labels("alerts").set_function(depth)


def set_unaccounted(packets: int | None) -> None:
    UNACCOUNTED.set(packets or 0)


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
