"""The router's open state: one dedup window per incident, one digest per severity, and the
plain-JSON form the dispatcher keeps in the outbox database so both survive a restart."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sentinel.alerts.router import Router

MAX_SAMPLES = 10  # events a digest carries as examples


@dataclass
class Window:
    """One dedup key's state: the alert that opened it and what was folded since."""

    dedup_key: str
    kind: str
    layer: str
    destination: str
    process: str
    correlation_id: str
    started: float  # start of the current dedup window
    last_seen: float
    first_ts: float
    suppressed: int = 0  # events folded since the last alert
    total: int = 1
    last_event_id: str = ""
    destinations: set[str] = field(default_factory=set)


@dataclass
class Digest:
    severity: str
    opened: float
    correlation_id: str
    counts: Counter = field(default_factory=Counter)
    samples: list[dict[str, Any]] = field(default_factory=list)
    last_ts: float = 0.0


def export_state(router: Router, windows: dict | None = None) -> dict[str, Any]:
    """Open incidents (dedup key, last seen, counts) and open digests, as plain JSON data."""
    windows = router.windows if windows is None else windows
    incidents = [
        {
            "key": list(key),
            "dedup_key": w.dedup_key,
            "kind": w.kind,
            "layer": w.layer,
            "destination": w.destination,
            "process": w.process,
            "correlation_id": w.correlation_id,
            "started": w.started,
            "last_seen": w.last_seen,
            "first_ts": w.first_ts,
            "suppressed": w.suppressed,
            "total": w.total,
            "last_event_id": w.last_event_id,
        }
        for key, w in windows.items()
    ]
    digests = [
        {
            "severity": d.severity,
            "opened": d.opened,
            "correlation_id": d.correlation_id,
            "counts": dict(d.counts),
            "samples": d.samples,
            "last_ts": d.last_ts,
        }
        for d in router.digests.values()
    ]
    return {"incidents": incidents, "digests": digests}


def restore_state(router: Router, state: dict[str, Any]) -> None:
    """Put back what `export_state` saved: quiet incidents are resolved after `resolve_after`
    as if no restart had happened, and open digests go out when their window ends."""
    for item in state.get("incidents", []):
        key = tuple(item["key"])
        if key in router.windows:
            continue
        router.windows[key] = Window(
            dedup_key=item["dedup_key"],
            kind=item["kind"],
            layer=item["layer"],
            destination=item["destination"],
            process=item["process"],
            correlation_id=item["correlation_id"],
            started=float(item["started"]),
            last_seen=float(item["last_seen"]),
            first_ts=float(item["first_ts"]),
            suppressed=int(item.get("suppressed", 0)),
            total=int(item.get("total", 1)),
            last_event_id=item.get("last_event_id", ""),
        )
        if key[3] != "*":
            router._per_process[key[:3]] += 1
    for item in state.get("digests", []):
        if item["severity"] in router.digests:
            continue
        router.digests[item["severity"]] = Digest(
            severity=item["severity"],
            opened=float(item["opened"]),
            correlation_id=item["correlation_id"],
            counts=Counter(item.get("counts", {})),
            samples=list(item.get("samples", []))[:MAX_SAMPLES],
            last_ts=float(item.get("last_ts", 0.0)),
        )
