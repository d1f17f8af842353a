"""PagerDuty Events API v2 (enqueue): trigger with dedup_key, resolve when quiet.

Documented limits honoured here: summary <= 1024 chars, dedup_key <= 255, severity one of
critical/error/warning/info, payload <= 512 KB; 202 = accepted, 400 = never retry, 429 and 5xx
= retry later.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sentinel.alerts.base import Sink, dropped_note, iso8601, to_body
from sentinel.alerts.model import P1, P2, P3, RESOLVE, TEST, Alert

DEFAULT_URL = "https://events.pagerduty.com/v2/enqueue"
SEVERITY = {P1: "critical", P2: "error", P3: "warning", TEST: "info"}
MAX_SUMMARY = 1024
MAX_BYTES = 512 * 1024


class PagerDutySink(Sink):
    kind = "pagerduty"
    rate: ClassVar[float] = 2.0  # ~120/min per routing key
    burst: ClassVar[float] = 2.0
    handles_resolve = True

    def __init__(self, settings, environ=None) -> None:
        super().__init__(settings, environ)
        self.routing_key = self.secret("routing_key")
        self._url = self.secret("url", required=False) or DEFAULT_URL

    def payload(self, alert: Alert, dropped: int) -> dict[str, Any]:
        if alert.action == RESOLVE:
            return {
                "routing_key": self.routing_key,
                "event_action": "resolve",
                "dedup_key": alert.dedup_key,
            }
        summary = alert.title
        if dropped:
            summary = f"{summary} [{dropped_note(dropped)}]"
        details: dict[str, Any] = {
            "priority": alert.severity,
            "correlation_id": alert.correlation_id,
            "alert_id": alert.id,
            "count": alert.count,
            "rollup": alert.rollup,
            "dropped_alerts": dropped,
        }
        for key in ("destination", "process", "layer"):
            if getattr(alert, key):
                details[key] = getattr(alert, key)
        details["event"] = alert.details
        payload = {
            "routing_key": self.routing_key,
            "event_action": "trigger",
            "dedup_key": alert.dedup_key[:255],
            "client": "sentinel",
            "payload": {
                "summary": _clip(summary, MAX_SUMMARY),
                "source": self.source,
                "severity": SEVERITY.get(alert.severity, "critical"),
                "timestamp": iso8601(alert.last_ts or alert.created),
                "component": alert.layer or "sentinel",
                "group": "sentinel",
                "class": alert.kind,
                "custom_details": details,
            },
        }
        if len(to_body(payload)) > MAX_BYTES:  # a huge stack trace must not get the page refused
            details["event"] = {"truncated": True}
        return payload


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
