"""One sink's delivery thread: the head outbox row goes out when its retry time, the sink's
Retry-After pause, its circuit breaker and its rate limit all allow; the outcome (2xx, 4xx,
anything else) decides delivered, failed or retried with jittered exponential backoff.

Every time decision reads the dispatcher's injectable `clock`; the thread only polls at its
`tick` real seconds (dispatcher.py)."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from sentinel.alerts.base import Sink
from sentinel.alerts.breaker import OPEN, CircuitBreaker
from sentinel.alerts.http import OK, REJECTED, Result, post
from sentinel.alerts.outbox import Row
from sentinel.alerts.ratelimit import TokenBucket
from sentinel.evidence import metrics
from sentinel.redact import redact_text
from sentinel.store.events import Event

if TYPE_CHECKING:
    from sentinel.alerts.dispatcher import AlertDispatcher

log = structlog.get_logger("sentinel.alerts")

IDLE = 1.0  # empty outbox: sleep until woken (or this long)


@dataclass(frozen=True)
class Backoff:
    base: float = 1.0
    cap: float = 300.0

    def delay(self, attempts: int) -> float:
        """Exponential with jitter: between half and all of base * 2**attempts, capped."""
        full = min(self.cap, self.base * (2 ** min(attempts, 30)))
        return full * random.uniform(0.5, 1.0)


DEFAULT_BACKOFF = Backoff()


class SinkWorker:
    """Delivers one sink's outbox rows in order, within its rate limit and breaker."""

    def __init__(self, owner: AlertDispatcher, sink: Sink, rate: float, burst: float) -> None:
        self.owner = owner
        self.sink = sink
        self.name = sink.name
        self.breaker = CircuitBreaker(owner.breaker_settings, owner.clock, self._breaker_changed)
        self.bucket = TokenBucket(rate, burst, owner.clock)
        self.wake = threading.Event()
        self.paused_until = 0.0  # set by 429 Retry-After: the whole sink waits, not one row
        self.last: Result | None = None
        self.thread = threading.Thread(target=self.run, name=f"alert-{self.name}", daemon=True)

    def run(self) -> None:
        owner = self.owner
        while not owner._stopping.is_set():
            self.wake.clear()  # before looking: a wake-up from now on is not lost
            try:
                pause = self.step()
            except Exception as exc:  # a bug must not kill alerting for good
                log.error("alert_worker_error", sink=self.name, error=redact_text(repr(exc)))
                metrics.observe_error("alerts")
                pause = owner.tick
            if pause:
                self.wake.wait(pause)  # set by _enqueue and stop(): new work ends the wait

    def step(self) -> float:
        """Deliver the head row if it may go now; returns how long to wait (0 = go on)."""
        owner = self.owner
        row = owner.outbox.head(self.name)
        if row is None:
            return IDLE
        now = owner.clock()
        if now - row.created > owner.outbox.max_age:
            owner.outbox.expire(self.name)
            return 0.0
        if row.next_at > now or self.paused_until > now or not self.breaker.allow():
            return owner.tick  # polled: the clock may be a test's, real waits would not match
        if self.bucket.wait_time() > 0:
            return owner.tick
        self.bucket.take()
        self.deliver(row)
        return 0.0

    def deliver(self, row: Row) -> None:
        owner = self.owner
        dropped = owner.outbox.counter(f"unreported:{self.name}")
        try:
            body, headers = self.sink.render(row.alert, dropped)
        except Exception as exc:  # a row this sink cannot render must not block the rest
            owner.outbox.failed(row)
            log.error("alert_render_error", sink=self.name, error=redact_text(repr(exc)))
            return
        started = time.perf_counter()
        result = post(owner.client, self.sink.url, body, headers)
        outcome = {OK: "ok", REJECTED: "rejected"}.get(result.outcome, "retry")
        metrics.observe_delivery(self.name, time.perf_counter() - started, outcome)
        self.last = result
        fields = {"sink": self.name, "alert_id": row.alert.id, "status": result.status}
        if result.outcome == OK:
            owner.outbox.delivered(row, dropped)
            self.breaker.record_success()
            owner._delivered(row.alert)
            log.debug("alert_delivered", correlation_id=row.alert.correlation_id, **fields)
        elif result.outcome == REJECTED:
            owner.outbox.failed(row)
            self.breaker.record_failure()
            log.error("alert_rejected", detail=result.detail, **fields)
        else:
            now = owner.clock()
            if result.status == 429:  # the sink is alive, just asking us to slow down
                wait = result.retry_after
                wait = wait if wait is not None else owner.backoff.delay(row.attempts)
                self.paused_until = now + wait
            else:
                self.breaker.record_failure()
                wait = owner.backoff.delay(row.attempts)
                if result.retry_after is not None:
                    wait = max(wait, result.retry_after)
            owner.outbox.retry_at(row, now + wait)
            log.warning("alert_retry", detail=result.detail, retry_in=round(wait, 3), **fields)

    def _breaker_changed(self, old: str, new: str) -> None:
        log.warning("alert_sink_breaker", sink=self.name, old=old, new=new)
        if new == OPEN:
            self.owner._own_event(
                Event(
                    layer="sentinel",
                    kind="sink_degraded",
                    verdict="info",
                    detail={"sink": self.name, "message": f"{self.name}: circuit breaker open"},
                )
            )
