"""`sentinel alert test`: one direct test alert per configured sink (no outbox, no retries,
no router), and what each sink answered: what works now."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from sentinel.alerts.http import DEFAULT_TIMEOUT, OK, make_client, post
from sentinel.alerts.model import TEST, Alert, dedup_key_for
from sentinel.alerts.registry import build_sinks
from sentinel.policy.load import Policy
from sentinel.store.events import Event


@dataclass(frozen=True)
class SinkTestResult:
    sink: str
    ok: bool
    detail: str  # redacted


def send_test_alerts(
    policy: Policy,
    environ: Mapping[str, str] | None = None,
    mark: int | None = -1,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
) -> list[SinkTestResult]:
    """One direct test alert per configured sink (no outbox, no retries): what works now."""
    sinks, problems = build_sinks(policy.alerts, environ)
    results = [
        SinkTestResult(name, False, f"not configured: {msg}") for name, msg in problems.items()
    ]
    if not sinks:
        return results
    now = time.time()
    alert = Alert(
        severity=TEST,
        kind="test",
        title="Test alert from sentinel: this sink works",
        dedup_key=dedup_key_for(("test", str(now))),
        correlation_id=str(Event(layer="sentinel", kind="test").id),
        layer="sentinel",
        first_ts=now,
        last_ts=now,
        details={"policy_sha256": policy.sha256},
    )
    with make_client(policy.mark if mark == -1 else mark, timeout) as client:
        for name, sink in sinks.items():
            body, headers = sink.render(alert, 0)
            result = post(client, sink.url, body, headers)
            results.append(SinkTestResult(name, result.outcome == OK, result.detail))
    return sorted(results, key=lambda r: r.sink)
