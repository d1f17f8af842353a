"""The alert dispatcher as a `sentinel run` service (run.services.SERVICES contract).

    from sentinel.alerts.service import alerts_service
    SERVICES["alerts"] = alerts_service

Subscribes to the daemon's event bus (fold updates, which carry `last_ts`, are skipped by the
router), hands the dispatcher's own events (sink_degraded, queue_saturation) back to the bus
so the store records them, and swaps the dispatcher when a reload changes the alert settings
or the mark. The outbox (in the state directory) carries over a swap; events arriving during
one are buffered, never blocked on.
"""

from __future__ import annotations

import threading
from typing import Any

from sentinel.alerts.dispatcher import AlertDispatcher
from sentinel.log import get_logger
from sentinel.policy.load import Policy
from sentinel.store.events import Event
from sentinel.store.state import state_dir

log = get_logger("alerts")


class AlertService:
    def __init__(self, ctx: Any, **dispatcher_options: Any) -> None:
        self.ctx = ctx
        self.options = dispatcher_options
        self._lock = threading.Lock()
        self._swapping = False
        self._pending: list[Event] = []
        self.dispatcher = self._make(ctx.policy)
        ctx.add_sink(self.on_event, many=self.on_events)
        ctx.reload_hooks.append(self.reload)

    def _make(self, policy: Policy) -> AlertDispatcher:
        return AlertDispatcher(policy, state_dir(), on_event=self.ctx.emit, **self.options)

    def start(self) -> None:
        self.dispatcher.start()

    def stop(self) -> None:
        with self._lock:
            dispatcher = self.dispatcher
        dispatcher.stop()

    def on_event(self, event: Event) -> None:
        with self._lock:  # held only for a non-blocking put
            if self._swapping:
                self._pending.append(event)
            else:
                self.dispatcher.submit(event)

    def on_events(self, events: list[Event]) -> None:
        """`on_event` for a batch from the bus: one lock, one hand-over to the dispatcher."""
        with self._lock:
            if self._swapping:
                self._pending.extend(events)
            else:
                self.dispatcher.submit_many(events)

    def reload(self, policy: Policy) -> None:
        current = self.dispatcher.policy
        if policy.alerts == current.alerts and policy.mark == current.mark:
            self.dispatcher.policy = policy  # nothing the dispatcher uses changed
            return
        with self._lock:
            self._swapping = True
            old = self.dispatcher
        old.stop()  # persists pending roll-ups/digests; its threads are gone before the new start
        new = self._make(policy).start()
        with self._lock:
            self.dispatcher = new
            pending, self._pending, self._swapping = self._pending, [], False
        for event in pending:
            new.submit(event)
        log.info("alerts_reloaded", sinks=sorted(new.sinks), unconfigured=sorted(new.problems))

    def stats(self) -> dict[str, Any]:
        return self.dispatcher.stats()


def alerts_service(ctx: Any) -> AlertService:
    return AlertService(ctx)
