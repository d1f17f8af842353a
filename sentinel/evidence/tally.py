"""The report's counts, in one grouped SQL pass over the store: attempts per layer, protocol
and verdict, external calls, blocked attempts (window and last ten minutes), attempts by
destination, and the NFLOG packets the store holds per family.

SQLite groups the rows by (layer, verdict, protocol, family, destination); Python only sees
the groups (a few per destination), never the events. Audited guard sightings are counted
from the join's rows instead (attempts.Joins), because a sighting absorbed into a kernel
event is not an attempt of its own.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sentinel.evidence.attempts import Joins
from sentinel.evidence.storeview import ATTEMPT_SQL, Scope
from sentinel.evidence.window import iso
from sentinel.store.destination import destination_text
from sentinel.store.kinds import is_attempt

MAX_DESTINATIONS = 1000  # destinations listed; attempts_total and the other counts stay whole

# grouped by the raw columns, the most varied first (no expression per row where the window
# is the whole scope: SQLite's sorter is the cost here, and it grows with the key's width).
# `kind` is not in the key: the WHERE below admits DNS and guard rows only when they are
# attempts, and a netfilter row is one by its verdict alone (kinds.is_attempt).
_KEY = "dst_ip, dst_name, dst_port, protocol, layer, verdict, family"
_IN = "ts >= :since AND ts < :until"
_WINDOWED = (
    f"SUM({_IN}), SUM(CASE WHEN {_IN} THEN packets END), MIN(CASE WHEN {_IN} THEN ts END), "
    f"MAX(CASE WHEN {_IN} THEN ts END)"
)
_WHOLE = "COUNT(*), SUM(packets), MIN(ts), MAX(ts)"
_GROUPS = (
    "SELECT {key}, {sums}, SUM(ts >= :last10) FROM events {hint} "
    "WHERE ts >= :lo AND ts < :hi AND layer IN ('netfilter', 'dns', 'guard', 'canary') "
    "AND NOT (layer = 'guard' AND verdict = 'audited') "
    # a DNS or guard row counts only as an attempt (heartbeats never reach the sorter)
    f"AND (layer IN ('netfilter', 'canary') OR {ATTEMPT_SQL}) GROUP BY {{key}}"
)


def _groups_sql(scope: Scope, since: float, until: float) -> str:
    """Read the table in order when the scope covers most of the store (a day's report over
    a day's store), else through the time index."""
    sums = _WHOLE if since <= scope.lo and until >= scope.hi else _WINDOWED
    first, last = scope.conn.execute("SELECT MIN(ts), MAX(ts) FROM events").fetchone()
    span = (last or 0) - (first or 0)
    covered = min(scope.hi, last or 0) - max(scope.lo, first or 0)
    hint = "NOT INDEXED" if span > 0 and covered > span / 2 else ""
    return _GROUPS.format(key=_KEY, sums=sums, hint=hint)


# record order at one instant: kernel/DNS records, then guard records; inside a joined
# record the guard layer comes first (attempts.joined)
_RANK = {"guard": 2}
_RANKS = {layer: (rank, 1) for layer, rank in _RANK.items()}  # (rank, 1), made once
_RANK1 = (1, 1)


_SLOTS = ("netfilter", "dns", "guard", "blocked", "audited")  # attempt layers, then verdicts
_SLOT = {name: i for i, name in enumerate(_SLOTS)}


class Destination:
    """One destination's attempts in the window (kept for every destination: lean). `counts`
    and `seen` hold, per attempt layer and verdict, the count and the (ts, rank) of the first
    record naming it: a record's layers and verdicts are listed in order of first appearance."""

    __slots__ = ("attempts", "packets", "first", "last", "counts", "seen")

    def __init__(self) -> None:
        self.attempts = self.packets = 0
        self.first, self.last = float("inf"), float("-inf")
        self.counts = [0] * len(_SLOTS)
        self.seen: list[tuple | None] = [None] * len(_SLOTS)

    def add(self, layer: str, verdict: str, n: int, packets: int, first: float, last: float,
            rank: tuple) -> None:  # fmt: skip
        self.attempts += n
        self.packets += packets
        self.first, self.last = min(self.first, first), max(self.last, last)
        self.bump(layer, n, (first, *rank))
        self.bump(verdict, n, (first, rank[0]))

    def bump(self, name: str, n: int, at: tuple) -> None:
        i = _SLOT[name]
        self.counts[i] += n
        if self.seen[i] is None or at < self.seen[i]:
            self.seen[i] = at

    def ordered(self, names: tuple[str, ...]) -> dict[str, int]:
        present = [x for x in names if self.seen[_SLOT[x]] is not None]
        return {
            x: self.counts[_SLOT[x]] for x in sorted(present, key=lambda x: self.seen[_SLOT[x]])
        }


class Tally:
    """The window's counts (a plain class: the report imports no dataclasses)."""

    def __init__(self) -> None:
        self.total = 0
        self.layers: Counter = Counter()
        self.protocols: Counter = Counter()
        self.external = 0
        self.blocked = 0
        self.external_10m = 0
        self.blocked_10m = 0
        self.stored: Counter = Counter()  # NFLOG packets stored, ipv4/ipv6
        self.dests: dict[str, Destination] = {}

    def add(self, layer, verdict, protocol, name, ip, port, n, packets, first, last, n10,
            joined: bool = False) -> None:  # fmt: skip
        if n10:
            self.external_10m += n10 if layer == "netfilter" and verdict == "audited" else 0
            self.blocked_10m += n10 if verdict == "blocked" else 0
        if not n:
            return
        self.total += n
        self.layers[layer] += n
        self.protocols[protocol or "?"] += n
        self.external += n if layer == "netfilter" and verdict == "audited" else 0
        self.blocked += n if verdict == "blocked" else 0
        text = destination_text(name, ip, port, protocol)
        dest = self.dests.get(text)
        if dest is None:  # one Destination per destination, not one per group
            dest = self.dests[text] = Destination()
        dest.add(layer, verdict, n, packets or 0, first, last, _RANKS.get(layer, _RANK1))

    def destinations(self) -> list[dict[str, Any]]:
        rows = sorted(self.dests.items(), key=lambda kv: (-kv[1].attempts, kv[0]))
        return [
            {
                "destination": text,
                "attempts": d.attempts,
                "packets": d.packets,
                "layers": d.ordered(_SLOTS[:3]),
                "verdicts": d.ordered(_SLOTS[3:]),
                "first": iso(d.first),
                "last": iso(d.last),
            }
            for text, d in rows[:MAX_DESTINATIONS]
        ]


def _attempt(layer: str, verdict: str) -> bool:
    """kinds.is_attempt of a group's rows: DNS and guard rows reach the groups only when they
    are attempts (_GROUPS' WHERE), netfilter rows are attempts by their verdict whatever their
    kind, canary rows never."""
    return layer in ("dns", "guard") or is_attempt(layer, "", verdict)


def tally(scope: Scope, joins: Joins, since: float, until: float, last10: float) -> Tally:
    out = Tally()
    args = {"since": since, "until": until, "last10": last10, "lo": scope.lo, "hi": scope.hi}
    rows = scope.conn.execute(_groups_sql(scope, since, until), args)
    verdicts: dict[tuple, bool] = {}  # attempt or not per (layer, verdict): a few keys
    for ip, name, port, proto, layer, verdict, family, n, packets, first, last, n10 in rows:
        if layer in ("netfilter", "canary") and n:
            out.stored[f"ipv{family}"] += packets or 0
        key = (layer, verdict)
        attempt = verdicts.get(key)
        if attempt is None:
            attempt = verdicts[key] = _attempt(layer, verdict)
        if attempt:
            out.add(layer, verdict, proto, name, ip, port, n or 0, packets, first, last, n10)
    for g in joins.guards:  # the audited guard sightings: counted unless absorbed
        if g.rowid not in joins.used and g.ts >= scope.lo:
            win = since <= g.ts < until
            out.add("guard", g.verdict, g.protocol, g.dst_name, g.dst_ip, g.dst_port,
                    int(win), g.packets, g.ts, g.ts, int(g.ts >= last10))  # fmt: skip
    for e in joins.kernel.values():  # a joined kernel record also names the guard layer
        if since <= e.ts < until:
            out.layers["guard"] += 1
            dest = out.dests[destination_text(e.dst_name, e.dst_ip, e.dst_port, e.protocol)]
            dest.bump("guard", 1, (e.ts, 1, 0))
    return out
