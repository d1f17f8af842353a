"""The event store's speed: ingest rate against raw SQLite, and event latency while pruning.

    python bench/bench_store.py [--events 200000] [--rounds 3] [--prune 500000] [--against DIR]

1. Ingest, each round in fresh processes (alternating): the baseline is a bare `sqlite3`
   `executemany` INSERT of the same rows (prebuilt tuples, same schema and pragmas, one
   transaction per 5,000 rows); the store is `EventStore.put()` of the same events from one
   thread, until `flush()` says all are committed; "built" also makes each `Event` (its id
   and time; the field values ready) inside the timed loop, as the monitor does; "bus" hands
   the same events to the store through the daemon's event bus, 100 per `emit_many` (the
   monitor's reads; the store's batch form `put_many`). `--against DIR` runs another checkout's
   store and bus modes (e.g. main's tree) in the same rounds. Wall-clock and CPU time (all threads)
   of the timed part; events/s and the ratio store / baseline (goal: >= 50,000 events/s).
2. Latency while pruning: a store holding --prune events older than the retention (written
   in time order, as the live writer writes them) starts (it prunes at once, in its writer thread) while an event is put every 2 ms; put -> visible to
   a separate read-only connection, p50/p99/max, against the same loop on a store with nothing
   to prune (goal: p99 well under 100 ms).
Prints figures; not a test. Everything lives in a temp directory.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# `--child ... --tree DIR`: that tree's sentinel (another checkout: `--against DIR`)
TREE = Path(sys.argv[sys.argv.index("--tree") + 1]) if "--tree" in sys.argv else ROOT
sys.path.insert(0, str(TREE))

from sentinel.run.context import Context  # noqa: E402
from sentinel.run.services import put_each  # noqa: E402
from sentinel.store import rows, schema  # noqa: E402
from sentinel.store.events import Event, EventStore  # noqa: E402

GOAL = 50_000


def attempt(rng: random.Random, ts: float | None = None) -> Event:
    """What the monitor and the resolver emit: mostly kernel sightings, some DNS refusals."""
    ts = time.time() if ts is None else ts
    layer = rng.choice(("netfilter", "netfilter", "netfilter", "dns"))
    if layer == "dns":
        return Event(
            layer="dns",
            kind="dns_refused",
            protocol="dns",
            ts=ts,
            dst_name=f"host{rng.randrange(5000)}.example",
            detail={"qtype": "A"},
        )
    return Event(
        layer="netfilter",
        kind="egress_attempt",
        protocol="tcp",
        family=4,
        ts=ts,
        src_ip="198.18.0.2",
        src_port=rng.randrange(32768, 61000),
        dst_ip=f"198.18.{rng.randrange(256)}.{rng.randrange(1, 255)}",
        dst_port=rng.choice((443, 80, 8443)),
    )


# --- children: one timed ingest each ------------------------------------------------
def child(mode: str, n: int, path: Path) -> dict[str, float]:
    rng = random.Random(17)
    events = [attempt(rng) for _ in range(n)]
    # "built": the same fields, the Event (its id and time) made in the timed loop
    fields = [{k: v for k, v in vars(e).items() if k not in ("id", "ts")} for e in events]
    if mode == "raw":
        data = [rows._row(e) for e in events]
        insert = rows.INSERT
        conn = schema.connect(path)  # the same schema (every index) and pragmas
    t0, c0 = time.perf_counter(), time.process_time()
    if mode == "raw":
        for i in range(0, n, 5000):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(insert, data[i : i + 5000])
            conn.execute("COMMIT")
        conn.close()
        stats = {"written": n, "shed": 0}
    else:
        store = EventStore(path, maxsize=n + 10)
        t0, c0 = time.perf_counter(), time.process_time()
        store.start()
        if mode == "bus":  # the daemon's path: the bus' batches (the monitor's reads)
            ctx = Context(None, path.parent, "nft")  # type: ignore[arg-type]
            ctx.add_sink(store.put, many=put_each(store))
            for i in range(0, n, 100):
                ctx.emit_many(events[i : i + 100])
        elif mode == "built":
            for f in fields:
                store.put(Event(**f))
        else:
            for e in events:
                store.put(e)
        assert store.flush(timeout=900)
        stats = store.stats()
        store.stop()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert stats["written"] == n and stats["shed"] == 0, stats
    got = sqlite3.connect(path).execute("SELECT COUNT(*) FROM events WHERE kind != ?", ("x",))
    assert got.fetchone()[0] >= n
    return {"wall": wall, "cpu": cpu}


LABELS = {
    "raw": "baseline: sqlite3 executemany INSERT",
    "store": "EventStore.put + flush",
    "bus": "bus batches (emit_many) + flush",
    "built": "EventStore.put + flush, Event built",
}


def ingest(n: int, rounds: int, tmp: Path, against: Path | None = None) -> None:
    """Each round runs every mode once, in fresh processes; with `against`, that tree's
    store and bus modes too, alternating with this tree's."""
    runs: dict[tuple[str, str], list[dict[str, float]]] = {
        ("", m): [] for m in ("raw", "store", "bus", "built")
    }
    if against is not None:
        runs.update({(str(against), m): [] for m in ("store", "bus")})
    for r in range(rounds):
        for tree, mode in runs:
            path = tmp / f"{mode}{r}.db"
            extra = ["--tree", tree] if tree else []
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--events", str(n), "--db", str(path)]
                + extra,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            runs[tree, mode].append(json.loads(out.splitlines()[-1]))
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
    med = {
        m: {k: statistics.median(x[k] for x in v) for k in ("wall", "cpu")} for m, v in runs.items()
    }
    base = med["", "raw"]
    print(f"ingest of {n:,} events, medians of {rounds} alternating rounds (fresh processes):")
    for (tree, mode), _ in runs.items():
        wall, cpu = n / med[tree, mode]["wall"], n / med[tree, mode]["cpu"]
        ratio = f"{wall / (n / base['wall']):.2f}x wall, {cpu / (n / base['cpu']):.2f}x CPU"
        goal = (
            ""
            if mode == "raw"
            else f"  goal >= {GOAL:,}/s: {'met' if wall >= GOAL else 'MISSED'} wall"
        )
        label = LABELS[mode] if not tree else f"{Path(tree).name}: {LABELS[mode]}"
        print(f"  {label:50s} {wall:9,.0f}/s wall {cpu:9,.0f}/s CPU  ({ratio}){goal}")


