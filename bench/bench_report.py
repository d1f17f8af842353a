"""Scale of the evidence: report over a million events, store ingest rate, pruning vs latency.

    python bench/bench_report.py [--events 1000000] [--ingest 200000]

1. Ingest: `EventStore.put()` of N attempt events (the daemon's path), time until all are
   committed -> events/s (goal >= 50,000/s).
2. A store of --events events spread over the last 24 h (attempts of every layer, heartbeats
   every 5 s, kernel counter snapshots), filled in bulk through `write_events`.
3. `sentinel report --last 24h` over it as a whole process in a network namespace of this
   script's own: wall time and peak RSS (goal <= 2 s, <= 100 MB).
4. Pruning: half a million events older than the retention, a store started on it, and events
   put every 2 ms while it prunes; the put -> committed latency (p50/p99/max) during pruning.
Prints figures; not a test. Everything lives in a temp directory and a netns deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sentinel.store import events as ev  # noqa: E402
from sentinel.store.events import Event  # noqa: E402

SENTINEL = str(Path(sys.executable).with_name("sentinel"))


def attempt(ts: float, rng: random.Random) -> Event:
    layer = rng.choice(("netfilter", "netfilter", "dns", "guard"))
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
        layer=layer,
        kind="egress_attempt",
        protocol="tcp",
        family=4,
        ts=ts,
        dst_ip=f"198.18.{rng.randrange(256)}.{rng.randrange(1, 255)}",
        dst_port=rng.choice((443, 80, 8443)),
        pid=1000 + rng.randrange(50),
    )


def fill(path: Path, n: int, now: float, span: float, rng: random.Random) -> None:
    conn = ev.connect(path)
    beats = int(span / 5)
    batch: list[Event] = []
    for i in range(beats):  # the monitor's heartbeats and counter snapshots
        ts = now - span + i * 5
        batch.append(
            Event(
                layer="netfilter",
                kind="monitor_heartbeat",
                verdict="info",
                ts=ts,
                detail={"interval": 5.0, "received": i, "lost": 0},
            )
        )
        if i % 12 == 0:
            batch.append(
                Event(
                    layer="netfilter",
                    kind="kernel_counters",
                    verdict="info",
                    ts=ts,
                    detail={"ipv4": i, "ipv6": 0},
                )
            )
    for _ in range(n - len(batch)):
        batch.append(attempt(now - span * rng.random(), rng))
        if len(batch) >= 20_000:
            ev.write_events(conn, batch, {})
            batch = []
    ev.write_events(conn, batch, {})
    conn.close()


def ingest(path: Path, n: int, rng: random.Random) -> float:
    events = [attempt(time.time(), rng) for _ in range(n)]
    store = ev.EventStore(path, maxsize=n + 10).start()
    start = time.perf_counter()
    for e in events:
        store.put(e)
    store.flush(timeout=600)
    elapsed = time.perf_counter() - start
    stats = store.stats()
    store.stop()
    assert stats["written"] == n and stats["shed"] == 0, stats
    return n / elapsed


def report(state: Path) -> tuple[float, int, int]:
    ns = f"snb{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        env = {**os.environ, "SENTINEL_STATE_DIR": str(state)}
        start = time.perf_counter()
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, SENTINEL, "report", "--last", "24h"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        return wall, usage.ru_maxrss, os.waitstatus_to_exitcode(status)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def prune_latency(path: Path, n_old: int, rng: random.Random) -> tuple[float, list[float]]:
    now = time.time()
    conn = ev.connect(path)
    for start in range(0, n_old, 20_000):
        ev.write_events(
            conn,
            [
                attempt(now - 90_000 - rng.random() * 1000, rng)
                for _ in range(min(20_000, n_old - start))
            ],
            {},
        )
    conn.close()
    store = ev.EventStore(path, retention=86_400).start()  # prunes at once, in its writer thread
    reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    latencies, t0 = [], time.perf_counter()
    pending: dict[str, float] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # bounded: 120 s
        e = attempt(time.time(), rng)
        pending[e.id] = time.perf_counter()
        store.put(e)
        time.sleep(0.002)
        ids = list(pending)
        marks = ",".join("?" * len(ids))
        for (found,) in reader.execute(f"SELECT id FROM events WHERE id IN ({marks})", ids):
            latencies.append(time.perf_counter() - pending.pop(found))
        left = reader.execute("SELECT COUNT(*) FROM events WHERE ts < ?", (now - 86_400,))
        if left.fetchone()[0] == 0 and not pending:
            break
    pruned_in = time.perf_counter() - t0
    store.stop()
    return pruned_in, latencies


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--ingest", type=int, default=200_000)
    ap.add_argument("--prune", type=int, default=500_000)
    args = ap.parse_args()
    rng = random.Random(17)
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmpdir:
        tmp = Path(tmpdir)
        rate = ingest(tmp / "ingest.db", args.ingest, rng)
        print(
            f"ingest: {args.ingest} events through EventStore.put: {rate:,.0f} events/s "
            f"(goal >= 50,000/s: {'met' if rate >= 50_000 else 'MISSED'})"
        )
        state = tmp / "state"
        t = time.perf_counter()
        fill(ev.db_path(state), args.events, time.time(), 86_400, rng)
        print(f"filled {args.events:,} events over 24 h in {time.perf_counter() - t:.1f} s")
        wall, rss_kib, code = report(state)
        print(
            f"report --last 24h over {args.events:,} events: {wall:.2f} s, peak RSS "
            f"{rss_kib / 1024:.0f} MB, exit {code} (goal <= 2 s and <= 100 MB: "
            f"{'met' if wall <= 2 and rss_kib <= 100 * 1024 else 'MISSED'})"
        )
        pruned_in, lat = prune_latency(tmp / "prune.db", args.prune, rng)
        lat.sort()
        p99 = lat[int(len(lat) * 0.99)] if lat else float("nan")
        print(
            f"prune {args.prune:,} old events: done in {pruned_in:.1f} s; event put->committed "
            f"latency meanwhile: p50 {statistics.median(lat) * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms, "
            f"max {lat[-1] * 1e3:.0f} ms over {len(lat)} events"
        )


if __name__ == "__main__":
    main()
