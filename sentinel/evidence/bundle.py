"""The evidence bundle: everything an auditor needs to check the report, in one directory.

report.json, the kernel's own iptables-save output for IPv4 and IPv6 (with counters), ipset
save, flows (every attempt event of the window plus per-upstream netflow), the policy and the
ruleset that was applied, the monitor's kernel counter readings, redacted logs, and
MANIFEST.sha256 (`sha256sum -c MANIFEST.sha256`
verifies it). Logs and events are redacted; report.json is not, because redaction would also
mask the hashes that are the point of it (its attempt list is redacted when the report is built).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from sentinel.errors import SentinelError
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
        raise SentinelError(f"--bundle {directory}: {exc.strerror or exc}") from None
    files: dict[str, str] = {"report.json": json.dumps(report, indent=2, default=str) + "\n"}
    files.update(evidence_text(report.get("backend") or DEFAULT_BACKEND))
    files["flows.jsonl"], files["kernel-counters.jsonl"] = _flows(
        report, store or ev.db_path(state)
    )
    files["netflow.json"] = json.dumps(report.get("netflow", []), indent=2) + "\n"
    files.update(_policy_files(state))
    files.update(_logs(state))
    names = []
    for name, text in sorted(files.items()):
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        names.append(name)
    manifest = "".join(f"{_sha256(directory / n)}  {n}\n" for n in names)
    (directory / MANIFEST).write_text(manifest)
    return directory / MANIFEST


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _flows(report: dict[str, Any], store: Path) -> tuple[str, str]:
    """(every attempt/alarm event of the window, redacted; the monitor's kernel counter
    readings, which hold only counters and hashes) as JSON lines."""
    window = report["window"]
    if not store.exists():  # nothing recorded; nothing is created either
        return "", ""
    conn = ev.connect(store, readonly=True)
    try:
        rows = ev.query(conn, window["since"], window["until"])
    finally:
        conn.close()
    flows = [
        json.dumps(redact_obj(e.to_dict()), sort_keys=True, default=str)
        for e in rows
        if e.verdict != "info"
    ]
    counters = [
        json.dumps({"ts": e.ts, **e.detail}, sort_keys=True)
        for e in rows
        if e.kind == "kernel_counters"
    ]
    return "".join(f"{x}\n" for x in flows), "".join(f"{x}\n" for x in counters)


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
