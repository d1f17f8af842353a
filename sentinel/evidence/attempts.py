"""Egress attempts across layers: one record per attempt, never one per packet.

A guard sighting joins the kernel's sighting of the same call: a call the guard refused sent
no packet, so a `blocked` guard event never joins a kernel event (that packet came from
someone else, e.g. an unguarded process); an `audited` one (the call went ahead) joins the
first kernel event of the same destination, port and protocol within JOIN_WINDOW, once.
DNS refusals are attempts of their own (folded per name by the resolver).

Over a store the join reads only the audited guard sightings and the kernel events near
them (SQL), so its cost follows the audited calls, not the traffic; the listing reads the
last MAX_LISTED attempts of the window straight from the store, newest first.
"""

from __future__ import annotations

import bisect
from collections import namedtuple
from collections.abc import Iterable, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from sentinel.evidence.storeview import ATTEMPT_SQL, Scope, attempt_sql
from sentinel.store.kinds import is_attempt

if TYPE_CHECKING:
    from sentinel.store.model import Event

JOIN_WINDOW = 2.0  # guard + network sightings of one attempt are at most this far apart
MAX_LISTED = 1000  # attempts listed one by one; the counts are always complete
_SLACK = 0.001  # SQL preselects with a little slack; the exact test is in Python

RECORD_COLUMNS = (
    "id", "ts", "layer", "kind", "verdict", "protocol", "family", "dst_ip", "dst_port",
    "dst_name", "packets", "pid", "exe", "stack",
)  # fmt: skip
Row = namedtuple("Row", ("rowid", *RECORD_COLUMNS))
_SELECT = f"SELECT rowid, {', '.join(RECORD_COLUMNS)} FROM events"


def match(kernel: Iterable[Any], guards: Sequence[Any]) -> dict[int, Any]:
    """The join: kernel sighting index -> the guard sighting it joins. `kernel` are the
    network-layer attempts in time order, `guards` the guard attempts in time order; both
    need ts, dst_ip, dst_port, protocol (and guards verdict). Greedy, first match wins."""
    by_flow: dict[tuple, list[tuple[float, int]]] = {}
    for n, g in enumerate(guards):
        if g.verdict == "audited":
            by_flow.setdefault((g.dst_ip, g.dst_port), []).append((g.ts, n))
    used: set[int] = set()
    out: dict[int, Any] = {}
    for i, e in enumerate(kernel):
        flow = by_flow.get((e.dst_ip, e.dst_port))
        if not flow:
            continue
        start = bisect.bisect_left(flow, (e.ts - JOIN_WINDOW - _SLACK, -1))
        best = None
        for ts, n in flow[start:]:
            if ts > e.ts + JOIN_WINDOW + _SLACK:
                break
            g = guards[n]
            if (
                n not in used
                and (g.protocol or e.protocol) == e.protocol
                and abs(g.ts - e.ts) <= JOIN_WINDOW
            ):
                best = n
                break
        if best is not None:
            used.add(best)
            out[i] = guards[best]
    return out


def record(e: Any) -> dict[str, Any]:
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


def joined(e: Any, g: Any) -> dict[str, Any]:
    out = record(e)
    out.update(
        layers=["guard", "netfilter"],
        guard_id=g.id,
        pid=g.pid,
        exe=g.exe,
        stack=g.stack,
        guard_verdict=g.verdict,
    )
    return out


def join_attempts(events: list[Event]) -> list[dict[str, Any]]:
    """One record per attempt of `events` (in memory: policy suggest, tests), sorted by time."""
    attempts = [e for e in events if is_attempt(e.layer, e.kind, e.verdict)]
    guard = sorted((e for e in attempts if e.layer == "guard"), key=lambda e: e.ts)
    kernel = [e for e in attempts if e.layer == "netfilter"]
    pairs = match(kernel, guard)
    by_id = {id(kernel[i]): g for i, g in pairs.items()}
    used = {id(g) for g in pairs.values()}
    out = []
    for e in attempts:
        if e.layer == "guard":
            continue
        g = by_id.get(id(e))
        out.append(joined(e, g) if g is not None else record(e))
    out += [record(g) for g in guard if id(g) not in used]
    return sorted(out, key=lambda r: r["ts"])