# --- latency while pruning ------------------------------------------------------------
def latencies(
    path: Path, rng: random.Random, old_before: float | None
) -> tuple[list[float], float]:
    """Put one event every 2 ms until nothing older than `old_before` is left (or 60 s)."""
    store = EventStore(path, retention=86_400).start()
    reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    lat: list[float] = []
    pending: dict[str, float] = {}
    starts: dict[str, float] = {}  # id -> the event's ts (the reader looks along events_ts)
    t0 = time.perf_counter()
    deadline = time.monotonic() + (180 if old_before else 20)
    while time.monotonic() < deadline:  # bounded
        e = attempt(rng)
        pending[e.id] = time.perf_counter()
        starts[e.id] = e.ts
        store.put(e)
        time.sleep(0.002)
        ids = list(pending)
        marks = ",".join("?" * len(ids))
        sql = f"SELECT id FROM events WHERE ts >= ? AND id IN ({marks})"  # along events_ts
        for (found,) in reader.execute(sql, [min(starts.values()), *ids]):
            lat.append(time.perf_counter() - pending.pop(found))
            starts.pop(found)
        if old_before is None:
            if time.perf_counter() - t0 > 10 and not pending:
                break
            continue
        # the cursor goes at once: a statement left open would hold a read transaction, and
        # the WAL could not start over after a checkpoint
        sql = "SELECT EXISTS (SELECT 1 FROM events WHERE ts < ?)"
        if not reader.execute(sql, (old_before,)).fetchone()[0] and not pending:
            break
    took = time.perf_counter() - t0
    store.stop()
    reader.close()
    return sorted(lat), took


def prune_latency(n_old: int, tmp: Path) -> None:
    rng = random.Random(18)
    path = tmp / "prune.db"
    conn = schema.connect(path)
    old = time.time() - 90_000  # older than the 24 h retention, written as a live store
    step = 10_000 / n_old  # would have: in time order, over 10,000 s
    for start in range(0, n_old, 20_000):
        count = min(20_000, n_old - start)
        batch = [attempt(rng, old - 10_000 + (start + i) * step) for i in range(count)]
        rows.write_events(conn, batch, {})
    conn.close()
    idle, _ = latencies(tmp / "idle.db", rng, None)
    busy, took = latencies(path, rng, old + 1)

    def fig(lat: list[float]) -> str:
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return (
            f"p50 {statistics.median(lat) * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, "
            f"max {lat[-1] * 1e3:.1f} ms over {len(lat)} events"
        )

    print("event put -> committed (seen by a reader), one event every 2 ms:")
    print(f"  baseline, nothing to prune:          {fig(idle)}")
    print(f"  while pruning {n_old:,} old events:  {fig(busy)}; pruned in {took:.1f} s")
    p99 = busy[min(len(busy) - 1, int(len(busy) * 0.99))]
    print(f"  goal p99 < 100 ms: {'met' if p99 < 0.1 else 'MISSED'}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prune", type=int, default=500_000)
    ap.add_argument("--child", choices=("raw", "store", "bus", "built"))
    ap.add_argument("--db", type=Path)
    ap.add_argument("--tree", help=argparse.SUPPRESS)  # read before the imports (TREE)
    ap.add_argument("--against", type=Path, help="another checkout (e.g. main) to alternate with")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.events, args.db)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmpdir:
        tmp = Path(tmpdir)
        if args.events:
            ingest(args.events, args.rounds, tmp, args.against)
        if args.prune:
            prune_latency(args.prune, tmp)


if __name__ == "__main__":
    main()
