"""Scale of the evidence: the report over a million events.

    python bench/bench_report.py [--events 1000000] [--rounds 3]

(The store's ingest rate and its latency while pruning: bench/bench_store.py.)

1. A store of --events events spread over the last 24 h, made in bulk SQL through the store's
   schema (sentinel/lab/bigstore.py: attempts of every layer, audited guard calls the kernel
   also saw, monitor and guard heartbeats every 5 s, counter readings every 60 s, ...).
2. `sentinel report --last 24h --format json` over it as a whole process in a network
   namespace of this script's own: wall, CPU (user + system) and max RSS, against a baseline
   in the same run and namespace: a bare `python` counting the same file with sqlite3
   (goal <= 2 s, <= 100 MB). Medians of --rounds alternating runs.
Prints figures; not a test. Everything lives in a temp directory and a netns deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sentinel.store import events as ev  # noqa: E402

SENTINEL = str(Path(sys.executable).with_name("sentinel"))


def fill(path: Path, n: int, now: float, span: float) -> int:
    """A realistic store of about n events in bulk SQL (sentinel/lab/bigstore.py)."""
    from sentinel.lab import bigstore

    return bigstore.build(path, n, now, span=span)


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--report-only", action="store_true", help="the same (kept for old scripts)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmpdir:
        tmp = Path(tmpdir)
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


if __name__ == "__main__":
    main()
