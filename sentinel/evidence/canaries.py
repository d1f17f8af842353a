"""Bypass canaries in the report: the probes recorded inside the window and the last round."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from sentinel.errors import SentinelError
from sentinel.evidence.attempts import MAX_LISTED
from sentinel.evidence.window import iso as _iso

if TYPE_CHECKING:
    from sentinel.store.model import Event


def canary(inside: list[Event] | None = None) -> dict[str, Any] | None:
    """Bypass canaries (`canary:` in the policy): the probes recorded inside the window (the
    store's canary_result/canary_escaped events), and the last round from canary.json with the
    service's error count. Without events (`inside` None) only the last round."""
    from sentinel.store.state import read_json

    try:
        last = read_json("canary.json")
    except SentinelError:
        return {"error": "canary.json unreadable"}
    if inside is None:
        if not last:
            return None
        outcomes = Counter(r.get("outcome") for r in last.get("results", []))
        return {
            "last_run": _iso(last.get("ts", 0)),
            "outcomes": dict(outcomes),
            "escaped": outcomes.get("escaped", 0),
            "results": last.get("results", []),
        }
    probes = [e for e in inside if e.kind in ("canary_result", "canary_escaped")]
    if not probes and not last:
        return None
    outcomes = Counter(str(e.detail.get("outcome")) for e in probes)
    out: dict[str, Any] = {
        "probes_in_window": len(probes),
        "outcomes": dict(sorted(outcomes.items())),
        "escaped": outcomes.get("escaped", 0),
        "escaped_probes": [
            {"time": _iso(e.ts), "target": f"{e.dst_ip}:{e.dst_port}", "protocol": e.protocol}
            for e in probes
            if e.kind == "canary_escaped"
        ][:MAX_LISTED],
    }
    if last:
        out["last_run"] = _iso(last.get("ts", 0))
        out["results"] = last.get("results", [])
        out["errors"] = (last.get("stats") or {}).get("errors", 0)
    return out
