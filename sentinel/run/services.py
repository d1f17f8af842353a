"""What `sentinel run` starts besides the resolver, in start order (stopped in reverse).

The store subscribes first so it sees every event the others emit; the monitor then starts
reading NFLOG (the capture feed hooks into it); the guard receiver and its allowlist follow the
applied ruleset; alerts, canary and metrics come last. Each factory takes the daemon's Context
and returns start()/stop().
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sentinel.detect.canary import CanaryService
from sentinel.detect.feed import capture_feed_service
from sentinel.detect.nflog import monitor_service
from sentinel.guard.compile import write_allowlist
from sentinel.guard.receiver import GuardReceiver
from sentinel.log import get_logger
from sentinel.store.events import Event, EventStore
from sentinel.store.events import store_service as _store_service
from sentinel.store.state import state_dir

log = get_logger("services")


def store_service(ctx: Any) -> EventStore:
    """The store's factory (it subscribes `store.put`), with the batch form of that sink."""
    store = _store_service(ctx)
    ctx.batched[store.put] = put_each(store)
    return store


def put_each(store: EventStore) -> Callable[[list[Event]], None]:
    """The store sink's batch form: the bus' batch queued in order under one lock
    (`EventStore.put_many`), without the per-event correlation binding (the store logs
    nothing). `emit_many` hands its batch forms only events it has redacted, so the store
    takes them as they are (`redacted=True`), as `put` takes the bus' own event."""

    def put_many(events: list[Event]) -> None:
        store.put_many(events, redacted=True)

    return put_many


class GuardService:
    """The guard's side of the sentinel: its allowlist follows every apply and pin change
    (written before the DNS answer that caused it is released), and its reports become events."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.receiver = GuardReceiver(state_dir(), ctx.emit)
        ctx.applied_hooks.append(self.write)

    def write(self, policy: Any, pins: dict) -> None:
        write_allowlist(policy, pins, state_dir())

    def start(self) -> None:
        self.write(self.ctx.policy, self.ctx.pins.pins() if self.ctx.pins else {})
        self.receiver.start()

    def stop(self) -> None:
        self.receiver.stop()


class MetricsService:
    def __init__(self, ctx: Any) -> None:
        from sentinel.evidence import metrics

        self.metrics, self.ctx = metrics, ctx
        ctx.add_sink(metrics.observe_event, many=metrics.observe_events)

    def start(self) -> None:
        if "store" in self.ctx.services:
            self.metrics.watch_store(self.ctx.services["store"])
        if "monitor" in self.ctx.services:
            self.metrics.watch_monitor(self.ctx.services["monitor"])
        if "alerts" in self.ctx.services:
            alerts = self.ctx.services["alerts"]  # its dispatcher is swapped on reload
            self.metrics.watch_alerts(lambda: alerts.dispatcher.queue_depth())
        self.metrics.serve(self.ctx.policy.monitor.metrics_port)  # port 0: off

    def stop(self) -> None:
        pass  # prometheus' server thread is a daemon thread: it ends with the process


def alerts_service(ctx: Any) -> Any:
    from sentinel.alerts.service import alerts_service as make  # httpx only when alerts start

    return make(ctx)


def canary_service(ctx: Any) -> CanaryService:
    return CanaryService(ctx.policy, ctx.emit)


SERVICES = {
    "store": store_service,
    "monitor": monitor_service,
    "capture_feed": capture_feed_service,  # `sentinel capture` reads the monitor through it
    "guard": GuardService,
    "alerts": alerts_service,
    "canary": canary_service,
    "metrics": MetricsService,
}
