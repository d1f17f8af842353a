"""One event schema for every layer (netfilter, dns, guard, tamper, ...).

The SQLite store (WAL, retention, bounded non-blocking writer) lives here too (issue 5).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

LAYERS = ("netfilter", "dns", "guard", "tamper", "sentinel", "canary")
VERDICTS = ("blocked", "audited", "info")


@dataclass(frozen=True)
class Event:
    layer: str  # one of LAYERS
    kind: str  # "egress_attempt", "dns_refused", "tamper", "pin_changed", "reload_rejected", ...
    verdict: str = "blocked"  # blocked | audited | info
    protocol: str | None = None  # tcp | udp | icmp | icmpv6 | dns
    dst_ip: str | None = None
    dst_port: int | None = None
    dst_name: str | None = None  # when known (DNS layer, guard)
    packets: int = 1
    pid: int | None = None
    exe: str | None = None
    stack: str | None = None  # the Python frame that made the call (guard)
    detail: dict[str, Any] = field(default_factory=dict, hash=False)
    ts: float = field(default_factory=time.time)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))  # also the correlation id

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
