"""deploy/observability/ checked by the real tools: promtool checks the rules and runs their
unit tests; a real Prometheus server, run inside the test's app namespace with its own config
and data directory, scrapes a running `sentinel run` until the egress-attempt alert fires, and
evaluates every expression of the Grafana dashboard without an error."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from sentinel.lab.netns import PYTHON
from tests.conftest import RECORDS, RunningSentinel, needs_tools, query, wait_for

ROOT = Path(__file__).resolve().parents[1]
OBS = ROOT / "deploy" / "observability"
RULES = OBS / "prometheus-rules.yaml"
DASHBOARD = OBS / "grafana-dashboard.json"

POLICY = """\
version: 1
mode: enforce
allow:
  - {name: postgres, host: postgres, ports: [5432], protocol: tcp}
dns: {min_ttl: 30s, listen_port: 5300}
monitor: {tamper_interval: 2s, metrics_port: 9464}
"""

GET = """
import json, sys, urllib.parse, urllib.request
path, params = sys.argv[1], json.loads(sys.argv[2])
url = "http://127.0.0.1:9090" + path + ("?" + urllib.parse.urlencode(params) if params else "")
try:
    print(urllib.request.urlopen(url, timeout=5).read().decode())
except Exception as exc:
    print(json.dumps({"status": "unreachable", "error": str(exc)}))
"""


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, cwd=OBS)


def test_promtool_checks_the_rules_and_runs_their_unit_tests():
    needs_tools("promtool")
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "prometheus-rules.test.yaml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    names = {v["name"] for v in board["templating"]["list"]}
    assert {"namespace", "pod"} <= names  # a fleet view: filter by namespace and pod
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    assert len(exprs) >= 12
    return exprs


def test_dashboard_serves_a_fleet():
    exprs = dashboard_exprs()
    filtered = [e for e in exprs if "sentinel_" in e and "$pod" in e]
    assert len(filtered) >= len(exprs) - 2  # all but the fleet-wide numbers filter by pod
    fleet = exprs[0]
    assert "sentinel_external_calls_total[10m]" in fleet and "$pod" not in fleet


@pytest.mark.netns
def test_real_prometheus_scrapes_a_running_sentinel_until_the_egress_alert_fires(topo, tmp_path):
    needs_tools("prometheus")
    topo.start_dns_server(RECORDS, tmp_path, ttl=30)
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    s = RunningSentinel(topo, path)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{json.dumps(str(RULES))}]\n"
        "scrape_configs:\n"
        "  - job_name: sentinel\n"
        "    static_configs: [{targets: ['127.0.0.1:9464']}]\n"
    )
    checked = subprocess.run(
        ["promtool", "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    data = tmp_path / "prometheus-data"
    prom = topo.spawn(
        "app",
        "prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        "--storage.tsdb.retention.time=1h",
        "--web.listen-address=127.0.0.1:9090",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def get(api: str, **params: str) -> dict:
        out = topo.run("app", PYTHON, "-c", GET, api, json.dumps(params), timeout=20)
        return json.loads(out.stdout)

    try:
        up = wait_for(
            lambda: (
                get("/api/v1/query", query='up{job="sentinel"} == 1').get("data", {}).get("result")
            ),
            60,
            0.5,
        )
        assert up, "prometheus never scraped the sentinel"
        assert not [a for a in get("/api/v1/alerts")["data"]["alerts"] if a["state"] == "firing"]
        # two scrapes of the zero-initialised attempt series, so increase() sees the attempt
        zeros = "min(count_over_time(sentinel_blocked_attempts_total[5m])) >= 2"
        scraped = wait_for(lambda: get("/api/v1/query", query=zeros).get("data", {}).get("result"),
                           60, 0.5)  # fmt: skip
        assert scraped, "prometheus never scraped the attempt series twice"
        assert query(topo, "api.openai.com")["rcode"] == "REFUSED"  # one egress attempt
        s.wait_event("egress_attempt", dst_name="api.openai.com")

        def firing() -> list[dict]:
            alerts = get("/api/v1/alerts").get("data", {}).get("alerts", [])
            return [
                a
                for a in alerts
                if a["labels"]["alertname"] == "SentinelEgressAttempt" and a["state"] == "firing"
            ]

        fired = wait_for(firing, 60, 0.5)
        assert fired, get("/api/v1/alerts")
        assert fired[0]["labels"]["severity"] == "critical"
        assert get("/api/v1/query", query="sentinel:external_calls:increase10m")["status"] == (
            "success"
        )
        for expr in dashboard_exprs():
            concrete = expr.replace("$namespace", ".*").replace("$pod", ".*")
            got = get("/api/v1/query", query=concrete)
            assert got["status"] == "success", (expr, got)
    finally:
        prom.terminate()
        try:
            prom.wait(timeout=15)
        except subprocess.TimeoutExpired:
            prom.kill()
    assert s.stop() == 0
