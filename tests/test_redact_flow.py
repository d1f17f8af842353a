"""Redaction where README says it happens, with planted values flowing through a running
`sentinel run`: refused DNS names, a guarded process whose stack names a user id and an
e-mail, and the daemon's own log. Secrets, e-mails and phones are masked; user ids become a
stable keyed pseudonym (the key in the state dir, never exported) in the event store, the
report's lists, the evidence bundle and the logs."""

from __future__ import annotations

import json
import os
import re
import sqlite3
from pathlib import Path

import pytest

from sentinel.lab.netns import PYTHON
from sentinel.store.events import readonly_uri
from tests.conftest import RECORDS, query, start

pytestmark = pytest.mark.netns

SECRET = "sk-proj-ABCDEFGHIJKLMNOPQRSTUV"
EMAIL_NAME = "alice.smith@example.com"
PHONE_NAME = "555-123-4567"
USER_ID = "998877"
GUARDED = """
import json, socket
def fetch():
    s = socket.socket()
    s.settimeout(2)
    s.connect(("198.18.5.5", 443))
try:
    fetch()
    print(json.dumps({"result": "connected"}))
except Exception as exc:
    print(json.dumps({"result": type(exc).__name__}))
"""


def test_planted_values_are_masked_or_pseudonymised_everywhere(topo, tmp_path):
    topo.start_dns_server(RECORDS, tmp_path, ttl=30)
    state = Path(os.environ["SENTINEL_STATE_DIR"])
    s = start(topo, tmp_path)
    names = [f"{SECRET}.example.org", EMAIL_NAME, PHONE_NAME, f"user_id={USER_ID}.example.org"]
    for name in names:
        assert query(topo, name)["rcode"] == "REFUSED", name
    # a guarded app whose script lives under a path naming a user id and an e-mail
    script = tmp_path / f"userId={USER_ID}" / "bob.jones@example.net" / "app.py"
    script.parent.mkdir(parents=True)
    script.write_text(GUARDED)
    guard_path = topo.sentinel("guard", "path", check=True).stdout.strip()
    out = topo.run(
        "app",
        PYTHON,
        str(script),
        env={
            "PYTHONPATH": guard_path,
            "SENTINEL_POLICY": str(tmp_path / "policy.yaml"),
            "SENTINEL_STATE_DIR": str(state),
            "SENTINEL_GUARD": "enforce",
        },
    )
    assert json.loads(out.stdout.strip().splitlines()[-1])["result"] == "SecurityError"
    s.wait_event("egress_attempt", layer="guard", dst_port=443)
    assert len(s.events("egress_attempt", layer="dns")) == 4
    assert not s.find("unregistered_event_kind")  # every kind emitted is registered
    assert s.stop() == 0

    planted = (SECRET, EMAIL_NAME, "bob.jones@example.net", PHONE_NAME, USER_ID)
    key = (state / "redact.key").read_text().strip()
    assert len(key) == 64 and oct((state / "redact.key").stat().st_mode & 0o777) == "0o600"

    # 1. the event store holds the redacted events
    conn = sqlite3.connect(readonly_uri(state / "events.db"), uri=True)
    rows = conn.execute("SELECT dst_name, stack, detail FROM events").fetchall()
    conn.close()
    stored = json.dumps(rows)
    for value in planted:
        assert value not in stored, value
    pseudonyms = set(re.findall(r"u_[0-9a-f]{24}", stored))
    # the same id in the DNS name and in the guard's stack: one stable pseudonym
    assert len(pseudonyms) == 1, pseudonyms

    # 2. the report: every list redacted the same way, the same pseudonyms
    env = {"SENTINEL_STATE_DIR": str(state)}
    bundle = tmp_path / "bundle"
    rep = topo.sentinel(
        "report", "--last", "10m", "--format", "json", "--bundle", str(bundle), env=env
    )
    assert rep.returncode == 0, rep.stderr
    report = json.loads(rep.stdout)
    for section in ("attempts", "attempts_by_destination"):
        text = json.dumps(report[section])
        for value in planted:
            assert value not in text, (section, value)
    destinations = [g["destination"] for g in report["attempts_by_destination"]]
    assert "[EMAIL]:53/dns" in destinations and "[PHONE]:53/dns" in destinations, destinations
    assert set(re.findall(r"u_[0-9a-f]{24}", json.dumps(report))) <= pseudonyms

    # 3. the bundle (flows, logs) and the daemon's log: masked, and the key never exported
    files = {p.name: p.read_text() for p in bundle.rglob("*") if p.is_file()}
    assert "flows.jsonl" in files, sorted(files)
    assert "sentinel.log" in files  # the daemon's own log file, redacted copy
    log_text = (state / "sentinel.log").read_text()
    for text in (*files.values(), log_text):
        assert key not in text
        for value in planted:
            assert value not in text, value
    assert set(re.findall(r"u_[0-9a-f]{24}", files["flows.jsonl"])) == pseudonyms
