"""Kernel counters in the report: the kernel's own reading now (ruleset hash, NFLOG packets
per family, per-upstream set counters), their growth inside the window from the monitor's
periodic readings (reset-aware), the netflow of allowlisted upstreams, and the completeness
check (kernel NFLOG packets vs the packets the store holds).

Readings are folded one at a time: a reading of a 10,000-entry allowlist holds 20,000 set
counters, and a day holds 1,440 readings. The netflow lists the MAX_NETFLOW busiest entries
and states how many it left out, with the totals of all of them.
"""

from __future__ import annotations

import heapq
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from itertools import compress
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from sentinel.errors import SentinelError
from sentinel.evidence.window import Window, iso

if TYPE_CHECKING:
    from sentinel.store.model import Event

MAX_NETFLOW = 100  # set entries listed in the netflow; the summary counts every entry


def kernel_facts(applied: dict[str, Any] | None) -> dict[str, Any]:
    """Hash, NFLOG counters per family and per-upstream set counters, read from the kernel."""
    from sentinel.enforce import kernelread
    from sentinel.enforce.kernelstate import DEFAULT_BACKEND
    from sentinel.enforce.snapshot import nflog_packets

    backend = (applied or {}).get("backend", DEFAULT_BACKEND)
    try:
        state = kernelread.read_state(backend)
    except SentinelError as exc:
        return {"error": exc.message, "present": False}
    nflog = nflog_packets(state)
    return {
        "read_at": time.time(),
        "present": state.present,
        "sha256": state.sha256() if state.present else None,
        "nflog_packets": nflog,
        "set_counters": state.set_counters,
        "set_entries": [s.entries for s in state.sets],  # each set's entries, sorted
        "text": state.text,
    }


def increase(values: list[tuple[Any, float]]) -> float:
    """Growth of a counter over (epoch, value) samples across resets: a new epoch (another
    apply) or a drop means it restarted from 0."""
    total = 0.0
    for (e0, before), (e1, after) in zip(values, values[1:], strict=False):
        total += _step(e0, before, e1, after)
    return total


def _step(e0: Any, before: float, e1: Any, after: float) -> float:
    return after - before if after >= before and e0 == e1 else after


class _Growth:
    """`increase` of every counter of a series of readings, fed one reading at a time. A
    counter missing from a reading reads 0 there (its growth into that reading is 0), and so
    does a counter that reads 0 (a restart, or no traffic yet): only the entries with traffic
    are stepped, the rest are only named (a reading of 20,000 entries is mostly zeros)."""

    def __init__(self) -> None:
        self.count = 0
        self.nflog = {"4": 0.0, "6": 0.0}
        self.entries: set[str] = set()  # every entry of every reading
        self.grown: dict[str, list[float]] = {}  # entries that read non-zero after the first
        self._epoch: Any = None
        self._nflog: dict = {}
        self._sets: dict = {}

    def feed(self, detail: dict[str, Any]) -> None:
        epoch, nflog, sets = (
            detail.get("applied_at"),
            detail.get("nflog", {}),
            detail.get("sets", {}),
        )
        first = not self.count
        for f in ("4", "6"):
            if not first:
                self.nflog[f] += _step(self._epoch, self._nflog.get(f, 0), epoch, nflog.get(f, 0))
        self.entries.update(sets)
        if not first:
            previous, grown = self._sets, self.grown
            for entry in compress(sets, map(any, sets.values())):
                pb, before = sets[entry], previous.get(entry, (0, 0))
                total = grown.setdefault(entry, [0.0, 0.0])
                for i in (0, 1):
                    total[i] += _step(self._epoch, before[i], epoch, pb[i])
        self._epoch, self._nflog, self._sets = epoch, nflog, sets
        self.count += 1

    def sets(self) -> EntryGrowth:
        grown = {entry: [int(pb[0]), int(pb[1])] for entry, pb in self.grown.items()}
        return EntryGrowth(self.entries, {e: pb for e, pb in grown.items() if any(pb)})


class EntryGrowth(Mapping):
    """{entry: [packets, bytes]} grown in the window, for every entry of every reading, in
    entry order; held as the entries and the non-zero growths (most of a 20,000-entry
    allowlist grew by nothing), so the report never builds a list per idle entry."""

    __slots__ = ("entries", "grown")

    def __init__(self, entries: set[str], grown: dict[str, list[int]]) -> None:
        self.entries, self.grown = entries, grown

    def __getitem__(self, entry: str) -> list[int]:
        if entry in self.grown:
            return self.grown[entry]
        if entry in self.entries:
            return [0, 0]
        raise KeyError(entry)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.entries))

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, entry: object) -> bool:
        return entry in self.entries

    def __repr__(self) -> str:
        return f"EntryGrowth({dict(self)!r})"


