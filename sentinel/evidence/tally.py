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


_ENDS = "SELECT (SELECT MIN(ts) FROM events), (SELECT MAX(ts) FROM events)"


def _groups_sql(scope: Scope, since: float, until: float) -> str:
    """Read the table in order when the scope covers most of the store (a day's report over
    a day's store), else through the time index."""
    sums = _WHOLE if since <= scope.lo and until >= scope.hi else _WINDOWED
    # two subqueries: SQLite reads one end of the time index for a lone MIN or MAX, but
    # `SELECT MIN(ts), MAX(ts)` walks the whole index (~0.3 s over a million rows)
    first, last = scope.conn.execute(_ENDS).fetchone()
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
    """The counts of one report. Per destination only its attempts and its groups, compact,
    are kept; the listed destinations' details are made from their groups when
    `destinations()` is called (a day holds tens of thousands of destinations, 1000 listed)."""

    def __init__(self) -> None:
        self.total = self.external = self.blocked = 0
        self.external_10m = self.blocked_10m = 0
        self.layers: Counter = Counter()
        self.protocols: Counter = Counter()
        self.stored: Counter = Counter()  # NFLOG packets stored, ipv4/ipv6
        # text -> [attempts, groups as (code, n, packets, first, last), joined kernel times]
        self.dests: dict[str, list] = {}
        self.codes: list[tuple[str, str]] = []  # code -> (layer, verdict)

    def destinations(self) -> list[dict[str, Any]]:
        top = sorted((-acc[0], text) for text, acc in self.dests.items())[:MAX_DESTINATIONS]
        out = []
        for _, text in top:
            d = self._destination(*self.dests[text][1:])
            out.append(
                {
                    "destination": text,
                    "attempts": d.attempts,
                    "packets": d.packets,
                    "layers": d.ordered(_SLOTS[:3]),
                    "verdicts": d.ordered(_SLOTS[3:]),
                    "first": iso(d.first),
                    "last": iso(d.last),
                }
            )
        return out

    def _destination(self, groups: list[tuple], bumps: list[float]) -> Destination:
        d = Destination()
        for code, n, packets, first, last in groups:
            layer, verdict = self.codes[code]
            d.add(layer, verdict, n, packets or 0, first, last, _RANKS.get(layer, _RANK1))
        for ts in bumps:
            d.bump("guard", 1, (ts, 1, 0))
        return d


def _attempt(layer: str, verdict: str) -> bool:
    """kinds.is_attempt of a group's rows: DNS and guard rows reach the groups only when they
    are attempts (_GROUPS' WHERE), netfilter rows are attempts by their verdict whatever their
    kind, canary rows never."""
    return layer in ("dns", "guard") or is_attempt(layer, "", verdict)


def tally(scope: Scope, joins: Joins, since: float, until: float, last10: float) -> Tally:
    out = Tally()
    dests, codes = out.dests, out.codes
    args = {"since": since, "until": until, "last10": last10, "lo": scope.lo, "hi": scope.hi}
    rows = scope.conn.execute(_groups_sql(scope, since, until), args)
    code_of: dict[tuple, int | None] = {}  # (layer, verdict) -> code, None if no attempt
    sums: dict[tuple, int] = {}  # attempts per (code, protocol): a few keys
    recent: dict[int, int] = {}  # attempts of the last ten minutes per code
    stored: dict = {}  # packets per family (netfilter and canary rows)
    prev = acc = None  # groups come sorted by destination: its entry, found once per run
    for ip, name, port, proto, layer, verdict, family, n, packets, first, last, n10 in rows:
        if n and (layer == "netfilter" or layer == "canary"):
            stored[family] = stored.get(family, 0) + (packets or 0)
        code = code_of.get((layer, verdict), -1)
        if code == -1:
            code = code_of[(layer, verdict)] = _code(codes, layer, verdict)
        if code is None:
            continue
        if n10:
            recent[code] = recent.get(code, 0) + n10
        if not n:
            continue
        key = (code, proto)
        sums[key] = sums.get(key, 0) + n
        key = (ip, name, port, proto)
        if key != prev:
            prev, text = key, destination_text(name, ip, port, proto)
            acc = dests.get(text)
            if acc is None:  # one entry per destination, not one per group
                acc = dests[text] = [0, [], []]
        acc[0] += n
        acc[1].append((code, n, packets, first, last))
    for family, packets in stored.items():
        out.stored[f"ipv{family}"] += packets
    for g in joins.guards:  # the audited guard sightings: counted unless absorbed
        if g.rowid not in joins.used and g.ts >= scope.lo:
            code = code_of.get(("guard", g.verdict))
            if code is None:  # counted whatever its verdict, as the join found it
                code = code_of[("guard", g.verdict)] = len(codes)
                codes.append(("guard", g.verdict))
            if g.ts >= last10:
                recent[code] = recent.get(code, 0) + 1
            if not since <= g.ts < until:
                continue
            key = (code, g.protocol)
            sums[key] = sums.get(key, 0) + 1
            text = destination_text(g.dst_name, g.dst_ip, g.dst_port, g.protocol)
            acc = dests.get(text)
            if acc is None:
                acc = dests[text] = [0, [], []]
            acc[0] += 1
            acc[1].append((code, 1, g.packets, g.ts, g.ts))
    for code, n in recent.items():
        layer, verdict = codes[code]
        out.external_10m += n if layer == "netfilter" and verdict == "audited" else 0
        out.blocked_10m += n if verdict == "blocked" else 0
    for (code, proto), n in sums.items():
        layer, verdict = codes[code]
        out.total += n
        out.layers[layer] += n
        out.protocols[proto or "?"] += n
        out.external += n if layer == "netfilter" and verdict == "audited" else 0
        out.blocked += n if verdict == "blocked" else 0
    for e in joins.kernel.values():  # a joined kernel record also names the guard layer
        if since <= e.ts < until:
            out.layers["guard"] += 1
            dests[destination_text(e.dst_name, e.dst_ip, e.dst_port, e.protocol)][2].append(e.ts)
    return out


def _code(codes: list[tuple[str, str]], layer: str, verdict: str) -> int | None:
    """A new (layer, verdict)'s code, or None when its groups are no attempts."""
    if not _attempt(layer, verdict):
        return None
    codes.append((layer, verdict))
    return len(codes) - 1
