"""What `policy suggest` reads, from the event store or from an evidence bundle (read-only).

The attempts of a window, `applied.json` (the policy in force and its pins), and the packets the
kernel let through per allowlist set entry (the monitor's periodic counter readings, plus the
kernel now when the window ends now): allowlisted traffic is never logged, only counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentinel.errors import BadInput
from sentinel.evidence.report import Window, kernel_facts, window_counters
from sentinel.policy.load import Policy, parse_policy
from sentinel.store import events as ev
from sentinel.store.events import Event


@dataclass
class Observations:
    """Everything suggest reads, from the store or from a bundle."""

    window: Window
    events: list[Event]
    source: str
    applied: dict[str, Any] = field(default_factory=dict)
    in_force: Policy | None = None
    allowed_packets: dict[str, int] = field(default_factory=dict)  # set entry -> packets
    counters_known: bool = False


# --- reading --------------------------------------------------------------------------------
def from_store(window: Window, state: Path) -> Observations:
    from sentinel.store.state import APPLIED, read_json

    path = ev.db_path(state)
    if not path.exists():
        raise BadInput(f"no event store at {path}: nothing recorded (SENTINEL_STATE_DIR?)")
    conn = ev.connect(path, readonly=True)
    try:
        events = ev.last_before(conn, "kernel_counters", window.since)
        events += ev.query(conn, window.since, window.until)
    finally:
        conn.close()
    applied = read_json(APPLIED) or {}
    obs = Observations(window, events, f"store {path}", applied, _in_force(applied))
    kernel = kernel_facts(applied) if applied.get("ruleset_sha256") else {}
    _count_allowed(obs, kernel if kernel.get("present") else {})
    return obs


def from_bundle(directory: Path, window: Window | None) -> Observations:
    from sentinel.evidence.bundle import MANIFEST, verify

    if not (directory / MANIFEST).is_file():
        raise BadInput(f"--from-bundle {directory}: no {MANIFEST} (not an evidence bundle)")
    bad = verify(directory)
    if bad:
        raise BadInput(f"--from-bundle {directory}: does not verify, changed: {', '.join(bad)}")
    report = _read_json(directory / "report.json")
    w = report.get("window") or {}
    window = window or Window(float(w.get("since", 0)), float(w.get("until", 0)))
    events = [
        Event(**{k: v for k, v in d.items() if k in ev.COLUMNS})
        for d in _jsonl(directory / "flows.jsonl")
    ]
    for row in _jsonl(directory / "kernel-counters.jsonl"):
        ts = float(row.pop("ts", 0))
        events.append(
            Event(layer="sentinel", kind="kernel_counters", verdict="info", detail=row, ts=ts)
        )
    events = [
        e for e in events if e.kind == "kernel_counters" or window.since <= e.ts < window.until
    ]
    applied = _read_json(directory / "applied.json")
    in_force = None
    policy_file = directory / "policy.yaml"
    if policy_file.is_file() and not (directory / "policy.REDACTED.txt").exists():
        in_force = _parse_quiet(policy_file.read_text(), str(policy_file))
    obs = Observations(window, events, f"bundle {directory}", applied, in_force)
    _count_allowed(obs, {})
    return obs


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path}: not readable JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                raise BadInput(f"{path}:{n}: not a JSON line") from None
    return out


def _parse_quiet(text: str, source: str) -> Policy | None:
    try:
        return parse_policy(text, source)
    except BadInput:
        return None


def _in_force(applied: dict[str, Any]) -> Policy | None:
    source = applied.get("policy")
    if not source:
        return None
    try:
        policy = _parse_quiet(Path(source).read_text(), source)
    except OSError:
        return None
    return policy if policy and policy.sha256 == applied.get("policy_sha256") else None


def _count_allowed(obs: Observations, kernel: dict[str, Any]) -> None:
    """Packets let through per allowlist set entry in the window (reset-aware)."""
    snapshots = [e for e in obs.events if e.kind == "kernel_counters"]
    if not snapshots and not kernel:
        return
    counted = window_counters(snapshots, obs.window, kernel, obs.applied or None)
    obs.allowed_packets = {e: pb[0] for e, pb in counted["sets"].items() if pb[0]}
    obs.counters_known = True
