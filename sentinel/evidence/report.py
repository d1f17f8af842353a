"""The evidence report: what was attempted, what left, what was in force, and whether we watched.

Sources: the event store (attempts from every layer, monitor and guard heartbeats, shed counts),
`applied.json` (what sentinel applied) and the kernel itself (rules, NFLOG packet counters per
family, per-upstream set counters). A zero is only evidence when the sensors were watching, so
the report proves coverage: heartbeats with their gaps, the ruleset hashes in force, and the
kernel's own count of logged packets compared with what the store recorded.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sentinel.atomic import write_atomic
from sentinel.durations import parse_duration
from sentinel.errors import BadInput, SentinelError
from sentinel.escape import escape_controls
from sentinel.evidence import guardcov
from sentinel.evidence.guardcov import MAX_INTERVAL
from sentinel.store import events as ev
from sentinel.store.events import Event, destination_text
from sentinel.store.kinds import is_attempt

TEN_MINUTES = 600.0
GAP_FACTOR = 2.5  # a heartbeat later than this many intervals means the sensor was not watching
JOIN_WINDOW = 2.0  # guard + network sightings of one attempt are at most this far apart
MAX_LISTED = 1000  # attempts listed one by one; the counts are always complete


@dataclass(frozen=True)
class Window:
    since: float
    until: float

    @property
    def seconds(self) -> float:
        return self.until - self.since

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "until": self.until,
            "seconds": round(self.seconds, 3),
            "since_iso": _iso(self.since),
            "until_iso": _iso(self.until),
        }


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def parse_last(value: str) -> float:
    seconds = parse_duration(value or "")
    if not seconds:
        raise BadInput(f"--last: {value!r} is not a positive duration (examples: 90s, 10m, 1h, 7d)")
    return seconds


def parse_time(option: str, value: str, now: float) -> float:
    """An ISO 8601 time (UTC if no zone), epoch seconds, or a duration ago ('15m')."""
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    if parse_duration(text) is not None:
        return now - parse_last(text)
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(
            f"{option}: {value!r} is not a time (ISO 8601 like 2026-01-31T12:00:00Z, "
            "epoch seconds, or a duration ago like 15m)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def parse_window(
    last: str | None, since: str | None, until: str | None, now: float | None = None
) -> Window:
    now = time.time() if now is None else now
    if last is not None and since is not None:
        raise BadInput("use either --last or --since, not both")
    end = parse_time("--until", until, now) if until else now
    start = parse_time("--since", since, now) if since else end - parse_last(last or "10m")
    if start >= end:
        raise BadInput(f"the window is empty: since {_iso(start)} is not before {_iso(end)}")
    return Window(start, end)


# --- attempts -------------------------------------------------------------------------------
def _is_attempt(e: Event) -> bool:
    return is_attempt(e.layer, e.kind, e.verdict)


def join_attempts(events: list[Event]) -> list[dict[str, Any]]:
    """One record per attempt; a guard sighting joins the network sighting of the same call."""
    attempts = [e for e in events if _is_attempt(e)]
    guard = [e for e in attempts if e.layer == "guard"]
    used: set[str] = set()
    out = []
    for e in attempts:
        if e.layer == "guard":
            continue
        record = _record(e)
        match = _find_guard(e, guard, used) if e.layer == "netfilter" else None
        if match is not None:
            used.add(match.id)
            record.update(
                layers=["guard", "netfilter"],
                guard_id=match.id,
                pid=match.pid,
                exe=match.exe,
                stack=match.stack,
                guard_verdict=match.verdict,
            )
        out.append(record)
    out += [_record(g) for g in guard if g.id not in used]
    return sorted(out, key=lambda r: r["ts"])


def _find_guard(e: Event, guard: list[Event], used: set[str]) -> Event | None:
    """The guard sighting of the same flow, if any. A call the guard refused sent no packet,
    so a `blocked` guard event never joins a kernel event (that packet came from someone else,
    e.g. an unguarded process); an `audited` one (the call went ahead) joins the kernel's event
    of the same destination, port and protocol within JOIN_WINDOW, once."""
    for g in guard:
        if (
            g.verdict == "audited"
            and g.id not in used
            and g.dst_ip == e.dst_ip
            and g.dst_port == e.dst_port
            and (g.protocol or e.protocol) == e.protocol
            and abs(g.ts - e.ts) <= JOIN_WINDOW
        ):
            return g
    return None


def _record(e: Event) -> dict[str, Any]:
    return {
        "id": e.id,
        "ts": e.ts,
        "layers": [e.layer],
        "kind": e.kind,
        "verdict": e.verdict,
        "protocol": e.protocol,
        "family": e.family,
        "dst_ip": e.dst_ip,
        "dst_port": e.dst_port,
        "dst_name": e.dst_name,
        "packets": e.packets,
        "pid": e.pid,
        "exe": e.exe,
        "stack": e.stack,
    }


def left_the_host(a: dict[str, Any]) -> bool:
    """An external call: the kernel let a non-allowlisted packet out (audit mode)."""
    return "netfilter" in a["layers"] and a["verdict"] == "audited"


def _destination(a: dict[str, Any]) -> str:
    return destination_text(a["dst_name"], a["dst_ip"], a["dst_port"], a["protocol"])


def by_destination(attempts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for a in attempts:
        g = groups.setdefault(
            _destination(a),
            {
                "destination": _destination(a),
                "attempts": 0,
                "packets": 0,
                "layers": Counter(),
                "verdicts": Counter(),
                "first": a["ts"],
                "last": a["ts"],
            },
        )
        g["attempts"] += 1
        g["packets"] += a["packets"] or 0
        g["layers"].update(a["layers"])
        g["verdicts"][a["verdict"]] += 1
        g["last"] = a["ts"]
    rows = sorted(groups.values(), key=lambda g: (-g["attempts"], g["destination"]))
    return [
        {
            **g,
            "layers": dict(g["layers"]),
            "verdicts": dict(g["verdicts"]),
            "first": _iso(g["first"]),
            "last": _iso(g["last"]),
        }
        for g in rows
    ]


# --- coverage -------------------------------------------------------------------------------
def heartbeat_gaps(beats: list[Event], window: Window, default_interval: float) -> list[dict]:
    """Stretches of the window where no heartbeat vouches for the sensor.

    A heartbeat vouches for GAP_FACTOR intervals after it; a "stopped" heartbeat for none.
    Beats before the window count as the starting point.
    """
    beats = sorted(beats, key=lambda b: b.ts)
    before = [b for b in beats if b.ts < window.since]
    prev_ts, prev_interval, prev_stopped = window.since, default_interval, False
    if before:
        prev_ts, prev_interval = before[-1].ts, _interval(before[-1], default_interval)
        prev_stopped = before[-1].detail.get("state") == "stopped"
    gaps = []
    for b in beats[len(before) :]:
        interval = _interval(b, default_interval)
        if prev_stopped or b.ts - prev_ts > GAP_FACTOR * max(interval, prev_interval):
            gaps.append(_gap(prev_ts, b.ts, window, "stopped" if prev_stopped else "no heartbeat"))
        prev_ts, prev_interval = b.ts, interval
        prev_stopped = b.detail.get("state") == "stopped"
    if prev_stopped or not beats or window.until - prev_ts > GAP_FACTOR * prev_interval:
        reason = "stopped" if prev_stopped else "no heartbeat"
        gaps.append(_gap(prev_ts, window.until, window, reason))
    return [g for g in gaps if g["seconds"] > 0]


def _interval(beat: Event, default: float) -> float:
    return min(MAX_INTERVAL, float(beat.detail.get("interval") or default))  # claims are capped


def _gap(start: float, end: float, window: Window, reason: str) -> dict[str, Any]:
    start, end = max(start, window.since), min(end, window.until)
    return {
        "from": _iso(start),
        "to": _iso(end),
        "seconds": round(end - start, 3),
        "reason": reason,
    }


def rulesets_in_force(beats: list[Event]) -> list[dict[str, Any]]:
    spans: list[dict[str, Any]] = []
    for b in sorted(beats, key=lambda b: b.ts):
        sha = b.detail.get("ruleset_sha256")
        if spans and spans[-1]["ruleset_sha256"] == sha:
            spans[-1]["last_seen"] = _iso(b.ts)
        else:
            spans.append(
                {
                    "ruleset_sha256": sha,
                    "mode": b.detail.get("mode"),
                    "first_seen": _iso(b.ts),
                    "last_seen": _iso(b.ts),
                }
            )
    return spans


def guard_status(beats: list[Event], window: Window) -> dict[str, Any]:
    """Guard coverage, per process identity (see sentinel/evidence/guardcov.py)."""
    return guardcov.guard_status(beats, window, heartbeat_gaps)


# --- kernel ---------------------------------------------------------------------------------
def kernel_facts(applied: dict[str, Any] | None) -> dict[str, Any]:
    """Hash, NFLOG counters per family and per-upstream set counters, read from the kernel."""
    from sentinel.enforce import netfilter
    from sentinel.enforce.snapshot import nflog_packets

    backend = (applied or {}).get("backend", netfilter.DEFAULT_BACKEND)
    try:
        state = netfilter.read_state(backend)
    except SentinelError as exc:
        return {"error": exc.message, "present": False}
    nflog = nflog_packets(state)
    return {
        "present": state.present,
        "sha256": state.sha256() if state.present else None,
        "nflog_packets": nflog,
        "set_counters": state.set_counters,
        "text": state.text,
    }


def increase(values: list[tuple[Any, float]]) -> float:
    """Growth of a counter over (epoch, value) samples across resets: a new epoch (another
    apply) or a drop means it restarted from 0."""
    total = 0.0
    for (e0, before), (e1, after) in zip(values, values[1:], strict=False):
        total += after - before if after >= before and e0 == e1 else after
    return total


def window_counters(
    snapshots: list[Event], window: Window, kernel: dict[str, Any], applied: dict | None
) -> dict[str, Any]:
    """Kernel counter growth inside the window from the monitor's periodic readings, plus the
    kernel now when the window ends now. Exact when a reading precedes the window or the
    counters started inside it (applied after `since`)."""
    readings = [(s.ts, s.detail) for s in sorted(snapshots, key=lambda s: s.ts)]
    before = [r for r in readings if r[0] < window.since][-1:]
    inside = [r for r in readings if window.since <= r[0] <= window.until]
    if window.until >= time.time() - 2 and "nflog_packets" in kernel:
        sets = {e: list(pb) for (_s, e), pb in kernel.get("set_counters", {}).items()}
        now = {
            "nflog": {str(f): n for f, n in kernel["nflog_packets"].items()},
            "sets": sets,
            "applied_at": (applied or {}).get("applied_at"),
        }
        inside.append((time.time(), now))
    applied_at = float((applied or {}).get("applied_at") or 0)
    zero = {"nflog": {}, "sets": {}, "applied_at": (applied or {}).get("applied_at")}
    start = before or ([(window.since, zero)] if applied_at >= window.since else inside[:1])
    series = start + [r for r in inside if r not in start]
    nflog = {
        f"ipv{f}": int(increase([(_epoch(r), r[1].get("nflog", {}).get(f, 0)) for r in series]))
        for f in ("4", "6")
    }
    entries = {e for r in series for e in r[1].get("sets", {})}
    sets = {
        e: [int(increase([(_epoch(r), _entry(r, e)[i]) for r in series])) for i in (0, 1)]
        for e in sorted(entries)
    }
    return {
        "exact": bool(before) or applied_at >= window.since,
        "readings": len(series),
        "nflog": nflog,
        "sets": sets,
    }


def _epoch(reading: tuple[float, dict]) -> Any:
    return reading[1].get("applied_at")


def _entry(reading: tuple[float, dict], entry: str) -> list[int]:
    return reading[1].get("sets", {}).get(entry, [0, 0])


def netflow(
    kernel: dict[str, Any], applied: dict[str, Any] | None, counted: dict[str, Any]
) -> list[dict[str, Any]]:
    """Packets/bytes per allowlisted upstream entry in the window (`counted`, reset-aware),
    and since the last apply straight from the kernel."""
    by_ip = {ip: name for name, ips in (applied or {}).get("pins", {}).items() for ip in ips}
    since = (applied or {}).get("applied_at")
    now = {entry: pb for (_set, entry), pb in kernel.get("set_counters", {}).items()}
    rows = []
    for entry in sorted(set(now) | set(counted["sets"])):
        net, _, proto_port = entry.partition(",")
        packets, nbytes = counted["sets"].get(entry, [0, 0])
        rows.append(
            {
                "upstream": by_ip.get(net, net),
                "entry": entry,
                "protocol_port": proto_port,
                "packets": packets,
                "bytes": nbytes,
                "packets_since_apply": now.get(entry, (None, None))[0],
                "bytes_since_apply": now.get(entry, (None, None))[1],
                "counting_since": _iso(since) if since else None,
            }
        )
    return rows


def completeness(
    conn: sqlite3.Connection, kernel: dict[str, Any], applied: dict[str, Any] | None
) -> dict[str, Any]:
    """Kernel NFLOG packets vs packets the store holds, since the rules were last applied."""
    if not applied or "nflog_packets" not in kernel:
        return {"checked": False, "unaccounted_packets": None}
    since = float(applied.get("applied_at") or 0)
    stored = {4: 0, 6: 0}
    rows = conn.execute(
        # canary probes pass the same NFLOG rule: they are accounted for, not attempts
        "SELECT family, SUM(packets) FROM events WHERE layer IN ('netfilter', 'canary') "
        "AND ts >= ? "
        "GROUP BY family",
        (since,),
    )
    for family, packets in rows:
        if family in stored:
            stored[family] = int(packets or 0)
    per_family = {
        f"ipv{f}": {
            "kernel": kernel["nflog_packets"][f],
            "stored": stored[f],
            "unaccounted": kernel["nflog_packets"][f] - stored[f],
        }
        for f in (4, 6)
    }
    return {
        "checked": True,
        "since": _iso(since),
        "families": per_family,
        "unaccounted_packets": sum(max(0, v["unaccounted"]) for v in per_family.values()),
    }


def _canary(inside: list[Event] | None = None) -> dict[str, Any] | None:
    """Bypass canaries (`canary:` in the policy): the probes recorded inside the window (the
    store's canary_result/canary_escaped events), and the last round from canary.json with the
    service's error count. Without events (`inside` None) only the last round."""
    from sentinel.store.state import read_json

    try:
        last = read_json("canary.json")
    except SentinelError:
        return {"error": "canary.json unreadable"}
    if inside is None:
        if not last:
            return None
        outcomes = Counter(r.get("outcome") for r in last.get("results", []))
        return {
            "last_run": _iso(last.get("ts", 0)),
            "outcomes": dict(outcomes),
            "escaped": outcomes.get("escaped", 0),
            "results": last.get("results", []),
        }
    probes = [e for e in inside if e.kind in ("canary_result", "canary_escaped")]
    if not probes and not last:
        return None
    outcomes = Counter(str(e.detail.get("outcome")) for e in probes)
    out: dict[str, Any] = {
        "probes_in_window": len(probes),
        "outcomes": dict(sorted(outcomes.items())),
        "escaped": outcomes.get("escaped", 0),
        "escaped_probes": [
            {"time": _iso(e.ts), "target": f"{e.dst_ip}:{e.dst_port}", "protocol": e.protocol}
            for e in probes
            if e.kind == "canary_escaped"
        ][:MAX_LISTED],
    }
    if last:
        out["last_run"] = _iso(last.get("ts", 0))
        out["results"] = last.get("results", [])
        out["errors"] = (last.get("stats") or {}).get("errors", 0)
    return out


# --- the report -----------------------------------------------------------------------------
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
    if path.exists():
        conn = ev.connect(path, readonly=True)  # mode=ro: the evidence is never changed
    else:  # no store is evidence of nothing watching, not an error; and nothing is created
        conn = sqlite3.connect(":memory:", isolation_level=None)
        ev.migrate(conn)
    try:
        events = ev.query(conn, min(window.since, window.until - TEN_MINUTES), window.until)
        events = ev.last_before(conn, "kernel_counters", window.since) + events
        shed = ev.shed_counts(conn, window.since, window.until)
        check = completeness(conn, kernel, applied)
        created = ev.created_at(conn)
    finally:
        conn.close()
    report = assemble(window, events, shed, check, kernel, applied, store_created=created)
    report["alerts"] = alerts
    from sentinel.evidence.caps import summary

    report["capabilities"] = summary()  # who could send what netfilter never sees
    return report


def _alert_summary(state: Path) -> dict[str, Any]:
    """Per-sink delivery counters from the alert outbox (sent, failed, pending, ...), read
    with `mode=ro`; an unreadable outbox is an error (exit 2), never set aside or replaced."""
    from sentinel.alerts.outbox import read_summary

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
    from sentinel.redact import redact_obj

    inside = [e for e in events if window.since <= e.ts < window.until]
    all_beats = [e for e in events if e.kind == "monitor_heartbeat"]
    joined = join_attempts(events)  # once, over the window plus the trailing ten minutes
    attempts = [a for a in joined if window.since <= a["ts"] < window.until]
    last10 = [a for a in joined if a["ts"] >= window.until - TEN_MINUTES]
    monitor_beats = [e for e in inside if e.kind == "monitor_heartbeat"]
    guard_beats = [e for e in inside if e.layer == "guard" and e.kind == "guard_heartbeat"]
    interval = float(monitor_beats[0].detail.get("interval", 5.0)) if monitor_beats else 5.0
    # before this state dir's store existed nothing was deployed here to watch: not a gap
    watched = Window(max(window.since, store_created or window.since), window.until)
    gaps = heartbeat_gaps(all_beats, watched, interval)
    earlier = [e for e in events if e.kind == "guard_heartbeat" and e.ts < window.since]
    guard = guardcov.guard_status(guard_beats, window, heartbeat_gaps, earlier)
    loss = _monitor_loss(monitor_beats)
    watchdog = guardcov.monitor_losses(events, window)
    expected = (applied or {}).get("ruleset_sha256")
    in_sync = bool(expected) and kernel.get("sha256") == expected
    problems = _coverage_problems(gaps, guard, shed, loss, in_sync)
    if not monitor_beats:
        problems.append("no monitor heartbeat in the window")
    if check.get("unaccounted_packets"):  # logged by the kernel, never stored as an event
        problems.append(f"{check['unaccounted_packets']} NFLOG packet(s) not accounted for")
    drops = resolver_drops(inside)
    if drops["udp_dropped"] or drops["tcp_refused"]:
        problems.append(
            f"{drops['udp_dropped'] + drops['tcp_refused']} DNS query(ies) lost before the "
            f"resolver saw them ({drops['udp_dropped']} UDP receive-buffer drops, "
            f"{drops['tcp_refused']} TCP connections refused at the cap)"
        )
    problems += _hostile_problems(guard, watchdog)
    layers = Counter(layer for a in attempts for layer in a["layers"])
    snapshots = [e for e in events if e.kind == "kernel_counters"]
    counted = window_counters(snapshots, window, kernel, applied)
    stored = Counter()
    for e in inside:
        if e.layer in ("netfilter", "canary"):
            stored[f"ipv{e.family}"] += e.packets
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
        "external_calls_last_10m": sum(left_the_host(a) for a in last10),
        "blocked_attempts_last_10m": sum(a["verdict"] == "blocked" for a in last10),
        "external_calls": sum(left_the_host(a) for a in attempts),
        "blocked_attempts": sum(a["verdict"] == "blocked" for a in attempts),
        "attempts_total": len(attempts),
        "attempts_by_layer": dict(sorted(layers.items())),
        "attempts_by_protocol": _count(a["protocol"] or "?" for a in attempts),
        "attempts_by_destination": redact_obj(by_destination(attempts)),  # as `attempts`
        "attempts": redact_obj([{**a, "time": _iso(a["ts"])} for a in attempts[-MAX_LISTED:]]),
        "attempts_listed": min(len(attempts), MAX_LISTED),
        "netflow": netflow(kernel, applied, counted),
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
            "rulesets_in_force": rulesets_in_force(monitor_beats),
            "ruleset_changes": max(0, len(rulesets_in_force(monitor_beats)) - 1),
            "window_counters": {
                "exact": counted["exact"],
                "readings": counted["readings"],
                "nflog_packets_kernel": counted["nflog"],
                "nflog_packets_stored": {f: stored.get(f, 0) for f in ("ipv4", "ipv6")},
            },
            "nflog_packets_kernel": {
                f"ipv{f}": n for f, n in kernel.get("nflog_packets", {}).items()
            },
        },
    }


