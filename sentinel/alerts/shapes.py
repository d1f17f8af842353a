"""What each alert the router makes says: a first alert, an "N more" roll-up, a resolve, a
P2/P3 digest. Pure functions of an incident's state; every text a sink shows is redacted here."""

from __future__ import annotations

from typing import Any

from sentinel.alerts.identity import guard_marks
from sentinel.alerts.incidents import MAX_SAMPLES, Digest, Window
from sentinel.alerts.model import EGRESS_KINDS, P1, RESOLVE, Alert, dedup_key_for
from sentinel.redact import redact_obj, redact_text
from sentinel.store.events import Event, destination_text

STACK_CHARS = 2000


def first_alert(entry: Window, event: Event) -> Alert:
    verb = "audited (allowed: audit mode)" if event.verdict == "audited" else "blocked"
    details = brief(event)
    if event.kind in EGRESS_KINDS:
        title = f"Egress attempt {verb}: {entry.process} -> {entry.destination} [{event.layer}]"
        if event.layer == "guard":
            details.update(guard_marks(event))
            title += " " + details["corroboration"]
    else:
        title = f"{event.kind.replace('_', ' ').capitalize()} [{event.layer}]"
        if event.detail.get("message"):
            title += f": {event.detail['message']}"
    return Alert(
        severity=P1,
        kind=event.kind,
        title=redact_text(title),
        dedup_key=entry.dedup_key,
        correlation_id=event.id,
        layer=event.layer,
        destination=redact_text(entry.destination),
        process=redact_text(entry.process),
        first_ts=event.ts,
        last_ts=event.ts,
        details=details,
    )


def rollup_alert(entry: Window, window: float) -> Alert:
    """What a dedup window of `window` seconds folded since its last alert."""
    n = entry.suppressed
    noun = "attempt" if n == 1 else "attempts"
    what = "egress " + noun if entry.kind in EGRESS_KINDS else f"{entry.kind} events"
    title = (
        f"{n} more {what}: {entry.process} -> {entry.destination} [{entry.layer}] "
        f"within {fmt_duration(window)} ({entry.total} in total)"
    )
    details = {
        "rolled_up": n,
        "total": entry.total,
        "last_event_id": entry.last_event_id,
        "distinct_destinations": len(entry.destinations),
        "destinations_sample": sorted(entry.destinations)[:MAX_SAMPLES],
    }
    return Alert(
        severity=P1,
        kind=entry.kind,
        title=redact_text(title),
        dedup_key=entry.dedup_key,
        correlation_id=entry.correlation_id,
        layer=entry.layer,
        destination=redact_text(entry.destination),
        process=redact_text(entry.process),
        count=n,
        rollup=True,
        first_ts=entry.first_ts,
        last_ts=entry.last_seen,
        details=redact_obj(details),
    )


def resolve_alert(entry: Window, resolve_after: float) -> Alert:
    return Alert(
        severity=P1,
        kind=entry.kind,
        title=redact_text(
            f"Quiet for {fmt_duration(resolve_after)}: {entry.process} -> "
            f"{entry.destination} [{entry.layer}]"
        ),
        dedup_key=entry.dedup_key,
        correlation_id=entry.correlation_id,
        action=RESOLVE,
        layer=entry.layer,
        destination=redact_text(entry.destination),
        process=redact_text(entry.process),
        count=0,
        first_ts=entry.first_ts,
        last_ts=entry.last_seen,
    )


def digest_alert(bucket: Digest, window: float) -> Alert:
    total = sum(bucket.counts.values())
    parts = ", ".join(f"{kind} x{n}" for kind, n in bucket.counts.most_common())
    return Alert(
        severity=bucket.severity,
        kind="digest",
        title=f"{bucket.severity} digest: {total} events in {fmt_duration(window)}: {parts}",
        dedup_key=dedup_key_for(("digest", bucket.severity, f"{bucket.opened:.3f}")),
        correlation_id=bucket.correlation_id,
        count=total,
        first_ts=bucket.opened,
        last_ts=bucket.last_ts,
        details=redact_obj({"counts": dict(bucket.counts), "samples": bucket.samples}),
    )


def event_destination(event: Event) -> str:
    return destination_text(event.dst_name, event.dst_ip, event.dst_port, event.protocol)


def brief(event: Event) -> dict[str, Any]:
    """What an alert carries about one event: enough to act on, redacted, bounded."""
    data = {
        "event_id": event.id,
        "kind": event.kind,
        "layer": event.layer,
        "verdict": event.verdict,
        "protocol": event.protocol,
        "dst_ip": event.dst_ip,
        "dst_port": event.dst_port,
        "dst_name": event.dst_name,
        "pid": event.pid,
        "exe": event.exe,
        "ts": event.ts,
    }
    if event.stack:
        data["stack"] = event.stack[-STACK_CHARS:]
    if event.detail:
        data["detail"] = event.detail
    return redact_obj({k: v for k, v in data.items() if v is not None})


def fmt_duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"
