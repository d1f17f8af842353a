"""Scale of the evidence: report over a million events, store ingest rate, pruning vs latency.

    python bench/bench_report.py [--events 1000000] [--ingest 200000] [--report-only]

1. Ingest: `EventStore.put()` of N attempt events (the daemon's path), time until all are
   committed -> events/s (goal >= 50,000/s).
2. A store of --events events spread over the last 24 h, made in bulk SQL through the store's
   schema (sentinel/lab/bigstore.py: attempts of every layer, audited guard calls the kernel
   also saw, monitor and guard heartbeats every 5 s, counter readings every 60 s, ...).
3. `sentinel report --last 24h --format json` over it as a whole process in a network
   namespace of this script's own: wall, CPU (user + system) and max RSS, against a baseline
   in the same run and namespace: a bare `python` counting the same file with sqlite3
   (goal <= 2 s, <= 100 MB). Medians of --rounds alternating runs.
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


def fill(path: Path, n: int, now: float, span: float) -> int:
    """A realistic store of about n events in bulk SQL (sentinel/lab/bigstore.py)."""
    from sentinel.lab import bigstore

    return bigstore.build(path, n, now, span=span)


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


BASELINE = (  # the same file read by a bare interpreter: count every event
    "import sqlite3, sys; c = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True); "
    "print(c.execute('SELECT COUNT(*), SUM(packets) FROM events').fetchone())"
)


# Measures one command from a small fresh interpreter: Linux carries the RSS high-water mark of
# the process that execs into the new program, so timing a child forked from this (large)
# script would report this script's memory, not the command's.
MEASURE = (
    "import os, sys, time; out, argv = sys.argv[1], sys.argv[2:]; t = time.perf_counter(); "
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    fd = os.open(os.devnull, os.O_WRONLY); os.dup2(fd, 1); os.execvp(argv[0], argv)\n"
    "_, status, ru = os.wait4(pid, 0); wall = time.perf_counter() - t\n"
    "open(out, 'w').write(f'{wall} {ru.ru_utime + ru.ru_stime} {ru.ru_maxrss} "
    "{os.waitstatus_to_exitcode(status)}')"
)


def whole(ns: str, argv: list[str], env: dict) -> tuple[float, float, int, int]:
    """One whole process in the namespace: wall s, CPU s (user + system), max RSS KiB, exit."""
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as out:
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-c", MEASURE, out.name, *argv]
        subprocess.run(cmd, env=env, check=True, stderr=subprocess.DEVNULL)
        wall, cpu, rss, code = out.read().split()
    return float(wall), float(cpu), int(rss), int(code)


def report(state: Path, rounds: int) -> tuple[tuple, tuple]:
    """`sentinel report --last 24h` and the baseline, alternating; medians of each figure."""
    ns = f"snb{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        env = {**os.environ, "SENTINEL_STATE_DIR": str(state)}
        ours, base = [], []
        for _ in range(rounds):
            ours.append(whole(ns, [SENTINEL, "report", "--last", "24h", "--format", "json"], env))
            base.append(whole(ns, [sys.executable, "-c", BASELINE, str(ev.db_path(state))], env))
        med = lambda xs: tuple(statistics.median(x[i] for x in xs) for i in range(4))  # noqa: E731
        return med(ours), med(base)
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
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--report-only", action="store_true", help="only the report part")
    args = ap.parse_args()
    rng = random.Random(17)
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmpdir:
        tmp = Path(tmpdir)
        if not args.report_only:
            rate = ingest(tmp / "ingest.db", args.ingest, rng)
            print(
                f"ingest: {args.ingest} events through EventStore.put: {rate:,.0f} events/s "
                f"(goal >= 50,000/s: {'met' if rate >= 50_000 else 'MISSED'})"
            )
        state = tmp / "state"
        t = time.perf_counter()
        n = fill(ev.db_path(state), args.events, time.time(), 86_400)
        print(f"filled {n:,} events over 24 h in bulk SQL in {time.perf_counter() - t:.1f} s")
        (wall, cpu, rss, code), (bwall, bcpu, brss, _) = report(state, args.rounds)
        met = wall <= 2 and rss <= 100 * 1024
        print(
            f"report --last 24h over {n:,} events (exit {code}): wall {wall:.2f} s, CPU "
            f"{cpu:.2f} s, max RSS {rss / 1024:.0f} MB (goal <= 2 s and <= 100 MB: "
            f"{'met' if met else 'MISSED'})\n"
            f"baseline (python: sqlite3 COUNT(*), SUM(packets) over the same file): wall "
            f"{bwall:.2f} s, CPU {bcpu:.2f} s, max RSS {brss / 1024:.0f} MB; ratio CPU "
            f"{cpu / bcpu:.1f}x, wall {wall / bwall:.1f}x"
        )
        if args.report_only:
            return
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
