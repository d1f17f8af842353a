"""The monitor-loss watchdog: supervises every thread and sensor of `sentinel run`.

A zero in the report is only evidence while the sensors watch. Once a second the watchdog
checks each part: the NFLOG reader (thread alive, heartbeats arriving, no socket errors or
overruns), the kernel-counter reader, the resolver's UDP/TCP servers, the guard receiver and
the event-store writer (thread alive, loop turning, no receive/write errors), the alert router
and sink workers, and the pin refresher. A part that fails a check produces one P1
`monitor_lost` event (`detail.component`, `detail.reason`), makes the report's coverage
`partial` for that window and `sentinel status` exit 1 while it lasts (`watchdog.json` in the
state directory). A dead thread is restarted after a back-off (2 s, doubling to 60 s if it keeps
dying); when the part passes its checks again a `monitor_lost` event with
`detail.resolved: true` follows (the router turns it into a resolve of the same incident).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sentinel.log import get_logger
from sentinel.run.watchstatus import STALE_AFTER, STATE_FILE, read_status  # noqa: F401
from sentinel.store.events import Event
from sentinel.store.state import write_json

log = get_logger("watchdog")


@dataclass
class Part:
    """One supervised part: how to find its thread, how to restart it, what else to check."""

    name: str
    thread: Callable[[], threading.Thread | None]
    restart: Callable[[], None] | None = None
    health: Callable[[], str | None] | None = None  # a reason when unhealthy
    lost_since: float | None = None
    reason: str | None = None
    deaths: int = 0
    restart_at: float | None = None
    clean: int = 0  # consecutive good checks since the loss


@dataclass
class Counter:
    """A cumulative error counter: any growth between two checks is a loss."""

    read: Callable[[], int]
    what: str
    last: int | None = None

    def grew(self) -> str | None:
        try:
            now = int(self.read())
        except Exception:  # noqa: BLE001 - a part being swapped: check again next time
            return None
        before, self.last = self.last, now
        if before is not None and now > before:
            return f"{now - before} {self.what}"
        return None


@dataclass
class Watchdog:
    daemon: Any
    interval: float = 1.0
    misses: int = 3  # heartbeats / loop turns missed before a part counts as lost
    recover_after: int = 2  # good checks before a loss is resolved
    parts: list[Part] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    last_monitor_beat: float = field(default_factory=time.time)
    monitor_interval: float = 5.0
    checks: int = 0

    # --- wiring --------------------------------------------------------------------------
    def start(self) -> Watchdog:
        self.parts = build_parts(self)
        self.daemon.ctx.add_sink(self._observe)
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._write(stopped=True)

    def _observe(self, event: Event) -> None:
        if event.kind == "monitor_heartbeat":
            self.last_monitor_beat = time.time()
            self.monitor_interval = float(event.detail.get("interval") or 5.0)

    # --- the loop ------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check(time.time())
            except Exception:  # noqa: BLE001 - the watchdog itself must not die
                log.exception("watchdog_check_failed")

    def check(self, now: float) -> None:
        self.checks += 1
        for part in self.parts:
            if self._stop.is_set() or self.daemon.stopping.is_set():
                return
            reason = self._judge(part, now)
            if reason is not None:
                part.clean = 0
                if part.lost_since is None:
                    self._lost(part, reason, now)
                part.reason = reason
            elif part.lost_since is not None:
                part.clean += 1
                if part.clean >= self.recover_after:
                    self._resolved(part, now)
        self._write()

    def _judge(self, part: Part, now: float) -> str | None:
        thread = part.thread()
        if thread is not None and not thread.is_alive():
            if part.restart_at is None:
                part.deaths += 1
                part.restart_at = now + min(60.0, 2.0 * 2 ** (part.deaths - 1))
                return f"thread {thread.name} died"
            if now >= part.restart_at and part.restart is not None:
                part.restart_at = None
                try:
                    part.restart()
                    log.warning("thread_restarted", component=part.name, deaths=part.deaths)
                except Exception as exc:  # noqa: BLE001
                    log.error("thread_restart_failed", component=part.name, error=repr(exc))
            return part.reason or f"thread {thread.name} died"
        part.restart_at = None
        return part.health() if part.health else None

    def _lost(self, part: Part, reason: str, now: float) -> None:
        part.lost_since = now
        log.error("monitor_lost", component=part.name, reason=reason)
        self._emit(part, {"state": "lost", "reason": reason})

    def _resolved(self, part: Part, now: float) -> None:
        lost_for = round(now - (part.lost_since or now), 3)
        reason, part.lost_since, part.reason = part.reason, None, None
        log.warning("monitor_restored", component=part.name, lost_for=lost_for)
        self._emit(
            part, {"state": "resolved", "resolved": True, "reason": reason, "lost_for": lost_for}
        )

    def _emit(self, part: Part, detail: dict[str, Any]) -> None:
        verb = "back" if detail.get("resolved") else "lost"
        detail = {
            "component": part.name,
            "message": f"{part.name} {verb}: {detail.get('reason')}",
            **detail,
        }
        self.daemon.ctx.emit(
            Event(layer="sentinel", kind="monitor_lost", verdict="info", detail=detail)
        )

    def lost(self) -> dict[str, dict[str, Any]]:
        return {
            p.name: {"since": p.lost_since, "reason": p.reason}
            for p in self.parts
            if p.lost_since is not None
        }

    def _write(self, stopped: bool = False) -> None:
        state = {
            "checked_at": time.time(),
            "interval": self.interval,
            "stopped": stopped,
            "components": sorted(p.name for p in self.parts),
            "lost": {} if stopped else self.lost(),
        }
        try:
            write_json(STATE_FILE, state)
        except Exception:  # noqa: BLE001 - a full disk is the store's loss, reported there
            pass

    # --- health checks -------------------------------------------------------------------
    def monitor_health(self, errors: Counter, overruns: Counter) -> str | None:
        silent = time.time() - self.last_monitor_beat
        if silent > self.misses * max(self.monitor_interval, self.interval):
            return f"no NFLOG monitor heartbeat for {silent:.0f} s"
        return errors.grew() or overruns.grew()


def _loop_age(obj: Any, limit: float, what: str) -> str | None:
    age = time.monotonic() - float(getattr(obj, "last_loop", time.monotonic()))
    return f"{what} loop stuck for {age:.0f} s" if age > limit else None


def _restart(obj: Any, attr: str, target: Callable[[], None], name: str) -> Callable[[], None]:
    def restart() -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        setattr(obj, attr, thread)
        thread.start()

    return restart


def _loop_part(name: str, obj: Any, limit: float, what: str, errors: Counter) -> Part:
    """A service whose one thread (`obj._thread`, running `obj._run`) stamps `last_loop`: lost
    when the thread died, its loop has not turned for `limit` seconds, or `errors` grew."""
    return Part(
        name,
        lambda: obj._thread,
        _restart(obj, "_thread", obj._run, name),
        lambda: _loop_age(obj, limit, what) or errors.grew(),
    )


def build_parts(dog: Watchdog) -> list[Part]:
    """Every part `sentinel run` started, as far as it is running in this daemon."""
    daemon, services = dog.daemon, dog.daemon.ctx.services
    parts: list[Part] = []
    monitor = services.get("monitor")
    if monitor is not None:
        errors = Counter(lambda: monitor.counts["errors"], "NFLOG socket error(s)")
        overruns = Counter(
            lambda: monitor.counts["overruns"] + monitor.counts["lost"],
            "NFLOG message(s) lost (socket overrun)",
        )
        parts.append(
            Part(
                "nflog-monitor",
                lambda: monitor._thread,
                _restart(monitor, "_thread", monitor._run, "nflog-monitor"),
                lambda: dog.monitor_health(errors, overruns),
            )
        )
        if monitor._snapper is not None:
            parts.append(
                Part(
                    "kernel-counters",
                    lambda: monitor._snapper,
                    _restart(monitor, "_snapper", monitor._snap_loop, "kernel-counters"),
                )
            )
    store = services.get("store")
    if store is not None:
        write_errors = Counter(lambda: store.stats()["errors"], "event store write error(s)")
        parts.append(_loop_part("event-store", store, 30.0, "writer", write_errors))
    guard = services.get("guard")
    receiver = getattr(guard, "receiver", None)
    if receiver is not None:
        receive_errors = Counter(lambda: receiver.receive_errors, "guard socket error(s)")
        parts.append(_loop_part("guard-receiver", receiver, 5.0, "receiver", receive_errors))
    parts += _resolver_parts(daemon)
    parts += _alert_parts(services.get("alerts"))
    for thread in list(daemon.threads):
        if thread.name == "pin-refresher":
            parts.append(Part("pin-refresher", _named(daemon, "pin-refresher"), _refresher(daemon)))
    return parts


def _named(daemon: Any, name: str) -> Callable[[], threading.Thread | None]:
    return lambda: next((t for t in reversed(daemon.threads) if t.name == name), None)


def _refresher(daemon: Any) -> Callable[[], None]:
    def restart() -> None:
        daemon.threads[:] = [t for t in daemon.threads if t.name != "pin-refresher" or t.is_alive()]
        daemon._thread(daemon._refresher, "pin-refresher")

    return restart


def _resolver_parts(daemon: Any) -> list[Part]:
    """The resolver's serving threads: thread i serves socket i (UDP, TCP per address). The
    resolver object changes when a reload moves its port: always look at the current one."""

    def thread(i: int) -> Callable[[], threading.Thread | None]:
        def get() -> threading.Thread | None:
            if daemon.resolver is None or daemon.resolver._stopping.is_set():
                return None  # being replaced (a reload moved the port)
            threads = getattr(daemon.resolver, "_threads", [])
            return threads[i] if i < len(threads) else None

        return get

    def restart(i: int) -> Callable[[], None]:
        def go() -> None:
            resolver = daemon.resolver
            serve = resolver._serve_udp if i % 2 == 0 else resolver._serve_tcp
            t = threading.Thread(
                target=serve, args=(resolver._socks[i],), daemon=True, name=serve.__name__
            )
            resolver._threads[i] = t
            t.start()

        return go

    count = len(getattr(daemon.resolver, "_threads", []))
    return [Part(f"resolver-{'udp' if i % 2 == 0 else 'tcp'}{i // 2}", thread(i), restart(i))
            for i in range(count)]  # fmt: skip


def _alert_parts(service: Any) -> list[Part]:
    if service is None or not hasattr(service, "dispatcher"):
        return []

    def router() -> threading.Thread | None:
        if service.dispatcher._stopping.is_set():
            return None  # being swapped by an alert-settings reload
        return service.dispatcher._router_thread

    def restart_router() -> None:
        d = service.dispatcher
        d._router_thread = threading.Thread(target=d._route_loop, name="alert-router", daemon=True)
        d._router_thread.start()

    parts = [Part("alert-router", router, restart_router)]
    for name in list(service.dispatcher.workers):

        def worker(name: str = name) -> threading.Thread | None:
            w = service.dispatcher.workers.get(name)
            if w is None or service.dispatcher._stopping.is_set():
                return None
            return w.thread

        def restart_worker(name: str = name) -> None:
            w = service.dispatcher.workers[name]
            w.thread = threading.Thread(target=w.run, name=f"alert-{name}", daemon=True)
            w.thread.start()

        parts.append(Part(f"alert-{name}", worker, restart_worker))
    return parts
