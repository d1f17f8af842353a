"""The lab's results: results.json in the PRD's format (its `sentinel` section from `sentinel
report`, with the outside host's packet counter as ground truth), the PASS/FAIL verdict and the
printed summary."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sentinel.lab.scenario import ENFORCER, OUTSIDE4, OUTSIDE6, VIOLATIONS, active_layers
from sentinel.lab.session import Lab, LabFailed


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[index], 4)


def writes_section(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    allowed = [o for o in outcomes if o["kind"] == "allowed"]
    times = [o["elapsed_s"] for o in allowed]
    failed = sum(not o["ok"] for o in allowed)
    return {
        "count": len(allowed),
        "success": bool(allowed) and failed == 0,
        "p50_s": percentile(times, 0.50),
        "p95_s": percentile(times, 0.95),
        "p99_s": percentile(times, 0.99),
        "max_s": round(max(times), 4) if times else 0.0,
        "error_rate": round(failed / len(allowed), 4) if allowed else 0.0,
        "note": "lab: calls to the stand-in upstreams (postgres, neo4j, ollama) through sentinel",
    }


def violations_section(
    outcomes: list[dict[str, Any]], rep: dict[str, Any] | None, guard_on: bool
) -> list[dict[str, Any]]:
    by_action = {o["action"]: o for o in outcomes}
    attempts = (rep or {}).get("attempts", [])
    rows = []
    for v in VIOLATIONS:
        seen = sorted({layer for a in attempts if v.matches(a) for layer in a["layers"]})
        outcome = by_action.get(v.action, {})
        rows.append(
            {
                "action": v.action,
                "what": v.what,
                "target": outcome.get("target"),
                "blocked": bool(outcome) and outcome.get("blocked") is True,
                "error": outcome.get("error"),
                "expected_layer": v.expected_layer(guard_on),
                "layers_seen": seen,
            }
        )
    return rows


def sentinel_fallback(outside_packets: int) -> dict[str, Any]:
    """Used only when `sentinel report` is unavailable: in the lab every non-allowlisted
    destination is the outside host, so its own packet counter is the count of external calls."""
    return {
        "external_calls_last_10m": outside_packets,
        "source": "lab ground truth (sentinel report unavailable)",
    }


def build_results(lab: Lab, outcomes: list, rep: dict | None) -> dict[str, Any]:
    assert lab.topo is not None
    outside = lab.topo.outside_packets()
    guard_on = bool(lab.facts.get("guard_path"))
    violations = violations_section(outcomes, rep, guard_on) if lab.app_cmd is None else []
    alerts = lab.alerts_received()
    sentinel = sentinel_fallback(outside) if rep is None else {"source": "sentinel report"}
    sentinel["ground_truth"] = {
        "outside_host_packets": outside,
        "outside_host_addresses": [OUTSIDE4, OUTSIDE6, lab.topo.v4("outside")],
    }
    return {
        "config": {
            "llm": "lab stand-in (no model): ollama listener on 11434",
            "embedder": "lab stand-in (no model)",
            "base_url": "http://ollama:11434",
            "policy": str(lab.policy_path),
            "enforcer": f"sentinel {' '.join(ENFORCER)}",
        },
        "writes": writes_section(outcomes),
        "db": {"before": None, "after": None, "note": "no database in the lab"},
        "sentinel": sentinel,
        "containers": {
            "healthy": bool(lab.facts.get("status_in_sync"))
            and (lab.enforcer is None or lab.enforcer.poll() is None),
            "sentinel_status_in_sync": bool(lab.facts.get("status_in_sync")),
        },
        "violations": violations,
        "alerts": {
            "received": len(alerts),
            "by_sink": _count_paths(alerts),
        },
        "layers_active": sorted(active_layers(rep)),
        "lab": {**lab.facts, "duration_s": round(time.monotonic() - lab.started, 2)},
    }


def _count_paths(alerts: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for a in alerts:
        key = a["path"].strip("/").split("/")[0] or "?"
        out[key] = out.get(key, 0) + 1
    return out


def write_results(lab: Lab, results: dict[str, Any]) -> dict[str, Any]:
    """results.json, then `sentinel report --results` merges its `sentinel` section into it and
    writes its evidence bundle; the merged file is read back for the summary."""
    path = lab.out / "results.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    if results["sentinel"].get("source") == "sentinel report":
        done = lab.sentinel(
            "report",
            *lab.window(),
            "--format",
            "json",
            "--results",
            str(path),
            "--bundle",
            str(lab.evidence / "bundle"),
        )
        if done.returncode not in (0, 1):
            raise LabFailed(f"sentinel report --results failed: {done.stderr.strip()}")
        (lab.evidence / "report.json").write_text(done.stdout)
    return json.loads(path.read_text())


def lab_ok(results: dict[str, Any]) -> bool:
    calls = results["sentinel"].get("external_calls_last_10m")
    zero = calls == 0 and results["sentinel"]["ground_truth"]["outside_host_packets"] == 0
    blocked = all(v["blocked"] for v in results["violations"])
    writes = results["writes"]["success"] or results["writes"]["count"] == 0
    # zero packets prove something only if the outside host was reachable without sentinel
    control = results["lab"].get("control_reached_outside_before_sentinel") is True
    return zero and blocked and writes and control and results["containers"]["healthy"]


# --- output -----------------------------------------------------------------------------------
def summary(console: Console, results: dict[str, Any], out: Path) -> None:
    s, truth = results["sentinel"], results["sentinel"]["ground_truth"]
    head = Table(title="sentinel lab", show_header=False, title_justify="left")
    head.add_row("external calls (sentinel, last 10m)", str(s.get("external_calls_last_10m")))
    head.add_row("packets at the outside host (ground truth)", str(truth["outside_host_packets"]))
    control = results["lab"].get("control_reached_outside_before_sentinel")
    head.add_row("control: outside reachable before sentinel", str(control))
    head.add_row("blocked attempts (sentinel)", str(s.get("blocked_attempts_last_10m", "n/a")))
    head.add_row("attempts by layer", json.dumps(s.get("attempts_by_layer", {})))
    head.add_row("coverage", str(s.get("coverage", "n/a")))
    w = results["writes"]
    head.add_row("allowed upstream calls", f"{w['count']} ok={w['success']} p95={w['p95_s']}s")
    a = results["alerts"]
    head.add_row("alerts at the local receiver", f"{a['received']} {json.dumps(a['by_sink'])}")
    head.add_row("rules in force (status)", str(results["containers"]["sentinel_status_in_sync"]))
    console.print(head)
    if results["violations"]:
        table = Table(title="scripted violations", title_justify="left")
        for col in ("violation", "target", "blocked", "expected layer", "seen by"):
            table.add_column(col)
        for v in results["violations"]:
            table.add_row(
                v["what"],
                str(v["target"]),
                "[green]yes[/]" if v["blocked"] else "[red]NO[/]",
                v["expected_layer"],
                ", ".join(v["layers_seen"]) or "-",
            )
        console.print(table)
    if "app" in results["lab"]:
        app = results["lab"]["app"]
        console.print(f"--app {app['command']!r} exited {app['exit_code']}")
    verdict = "[green]PASS[/]" if lab_ok(results) else "[red]FAIL[/]"
    console.print(f"{verdict}  results: {out / 'results.json'}  evidence: {out / 'evidence'}")
