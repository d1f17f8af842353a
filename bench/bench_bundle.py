"""The evidence bundle over a million events: `sentinel report --last 24h --bundle DIR`.

    python bench/bench_bundle.py [--events 1000000] [--rounds 3] [--sentinel PATH]

The store is bench_report.py's (sentinel/lab/bigstore.py: --events events over the last 24 h).
Alternating rounds, each a whole process in a network namespace of this script's own (wall,
CPU = user + system, max RSS; bench_report.whole):
  * `sentinel report --last 24h --format json --bundle DIR` (the subject; a fresh DIR a round),
  * `sentinel report --last 24h --format json` (the same report without the bundle),
  * baseline: a bare `python` streaming the same rows (every event of the window, in time
    order) to a file as JSON lines with sqlite3 and json: the least a bundle's flows cost.
`--sentinel` measures another install's `sentinel` (a tree before a change) on the same store.
Prints medians and the ratio to the baseline; not a test. Everything lives in a temp directory
and a netns deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_report  # noqa: E402  (its store, its whole-process measurement)

from sentinel.store import events as ev  # noqa: E402

BASELINE = (  # the window's rows streamed to a file as JSON lines by a bare interpreter
    "import json, sqlite3, sys, time; c = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', "
    "uri=True); now = time.time(); names = None\n"
    "with open(sys.argv[2], 'w') as f:\n"
    "    cur = c.execute('SELECT * FROM events WHERE ts >= ? AND ts < ? ORDER BY ts', "
    "(now - 86400, now))\n"
    "    names = [d[0] for d in cur.description]\n"
    "    for row in cur:\n"
    "        f.write(json.dumps(dict(zip(names, row)), sort_keys=True) + '\\n')\n"
)


def rounds(state: Path, tmp: Path, n: int, sentinel: str) -> dict[str, list[tuple]]:
    ns = f"snb{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    env = {**os.environ, "SENTINEL_STATE_DIR": str(state)}
    report = [sentinel, "report", "--last", "24h", "--format", "json"]
    out: dict[str, list[tuple]] = {"bundle": [], "report": [], "baseline": []}
    try:
        for i in range(n):
            target = tmp / f"bundle-{i}"
            out["bundle"].append(bench_report.whole(ns, [*report, "--bundle", str(target)], env))
            flows = target / "flows.jsonl"
            print(f"  round {i}: bundle {out['bundle'][-1]}, flows {flows.stat().st_size:,} B")
            shutil.rmtree(target)
            out["report"].append(bench_report.whole(ns, report, env))
            rows = tmp / "baseline.jsonl"
            argv = [sys.executable, "-c", BASELINE, str(ev.db_path(state)), str(rows)]
            out["baseline"].append(bench_report.whole(ns, argv, env))
            rows.unlink()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sentinel", default=bench_report.SENTINEL)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-bundle-") as tmpdir:
        tmp = Path(tmpdir)
        state = tmp / "state"
        t = time.perf_counter()
        n = bench_report.fill(ev.db_path(state), args.events, time.time(), 86_400)
        print(f"filled {n:,} events over 24 h in bulk SQL in {time.perf_counter() - t:.1f} s")
        runs = rounds(state, tmp, args.rounds, args.sentinel)
    med = {k: [statistics.median(r[i] for r in v) for i in range(3)] for k, v in runs.items()}
    (bw, bc, br), (rw, rc, rr), (lw, lc, lr) = med["bundle"], med["report"], med["baseline"]
    codes = sorted({r[3] for r in runs["bundle"]})
    print(
        f"report --last 24h --bundle over {n:,} events (exit {codes}): wall {bw:.2f} s, CPU "
        f"{bc:.2f} s, max RSS {br / 1024:.0f} MB\n"
        f"the same report without --bundle: wall {rw:.2f} s, CPU {rc:.2f} s, max RSS "
        f"{rr / 1024:.0f} MB\n"
        f"baseline (python streaming the window's rows to a JSON-lines file): wall {lw:.2f} s, "
        f"CPU {lc:.2f} s, max RSS {lr / 1024:.0f} MB\n"
        f"ratio to the baseline: bundle CPU {bc / lc:.1f}x, wall {bw / lw:.1f}x, RSS "
        f"{br / lr:.1f}x; the bundle's own part (bundle - report) CPU {(bc - rc) / lc:.1f}x"
    )


if __name__ == "__main__":
    main()
