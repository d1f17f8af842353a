"""Open incidents (PagerDuty dedup keys with their last-seen time) and open digests persist in
the outbox database: after a restart, an alert-settings reload or a SIGKILL of a running
`sentinel run`, the resolve still goes out after the quiet time and the digest still goes out.
The PagerDuty and webhook endpoints are the recording receiver in the `outside` namespace."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import BASE, RECORDS, RunningSentinel, query, wait_for

pytestmark = pytest.mark.netns

POLICY = """\
version: 1
mode: enforce
allow:
  - {{name: postgres, host: postgres, ports: [5432], protocol: tcp}}
dns: {{min_ttl: 30s, listen_port: 5300}}
monitor: {{tamper_interval: 5s}}
alerts:
  pagerduty: {{routing_key_env: PAGERDUTY_ROUTING_KEY, url_env: PAGERDUTY_URL, resolve_after: 6s}}
  webhook: {{url_env: SENTINEL_WEBHOOK_URL}}
  dedup_window: {dedup}
  digest_window: {{P2: 12s}}
"""


@pytest.fixture(autouse=True)
def sink_env(monkeypatch):
    monkeypatch.setenv("SENTINEL_WEBHOOK_URL", f"{BASE}/hook")
    monkeypatch.setenv("PAGERDUTY_URL", f"{BASE}/pagerduty/v2/enqueue")
    monkeypatch.setenv("PAGERDUTY_ROUTING_KEY", "R0123456789abcdef0123456789abcde")


def pagerduty(lines) -> list[dict]:
    return [json.loads(i["body"]) for i in list(lines.items) if i["path"].startswith("/pager")]


def hooks(lines, **match) -> list[dict]:
    bodies = [json.loads(i["body"]) for i in list(lines.items) if i["path"] == "/hook"]
    return [b for b in bodies if all(b.get(k) == v for k, v in match.items())]


def saved_state() -> str:
    path = Path(os.environ["SENTINEL_STATE_DIR"]) / "alerts.db"
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM router_state WHERE name = 'router'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return ""
    return row[0] if row else ""


def write(path: Path, dedup: str = "5s") -> Path:
    path.write_text(POLICY.format(dedup=dedup))
    return path


def test_resolve_goes_out_after_a_restart_and_after_an_alert_reload(topo, receiver, tmp_path):
    topo.start_dns_server(RECORDS, tmp_path, ttl=30)
    policy = write(tmp_path / "policy.yaml")
    s = RunningSentinel(topo, policy)
    assert query(topo, "api.openai.com")["rcode"] == "REFUSED"
    trigger = wait_for(lambda: [b for b in pagerduty(receiver) if b["event_action"] == "trigger"])
    assert trigger, receiver.items
    key = trigger[0]["dedup_key"]
    assert s.stop() == 0  # the incident is open; nothing was resolved on the way out
    assert not [b for b in pagerduty(receiver) if b["event_action"] == "resolve"]

    s = RunningSentinel(topo, policy)
    assert s.find("alert_state_restored"), s.log()
    resolved = wait_for(
        lambda: [b for b in pagerduty(receiver) if b["event_action"] == "resolve"], 30, 0.2
    )
    assert resolved and resolved[0]["dedup_key"] == key, pagerduty(receiver)

    # a second incident, then an alert-settings reload swaps the dispatcher: still resolved
    assert query(topo, "telemetry.example.com")["rcode"] == "REFUSED"
    triggers = wait_for(
        lambda: [b for b in pagerduty(receiver) if b["event_action"] == "trigger"][1:], 15
    )
    assert triggers, pagerduty(receiver)
    second = triggers[0]["dedup_key"]
    write(policy, dedup="6s")  # changes the alert settings: the dispatcher is rebuilt
    assert wait_for(lambda: s.find("alerts_reloaded"), 15), s.log()
    resolved = wait_for(
        lambda: [
            b
            for b in pagerduty(receiver)
            if b["event_action"] == "resolve" and b["dedup_key"] == second
        ],
        30,
        0.2,
    )
    assert resolved, pagerduty(receiver)
    assert s.stop() == 0


def test_an_open_digest_survives_sigkill(topo, receiver, tmp_path):
    topo.start_dns_server(RECORDS, tmp_path, ttl=30)
    policy = write(tmp_path / "policy.yaml")
    s = RunningSentinel(topo, policy)
    policy.write_text(policy.read_text().replace("version: 1", "version: 1\nbogus: 1"))
    s.wait_event("reload_rejected", timeout=15)  # a P2: into the open digest
    # the open digest reaches the outbox database within a second; then the process dies hard
    assert wait_for(lambda: "reload_rejected" in saved_state(), 10), saved_state()
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait(timeout=10)
    assert not hooks(receiver, kind="digest")  # its window (12 s) has not ended
    write(policy)  # a valid policy again for the restart
    s = RunningSentinel(topo, policy)
    digest = wait_for(lambda: hooks(receiver, kind="digest", severity="P2"), 30, 0.2)
    assert digest, receiver.items
    assert digest[0]["details"]["counts"] == {"reload_rejected": 1}
    assert s.stop() == 0
