"""The signals that say enforcement broke reach a real receiver from a running `sentinel run`:
an escaped canary (P1), a tamper that cannot be repaired (P1, retried, then repaired), pins
expired / fail closed (P2 digest), a failing canary round (counted, the service goes on).

Each drives the real failure in the namespace topology: rules changed in the kernel, a set of
the wrong type, the DNS upstream stopped, canary.json made unwritable. The receiver runs in the
`outside` namespace on 198.18.5.5:8088; alerts leave the app namespace through the mark.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.conftest import BASE, RECORDS, Lines, RunningSentinel, query, scrape, wait_for

pytestmark = pytest.mark.netns

POLICY = """\
version: 1
mode: enforce
allow:
  - {{name: postgres, host: postgres, ports: [5432], protocol: tcp}}
dns: {{min_ttl: 1s, max_ttl: 1h, stale_grace: {grace}, listen_port: 5300}}
monitor: {{tamper_interval: {tamper}, metrics_port: 9464}}
alerts:
  webhook: {{url_env: SENTINEL_WEBHOOK_URL}}
  digest_window: {{P2: 2s, P3: 2s}}
{extra}"""


@pytest.fixture(autouse=True)
def webhook_env(monkeypatch):
    monkeypatch.setenv("SENTINEL_WEBHOOK_URL", f"{BASE}/hook")  # the daemon inherits it


def start(topo, tmp_path: Path, tamper: str = "1s", grace: str = "3s", extra: str = ""):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(tamper=tamper, grace=grace, extra=extra))
    return RunningSentinel(topo, path)


def alerts(lines: Lines, **match) -> list[dict]:
    out = []
    for item in list(lines.items):
        body = json.loads(item["body"])
        if all(body.get(k) == v for k, v in match.items()):
            out.append(body)
    return out


def wait_alert(lines: Lines, timeout: float = 20.0, **match) -> dict:
    found = wait_for(lambda: alerts(lines, **match), timeout, 0.1)
    got = [
        (json.loads(i["body"]).get("kind"), json.loads(i["body"]).get("title")) for i in lines.items
    ]
    assert found, f"no alert {match} within {timeout}s; received: {got}"
    return found[0]


def no_unregistered_kinds(s: RunningSentinel) -> None:
    assert not s.find("unregistered_event_kind"), s.find("unregistered_event_kind")


def test_escaped_canary_pages_p1_and_a_failing_round_is_counted(topo, receiver, tmp_path):
    state = Path(os.environ["SENTINEL_STATE_DIR"])
    s = start(
        topo,
        tmp_path,
        tamper="1h",  # nothing repairs the hole below: only the canary can notice it
        extra="canary: {target: 198.18.5.5, port: 443, interval: 1s}\n",
    )
    assert wait_for(lambda: (state / "canary.json").exists(), 10), s.log()
    assert not alerts(receiver, kind="canary_escaped")
    # a failing round: canary.json cannot be written (a directory in its place)
    (state / "canary.json").unlink()
    (state / "canary.json").mkdir()
    s.wait_event("canary_failed", timeout=10)
    digest = wait_alert(receiver, kind="digest", severity="P2")
    assert digest["details"]["counts"].get("canary_failed") == 1
    (state / "canary.json").rmdir()
    stats = wait_for(
        lambda: (
            (state / "canary.json").is_file()
            and json.loads((state / "canary.json").read_text())["stats"]
        ),
        10,
    )
    assert stats and stats["errors"] >= 1 and stats["failing"] == 0, stats  # it went on
    # the hole: an ACCEPT in front of our rules; the next canary round gets out
    topo.run("app", "iptables-nft", "-I", "SENTINEL-OUT", "1", "-j", "ACCEPT")
    page = wait_alert(receiver, kind="canary_escaped")
    assert page["severity"] == "P1" and page["layer"] == "canary"
    assert "198.18.5.5" in page["destination"]
    no_unregistered_kinds(s)
    assert s.stop() == 0


def test_unrepairable_tamper_pages_p1_is_retried_and_repair_is_rechecked(topo, receiver, tmp_path):
    topo.start_dns_server(RECORDS, tmp_path, ttl=30)  # postgres is pinned, and stays so
    s = start(topo, tmp_path, tamper="1s")
    assert wait_for(lambda: scrape(topo).get("sentinel_rules_in_sync") == 1.0, 10)
    # the attacker empties our chain and puts a set of the wrong type under our set's name:
    # the swap of a correct set into it fails, so re-applying cannot work
    topo.run("app", "iptables-nft", "-F", "SENTINEL-OUT")
    topo.run("app", "ip6tables-nft", "-F", "SENTINEL-OUT")
    topo.run("app", "ipset", "destroy", "sentinel-allow4")
    topo.run("app", "ipset", "create", "sentinel-allow4", "hash:ip")
    page = wait_alert(receiver, kind="tamper_unrepaired")
    assert page["severity"] == "P1" and page["details"]["detail"]["repaired"] is False
    assert "cannot be swapped" in page["details"]["detail"]["error"]  # the kernel's own words
    assert scrape(topo)["sentinel_rules_in_sync"] == 0.0
    assert wait_for(lambda: len(s.find("tamper_repair_failed")) >= 2, 10), s.log()  # retried
    assert len(s.events("tamper_unrepaired")) == 1  # paged once per streak, retries counted
    assert topo.probe("tcp", "198.18.5.5", 443)["ok"]  # the hole is real while it lasts
    # the wrong set goes (the operator, or the attacker leaving): the next retry repairs
    topo.run("app", "ipset", "destroy", "sentinel-allow4")
    repaired = s.wait_event("tamper", timeout=10)
    assert repaired["detail"]["repaired"] is True and repaired["detail"]["failed_attempts"] >= 2
    page = wait_alert(receiver, kind="tamper")
    assert page["severity"] == "P1"
    assert wait_for(lambda: scrape(topo).get("sentinel_rules_in_sync") == 1.0, 10)
    assert not topo.probe("tcp", "198.18.5.5", 443)["ok"]
    assert topo.probe("tcp", "198.18.0.2", 5432)["ok"]
    errors = scrape(topo).get('sentinel_error_count_total{component="apply"}', 0)
    assert errors >= 2
    no_unregistered_kinds(s)
    assert s.stop() == 0


def test_pins_expired_fail_closed_goes_out_as_p2(topo, receiver, tmp_path):
    topo.start_dns_server(RECORDS, tmp_path, ttl=1)
    s = start(topo, tmp_path, grace="4s")
    assert query(topo, "postgres", port=53)["addresses"] == ["198.18.0.2"]
    topo.stop_dns_server()
    s.wait_event("pins_expired", dst_name="postgres", timeout=20)
    assert query(topo, "postgres")["rcode"] == "SERVFAIL"  # fail closed
    deadline = time.monotonic() + 20
    counts: dict = {}
    while time.monotonic() < deadline and "pins_expired" not in counts:
        counts = {}
        for digest in alerts(receiver, kind="digest", severity="P2"):
            for kind, n in digest["details"]["counts"].items():
                counts[kind] = counts.get(kind, 0) + n
        time.sleep(0.2)
    assert counts.get("pins_expired") == 1, counts
    assert counts.get("stale_pins") == 1 and counts.get("dns_upstream_failing") == 1, counts
    no_unregistered_kinds(s)
    assert s.stop() == 0
