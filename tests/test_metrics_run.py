"""`/metrics` of a running `sentinel run`, scraped over HTTP after real traffic: allowed and
refused lookups, a blocked connect. Every number comes from its producer (resolver, store,
dispatcher, apply, tamper and coverage checks), and `sentinel_blocked_attempts_total` counts
per layer exactly what the report counts (`attempts_by_layer`)."""

from __future__ import annotations

import json
import os

import pytest

from sentinel.lab.netns import PYTHON
from tests.conftest import RECORDS, RunningSentinel, by_layer, query, scrape, wait_for

pytestmark = pytest.mark.netns

POLICY = """\
version: 1
mode: enforce
allow:
  - {name: postgres, host: postgres, ports: [5432], protocol: tcp}
dns: {min_ttl: 30s, listen_port: 5300}
monitor: {tamper_interval: 1s, metrics_port: 9464}
"""


BURST = """
import dns.message, dns.query
for _ in range(5):
    r = dns.query.udp(dns.message.make_query("postgres", "A"), "198.18.0.53", timeout=3)
    print(*[x.address for rr in r.answer for x in rr])
"""


def test_metrics_of_a_running_sentinel_move_with_real_traffic(topo, tmp_path):
    topo.start_dns_server(RECORDS, tmp_path, ttl=30)
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    s = RunningSentinel(topo, path)
    first = wait_for(lambda: scrape(topo).get("sentinel_rules_in_sync") == 1.0 and scrape(topo))
    assert first, s.log()
    # one process, five queries back to back: a miss, then answers from the resolver's cache
    # (a cached answer lives at most 1 s, so separate processes on a busy machine may all miss)
    out = topo.run("app", PYTHON, "-c", BURST, timeout=30).stdout.split()
    assert out == ["198.18.0.2"] * 5, out
    for name in ("api.openai.com", "telemetry.example.com"):
        assert query(topo, name)["rcode"] == "REFUSED"
    assert not topo.probe("tcp", "198.18.5.5", 443)["ok"]
    assert topo.probe("tcp", "198.18.0.2", 5432)["ok"]
    s.wait_event("egress_attempt", layer="netfilter")

    def settled():
        values = scrape(topo)
        return values if by_layer(values) == {"dns": 2, "netfilter": 1} else None

    values = wait_for(settled, 10)
    assert values, by_layer(scrape(topo))
    resolver = 'component="resolver"'
    requests = values[f"sentinel_request_count_total{{{resolver}}}"]
    assert requests >= 7  # 5 answered for postgres, 2 refused
    timed = values[f"sentinel_latency_seconds_count{{{resolver}}}"]
    assert 3 <= timed < requests  # the full-path queries are timed; cache hits only counted
    assert 0.0 < values[f"sentinel_cache_hit_rate{{{resolver}}}"] < 1.0
    assert values['sentinel_request_count_total{component="apply"}'] >= 1  # the start-up apply
    assert values['sentinel_latency_seconds_count{component="apply"}'] >= 1
    assert 'sentinel_queue_depth{component="store"}' in values
    assert 'sentinel_queue_depth{component="alerts"}' in values
    assert values["sentinel_rules_in_sync"] == 1.0
    assert values["sentinel_external_calls_total"] == 0.0
    assert values["sentinel_external_calls_last_10m"] == 0.0
    assert values["sentinel_events_shed_total"] == 0.0

    env = {"SENTINEL_STATE_DIR": os.environ["SENTINEL_STATE_DIR"]}
    out = topo.sentinel("report", "--last", "10m", "--format", "json", env=env)
    report = json.loads(out.stdout)
    assert report["attempts_by_layer"] == by_layer(values)  # the same definition, one count
    assert wait_for(lambda: scrape(topo)["sentinel_unaccounted_packets"] == 0.0, 10)
    assert report["unaccounted_packets"] == 0

    # tamper: the tamper check sets rules_in_sync from the kernel, then repairs it
    topo.run("app", "iptables-nft", "-F", "SENTINEL-OUT")
    s.wait_event("tamper", timeout=10)
    assert wait_for(lambda: scrape(topo)["sentinel_rules_in_sync"] == 1.0, 10)
    assert not s.find("unregistered_event_kind")  # every kind emitted is registered
    assert s.stop() == 0
