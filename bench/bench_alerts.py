"""Alerting benchmark: attempt-to-alert-received latency and a 10,000-attempt flood.

Everything goes to a recording receiver on loopback (127.0.0.1); bounded in count and time.

    python bench/bench_alerts.py [--json out.json]

1. pipeline latency: 200 distinct P1 attempts at 20/s, sink rate limits lifted, measured from
   submit() to the receiver's arrival time, per sink (PagerDuty, Slack, webhook).
2. latency with the production rate limits (Slack 1/s, PagerDuty 2/s): 10 attempts, 1.1 s apart.
3. flood: 10,000 attempts to one destination, and 10,000 from one process over 1,000
   destinations (a scan); dedup window 2 s: alerts sent, roll-ups, dropped, memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sentinel.alerts import AlertDispatcher  # noqa: E402
from sentinel.lab.alertreceiver import Receiver  # noqa: E402
from sentinel.policy.load import parse_policy  # noqa: E402
from sentinel.store.events import Event  # noqa: E402

POLICY = """
version: 1
mode: enforce
alerts:
  slack:     {webhook_url_env: B_SLACK_URL, channel: "#wingman-alerts"}
  pagerduty: {routing_key_env: B_PD_KEY, url_env: B_PD_URL}
  webhook:   {url_env: B_HOOK_URL, hmac_secret_env: B_HOOK_SECRET}
  dedup_window: 2s
"""
PATHS = {"pagerduty": "/pagerduty", "slack": "/slack", "webhook": "/hook"}
UNLIMITED = {name: (0.0, 1.0) for name in PATHS}


def _env(rx: Receiver) -> dict[str, str]:
    return {
        "B_SLACK_URL": rx.url("/slack/T/B/x"),
        "B_PD_KEY": "R0123456789abcdef0123456789abcde",
        "B_PD_URL": rx.url("/pagerduty/v2/enqueue"),
        "B_HOOK_URL": rx.url("/hook/x"),
        "B_HOOK_SECRET": "bench-secret",
    }


def _dispatcher(rx: Receiver, state: str, **kw) -> AlertDispatcher:
    return AlertDispatcher(parse_policy(POLICY), state, environ=_env(rx), **kw).start()


def _attempt(i: int, exe: str | None = None, port: int = 443) -> Event:
    return Event(
        layer="netfilter",
        kind="egress_attempt",
        protocol="tcp",
        dst_ip="198.18.5.5",
        dst_port=port,
        exe=exe or f"/usr/bin/worker-{i}",  # distinct process: no dedup, no per-process cap
        pid=10_000 + i,
    )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _latencies(rx: Receiver, submitted: dict[str, float]) -> dict[str, dict[str, float]]:
    out = {}
    for name, prefix in PATHS.items():
        lat = []
        for rec in rx.accepted(prefix):
            body = rec.json()
            cid = (
                body.get("correlation_id")
                or body.get("payload", {}).get("custom_details", {}).get("correlation_id")
                or _slack_cid(body)
            )
            if cid in submitted:
                lat.append(rec.at - submitted[cid])
        if lat:
            out[name] = {
                "n": len(lat),
                "p50_ms": round(statistics.median(lat) * 1000, 1),
                "p99_ms": round(_pct(lat, 0.99) * 1000, 1),
                "max_ms": round(max(lat) * 1000, 1),
            }
    return out


def _slack_cid(body: dict) -> str | None:
    for block in body.get("blocks", []):
        if block.get("type") == "context":
            text = block["elements"][0]["text"]
            return text.split("`")[1]
    return None


def _latency_run(n: int, gap: float, rates: dict | None) -> dict:
    with Receiver() as rx, tempfile.TemporaryDirectory() as state:
        d = _dispatcher(rx, state, rates=rates)
        submitted: dict[str, float] = {}
        for i in range(n):
            ev = _attempt(i)
            submitted[ev.id] = time.time()
            d.submit(ev)
            time.sleep(gap)
        rx.wait_for(lambda: len(rx.accepted()) >= 3 * n, timeout=60)
        result = _latencies(rx, submitted)
        d.stop()
    return result


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _flood(n: int, scan: bool) -> dict:
    with Receiver() as rx, tempfile.TemporaryDirectory() as state:
        d = _dispatcher(rx, state)
        rss0 = _rss_kb()
        t0 = time.perf_counter()
        accepted = 0
        for i in range(n):
            port = 1 + (i % 1000) if scan else 443
            accepted += d.submit(_attempt(i, exe="/usr/bin/python3", port=port))
        submit_s = time.perf_counter() - t0
        rx.wait_for(lambda: d.stats()["events"] == n, timeout=30)
        route_s = time.perf_counter() - t0
        time.sleep(2.5)  # one dedup window: the roll-ups go out
        rx.wait_for(lambda: all(s["pending"] == 0 for s in d.stats()["sinks"].values()), timeout=30)
        stats = d.stats()
        rss1 = _rss_kb()
        pages = [r.json() for r in rx.accepted("/pagerduty")]
        d.stop()
    return {
        "attempts": n,
        "scan_over_destinations": 1000 if scan else 1,
        "submit_total_ms": round(submit_s * 1000, 1),
        "submit_per_event_us": round(submit_s / n * 1e6, 2),
        "routed_all_ms": round(route_s * 1000, 1),
        "accepted_by_queue": accepted,
        "immediate_alerts": stats["alerts"],
        "rollups": stats["rollups"],
        "deduped": stats["deduped"],
        "pagerduty_requests": len(pages),
        "pagerduty_incidents": len({p["dedup_key"] for p in pages}),
        "events_accounted_in_pages": sum(p["payload"]["custom_details"]["count"] for p in pages),
        "slack_messages": stats["sinks"]["slack"]["sent"],
        "webhook_posts": stats["sinks"]["webhook"]["sent"],
        "dropped": stats["dropped"],
        "rss_growth_kb": rss1 - rss0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {
        "pipeline_latency": _latency_run(200, 0.05, UNLIMITED),
        "latency_with_rate_limits": _latency_run(10, 1.1, None),
        "flood_one_destination": _flood(10_000, scan=False),
        "flood_scan_1000_destinations": _flood(10_000, scan=True),
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
