"""The report as rich tables (`--format table`); rich is imported only here."""

from __future__ import annotations

from typing import Any

from sentinel.escape import escape_controls


def _holders(caps: dict[str, Any] | None) -> str:
    if not caps:
        return "not scanned"
    held = [f"{h['pid']} {h['name']} ({', '.join(h['caps'])})" for h in caps["holders"][:5]]
    return "; ".join(held) or f"none of {caps['processes_visible']} visible"


def render_table(report: dict[str, Any]) -> list[Any]:
    from rich.table import Table

    summary = Table(title="sentinel evidence", show_header=False)
    w = report["window"]
    for key, value in (
        ("window", f"{w['since_iso']} .. {w['until_iso']}"),
        ("mode", report["mode"]),
        ("external calls (last 10m)", report["external_calls_last_10m"]),
        ("blocked attempts (last 10m)", report["blocked_attempts_last_10m"]),
        ("attempts in window", report["attempts_total"]),
        ("policy sha256", report["policy_sha256"]),
        ("ruleset sha256", report["ruleset_sha256"]),
        ("kernel matches", report["rules_in_sync"]),
        ("coverage", report["coverage"]),
        ("unaccounted packets", report["unaccounted_packets"]),
        ("shed events", report["shed_events"]),
        ("guard", report["guard"]["status"]),
        ("raw/admin-capable processes", _holders(report.get("capabilities"))),
    ):
        summary.add_row(key, escape_controls(str(value)))
    dest = Table(
        "destination", "attempts", "packets", "layers", "verdicts", title="attempts by destination"
    )
    for g in report["attempts_by_destination"][:50]:
        dest.add_row(
            escape_controls(g["destination"]),
            str(g["attempts"]),
            str(g["packets"]),
            ", ".join(f"{k}={v}" for k, v in g["layers"].items()),
            ", ".join(f"{k}={v}" for k, v in g["verdicts"].items()),
        )
    flows = Table("upstream", "entry", "packets", "bytes", title=_netflow_title(report))
    for row in report["netflow"]:
        flows.add_row(
            escape_controls(row["upstream"]), row["entry"], str(row["packets"]), str(row["bytes"])
        )
    gaps = Table("from", "to", "seconds", "reason", title="coverage gaps")
    for g in report["coverage_detail"]["monitor_gaps"]:
        gaps.add_row(g["from"], g["to"], str(g["seconds"]), g["reason"])
    return [summary, dest, flows, gaps]


def _netflow_title(report: dict[str, Any]) -> str:
    summary = report.get("netflow_summary") or {}
    if not summary.get("left_out"):
        return "netflow (allowlisted)"
    return (
        f"netflow (allowlisted): the {summary['listed']} busiest of {summary['entries']} "
        f"entries; all entries: {summary['packets']} packets, {summary['bytes']} bytes"
    )
