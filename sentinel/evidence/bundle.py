"""The evidence bundle: everything an auditor needs to check the report, in one directory.

report.json, the kernel's own iptables-save output for IPv4 and IPv6 (with counters), ipset
save, flows (every attempt event of the window plus per-upstream netflow), the policy and the
ruleset that was applied, the monitor's kernel counter readings, redacted logs, and
MANIFEST.sha256 (`sha256sum -c MANIFEST.sha256`
verifies it). Logs and events are redacted; report.json is not, because redaction would also
mask the hashes that are the point of it (its attempt list is redacted when the report is built).
The two event files are streamed: the window is read in slices of about SLICE_ROWS events
through the store's query and written line by line, so a day of millions of events needs the
memory of one slice (the same bytes as one query of the whole window gave).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sentinel.errors import BadInput
from sentinel.redact import redact_obj, redact_text
from sentinel.store import events as ev

MANIFEST = "MANIFEST.sha256"
_ENV_REF = re.compile(r"\b\w+_env\s*:\s*[A-Z_][A-Z0-9_]*")


def write_bundle(
    directory: Path, report: dict[str, Any], state: Path, store: Path | None = None
) -> Path:
    """Write the bundle into `directory` (created; existing files of ours overwritten)."""
    from sentinel.enforce.netfilter import DEFAULT_BACKEND, evidence_text

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"--bundle {directory}: {exc.strerror or exc}") from None
    files: dict[str, str] = {"report.json": json.dumps(report, indent=2, default=str) + "\n"}
    files.update(evidence_text(report.get("backend") or DEFAULT_BACKEND))
    files["netflow.json"] = json.dumps(report.get("netflow", []), indent=2) + "\n"
    files.update(_policy_files(state))
    files.update(_logs(state))
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    streamed = _write_flows(directory, report["window"], store or ev.db_path(state))
    names = sorted({*files, *streamed})
    manifest = "".join(f"{_sha256(directory / n)}  {n}\n" for n in names)
    (directory / MANIFEST).write_text(manifest)
    return directory / MANIFEST


def _sha256(path: Path) -> str:
    with path.open("rb") as f:  # in blocks: flows.jsonl of a busy day is hundreds of MB
        return hashlib.file_digest(f, "sha256").hexdigest()


FLOWS, COUNTERS = "flows.jsonl", "kernel-counters.jsonl"
SLICE_ROWS = 5000  # the events one slice of the window should hold (memory stays bounded)


def _write_flows(directory: Path, window: dict[str, Any], store: Path) -> tuple[str, str]:
    """flows.jsonl (every attempt/alarm event of the window, redacted) and
    kernel-counters.jsonl (the monitor's kernel counter readings, which hold only counters and
    hashes), one JSON line an event, written as the window is read: slice by slice in time
    order, so memory holds one slice, never the window (a day can hold millions of events)."""
    with (directory / FLOWS).open("w") as flows, (directory / COUNTERS).open("w") as counters:
        if not store.exists():  # nothing recorded; nothing is created either
            return FLOWS, COUNTERS
        conn = ev.connect(store, readonly=True)
        try:
            memo: dict[str, str] = {}
            for rows in _slices(conn, window["since"], window["until"]):
                flows.writelines(_flow_line(e, memo) for e in rows if e.verdict != "info")
                counters.writelines(_counter_line(e) for e in rows if e.kind == "kernel_counters")
                if len(memo) > 4096:  # the same texts again are the common case, not a rule
                    memo.clear()
        finally:
            conn.close()
    return FLOWS, COUNTERS


def _slices(conn: Any, since: float, until: float) -> Iterator[list[ev.Event]]:
    """The window's events in time order (ties in store order, as one query returns them), in
    consecutive [lo, hi) slices read with the store's query: a slice that held many more events
    than SLICE_ROWS halves the next one's span, one that held far fewer doubles it."""
    lo, span = since, 60.0
    while lo < until:
        hi = min(until, lo + span)
        rows = ev.query(conn, lo, hi)
        yield rows
        if len(rows) > 2 * SLICE_ROWS:
            span = max(span / 2, 0.001)  # a burst in one millisecond is read whole
        elif len(rows) < SLICE_ROWS // 2:
            span = min(span * 2, 7 * 86_400.0)
        lo = hi


def _flow_line(event: ev.Event, memo: dict[str, str]) -> str:
    plain = {name: getattr(event, name) for name in ev.COLUMNS}  # = to_dict(): nothing nested
    return json.dumps(redact_obj(plain, memo=memo), sort_keys=True, default=str) + "\n"


def _counter_line(event: ev.Event) -> str:
    return json.dumps({"ts": event.ts, **event.detail}, sort_keys=True) + "\n"


def _policy_files(state: Path) -> dict[str, str]:
    from sentinel.store.state import APPLIED, read_json

    applied = read_json(APPLIED) or {}
    summary = {k: v for k, v in applied.items() if k != "ruleset_text"}
    out = {"applied.json": json.dumps(summary, indent=2, sort_keys=True) + "\n"}
    out["ruleset.txt"] = applied.get("ruleset_text", "# nothing applied\n")
    source = applied.get("policy")
    if source:
        try:
            text = Path(source).read_text()
        except OSError as exc:
            text = f"# policy {source} not readable: {exc}\n"
        # The policy holds no secrets by design (the loader refuses them; `*_env` keys only name
        # variables), and shipped verbatim its sha256 checks against policy_sha256. If anything
        # else in it looks secret (a comment, say), ship the redacted copy and say so.
        names_only = _ENV_REF.sub("", text)
        if redact_text(names_only) == names_only:
            out["policy.yaml"] = text
        else:
            out["policy.yaml"] = redact_text(text)
            out["policy.REDACTED.txt"] = "policy.yaml was redacted; its hash will not match\n"
    return out


def _logs(state: Path) -> dict[str, str]:
    """Redacted copies of the sentinel's log files (state dir: *.log and logs/*)."""
    found = sorted({*state.glob("*.log"), *state.glob("logs/*")})
    out = {}
    for path in found:
        if path.is_file():
            text = path.read_text(errors="replace")
            out[f"logs/{path.name}"] = redact_text(text)
    return out


def verify(directory: Path) -> list[str]:
    """Names whose hash does not match the manifest (empty = the bundle verifies); used by
    `policy suggest --from-bundle`, which refuses a bundle that was changed."""
    bad = []
    for line in (directory / MANIFEST).read_text().splitlines():
        digest, _, name = line.partition("  ")
        path = directory / name
        if not path.is_file() or _sha256(path) != digest:
            bad.append(name)
    return bad