def window_counters(
    snapshots: Iterable[Event], window: Window, kernel: dict[str, Any], applied: dict | None
) -> dict[str, Any]:
    """Kernel counter growth inside the window from the monitor's periodic readings, plus the
    kernel now when the window ends now. Exact when a reading precedes the window or the
    counters started inside it (applied after `since`). `snapshots` in time order."""
    applied_at = float((applied or {}).get("applied_at") or 0)
    growth, before = _Growth(), None
    started = False
    for s in snapshots:
        if s.ts < window.since:
            before = s.detail  # the latest reading before the window is the baseline
            continue
        if s.ts > window.until:
            continue
        if not started:
            started = True
            _start(growth, before, applied_at >= window.since, applied)
        growth.feed(s.detail)
    # the kernel's reading joins the series when the window ends when it was taken: judged
    # by the reading's own time, as a report over a big store gets here seconds later
    if window.until >= kernel.get("read_at", time.time()) - 2 and "nflog_packets" in kernel:
        if not started:
            started = True
            _start(growth, before, applied_at >= window.since, applied)
        now = {
            "nflog": {str(f): n for f, n in kernel["nflog_packets"].items()},
            "sets": _by_entry(kernel.get("set_counters", {})),
            "applied_at": (applied or {}).get("applied_at"),
        }
        growth.feed(now)
    if not started:
        _start(growth, before, applied_at >= window.since, applied)
    return {
        "exact": before is not None or applied_at >= window.since,
        "readings": growth.count,
        "nflog": {f"ipv{f}": int(growth.nflog[f]) for f in ("4", "6")},
        "sets": growth.sets(),
    }


def _start(growth: _Growth, before: dict | None, fresh: bool, applied: dict | None) -> None:
    """The series starts at the baseline reading, or at zero when the rules were applied
    inside the window, or else at the first reading inside it."""
    if before is not None:
        growth.feed(before)
    elif fresh:
        growth.feed({"nflog": {}, "sets": {}, "applied_at": (applied or {}).get("applied_at")})


def _by_entry(set_counters: Mapping[tuple[str, str], Any]) -> dict[str, Any]:
    """{(set, entry): counters} as {entry: counters} (the later set wins, as it always did);
    the kernel's own dump (ipsetdump.Counters) makes it straight from its columns, once."""
    by_entry = getattr(set_counters, "by_entry", None)
    if by_entry is not None:
        return by_entry()
    return dict(zip(map(itemgetter(1), set_counters), set_counters.values(), strict=True))


def netflow(
    kernel: dict[str, Any], applied: dict[str, Any] | None, counted: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Packets/bytes per allowlisted upstream entry in the window (`counted`, reset-aware),
    and since the last apply straight from the kernel: the MAX_NETFLOW busiest entries (in
    entry order) and a summary of all of them (how many were left out, the totals)."""
    by_ip = {ip: name for name, ips in (applied or {}).get("pins", {}).items() for ip in ips}
    since = (applied or {}).get("applied_at")
    now = _by_entry(kernel.get("set_counters", {}))
    window = counted["sets"]
    grown = window.grown if isinstance(window, EntryGrowth) else window  # else a plain dict
    entries = set(now)
    entries.update(window.entries if isinstance(window, EntryGrowth) else window)
    summary = {
        "entries": len(entries),
        "listed": min(len(entries), MAX_NETFLOW),
        "left_out": max(0, len(entries) - MAX_NETFLOW),
        "packets": sum(map(itemgetter(0), grown.values())),
        "bytes": sum(map(itemgetter(1), grown.values())),
        "packets_since_apply": sum(map(itemgetter(0), now.values())),
        "bytes_since_apply": sum(map(itemgetter(1), now.values())),
    }
    if len(entries) > MAX_NETFLOW:
        entries = _busiest(entries, grown, now, kernel.get("set_entries"))
    rows = []
    for entry in sorted(entries):
        net, _, proto_port = entry.partition(",")
        packets, nbytes = window.get(entry, [0, 0])
        rows.append(
            {
                "upstream": by_ip.get(net, net),
                "entry": entry,
                "protocol_port": proto_port,
                "packets": packets,
                "bytes": nbytes,
                "packets_since_apply": now.get(entry, (None, None))[0],
                "bytes_since_apply": now.get(entry, (None, None))[1],
                "counting_since": iso(since) if since else None,
            }
        )
    return rows, summary


def _busiest(
    entries: set[str],
    window: Mapping[str, Any],
    now: dict[str, Any],
    sorted_sets: list[tuple[str, ...]] | None = None,
) -> set[str]:
    """The MAX_NETFLOW first entries by (window packets, window bytes, packets since the
    apply) descending, then entry. Entries with none of these (most of a big allowlist) all
    tie at zero and come in entry order: only the active ones are sorted by their counts, and
    the first idle ones are taken from the kernel's sets, already sorted (`sorted_sets`)."""

    def busy(entry: str) -> tuple:
        pb, kb = window.get(entry, [0, 0]), now.get(entry, (0, 0))
        return (-pb[0], -pb[1], -(kb[0] or 0), entry)

    active = set(compress(window, map(any, window.values())))
    active.update(compress(now, map(itemgetter(0), now.values())))
    first = sorted(active, key=busy)[:MAX_NETFLOW]
    first += _first_idle(entries, active, sorted_sets)  # their keys: (0, 0, 0, entry)
    return set(sorted(first, key=busy)[:MAX_NETFLOW])


def _first_idle(entries: set[str], active: set[str], sorted_sets: list | None) -> list[str]:
    """The MAX_NETFLOW smallest of `entries - active` (what heapq.nsmallest gives): the
    kernel's sorted sets merged with the entries they do not hold (older readings' entries),
    sorted, walked until enough are found, instead of a pass over every entry."""
    if not sorted_sets:
        return heapq.nsmallest(MAX_NETFLOW, entries - active)
    rest = entries.difference(*sorted_sets)
    out: list[str] = []
    last = None
    for entry in heapq.merge(*sorted_sets, sorted(rest)):
        if entry != last and entry not in active and entry in entries:
            out.append(entry)
            if len(out) == MAX_NETFLOW:
                break
        last = entry
    return out


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
        "since": iso(since),
        "families": per_family,
        "unaccounted_packets": sum(max(0, v["unaccounted"]) for v in per_family.values()),
    }
