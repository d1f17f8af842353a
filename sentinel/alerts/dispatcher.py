"""The alert pipeline the daemon runs: submit() -> router -> outbox -> one delivery thread per sink.

    dispatcher = AlertDispatcher(policy, state_dir)
    dispatcher.start()
    dispatcher.submit(event)      # never blocks; a full queue is counted, then reported
    dispatcher.stats()            # sent, deduped/rolled up, dropped, breaker per sink
    dispatcher.stop()             # pending roll-ups/digests are persisted, not lost

Every time decision (windows, backoff, breaker, rate limits, Retry-After) reads the injectable
`clock`; threads only poll at `tick` real seconds, so tests move a fake clock and never sleep
through a real 30 s breaker or 5 min window. Each sink's delivery thread is worker.py;
`sentinel alert test` (direct, no outbox) is sinktest.py.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import structlog

from sentinel.alerts.breaker import BreakerSettings
from sentinel.alerts.http import DEFAULT_TIMEOUT, make_client
from sentinel.alerts.incidents import export_state, restore_state
from sentinel.alerts.model import RESOLVE, TEST, Alert
from sentinel.alerts.outbox import FILENAME, Outbox
from sentinel.alerts.registry import build_sinks
from sentinel.alerts.router import Router
from sentinel.alerts.worker import DEFAULT_BACKOFF, Backoff, SinkWorker
from sentinel.evidence import metrics
from sentinel.policy.load import Policy
from sentinel.redact import redact_text
from sentinel.store.events import Event

log = structlog.get_logger("sentinel.alerts")

SATURATION = 0.8  # queue above 80% -> a P3 queue_saturation event
_SATURATION_EVERY = 60.0  # at most one self-reported saturation event a minute
_LATENCIES_KEPT = 10_000
DEFAULT_BREAKER = BreakerSettings()  # the PRD's numbers
ALERT_BUDGET, ALERT_BUDGET_WINDOW = 20, 60.0  # P1 alerts per minute, then one "N more" roll-up


class AlertDispatcher:
    def __init__(
        self,
        policy: Policy,
        state_dir: str | Path,
        clock: Callable[[], float] = time.time,
        *,
        environ: Mapping[str, str] | None = None,
        queue_size: int = 10_000,
        outbox_rows: int = 10_000,
        outbox_max_age: float = 86_400.0,
        digest_windows: dict[str, float] | None = None,
        breaker: BreakerSettings = DEFAULT_BREAKER,
        backoff: Backoff = DEFAULT_BACKOFF,
        rates: dict[str, tuple[float, float]] | None = None,  # sink -> (per second, burst)
        tick: float = 0.05,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        mark: int | None = -1,  # -1: policy.mark; None: unmarked (only for unprivileged tests)
        on_event: Callable[[Event], None] | None = None,  # e.g. the event store's writer
        budget: tuple[int, float] = (ALERT_BUDGET, ALERT_BUDGET_WINDOW),  # (P1 alerts, per s)
    ) -> None:
        self.policy = policy
        self.on_event = on_event  # receives sink_degraded / queue_saturation events we raise
        self.clock = clock
        self.tick = tick
        self.breaker_settings = breaker
        self.backoff = backoff
        self.sinks, self.problems = build_sinks(policy.alerts, environ)
        pd = next((s for s in policy.alerts.sinks if s.kind == "pagerduty"), None)
        resolve_after = float(pd.options.get("resolve_after", 0.0)) if pd else 0.0
        windows = digest_windows or dict(policy.alerts.digest_windows)
        self.router = Router(
            policy.alerts.dedup_window,
            windows,
            resolve_after,
            budget=budget[0],
            budget_window=budget[1],
        )
        self.outbox = Outbox(Path(state_dir) / FILENAME, outbox_rows, outbox_max_age, clock)
        self._restore_router()
        self._saved_sig: tuple = self._router_sig()
        self._saved_at = float("-inf")
        self.client = make_client(policy.mark if mark == -1 else mark, timeout)
        self._queue: queue.Queue[Event] = queue.Queue(maxsize=queue_size)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._submitted = 0
        self._overflow = 0  # events dropped at submit(), not yet moved to the outbox counters
        self._overflow_total = 0
        self._route_errors = 0  # events the router raised on: logged, counted, no alert
        self._last_saturation = float("-inf")
        self._latencies: list[float] = []
        rates = rates or {}
        self.workers = {
            name: SinkWorker(self, sink, *rates.get(name, (sink.rate, sink.burst)))
            for name, sink in self.sinks.items()
        }
        self._router_thread = threading.Thread(target=self._route_loop, name="alert-router")
        self._router_thread.daemon = True
        self._started = False

    # --- the daemon's API ------------------------------------------------------------------
    def start(self) -> AlertDispatcher:
        self._started = True
        self._router_thread.start()
        for worker in self.workers.values():
            worker.thread.start()
        for name, problem in self.problems.items():
            log.error("alert_sink_unconfigured", sink=name, problem=problem)
        return self

    def submit(self, event: Event) -> bool:
        """Queue an event for alerting. Never blocks; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            with self._lock:
                self._overflow += 1
                self._overflow_total += 1
            return False
        with self._lock:
            self._submitted += 1
        return True

    def submit_many(self, events: list[Event]) -> int:
        """`submit` for a batch, under one lock of the queue: as many as it has room for are
        queued (in order), the rest counted as overflow like `submit`'s. Returns how many."""
        q = self._queue
        with q.mutex:  # queue.Queue's own lock: put_nowait's work, once for the batch
            room = q.maxsize - len(q.queue) if q.maxsize > 0 else len(events)
            taken = events[: max(room, 0)]
            if taken:
                q.queue.extend(taken)
                q.unfinished_tasks += len(taken)
                q.not_empty.notify()
        refused = len(events) - len(taken)
        with self._lock:
            self._submitted += len(taken)
            if refused:
                self._overflow += refused
                self._overflow_total += refused
        return len(taken)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop threads; queued events are routed and pending roll-ups persisted first."""
        self._stopping.set()
        for worker in self.workers.values():
            worker.wake.set()
        if self._started:
            self._router_thread.join(timeout)
            for worker in self.workers.values():
                worker.thread.join(timeout)
        else:
            self._drain(final=True)
        self.client.close()
        self.outbox.close()

    def stats(self) -> dict[str, Any]:
        counters = self.outbox.counters()
        sinks = {}
        for name, worker in self.workers.items():
            last = worker.last
            sinks[name] = {
                "sent": counters.get(f"sent:{name}", 0),
                "failed": counters.get(f"failed:{name}", 0),
                "retries": counters.get(f"retries:{name}", 0),
                "dropped": counters.get(f"dropped:{name}", 0),
                "dropped_unreported": counters.get(f"unreported:{name}", 0),
                "pending": self.outbox.pending(name),
                "breaker": worker.breaker.state,
                "breaker_opened": worker.breaker.opened_count,
                "last_result": last.detail if last else None,
            }
        r = self.router.stats
        with self._lock:
            submitted, overflow = self._submitted, self._overflow_total
        return {
            "submitted": submitted,
            "queue_depth": self._queue.qsize(),
            "events_dropped": overflow,
            "route_errors": self._route_errors,
            "events": r.events,
            "alerts": r.alerts,
            "deduped": r.deduped,
            "rollups": r.rollups,
            "digests": r.digests,
            "resolves": r.resolves,
            "updates_ignored": r.updates,
            "sent": sum(s["sent"] for s in sinks.values()),
            "failed": sum(s["failed"] for s in sinks.values()),
            "dropped": sum(s["dropped"] for s in sinks.values()) + overflow,
            "sinks": sinks,
            "unconfigured": dict(self.problems),
            "outbox_degraded": self.outbox.degraded,  # in memory: lost on restart
        }

    def queue_depth(self) -> int:
        return self._queue.qsize()

    def latencies(self) -> list[float]:
        """Seconds from alert creation to the sink's 2xx, for recent deliveries (bench)."""
        with self._lock:
            return list(self._latencies)

    # --- router thread ---------------------------------------------------------------------
    def _route_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._drain(final=False)
            except Exception as exc:
                log.error("alert_router_error", error=redact_text(repr(exc)))
                metrics.observe_error("alerts")
                self._stopping.wait(self.tick)
        self._drain(final=True)

    def _drain(self, final: bool) -> None:
        alerts: list[Alert] = []
        depth = self._queue.qsize()  # the backlog this round starts from (drained below)
        try:
            first = self._queue.get(timeout=0 if final else self.tick)
        except queue.Empty:
            first = None
        if first is not None:
            now = self.clock()
            alerts += self._route([first], now)
            alerts += self._route(self._take(10_000 if not final else self._queue.qsize() + 1), now)
        now = self.clock()
        if final:
            still_open = dict(self.router.windows)  # incidents stay open across a restart
            alerts += self.router.flush(now)
        else:
            alerts += self.router.tick(now)
        self._saturation(now, depth)
        self._settle_overflow()
        for alert in alerts:
            self._enqueue(alert)
        if final:
            self._save_router(export_state(self.router, still_open))
        elif self._router_sig() != self._saved_sig and time.monotonic() - self._saved_at >= 1.0:
            self._save_router(export_state(self.router))

    def _route(self, events: list[Event], now: float) -> list[Alert]:
        """The alerts of `events`. An event the router raises on is logged and counted
        (`route_errors`), and the batch goes on: one bad event never costs the others their
        alerts, nor the alerts already made from it."""
        out: list[Alert] = []
        route = self.router.route
        for event in events:
            try:
                out += route(event, now)
            except Exception as exc:  # noqa: BLE001 - counted and logged, the rest still routed
                self._route_errors += 1
                metrics.observe_error("alerts")
                log.error("alert_route_failed", event_id=event.id, error=redact_text(repr(exc)))
        return out

    def _take(self, limit: int) -> list[Event]:
        """Up to `limit` queued events, oldest first, under one lock of the queue: what
        `get_nowait` does for each (~1 us an event in a flood, issue 17), once for all."""
        q = self._queue
        with q.mutex:
            pending = q.queue
            n = min(limit, len(pending))
            taken = [pending.popleft() for _ in range(n)]
            if n:
                q.not_full.notify(n)
        return taken

    # --- incidents and digests survive restarts (kept in the outbox database) --------------
    def _router_sig(self) -> tuple:
        r = self.router
        stats = (r.stats.events, r.stats.rollups, r.stats.resolves, r.stats.digests)
        return (*stats, len(r.windows), len(r.digests))

    def _save_router(self, state: dict[str, Any]) -> None:
        self._saved_sig, self._saved_at = self._router_sig(), time.monotonic()
        try:
            self.outbox.save_state("router", json.dumps(state, default=str))
        except Exception as exc:  # noqa: BLE001 - bookkeeping must not stop alerting
            log.error("alert_state_save_failed", error=redact_text(repr(exc)))

    def _restore_router(self) -> None:
        try:
            text = self.outbox.load_state("router")
            if text:
                restore_state(self.router, json.loads(text))
        except Exception as exc:  # noqa: BLE001 - an unreadable state starts empty, and says so
            log.error("alert_state_restore_failed", error=redact_text(repr(exc)))
            return
        if self.router.windows or self.router.digests:
            log.info(
                "alert_state_restored",
                incidents=len(self.router.windows),
                digests=len(self.router.digests),
            )

    def _enqueue(self, alert: Alert) -> None:
        if alert.severity == TEST:
            targets = list(self.workers)
        else:
            routed = self.policy.alerts.sinks_for(alert.severity)
            targets = [n for n in routed if n in self.workers]
            if alert.action == RESOLVE:
                targets = [n for n in targets if self.sinks[n].handles_resolve]
        for name in targets:
            evicted = self.outbox.put(name, alert)
            if evicted:
                log.warning("alert_outbox_full", sink=name, evicted=evicted)
            self.workers[name].wake.set()

    def _settle_overflow(self) -> None:
        with self._lock:
            n, self._overflow = self._overflow, 0
        for name in self.workers:
            self.outbox.add_dropped(name, n)

    def _saturation(self, now: float, depth: int) -> None:
        size = self._queue.maxsize
        if size and depth >= SATURATION * size and now - self._last_saturation > _SATURATION_EVERY:
            self._last_saturation = now
            event = Event(
                layer="sentinel",
                kind="queue_saturation",
                verdict="info",
                detail={"queue": "alerts", "depth": depth, "capacity": size},
            )
            self._own_event(event)

    def _own_event(self, event: Event) -> None:
        """An event the dispatcher raises about itself. With a daemon hook it goes to the
        daemon's bus only, which records it and hands it back to submit() like any other
        event; without one (tests, `alert test`) it is submitted directly."""
        if self.on_event is None:
            self.submit(event)
            return
        try:
            self.on_event(event)
        except Exception as exc:  # the daemon's hook must not break alerting
            log.error("alert_on_event_error", error=redact_text(repr(exc)))
            self.submit(event)

    def _delivered(self, alert: Alert) -> None:
        with self._lock:
            self._latencies.append(time.time() - alert.created)
            if len(self._latencies) > _LATENCIES_KEPT:
                del self._latencies[: len(self._latencies) - _LATENCIES_KEPT]