def resolver_drops(events: list[Event]) -> dict[str, int]:
    """DNS queries the resolver never saw (its `dns_dropped` events: per-increase deltas of the
    UDP sockets' SO_RXQ_OVFL counters and of TCP connections refused at the cap)."""
    out = {"udp_dropped": 0, "tcp_refused": 0}
    for e in events:
        if e.layer == "dns" and e.kind == "dns_dropped":
            for key in out:
                out[key] += int(e.detail.get(key, 0) or 0)
    return out


def _count(items: Any) -> dict[str, int]:
    return dict(sorted(Counter(items).items()))


def _monitor_loss(beats: list[Event]) -> dict[str, int]:
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


def _coverage_problems(gaps, guard, shed, loss, in_sync) -> list[str]:
    problems = []
    if gaps:
        problems.append(f"{len(gaps)} monitor heartbeat gap(s)")
    if guard["status"] != "absent" and guard["gaps"]:
        problems.append(f"{len(guard['gaps'])} guard heartbeat gap(s)")
    if sum(shed.values()):
        problems.append(f"{sum(shed.values())} event(s) shed by the store")
    if loss["lost"] or loss["overruns"]:
        problems.append(f"{loss['lost']} NFLOG message(s) lost by the monitor")
    if not in_sync:
        problems.append("the kernel does not hold the applied ruleset")
    return problems


