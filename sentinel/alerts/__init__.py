"""Alerting: P1/P2/P3 routing, dedup and roll-ups, a persisted outbox, PagerDuty/Slack/webhook."""

from sentinel.alerts.breaker import BreakerSettings, CircuitBreaker
from sentinel.alerts.dispatcher import AlertDispatcher, Backoff, SinkTestResult, send_test_alerts
from sentinel.alerts.model import SEVERITY_BY_KIND, Alert, severity_of
from sentinel.alerts.outbox import read_summary
from sentinel.alerts.registry import SINK_TYPES, build_sinks

__all__ = [
    "SEVERITY_BY_KIND",
    "SINK_TYPES",
    "Alert",
    "AlertDispatcher",
    "Backoff",
    "BreakerSettings",
    "CircuitBreaker",
    "SinkTestResult",
    "build_sinks",
    "read_summary",
    "send_test_alerts",
    "severity_of",
]