_NEAR = (
    f"SELECT g.rowid, {', '.join('g.' + c for c in RECORD_COLUMNS)}, "
    f"e.rowid, {', '.join('e.' + c for c in RECORD_COLUMNS)} "
    "FROM events AS g INDEXED BY events_layer_ts "
    "LEFT JOIN events AS e INDEXED BY events_layer_ts "
    "ON e.layer = 'netfilter' AND e.ts BETWEEN g.ts - ? AND g.ts + ? "
    "AND e.dst_ip IS g.dst_ip AND e.dst_port IS g.dst_port "
    f"AND e.ts >= ? AND e.ts < ? AND {attempt_sql('e')} "
    "WHERE g.layer = 'guard' AND g.ts >= ? AND g.ts < ? AND g.verdict = 'audited' "
    f"AND {attempt_sql('g')} ORDER BY g.ts, g.rowid"
)
_TS_ROWID = attrgetter("ts", "rowid")


class Joins:
    """The join over a store scope: which kernel rows carry a guard sighting, which guard
    rows were absorbed, and every audited guard row (tally.py counts them from here)."""

    def __init__(self, scope: Scope) -> None:
        conn, lo, hi = scope.conn, scope.lo, scope.hi
        # one pass over the audited guard rows, each with the kernel rows near it (LEFT
        # JOIN: a guard row with none comes once, with NULLs): the guard rows' index walk
        # and their table reads (~250,000 over a day's store) are paid once, not twice
        reach = JOIN_WINDOW + 2 * _SLACK
        rows = conn.execute(_NEAR, (reach, reach, lo, hi, lo, hi))
        width = len(RECORD_COLUMNS) + 1
        self.guards: list[Row] = []
        near: dict[int, Row] = {}
        last = None
        for r in rows:
            if r[0] != last:
                last = r[0]
                self.guards.append(Row(*r[:width]))
            if r[width] is not None and r[width] not in near:
                near[r[width]] = Row(*r[width:])
        kernel = sorted(near.values(), key=_TS_ROWID)
        pairs = match(kernel, self.guards)
        self.partner = {kernel[i].rowid: g for i, g in pairs.items()}  # kernel rowid -> guard
        self.used = {g.rowid for g in pairs.values()}
        self.kernel = {r.rowid: r for r in kernel if r.rowid in self.partner}

    def used_in(self, since: float, until: float) -> int:
        return sum(1 for g in self.guards if g.rowid in self.used and since <= g.ts < until)


def listed(scope: Scope, joins: Joins, since: float, until: float) -> list[dict[str, Any]]:
    """The last MAX_LISTED attempt records of [since, until), oldest first: in the order of
    time, then kernel/DNS before guard, then store order (as the join lists them)."""
    limit = MAX_LISTED + joins.used_in(since, until)
    sql = (  # newest first along the time index: SQLite sorts only the ties, and stops early
        f"{_SELECT} INDEXED BY events_ts WHERE ts >= ? AND ts < ? AND ts >= ? AND ts < ? "
        f"AND {ATTEMPT_SQL} "
        "ORDER BY ts DESC, (layer = 'guard') DESC, rowid DESC LIMIT ?"
    )
    out = []
    for r in scope.conn.execute(sql, (since, until, *scope.args(), limit)):
        row = Row(*r)
        if row.rowid in joins.used:
            continue
        g = joins.partner.get(row.rowid)
        out.append(joined(row, g) if g is not None else record(row))
        if len(out) == MAX_LISTED:
            break
    out.reverse()
    return out