def _hostile_problems(guard: dict[str, Any], watchdog: dict[str, Any]) -> list[str]:
    problems = []
    if guard.get("dropped"):
        problems.append(f"{guard['dropped']} guard report(s) dropped inside the app (queue full)")
    if watchdog["losses"]:
        parts = ", ".join(watchdog["components"])
        problems.append(f"{watchdog['losses']} monitor loss(es) (watchdog): {parts}")
    return problems


def violation(report: dict[str, Any]) -> str | None:
    """Why the report should fail a CI gate, or None."""
    if report["external_calls"]:
        return f"{report['external_calls']} external call(s) left the host in the window"
    if report["drift"]:
        return "ruleset drift: the kernel does not hold the applied ruleset"
    if (report.get("canary") or {}).get("escaped"):
        return f"{report['canary']['escaped']} bypass canary probe(s) got out"
    return None


# --- output ---------------------------------------------------------------------------------
def results_section(report: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "external_calls_last_10m",
        "blocked_attempts_last_10m",
        "coverage",
        "mode",
        "policy_sha256",
        "ruleset_sha256",
        "rules_in_sync",
        "unaccounted_packets",
        "shed_events",
        "attempts_by_layer",
    )
    return {
        **{k: report[k] for k in keys},
        "window": report["window"],
        "report_generated_at": report["generated_at"],
    }


