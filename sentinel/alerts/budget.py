"""The global alert budget: at most `limit` P1 alerts per `window`, the rest one roll-up.

Per-destination dedup and the per-process cap bound what one process can page; the budget
bounds everything together (many processes, forged identities, a scan across layers). Alerts
past the budget are counted by kind and sent as one "N more P1 events held back" alert when
the budget window ends (or on flush), so nothing is dropped silently. Resolves are never held.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sentinel.alerts.model import P1, RESOLVE, Alert, dedup_key_for
from sentinel.redact import redact_obj, redact_text
from sentinel.store.events import Event

MAX_SAMPLES = 10


@dataclass
class Budget:
    """At most `limit` P1 alerts per `window` seconds; the rest become one roll-up."""

    limit: int
    window: float
    started: float | None = None
    used: int = 0
    held_alerts: int = 0
    held_events: int = 0
    kinds: Counter = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    correlation_id: str = ""
    first_ts: float = 0.0

    def spend(self, alerts: list[Alert], now: float, event: Event | None = None) -> list[Alert]:
        if self.limit <= 0 or not alerts:
            return alerts
        if self.started is None or now - self.started >= self.window:
            self.started, self.used = now, 0
        out = []
        for alert in alerts:
            if alert.action == RESOLVE or self.used < self.limit:
                self.used += alert.action != RESOLVE
                out.append(alert)
                continue
            if not self.held_alerts:
                self.correlation_id, self.first_ts = alert.correlation_id, alert.first_ts or now
            self.held_alerts += 1
            self.held_events += max(1, alert.count)
            self.kinds[alert.kind] += max(1, alert.count)
            if len(self.samples) < MAX_SAMPLES:
                self.samples.append(f"{alert.process} -> {alert.destination} [{alert.layer}]")
        return out

    def settle(self, now: float, final: bool = False) -> list[Alert]:
        """When the budget window is over (or on flush): one roll-up for what was held."""
        if not self.held_alerts or (
            not final and self.started is not None and now - self.started < self.window
        ):
            return []
        n, alerts = self.held_events, self.held_alerts
        parts = ", ".join(f"{kind} x{count}" for kind, count in self.kinds.most_common())
        alert = Alert(
            severity=P1,
            kind="alert_budget",
            title=redact_text(
                f"{n} more P1 events in {alerts} alerts held back by the alert budget "
                f"({self.limit} per {self.window:g} s): {parts}"
            ),
            dedup_key=dedup_key_for(("alert_budget", f"{self.started:.3f}")),
            correlation_id=self.correlation_id,
            count=n,
            rollup=True,
            first_ts=self.first_ts,
            last_ts=now,
            details=redact_obj({"held_alerts": alerts, "held_events": n,
                                "kinds": dict(self.kinds), "samples": self.samples}),
        )  # fmt: skip
        self.held_alerts = self.held_events = 0
        self.kinds, self.samples = Counter(), []
        self.started, self.used = now, 1
        return [alert]
