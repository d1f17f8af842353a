"""The one event schema for every layer (netfilter, dns, guard, tamper, ...).

An event's id is also its correlation id: a random UUIDv4 from `sentinel.ids`; ids made
elsewhere (the guard's uuid4) are stored the same way.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from sentinel.ids import new_id
from sentinel.store.destination import destination_text as destination_text  # re-exported

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
    id: str = field(default_factory=new_id)  # also the correlation id
    family: int | None = None  # 4 | 6 (network layer)
    src_ip: str | None = None
    src_port: int | None = None
    last_ts: float | None = None  # last folded packet (retransmits), None = single packet

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


COLUMNS = tuple(f.name for f in fields(Event))


# The event the bus (`run.context.Context.emit`) is handing its sinks in this thread/task,
# redacted there once: a sink given exactly that object (identity, not equality) needs no second
# redaction (the log sink, the store's `put`); any other event is redacted by whoever stores it.
BUS_REDACTED: contextvars.ContextVar[Event | None] = contextvars.ContextVar(
    "bus_redacted", default=None
)


def redact_once(event: Event) -> Event:
    """`redact_event`, unless `event` is the one the bus already redacted for its sinks."""
    if BUS_REDACTED.get() is event:
        return event
    return redact_event(event)


def redact_event(event: Event) -> Event:
    """The event as it may be stored: secrets, e-mails, phones masked and user ids hashed in
    its free-text fields (name, executable, stack, detail). Addresses, ports and ids stay.
    An event with nothing to mask is returned as it is (no copy)."""
    if not (event.dst_name or event.exe or event.stack or event.detail):
        return event  # a kernel sighting: nothing free-text to redact (the hot path)
    from sentinel.redact import redact_obj, redact_text

    changes: dict[str, Any] = {}
    for name in ("dst_name", "exe", "stack"):
        text = getattr(event, name)
        if text and (masked := redact_text(text)) != text:
            changes[name] = masked
    if event.detail and (detail := redact_obj(event.detail)) != event.detail:
        changes["detail"] = detail
    return replace(event, **changes) if changes else event
