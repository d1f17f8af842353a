"""The report's reads of the event store: which rows count, over which span, in SQL.

A `Scope` is the span of the store one report reads: the window plus the trailing ten
minutes (`lo <= ts < hi`). Egress attempts are never loaded as Python objects: they are
counted, grouped and listed in SQL (sentinel/evidence/tally.py, attempts.py). What is loaded
row by row is the sensors' bookkeeping (heartbeats, losses, DNS drops, canary probes), whose
count grows with time, not with traffic. Every read is a plain SELECT on a `mode=ro`
connection: the report never changes the store.
"""

from __future__ import annotations

import heapq
import json
from collections import namedtuple
from collections.abc import Iterator
from operator import itemgetter

from sentinel.store.kinds import ATTEMPT_KINDS, ATTEMPT_LAYERS
from sentinel.store.schema import shed_counts

ALL_TIME = (float("-inf"), float("inf"))


def attempt_sql(alias: str = "") -> str:
    """The SQL twin of kinds.is_attempt(layer, kind, verdict): one egress attempt."""
    a = f"{alias}." if alias else ""
    layers = ", ".join(repr(x) for x in ATTEMPT_LAYERS)
    kinds = ", ".join(repr(k) for k in sorted(ATTEMPT_KINDS))
    return (
        f"({a}layer IN ({layers}) AND {a}verdict IN ('blocked', 'audited') "
        f"AND ({a}layer = 'netfilter' OR {a}kind IN ({kinds})))"
    )


ATTEMPT_SQL = attempt_sql()

# what the report reads row by row (time-driven, not traffic-driven)
BOOKKEEPING = (
    "monitor_heartbeat",
    "guard_heartbeat",
    "monitor_lost",
    "dns_dropped",
    "canary_result",
    "canary_escaped",
)


# named tuples, not dataclasses: the report's imports hold no dataclasses (nor the Event
# model, nor typing.NamedTuple's forward refs)
class Scope(namedtuple("Scope", "conn lo hi")):
    """conn: sqlite3.Connection; lo <= ts < hi."""

    __slots__ = ()

    def args(self) -> tuple[float, float]:
        return (self.lo, self.hi)


# A bookkeeping event as the report reads it: the fields it uses, the detail keys it uses
# (a day of heartbeats is tens of thousands of rows). Event's types: text or None, ints or
# None, detail a dict, ts a float.
Beat = namedtuple("Beat", "layer kind verdict protocol dst_ip dst_port pid exe detail ts")


# detail keys the report reads, per kind (other kinds keep their whole detail: they are rare)
_KEEP = {
    "monitor_heartbeat": ("state", "interval", "ruleset_sha256", "mode", "pid", "started_at"),
    "guard_heartbeat": ("state", "interval", "sender"),
}
_NESTED = {"stats": ("lost", "overruns", "malformed"), "counters": ("dropped_total",)}


def _slim(kind: str, detail: dict, same: dict) -> dict:
    """The detail keys the report reads. Equal values are one shared object (`same`): the
    heartbeats of one process mostly say the same thing. Nobody changes them (the readers
    copy, e.g. guardcov._clamped)."""
    keep = _KEEP.get(kind)
    if keep is None or not isinstance(detail, dict):
        return detail
    out = {k: _one(detail[k], same) for k in keep if k in detail}
    for key, inner in _NESTED.items():
        if key in detail:
            value = detail[key]
            out[key] = (
                _one({k: value[k] for k in inner if k in value}, same)
                if isinstance(value, dict)
                else value
            )
    if isinstance(out.get("sender"), dict):
        out["sender"] = _one(out["sender"], same)
    return _one(out, same)


def _one(value, same: dict):  # noqa: ANN001, ANN202 - any JSON value
    """`value`, or an equal one seen before (strings and flat-enough dicts)."""
    if isinstance(value, str):
        return same.setdefault(value, value)
    if isinstance(value, dict):
        try:
            key = ("dict", *((k, _frozen(v)) for k, v in value.items()))
        except TypeError:
            return value
        return same.setdefault(key, value)
    return value


def _frozen(value):  # noqa: ANN001, ANN202
    if isinstance(value, dict):
        return ("dict", *((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("list", *(_frozen(v) for v in value))
    hash(value)
    return (type(value).__name__, value)


def bookkeeping(scope: Scope) -> list[Beat]:
    """The sensors' own events in the scope, in time order (ties in store order). One read
    per kind along events_kind_ts, which holds each kind in (ts, rowid) order: no sort of
    the rows and their details in SQLite; Python merges the kinds' streams (heapq.merge)."""
    sql = (
        "SELECT layer, kind, verdict, protocol, dst_ip, dst_port, pid, exe, detail, ts, rowid "
        "FROM events WHERE kind IN ({}) AND ts >= ? AND ts < ? ORDER BY ts, rowid"
    )
    indexed = scope.conn.execute(_KIND_INDEX).fetchone() is not None  # schema >= 2
    reads = [
        scope.conn.execute(sql.format(", ".join("?" * len(kinds))), (*kinds, *scope.args()))
        for kinds in ([(k,) for k in BOOKKEEPING] if indexed else [BOOKKEEPING])
    ]
    rows = heapq.merge(*reads, key=_TS_ROWID)  # streamed: one row per kind held at a time
    out = []
    loads, same, parsed = json.loads, {}, {}
    one = same.setdefault  # layer, kind, verdict and exe are text or NULL: `_one` of them
    for layer, kind, verdict, proto, ip, port, pid, exe, raw, ts, _ in rows:
        detail = parsed.get((kind, raw))
        if detail is None:
            detail = _slim(kind, loads(raw), same) if raw and raw != "{}" else {}
            if len(parsed) > 4096:  # the same text again is the common case, not a rule
                parsed.clear()
            parsed[(kind, raw)] = detail
        out.append(Beat(one(layer, layer), one(kind, kind), one(verdict, verdict), proto, ip,
                        port, pid, one(exe, exe), detail, ts))  # fmt: skip
    return out


_TS_ROWID = itemgetter(9, 10)
_KIND_INDEX = "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'events_kind_ts'"
Reading = namedtuple("Reading", "ts detail")  # a kernel counter reading: its time, its detail


def readings(scope: Scope, since: float, until: float) -> Iterator[Reading]:
    """Kernel counter readings: the last one before `since` (the baseline), then those in
    [since, until] inside the scope, one at a time (each may hold one entry per set member)."""
    conn = scope.conn
    sql = "SELECT ts, detail FROM events WHERE kind = 'kernel_counters'"
    row = conn.execute(sql + " AND ts < ? ORDER BY ts DESC, rowid DESC LIMIT 1", (since,))
    yield from (_reading(*r) for r in row.fetchall())
    inside = " AND ts >= ? AND ts <= ? AND ts >= ? AND ts < ? ORDER BY ts, rowid"
    for r in conn.execute(sql + inside, (since, until, *scope.args())):
        yield _reading(*r)


def _reading(ts: float, detail: str | None) -> Reading:
    return Reading(ts, json.loads(detail) if detail and detail != "{}" else {})


def shed(scope: Scope, since: float, until: float) -> dict[str, int]:
    return shed_counts(scope.conn, since, until)
