"""The evidence report: what was attempted, what left, what was in force, and whether we watched.

Sources: the event store (attempts from every layer, monitor and guard heartbeats, shed counts),
`applied.json` (what sentinel applied) and the kernel itself (rules, NFLOG packet counters per
family, per-upstream set counters). A zero is only evidence when the sensors were watching, so
the report proves coverage: heartbeats with their gaps, the ruleset hashes in force, and the
kernel's own count of logged packets compared with what the store recorded.

The parts: window.py (time), storeview.py (what is read from the store), attempts.py (the
join across layers, the listing), tally.py (the counts, in SQL), coverage.py and guardcov.py
(were the sensors watching), counters.py (the kernel), canaries.py, verdict.py (CI, results
file), render.py (tables). This module puts them together; the store is opened `mode=ro`.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentinel.evidence import coverage as cov
from sentinel.evidence import guardcov
from sentinel.evidence.attempts import MAX_LISTED, Joins, join_attempts, listed, record
from sentinel.evidence.canaries import canary as _canary
from sentinel.evidence.counters import (
    completeness,
    increase,
    kernel_facts,
    netflow,
    window_counters,
)
from sentinel.evidence.coverage import GAP_FACTOR, heartbeat_gaps, rulesets_in_force
from sentinel.evidence.render import render_table
from sentinel.evidence.storeview import ALL_TIME, Scope, bookkeeping, readings
from sentinel.evidence.tally import MAX_DESTINATIONS, tally
from sentinel.evidence.verdict import merge_results, results_section, violation
from sentinel.evidence.window import TEN_MINUTES, Window, parse_last, parse_time, parse_window
from sentinel.evidence.window import iso as _iso
from sentinel.store import schema as ev  # not store.events: the report needs no Event model
from sentinel.store.kinds import is_attempt

if TYPE_CHECKING:
    from sentinel.store.model import Event

__all__ = [
    "GAP_FACTOR", "MAX_LISTED", "TEN_MINUTES", "Window", "assemble", "build_report",
    "completeness", "heartbeat_gaps", "increase", "join_attempts", "kernel_facts",
    "merge_results", "parse_last", "parse_time", "parse_window", "record", "render_table",
    "results_section", "rulesets_in_force", "violation", "window_counters", "_canary",
    "_is_attempt", "_iso",
]  # fmt: skip


def _is_attempt(e: Event) -> bool:
    return is_attempt(e.layer, e.kind, e.verdict)


def build_report(
    window: Window,
    store: Path | None = None,
    applied: dict[str, Any] | None = None,
    kernel: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from sentinel.store.state import APPLIED, read_json

    applied = read_json(APPLIED) if applied is None else applied
    kernel = kernel_facts(applied) if kernel is None else kernel
    path = store or ev.db_path()
    alerts = _alert_summary(path.parent)  # first: a damaged outbox fails before any work

    def read(conn: sqlite3.Connection) -> dict[str, Any]:
        scope = Scope(conn, min(window.since, window.until - TEN_MINUTES), window.until)
        shed = ev.shed_counts(conn, window.since, window.until)
        check = completeness(conn, kernel, applied)
        created = ev.created_at(conn)
        return _assemble(scope, window, shed, check, kernel, applied, created)

    if path.exists():  # mode=ro: the evidence is never changed; read again if a writer was
        from sentinel.store.schema import read_stable

        report = read_stable(path, read)
    else:  # no store is evidence of nothing watching, not an error; and nothing is created
        conn = sqlite3.connect(":memory:", isolation_level=None)
        try:
            ev.migrate(conn)
            report = read(conn)
        finally:
            conn.close()
    report["alerts"] = alerts
    from sentinel.evidence.caps import summary

    report["capabilities"] = summary()  # who could send what netfilter never sees
    return report


def _alert_summary(state: Path) -> dict[str, Any]:
    """Per-sink delivery counters from the alert outbox (sent, failed, pending, ...), read
    with `mode=ro`; an unreadable outbox is an error (exit 2), never set aside or replaced."""
    from sentinel.alerts.outboxread import read_summary

    return {"sinks": read_summary(state)}


def assemble(
    window: Window,
    events: list[Event],
    shed: dict[str, int],
    check: dict[str, Any],
    kernel: dict[str, Any],
    applied: dict[str, Any] | None,
    store_created: float | None = None,
) -> dict[str, Any]:
    """The report over events in memory (tests, tools): they go into an in-memory store and
    the report reads it exactly as it reads the real one."""
    from sentinel.store.rows import write_events

    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        ev.migrate(conn)
        conn.execute("DELETE FROM events WHERE kind = ?", (ev.STORE_CREATED,))
        write_events(conn, events, {})
        return _assemble(Scope(conn, *ALL_TIME), window, shed, check, kernel, applied,
                         store_created)  # fmt: skip
    finally:
        conn.close()


def _assemble(
    scope: Scope,
    window: Window,
    shed: dict[str, int],
    check: dict[str, Any],
    kernel: dict[str, Any],
    applied: dict[str, Any] | None,
    store_created: float | None,
) -> dict[str, Any]:
    from sentinel.redact import redact_obj

    book = bookkeeping(scope)
    inside = [e for e in book if window.since <= e.ts < window.until]
    all_beats = [e for e in book if e.kind == "monitor_heartbeat"]
    joins = Joins(scope)  # once, over the window plus the trailing ten minutes
    counts = tally(scope, joins, window.since, window.until, window.until - TEN_MINUTES)
    attempts = listed(scope, joins, window.since, window.until)
    monitor_beats = [e for e in inside if e.kind == "monitor_heartbeat"]
    guard_beats = [e for e in inside if e.layer == "guard" and e.kind == "guard_heartbeat"]
    interval = float(monitor_beats[0].detail.get("interval", 5.0)) if monitor_beats else 5.0
    # before this state dir's store existed nothing was deployed here to watch: not a gap
    watched = Window(max(window.since, store_created or window.since), window.until)
    gaps = heartbeat_gaps(all_beats, watched, interval)
    earlier = [e for e in book if e.kind == "guard_heartbeat" and e.ts < window.since]
    guard = guardcov.guard_status(guard_beats, window, heartbeat_gaps, earlier)
    loss = cov.monitor_loss(monitor_beats)
    watchdog = guardcov.monitor_losses(book, window)
    expected = (applied or {}).get("ruleset_sha256")
    in_sync = bool(expected) and kernel.get("sha256") == expected
    problems = cov.problems(gaps, guard, shed, loss, in_sync)
    if not monitor_beats:
        problems.append("no monitor heartbeat in the window")
    if check.get("unaccounted_packets"):  # logged by the kernel, never stored as an event
        problems.append(f"{check['unaccounted_packets']} NFLOG packet(s) not accounted for")
    drops = cov.resolver_drops(inside)
    if drops["udp_dropped"] or drops["tcp_refused"]:
        problems.append(
            f"{drops['udp_dropped'] + drops['tcp_refused']} DNS query(ies) lost before the "
            f"resolver saw them ({drops['udp_dropped']} UDP receive-buffer drops, "
            f"{drops['tcp_refused']} TCP connections refused at the cap)"
        )
    problems += cov.hostile_problems(guard, watchdog)
    counted = window_counters(readings(scope, window.since, window.until), window, kernel, applied)
    flows, flow_summary = netflow(kernel, applied, counted)
    rulesets = rulesets_in_force(monitor_beats)
    memo: dict[str, str] = {}  # each distinct text redacted once (a listing repeats them)
    return {
        "generated_at": _iso(time.time()),
        "window": window.to_dict(),
        "mode": (applied or {}).get("mode"),
        "backend": (applied or {}).get("backend"),
        "policy": (applied or {}).get("policy"),
        "policy_sha256": (applied or {}).get("policy_sha256"),
        "ruleset_sha256": expected,
        "kernel_ruleset_sha256": kernel.get("sha256"),
        "rules_in_sync": in_sync,
        "drift": not in_sync,
        "external_calls_last_10m": counts.external_10m,
        "blocked_attempts_last_10m": counts.blocked_10m,
        "external_calls": counts.external,
        "blocked_attempts": counts.blocked,
        "attempts_total": counts.total,
        "attempts_by_layer": dict(sorted(counts.layers.items())),
        "attempts_by_protocol": dict(sorted(counts.protocols.items())),
        "attempts_by_destination": redact_obj(counts.destinations(), memo=memo),  # as attempts
        "attempts": redact_obj([{**a, "time": _iso(a["ts"])} for a in attempts], memo=memo),
        "attempts_listed": len(attempts),
        "destinations_total": len(counts.dests),
        "destinations_listed": min(len(counts.dests), MAX_DESTINATIONS),
        "netflow": flows,
        "netflow_summary": flow_summary,
        "unaccounted_packets": check.get("unaccounted_packets"),
        "completeness": check,
        "shed_events": sum(shed.values()),
        "shed_by_layer": shed,
        "monitor_loss": loss,
        "monitor_lost": watchdog,
        "guard": guard,
        "guard_dropped": guard["dropped"],
        "canary": _canary(inside),
        "coverage": "complete" if not problems else "partial",
        "coverage_detail": {
            "problems": problems,
            "monitor_heartbeats": len(monitor_beats),
            "store_created": _iso(store_created) if store_created else None,
            "before_store_seconds": round(watched.since - window.since, 3),
            "monitor_gaps": gaps,
            "guard_gaps": guard["gaps"],
            "resolver_drops": drops,
            "rulesets_in_force": rulesets,
            "ruleset_changes": max(0, len(rulesets) - 1),
            "window_counters": {
                "exact": counted["exact"],
                "readings": counted["readings"],
                "nflog_packets_kernel": counted["nflog"],
                "nflog_packets_stored": {f: counts.stored.get(f, 0) for f in ("ipv4", "ipv6")},
            },
            "nflog_packets_kernel": {
                f"ipv{f}": n for f, n in kernel.get("nflog_packets", {}).items()
            },
        },
    }
