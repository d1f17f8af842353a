"""Whether the sensors were watching: monitor heartbeat gaps, rulesets in force, NFLOG
messages the monitor lost, DNS queries the resolver never saw, and the coverage problems the
report lists. Also the coverage check the daemon runs with each tamper check: kernel NFLOG
packets since the last apply against the packets the event store holds (the report's
`unaccounted_packets`).

Read-only: the store is opened with `mode=ro`, the kernel is only read.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from sentinel.evidence.guardcov import MAX_INTERVAL
from sentinel.evidence.window import Window, iso

if TYPE_CHECKING:
    from sentinel.store.model import Event

GAP_FACTOR = 2.5  # a heartbeat later than this many intervals means the sensor was not watching


def heartbeat_gaps(beats: list[Event], window: Window, default_interval: float) -> list[dict]:
    """Stretches of the window where no heartbeat vouches for the sensor.

    A heartbeat vouches for GAP_FACTOR intervals after it; a "stopped" heartbeat for none.
    Beats before the window count as the starting point.
    """
    beats = sorted(beats, key=_TS)
    start = bisect.bisect_left(beats, window.since, key=_TS)  # beats before the window
    prev_ts, prev_interval, prev_stopped = window.since, default_interval, False
    if start:
        last = beats[start - 1]
        prev_ts, prev_interval = last.ts, _interval(last, default_interval)
        prev_stopped = last.detail.get("state") == "stopped"
    gaps = []
    claims: dict[int, tuple[float, bool]] = {}  # per detail object: beats share equal ones
    for b in beats[start:]:
        claim = claims.get(id(b.detail))
        if claim is None:
            claim = claims[id(b.detail)] = (
                _interval(b, default_interval),
                b.detail.get("state") == "stopped",
            )
        interval, stopped = claim
        longer = prev_interval if prev_interval > interval else interval  # max(), inline
        if prev_stopped or b.ts - prev_ts > GAP_FACTOR * longer:
            gaps.append(_gap(prev_ts, b.ts, window, "stopped" if prev_stopped else "no heartbeat"))
        prev_ts, prev_interval, prev_stopped = b.ts, interval, stopped
    if prev_stopped or not beats or window.until - prev_ts > GAP_FACTOR * prev_interval:
        reason = "stopped" if prev_stopped else "no heartbeat"
        gaps.append(_gap(prev_ts, window.until, window, reason))
    return [g for g in gaps if g["seconds"] > 0]


def _interval(beat: Event, default: float) -> float:
    return min(MAX_INTERVAL, float(beat.detail.get("interval") or default))  # claims are capped


def _gap(start: float, end: float, window: Window, reason: str) -> dict[str, Any]:
    start, end = max(start, window.since), min(end, window.until)
    return {
        "from": iso(start),
        "to": iso(end),
        "seconds": round(end - start, 3),
        "reason": reason,
    }


def rulesets_in_force(beats: list[Event]) -> list[dict[str, Any]]:
    spans: list[dict[str, Any]] = []
    last = None  # the current span's last beat: its time is written once, when it ends
    for b in sorted(beats, key=_TS):
        sha = b.detail.get("ruleset_sha256")
        if spans and spans[-1]["ruleset_sha256"] == sha:
            last = b
            continue
        if spans:
            spans[-1]["last_seen"] = iso(last.ts)
        last = b
        spans.append(
            {
                "ruleset_sha256": sha,
                "mode": b.detail.get("mode"),
                "first_seen": iso(b.ts),
                "last_seen": None,
            }
        )
    if spans:
        spans[-1]["last_seen"] = iso(last.ts)
    return spans


_TS = attrgetter("ts")


def resolver_drops(events: list[Event]) -> dict[str, int]:
    """DNS queries the resolver never saw (its `dns_dropped` events: per-increase deltas of the
    UDP sockets' SO_RXQ_OVFL counters and of TCP connections refused at the cap)."""
    out = {"udp_dropped": 0, "tcp_refused": 0}
    for e in events:
        if e.layer == "dns" and e.kind == "dns_dropped":
            for key in out:
                out[key] += int(e.detail.get(key, 0) or 0)
    return out


def monitor_loss(beats: list[Event]) -> dict[str, int]:
    """NFLOG messages the monitor lost or could not read during the window (from its stats)."""
    out = {"lost": 0, "overruns": 0, "malformed": 0}
    by_start: dict[Any, list[Event]] = defaultdict(list)
    for b in beats:
        by_start[(b.detail.get("pid"), b.detail.get("started_at"))].append(b)
    for run in by_start.values():
        run.sort(key=lambda b: b.ts)
        first, last = run[0].detail.get("stats", {}), run[-1].detail.get("stats", {})
        for key in out:  # counters are cumulative per run
            out[key] += int(last.get(key, 0)) - int(first.get(key, 0))
    return out


def problems(gaps, guard, shed, loss, in_sync) -> list[str]:
    found = []
    if gaps:
        found.append(f"{len(gaps)} monitor heartbeat gap(s)")
    if guard["status"] != "absent" and guard["gaps"]:
        found.append(f"{len(guard['gaps'])} guard heartbeat gap(s)")
    if sum(shed.values()):
        found.append(f"{sum(shed.values())} event(s) shed by the store")
    if loss["lost"] or loss["overruns"]:
        found.append(f"{loss['lost']} NFLOG message(s) lost by the monitor")
    if not in_sync:
        found.append("the kernel does not hold the applied ruleset")
    return found


def hostile_problems(guard: dict[str, Any], watchdog: dict[str, Any]) -> list[str]:
    found = []
    if guard.get("dropped"):
        found.append(f"{guard['dropped']} guard report(s) dropped inside the app (queue full)")
    if watchdog["losses"]:
        parts = ", ".join(watchdog["components"])
        found.append(f"{watchdog['losses']} monitor loss(es) (watchdog): {parts}")
    return found


def unaccounted_packets(backend: str | None = None) -> int | None:
    """Packets the kernel logged that the store does not hold; None when it cannot tell."""
    from sentinel.evidence.counters import completeness, kernel_facts
    from sentinel.store import events as ev
    from sentinel.store.state import APPLIED, read_json

    applied = read_json(APPLIED)
    if backend and applied is not None:
        applied = {**applied, "backend": backend}
    kernel = kernel_facts(applied)
    path = ev.db_path()
    if not path.exists():
        return None
    conn = ev.connect(path, readonly=True)
    try:
        return completeness(conn, kernel, applied).get("unaccounted_packets")
    finally:
        conn.close()
