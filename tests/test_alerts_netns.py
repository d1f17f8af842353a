"""The sentinel's own alert traffic is exempt from deny-all by its socket mark; the app's
identical request is not.

The receiver runs in the `outside` namespace on 198.18.5.5; policies/mem0.yaml is applied in
the app namespace; `sentinel alert test` (marked sockets) from the app namespace reaches the
receiver through all three sinks, while the same webhook request replayed without the mark
from the same namespace is rejected and never arrives.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sentinel.lab.netns import PYTHON
from tests.conftest import BASE, Lines, spawn_alert_receiver

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[1]
MEM0 = ROOT / "policies" / "mem0.yaml"

# replays a request without any socket mark, exactly as the app would send it
REPLAY = r"""
import json, sys, httpx
req = json.loads(sys.argv[1])
try:
    r = httpx.post(req["url"], content=req["body"].encode(), headers=req["headers"],
                   timeout=3, trust_env=False)
    print(json.dumps({"ok": True, "status": r.status_code}))
except httpx.HTTPError as exc:
    print(json.dumps({"ok": False, "error": type(exc).__name__ + ": " + str(exc)}))
"""


def _replay(topo, request: dict) -> dict:
    out = topo.run("app", PYTHON, "-c", REPLAY, json.dumps(request), timeout=30)
    return json.loads(out.stdout)


def test_marked_alert_delivery_passes_deny_all_unmarked_is_blocked(topo, tmp_path):
    receiver = spawn_alert_receiver(topo, seconds=90)
    got = Lines(receiver.stdout)

    # control: before the policy is applied, an unmarked request from the app arrives
    probe = {"url": f"{BASE}/hook/control", "body": "{}", "headers": {}}
    assert _replay(topo, probe) == {"ok": True, "status": 200}
    assert got.wait(1)[0]["path"] == "/hook/control"

    applied = topo.sentinel("apply", "--policy", str(MEM0))
    assert applied.returncode == 0, applied.stderr

    # mem0.yaml's alert settings, with PagerDuty pointed at the test receiver too
    policy = tmp_path / "mem0-alerts.yaml"
    policy.write_text(
        MEM0.read_text().replace(
            "routing_key_env: PAGERDUTY_ROUTING_KEY,",
            "routing_key_env: PAGERDUTY_ROUTING_KEY, url_env: PAGERDUTY_URL,",
        )
    )
    env = {
        "SLACK_WEBHOOK_URL": f"{BASE}/slack/T0/B0/secretpath",
        "PAGERDUTY_ROUTING_KEY": "R0123456789abcdef0123456789abcde",
        "PAGERDUTY_URL": f"{BASE}/pagerduty/v2/enqueue",
        "SENTINEL_WEBHOOK_URL": f"{BASE}/hook/secretpath",
        "SENTINEL_WEBHOOK_SECRET": "netns-hmac-secret",
    }
    sent = topo.sentinel("alert", "test", "--policy", str(policy), env=env)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert sorted(line.split()[1] for line in sent.stdout.splitlines()) == [
        "pagerduty",
        "slack",
        "webhook",
    ]
    items = got.wait(4)
    paths = sorted(i["path"] for i in items[1:])
    assert paths == ["/hook/secretpath", "/pagerduty/v2/enqueue", "/slack/T0/B0/secretpath"]
    for secret in env.values():
        assert secret not in sent.stdout + sent.stderr

    # the app replays the sentinel's exact webhook request, unmarked: blocked, never arrives
    hook = next(i for i in items if i["path"] == "/hook/secretpath")
    headers = {k: v for k, v in hook["headers"].items() if k.startswith(("content-", "x-"))}
    packets_before = topo.outside_packets()
    result = _replay(
        topo, {"url": f"{BASE}/hook/secretpath", "body": hook["body"], "headers": headers}
    )
    assert result["ok"] is False, result
    assert "ConnectError" in result["error"]
    time.sleep(0.3)
    assert len(got.items) == 4  # nothing more arrived
    assert topo.outside_packets() == packets_before  # not a single packet left the app

    # and the sentinel's marked path still works after the app's attempt
    again = topo.sentinel("alert", "test", "--policy", str(policy), env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(got.wait(7)) == 7
