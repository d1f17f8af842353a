"""One name's pin and the per-record-type half of its lifecycle.

Each record type stands alone: when one type fails while another answers (A fine, AAAA timing
out), the failing type keeps its last good addresses until its own `stale_grace` ends, the
episode is one `dns_type_failing` event (and `sentinel_dns_type_failures_total{qtype}` counts
each failed lookup), `dns_type_recovered` closes it, and `pins_expired` (with `qtype`) says
when that type's grace ran out. The manager of all pins (pins.py) calls these helpers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sentinel.policy.load import IPAddress
from sentinel.resolver.upstream import TYPES, Resolution, Upstream
from sentinel.store.events import Event

Emit = Callable[[Event], None]


@dataclass
class Pin:
    addresses: tuple[IPAddress, ...] = ()
    ttl: float = 0.0
    expires: float = 0.0  # monotonic: end of the (clamped) TTL
    refresh_at: float = 0.0
    retiring: dict[IPAddress, float] = field(default_factory=dict)  # address -> allowed until
    resolved: bool = False
    nxdomain: bool = False
    failing: bool = False  # every type failed on the last try
    stale: bool = False
    error: str = ""  # why the last try failed (every type)
    failing_types: dict[str, str] = field(default_factory=dict)  # rdtype -> error, others ok
    valid_until: dict[int, float] = field(default_factory=dict)  # family -> end of last answer
    lock: threading.Lock = field(default_factory=threading.Lock)

    def allowed(self) -> list[IPAddress]:
        if not self.retiring:  # the common case: addresses are kept sorted
            return list(self.addresses)
        return sorted({*self.addresses, *self.retiring}, key=lambda a: (a.version, int(a)))


def settle_types(
    name: str, pin: Pin, res: Resolution, now: float, grace: float, upstream: Upstream, emit: Emit
) -> tuple[list[IPAddress], list[IPAddress]]:
    """One type failed while another answered: keep that type's last good addresses until
    its grace ends (a failed lookup is not a change), record the episode once, count it.
    Returns (addresses kept, addresses whose grace is over). The app's query for that
    type is answered from the pin at once (its addresses, or NODATA), never by waiting on the
    upstream again."""
    kept: list[IPAddress] = []
    over: list[IPAddress] = []
    for rdtype, _, family in TYPES:
        error = res.failed.get(rdtype)
        if error is None:
            pin.valid_until[family] = now + res.ttl
            if pin.failing_types.pop(rdtype, None) is not None:
                emit(dns_event("dns_type_recovered", name, "info", qtype=rdtype))
            continue
        _TYPE_FAILURES.labels(qtype=rdtype).inc()
        old = [a for a in pin.addresses if a.version == family]
        if old and now < pin.valid_until.get(family, now) + grace:
            kept += old
        elif old:
            over += old
            emit(
                dns_event(
                    "pins_expired", name, "blocked", qtype=rdtype, addresses=[str(a) for a in old]
                )
            )
        if rdtype not in pin.failing_types:
            emit(
                dns_event(
                    "dns_type_failing",
                    name,
                    "info",
                    qtype=rdtype,
                    error=error,
                    kept=[str(a) for a in kept if a.version == family],
                    upstream=f"{upstream.address}:{upstream.port}",
                )
            )
        pin.failing_types[rdtype] = error
    return kept, over


def expire_types(name: str, pin: Pin, now: float, grace: float, emit: Emit) -> bool:
    """Drop the addresses of each failing type whose grace is over; returns whether any went."""
    changed = False
    for rdtype, _, family in TYPES:
        until = pin.valid_until.get(family)
        old = [a for a in pin.addresses if a.version == family]
        if rdtype in pin.failing_types and old and until is not None:
            if now >= until + grace:  # that type's grace is over
                pin.addresses = tuple(a for a in pin.addresses if a.version != family)
                emit(
                    dns_event(
                        "pins_expired",
                        name,
                        "blocked",
                        qtype=rdtype,
                        addresses=[str(a) for a in old],
                    )
                )
                changed = True
    return changed


def type_deadlines(pin: Pin, grace: float) -> list[float]:
    """When each failing type's grace ends (the refresher wakes up then)."""
    return [
        until + grace
        for rdtype, _, family in TYPES
        if rdtype in pin.failing_types and (until := pin.valid_until.get(family)) is not None
    ]


def dns_event(kind: str, name: str, verdict: str, **detail: object) -> Event:
    """An event of the DNS layer about one allowlisted name."""
    return Event(
        layer="dns", kind=kind, verdict=verdict, protocol="dns", dst_name=name, detail=detail
    )


def _type_failures_counter():  # noqa: ANN202 - a prometheus Counter
    from prometheus_client import Counter

    from sentinel.evidence.metrics import REGISTRY

    return Counter(
        "sentinel_dns_type_failures",
        "Upstream lookups of one record type that failed while another type answered",
        ["qtype"],
        registry=REGISTRY,
    )


_TYPE_FAILURES = _type_failures_counter()
