"""Coverage evidence from the guard and the watchdog, judged per process identity.

Heartbeat gaps are computed for each sender identity on its own (the receiver's
`detail.sender.identity`: the kernel-verified pid and start time, or for senders the kernel
cannot name, their uid plus the pid they claim). A heartbeat from one process therefore never
vouches for another, and the interval a heartbeat claims is clamped (at most
`MAX_INTERVAL`), so a forged `"interval": 1e9` cannot stretch a gap away. A process whose
last heartbeat says `exit` ended there: no gap after it.

Drops: the guard counts reports it had to drop (`counters.dropped_total`, cumulative per
process); their growth inside the window is reported and makes coverage partial.
Monitor loss: a `monitor_lost` event of the watchdog inside the window (or a loss still open
when the window starts) makes coverage partial.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from operator import attrgetter
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from sentinel.store.model import Event

_TS = attrgetter("ts")
MAX_INTERVAL = 60.0  # the most a heartbeat may claim (the receiver clamps the same way)
T = TypeVar("T")
GUARD_INTERVAL = 5.0


def identity(beat: Event) -> str:
    sender = beat.detail.get("sender")
    if isinstance(sender, dict) and sender.get("identity"):
        return str(sender["identity"])
    return f"pid:{beat.pid}"  # events stored before identities were recorded


def verified(beat: Event) -> bool:
    sender = beat.detail.get("sender")
    return not isinstance(sender, dict) or bool(sender.get("verified"))


def interval(beat: Event) -> float:
    try:
        value = float(beat.detail.get("interval") or GUARD_INTERVAL)
    except (TypeError, ValueError):
        value = GUARD_INTERVAL
    return min(MAX_INTERVAL, max(0.05, value)) if value == value else GUARD_INTERVAL


def guard_status(
    beats: list[Event],
    window: Any,
    gaps_of: Callable[[list[Event], Any, float], list[dict]],
    earlier: list[Event] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    """`gaps_of(beats, window, interval)` is the report's heartbeat-gap function."""
    if not beats:
        return {"status": "absent", "heartbeats": 0, "gaps": [], "dropped": 0, "processes": []}
    groups: dict[str, list[Event]] = defaultdict(list)
    seen: dict[tuple, str] = {}  # identity per (detail, pid): beats share their detail objects
    for b in sorted(beats, key=_TS):
        at = (id(b.detail), b.pid)
        key = seen.get(at)
        if key is None:
            key = seen[at] = identity(b)
        groups[key].append(b)
    before: dict[str, list[Event]] = defaultdict(list)
    for b in earlier:
        before[identity(b)].append(b)
    gaps, per_identity, dropped, stale = [], {}, 0, False
    for key, run in groups.items():
        last = run[-1]
        exited = last.detail.get("state") == "exit"
        until = last.ts if exited else window.until
        span = type(window)(run[0].ts, max(until, run[0].ts))
        claims = _intervals(run)
        beat_interval = min(claims)
        found = (
            [] if span.until <= span.since else gaps_of(_clamped(run, claims), span, beat_interval)
        )
        for g in found:
            g["identity"] = key
        gaps += found
        lost = _dropped(run, before.get(key, []))
        dropped += lost
        fresh = exited or window.until - last.ts <= 2.5 * beat_interval
        stale = stale or not fresh
        per_identity[key] = {
            "pid": last.pid,
            "verified": verified(last),
            "exe": last.exe,
            "heartbeats": len(run),
            "last_seen": last.ts,
            "state": "exited" if exited else ("ok" if fresh else "stale"),
            "gaps": len(found),
            "dropped": lost,
        }
    last_seen = max(b.ts for b in beats)
    return {
        "status": "stale" if stale else "ok",
        "heartbeats": len(beats),
        "processes": sorted({b.pid for b in beats if b.pid is not None}),
        "identities": per_identity,
        "unverified_senders": sum(not v["verified"] for v in per_identity.values()),
        "last_seen": last_seen,
        "gaps": gaps,
        "dropped": dropped,
    }


def _per_detail(run: list[Event], fn: Callable[[Event], T]) -> list[T]:
    """fn(b) of each beat, computed once per distinct detail object (heartbeats that were
    equal share one when read; `run` keeps them all alive, so their ids stay distinct)."""
    memo: dict[int, T] = {}
    out = []
    for b in run:
        key = id(b.detail)
        if key not in memo:
            memo[key] = fn(b)
        out.append(memo[key])
    return out


def _intervals(run: list[Event]) -> list[float]:
    """interval(b) of each beat, computed once per distinct detail object."""
    return _per_detail(run, interval)


def _clamped(run: list[Event], claims: list[float] | None = None) -> list[Event]:
    """The beats with their claimed intervals clamped (a copy; the stored events stay)."""
    out = []
    same: dict[int, bool] = {}  # per detail object: does it claim the clamped value already
    for b, value in zip(run, _intervals(run) if claims is None else claims, strict=True):
        kept = same.get(id(b.detail))
        if kept is None:
            kept = same[id(b.detail)] = b.detail.get("interval") == value
        out.append(b if kept else _with_detail(b, {**b.detail, "interval": value}))
    return out


def _with_detail(beat: Event, detail: dict) -> Event:
    """A copy with another detail: of a storeview.Beat (a NamedTuple, what the report reads)
    or of an Event (tests, tools)."""
    if hasattr(beat, "_replace"):
        return beat._replace(detail=detail)
    from dataclasses import replace

    return replace(beat, detail=detail)


def _dropped(run: list[Event], earlier: list[Event]) -> int:
    """Growth of the guard's cumulative drop counter over the window, for one identity."""
    totals = _per_detail(run, _total)
    base = _total(max(earlier, key=lambda b: b.ts)) if earlier else 0
    return max(0, max(totals) - base) if totals else 0


def _total(beat: Event) -> int:
    counters = beat.detail.get("counters") or {}
    try:
        return int(counters.get("dropped_total") or 0)
    except (TypeError, ValueError):
        return 0


def monitor_losses(events: list[Event], window: Any) -> dict[str, Any]:
    """Watchdog `monitor_lost` events: losses inside the window and any still open at its
    start (a loss before the window with no resolve before it)."""
    open_at_start: dict[str, Event] = {}
    inside: list[dict[str, Any]] = []
    for e in sorted((e for e in events if e.kind == "monitor_lost"), key=lambda e: e.ts):
        component = str(e.detail.get("component") or "?")
        resolved = e.detail.get("resolved") is True
        if e.ts < window.since:
            if resolved:
                open_at_start.pop(component, None)
            else:
                open_at_start[component] = e
            continue
        if e.ts >= window.until:
            continue
        inside.append(
            {
                "component": component,
                "state": "resolved" if resolved else "lost",
                "reason": e.detail.get("reason"),
                "ts": e.ts,
            }
        )
    losses = [x for x in inside if x["state"] == "lost"]
    return {
        "losses": len(losses) + len(open_at_start),
        "components": sorted({x["component"] for x in losses} | set(open_at_start)),
        "open_at_start": sorted(open_at_start),
        "events": inside[-50:],
    }
