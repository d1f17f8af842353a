"""Writes to mem0-fixed's HTTP API at a fixed concurrency; prints one JSON line of results.

loadgen.py URL DATASET.jsonl --concurrency C --offset K --count N
Each dataset line is {"user_id": ..., "text": ...}; line K..K+N-1 are written with infer=false.
"""

import argparse
import json
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def write(url: str, row: dict) -> tuple[float, bool, str]:
    body = json.dumps({"messages": row["text"], "user_id": row["user_id"], "infer": False})
    req = urllib.request.Request(
        url + "/memories", data=body.encode(), headers={"Content-Type": "application/json"}
    )
    start = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            data = json.loads(resp.read())
        ok = bool(data.get("results")) and bool(data["results"][0].get("id"))
        return time.monotonic() - start, ok, "" if ok else f"no id: {data}"[:200]
    except Exception as exc:  # noqa: BLE001 - counted as an error
        return time.monotonic() - start, False, f"{type(exc).__name__}: {exc}"[:200]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("dataset")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--count", type=int, default=10)
    args = parser.parse_args()
    with open(args.dataset) as f:
        rows = [json.loads(line) for line in f][args.offset : args.offset + args.count]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        results = list(pool.map(lambda r: write(args.url, r), rows))
    wall = time.monotonic() - started
    lat = [r[0] for r in results]
    errors = [r[2] for r in results if not r[1]]
    print(
        json.dumps(
            {
                "concurrency": args.concurrency,
                "count": len(results),
                "ok": len(results) - len(errors),
                "error_rate": round(len(errors) / max(1, len(results)), 4),
                "p50_s": round(pct(lat, 0.50), 4),
                "p95_s": round(pct(lat, 0.95), 4),
                "p99_s": round(pct(lat, 0.99), 4),
                "max_s": round(max(lat, default=0.0), 4),
                "mean_s": round(statistics.fmean(lat), 4) if lat else 0.0,
                "wall_s": round(wall, 3),
                "throughput_per_s": round(len(results) / wall, 2) if wall else 0.0,
                "errors": errors[:5],
            }
        )
    )


if __name__ == "__main__":
    main()
