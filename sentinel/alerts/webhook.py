"""Generic webhook: the alert as JSON, optionally signed.

`X-Sentinel-Signature: sha256=<hex HMAC-SHA256 of the exact body>` when the policy names an
`hmac_secret_env`; `X-Sentinel-Alert-Id` lets a receiver drop a redelivery (a timeout after
the receiver already processed the request is retried).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

from sentinel.alerts.base import Sink, dropped_note, iso8601, to_body
from sentinel.alerts.model import Alert

SCHEMA_VERSION = 1


class WebhookSink(Sink):
    kind = "webhook"
    handles_resolve = True

    def __init__(self, settings, environ=None) -> None:
        super().__init__(settings, environ)
        self._url = self.secret("url")
        self.hmac_secret = self.secret("hmac_secret", required=False)

    def render(self, alert: Alert, dropped: int) -> tuple[bytes, dict[str, str]]:
        body = to_body(self.payload(alert, dropped))
        headers = {"Content-Type": "application/json", "X-Sentinel-Alert-Id": alert.id}
        if self.hmac_secret:
            headers["X-Sentinel-Signature"] = "sha256=" + sign(self.hmac_secret, body)
        return body, headers

    def payload(self, alert: Alert, dropped: int) -> dict[str, Any]:
        return {
            "version": SCHEMA_VERSION,
            "alert_id": alert.id,
            "correlation_id": alert.correlation_id,
            "action": alert.action,
            "severity": alert.severity,
            "kind": alert.kind,
            "title": alert.title,
            "dedup_key": alert.dedup_key,
            "layer": alert.layer,
            "destination": alert.destination,
            "process": alert.process,
            "count": alert.count,
            "rollup": alert.rollup,
            "first_seen": iso8601(alert.first_ts or alert.created),
            "last_seen": iso8601(alert.last_ts or alert.created),
            "sent_at": iso8601(time.time()),
            "source": self.source,
            "dropped_alerts": dropped,
            "dropped_note": dropped_note(dropped) or None,
            "details": alert.details,
        }


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
