"""Events in, alerts out: severity, dedup with "N more attempts" roll-ups, P2/P3 digests, resolves.

Pure and single-threaded: every call takes `now`, so tests drive time by hand. The dispatcher
calls `route()` for each event and `tick()` a few times a second, and `flush()` on stop so no
count is ever lost.

Dedup: one alert per (destination, layer, process) per window; further attempts in the window
are counted and sent as one roll-up when the window ends (and a new window starts, so a flood
gives one roll-up per window). A process that scatters attempts over many destinations is
capped too: past `per_process_cap` distinct alerts in a window, its further destinations fold
into one "other destinations" entry, so a port scan cannot page thousands of times; and past
`max_windows` open windows in all, new keys fold into one "many processes" entry per layer
(memory stays bounded, and so do pages).

Identity: the process an alert names and caps by is the kernel-verified one (guard events carry
`detail.sender`): what a guard datagram claims (`exe`, `pid`) can never open new windows, and
senders the kernel could not identify (another PID namespace) share one "unverified" bucket.
Guard alerts say that the kernel did not see the call (a refused call sends no packet).

Budget: with `budget` > 0, at most that many P1 alerts (first alerts and roll-ups) go out per
`budget_window`; the rest are counted and sent as one "N more" roll-up when the budget window
ends, so a flood of forged or distinct events pages a bounded number of times.

A P1 event with `detail.resolved: true` (the watchdog's "monitor back") resolves the incident
its earlier event opened (same dedup key) instead of paging again.

What each alert says is in shapes.py; the open windows and digests, and their saved form, in
incidents.py.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

from sentinel.alerts import shapes
from sentinel.alerts.budget import Budget
from sentinel.alerts.identity import process_of
from sentinel.alerts.incidents import MAX_SAMPLES, Digest, Window
from sentinel.alerts.model import EGRESS_KINDS, P1, P2, P3, Alert, dedup_key_for, severity_of
from sentinel.redact import redact_text
from sentinel.store.events import Event

DEFAULT_DIGEST_WINDOWS = {P2: 15 * 60.0, P3: 60 * 60.0}


@dataclass
class RouterStats:
    events: int = 0
    ignored: int = 0  # kinds that never alert
    alerts: int = 0  # immediate P1 alerts
    deduped: int = 0  # events folded into an open window
    rollups: int = 0  # roll-up alerts made
    digests: int = 0
    resolves: int = 0
    updates: int = 0  # fold updates of an event already routed (monitor retransmits)


class Router:
    def __init__(
        self,
        dedup_window: float = 300.0,
        digest_windows: dict[str, float] | None = None,
        resolve_after: float = 0.0,
        per_process_cap: int = 10,
        max_windows: int = 1000,
        budget: int = 0,
        budget_window: float = 60.0,
    ) -> None:
        self.window = dedup_window
        self.digest_windows = {**DEFAULT_DIGEST_WINDOWS, **(digest_windows or {})}
        self.resolve_after = resolve_after  # 0 = never send resolves
        self.per_process_cap = per_process_cap
        self.max_windows = max_windows
        self._per_process: Counter = Counter()  # (kind, layer, process) -> open windows
        self.windows: dict[tuple[str, ...], Window] = {}
        self.digests: dict[str, Digest] = {}
        self.stats = RouterStats()
        self.budget = Budget(budget, budget_window)

    # --- input ---------------------------------------------------------------------------
    def route(self, event: Event, now: float) -> list[Alert]:
        if getattr(event, "last_ts", None) is not None:
            self.stats.updates += 1  # a fold update (same id, more packets): not a new attempt
            return []
        self.stats.events += 1
        severity = severity_of(event.kind)
        if severity is None:
            self.stats.ignored += 1
            return []
        if severity == P1 and event.detail.get("resolved") is True:
            return self._resolve_now(event)
        if severity == P1:
            return self.budget.spend(self._immediate(event, now), now, event)
        self._digest(severity, event, now)
        return []

    def _key(self, event: Event, dest: str | None = None) -> tuple[str, str, str, str]:
        """`dest`: the event's destination text, when the caller made it already."""
        dest, proc = dest or shapes.event_destination(event), process_of(event)
        if event.kind not in EGRESS_KINDS and event.detail.get("component"):
            dest = str(event.detail["component"])  # one incident per supervised part
        return (event.kind if event.kind not in EGRESS_KINDS else "egress", event.layer, proc, dest)

    def _resolve_now(self, event: Event) -> list[Alert]:
        """The condition an earlier P1 reported is over: resolve its incident (same key)."""
        key = self._key(event)
        entry = self.windows.get(key)
        if entry is None:
            entry = Window(
                dedup_key=dedup_key_for(key),
                kind=event.kind,
                layer=event.layer,
                destination=key[3],
                process=key[2],
                correlation_id=event.id,
                started=event.ts,
                last_seen=event.ts,
                first_ts=event.ts,
            )
        else:
            self._forget(key)
        self.stats.resolves += 1
        alert = shapes.resolve_alert(entry, self.resolve_after)
        message = event.detail.get("message")
        title = f"Resolved: {event.kind.replace('_', ' ')} [{event.layer}]"
        return [replace(alert, title=redact_text(f"{title}: {message}" if message else title))]

    def _immediate(self, event: Event, now: float) -> list[Alert]:
        destination = shapes.event_destination(event)  # made once: the key's and the sample's
        key = self._key(event, destination)
        dest, proc = key[3], key[2]
        out: list[Alert] = []
        entry = self.windows.get(key)
        if entry is None and event.kind in EGRESS_KINDS:
            if len(self.windows) >= self.max_windows:
                key, dest, proc = (key[0], key[1], "*", "*"), "many destinations", "many processes"
            elif self._per_process[key[:3]] >= self.per_process_cap:
                key, dest = (*key[:3], "*"), "other destinations"
            entry = self.windows.get(key)
        if entry is not None and now - entry.started >= self.window:
            out += self._close_window(entry, now)  # a late tick: settle the old window first
        if entry is not None and now - entry.started < self.window:
            entry.suppressed += 1
            entry.total += 1
            entry.last_seen = now
            entry.last_event_id = event.id
            entry.destinations.add(destination)
            self.stats.deduped += 1
            return out
        entry = entry or Window(
            dedup_key=dedup_key_for(key),
            kind=event.kind,
            layer=event.layer,
            destination=dest,
            process=proc,
            correlation_id=event.id,
            started=now,
            last_seen=now,
            first_ts=event.ts,
            last_event_id=event.id,
        )
        if entry.last_event_id != event.id:  # a quiet window re-opened by a new event
            entry.total += 1
            entry.last_event_id = event.id
        entry.started, entry.last_seen, entry.correlation_id = now, now, event.id
        entry.destinations.add(destination)
        if key not in self.windows and key[3] != "*":
            self._per_process[key[:3]] += 1
        self.windows[key] = entry
        self.stats.alerts += 1
        out.append(shapes.first_alert(entry, event))
        return out

    def _forget(self, key: tuple[str, ...]) -> None:
        del self.windows[key]
        if key[3] != "*":
            self._per_process[key[:3]] -= 1
            if self._per_process[key[:3]] <= 0:
                del self._per_process[key[:3]]

    def _digest(self, severity: str, event: Event, now: float) -> None:
        bucket = self.digests.get(severity)
        if bucket is None:
            bucket = self.digests[severity] = Digest(severity, now, event.id)
        bucket.counts[event.kind] += 1
        bucket.last_ts = event.ts
        if len(bucket.samples) < MAX_SAMPLES:
            bucket.samples.append(shapes.brief(event))

    # --- time ----------------------------------------------------------------------------
    def tick(self, now: float) -> list[Alert]:
        out: list[Alert] = []
        for key, entry in list(self.windows.items()):
            if now - entry.started < self.window:
                continue
            out += self.budget.spend(self._close_window(entry, now), now)
            if entry.suppressed == 0 and self._settled(entry, now, out):
                self._forget(key)
        out += self.budget.settle(now)
        for severity, bucket in list(self.digests.items()):
            if now - bucket.opened >= self.digest_windows[severity]:
                out.append(self._digest_alert(bucket))
                del self.digests[severity]
        return out

    def flush(self, now: float) -> list[Alert]:
        """On stop: every pending roll-up and digest goes out now (persisted in the outbox)."""
        out: list[Alert] = []
        for entry in self.windows.values():
            out += self._close_window(entry, now)
        for bucket in self.digests.values():
            out.append(self._digest_alert(bucket))
        out += self.budget.settle(now, final=True)
        self.windows.clear()
        self._per_process.clear()
        self.digests.clear()
        return out

    def _close_window(self, entry: Window, now: float) -> list[Alert]:
        """Roll up what the window folded and start a new window (only if it folded anything)."""
        if entry.suppressed == 0:
            return []
        alert = shapes.rollup_alert(entry, self.window)
        entry.suppressed = 0
        entry.started = now
        self.stats.rollups += 1
        return [alert]

    def _settled(self, entry: Window, now: float, out: list[Alert]) -> bool:
        """A quiet window can go; with resolve_after, only once the resolve is sent."""
        if self.resolve_after <= 0:
            return True
        if now - entry.last_seen < self.resolve_after:
            return False
        out.append(shapes.resolve_alert(entry, self.resolve_after))
        self.stats.resolves += 1
        return True

    def _digest_alert(self, bucket: Digest) -> Alert:
        self.stats.digests += 1
        return shapes.digest_alert(bucket, self.digest_windows[bucket.severity])
