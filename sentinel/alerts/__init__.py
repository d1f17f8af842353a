"""Alerting: P1/P2/P3 routing, dedup and roll-ups, a persisted outbox, PagerDuty/Slack/webhook.

The names below are imported on first use (PEP 562), so `sentinel report`, which only reads the
outbox, does not import the HTTP client and the sinks.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "BreakerSettings": "breaker",
    "CircuitBreaker": "breaker",
    "AlertDispatcher": "dispatcher",
    "Backoff": "worker",
    "SinkTestResult": "sinktest",
    "send_test_alerts": "sinktest",
    "SEVERITY_BY_KIND": "model",
    "Alert": "model",
    "severity_of": "model",
    "read_summary": "outbox",
    "SINK_TYPES": "registry",
    "build_sinks": "registry",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'sentinel.alerts' has no attribute {name!r}")
    return getattr(importlib.import_module(f"sentinel.alerts.{_WHERE[name]}"), name)