def merge_results(path: Path, report: dict[str, Any]) -> None:
    """Update only the `sentinel` section of a results.json; other keys stay as they are."""
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError) as exc:
        raise BadInput(f"--results {path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadInput(f"--results {path}: the top level is not a JSON object")
    section = data.get("sentinel") if isinstance(data.get("sentinel"), dict) else {}
    data["sentinel"] = {**section, **results_section(report)}
    if not path.parent.is_dir():  # a mistyped directory is bad input, not created silently
        raise BadInput(f"--results {path}: cannot write (no directory {path.parent})")
    try:
        write_atomic(path, json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        raise BadInput(f"--results {path}: cannot write ({exc.strerror or exc})") from None


def _holders(caps: dict[str, Any] | None) -> str:
    if not caps:
        return "not scanned"
    held = [f"{h['pid']} {h['name']} ({', '.join(h['caps'])})" for h in caps["holders"][:5]]
    return "; ".join(held) or f"none of {caps['processes_visible']} visible"


def render_table(report: dict[str, Any]) -> list[Any]:
    from rich.table import Table

    summary = Table(title="sentinel evidence", show_header=False)
    w = report["window"]
    for key, value in (
        ("window", f"{w['since_iso']} .. {w['until_iso']}"),
        ("mode", report["mode"]),
        ("external calls (last 10m)", report["external_calls_last_10m"]),
        ("blocked attempts (last 10m)", report["blocked_attempts_last_10m"]),
        ("attempts in window", report["attempts_total"]),
        ("policy sha256", report["policy_sha256"]),
        ("ruleset sha256", report["ruleset_sha256"]),
        ("kernel matches", report["rules_in_sync"]),
        ("coverage", report["coverage"]),
        ("unaccounted packets", report["unaccounted_packets"]),
        ("shed events", report["shed_events"]),
        ("guard", report["guard"]["status"]),
        ("raw/admin-capable processes", _holders(report.get("capabilities"))),
    ):
        summary.add_row(key, escape_controls(str(value)))
    dest = Table(
        "destination", "attempts", "packets", "layers", "verdicts", title="attempts by destination"
    )
    for g in report["attempts_by_destination"][:50]:
        dest.add_row(
            escape_controls(g["destination"]),
            str(g["attempts"]),
            str(g["packets"]),
            ", ".join(f"{k}={v}" for k, v in g["layers"].items()),
            ", ".join(f"{k}={v}" for k, v in g["verdicts"].items()),
        )
    flows = Table("upstream", "entry", "packets", "bytes", title="netflow (allowlisted)")
    for row in report["netflow"]:
        flows.add_row(
            escape_controls(row["upstream"]), row["entry"], str(row["packets"]), str(row["bytes"])
        )
    gaps = Table("from", "to", "seconds", "reason", title="coverage gaps")
    for g in report["coverage_detail"]["monitor_gaps"]:
        gaps.add_row(g["from"], g["to"], str(g["seconds"]), g["reason"])
    return [summary, dest, flows, gaps]
