"""The alert: what the router makes of one or many events, and what every sink renders.

Severities: P1 goes out at once; P2 and P3 are grouped into digests. The mapping from event
kind to severity lives in sentinel.store.kinds, the one table of event kinds.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from sentinel.store.kinds import ATTEMPT_KINDS, P1, P2, P3
from sentinel.store.kinds import SEVERITY_BY_KIND as SEVERITY_BY_KIND  # re-exported
from sentinel.store.kinds import severity_of as severity_of  # re-exported

__all__ = ["P1", "P2", "P3", "SEVERITY_BY_KIND", "severity_of"]
TEST = "TEST"  # `sentinel alert test`: sent at once, to every configured sink

# event kind -> severity: one table for every producer, the router, the report and the docs
EGRESS_KINDS = ATTEMPT_KINDS  # `dns_refused` is the DNS layer's older name for an egress attempt
PRIORITY = {TEST: 0, P1: 1, P2: 2, P3: 3}  # outbox order and eviction order (highest first)

TRIGGER, RESOLVE = "trigger", "resolve"


def dedup_key_for(parts: tuple[str, ...]) -> str:
    """A short stable key (PagerDuty allows 255 chars; we keep it short and opaque)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:20]
    return f"sentinel-{digest}"


@dataclass(frozen=True)
class Alert:
    severity: str  # P1 | P2 | P3 | TEST
    kind: str  # the event kind, or "digest" for a P2/P3 digest
    title: str  # one line, no secrets
    dedup_key: str
    correlation_id: str  # the id (UUIDv4) of the first event this alert stands for
    action: str = TRIGGER  # trigger | resolve
    layer: str | None = None
    destination: str | None = None
    process: str | None = None
    count: int = 1  # events this alert stands for
    rollup: bool = False  # "N more attempts" follow-up of an earlier alert
    first_ts: float = 0.0
    last_ts: float = 0.0
    details: dict[str, Any] = field(default_factory=dict, hash=False)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> Alert:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})  # newer rows: extra keys

    def summary(self, limit: int = 1024) -> str:
        """The one-line summary (PagerDuty caps payload.summary at 1024 characters)."""
        text = self.title
        return text if len(text) <= limit else text[: limit - 1] + "…"
