"""Bypass canaries probe from inside the app namespace: blocked under the policy, escaped
without it (the outside host accepts TCP and echoes UDP, so an escape is unambiguous)."""

import json
import sys

import pytest

from sentinel.detect.canary import CanaryResult, result_events
from sentinel.policy.load import parse_policy

PROBE = """
import json
from dataclasses import asdict
from sentinel.detect.canary import run_canaries
from sentinel.policy.load import CanarySettings
results = run_canaries(CanarySettings(target="198.18.5.5", target6="2001:db8::5", port=443))
print(json.dumps([asdict(r) for r in results]))
"""


def outcomes(topo) -> dict[str, str]:
    out = topo.run("app", sys.executable, "-c", PROBE).stdout
    return {r["probe"]: r["outcome"] for r in json.loads(out)}


@pytest.mark.netns
def test_canaries_blocked_under_policy_and_escape_without(topo):
    assert topo.sentinel("apply", "--policy", "policies/mem0.yaml").returncode == 0
    assert outcomes(topo) == dict.fromkeys(["tcp4", "udp4", "dot4", "tcp6", "udp6"], "blocked")
    assert topo.outside_packets() == 0
    assert topo.sentinel("teardown").returncode == 0
    assert outcomes(topo) == dict.fromkeys(["tcp4", "udp4", "dot4", "tcp6", "udp6"], "escaped")


def test_canary_settings_validated():
    policy = parse_policy(
        "version: 1\ncanary: {target: 198.18.5.5, target6: 2001:db8::5, interval: 1m}\n"
    )
    assert policy.canary.target == "198.18.5.5" and policy.canary.interval == 60
    with pytest.raises(Exception) as info:
        parse_policy("version: 1\ncanary: {target: 2001:db8::5}\n", "p.yaml")
    assert "p.yaml:2: canary.target: '2001:db8::5' is not an IPv4 address" in str(info.value)


def test_escaped_probe_becomes_an_egress_event():
    events = result_events(
        [
            CanaryResult("tcp4", "198.18.5.5:443", "escaped", "handshake"),
            CanaryResult("udp4", "198.18.5.5:443", "blocked", "refused"),
        ]
    )
    assert [e.kind for e in events] == ["canary_escaped", "canary_result"]
    assert events[0].dst_port == 443 and events[0].layer == "canary"


def test_report_shows_last_canary_round_and_fails_on_an_escape(state_dir):
    from sentinel.evidence.report import _canary, violation
    from sentinel.store.state import write_json

    assert _canary() is None
    write_json(
        "canary.json",
        {
            "ts": 1.0,
            "results": [
                {"probe": "tcp4", "target": "198.18.5.5:443", "outcome": "escaped", "detail": "x"},
                {"probe": "udp4", "target": "198.18.5.5:443", "outcome": "blocked", "detail": "y"},
            ],
        },
    )
    canary = _canary()
    assert canary["outcomes"] == {"escaped": 1, "blocked": 1} and canary["escaped"] == 1
    assert (
        violation({"external_calls": 0, "drift": False, "canary": canary})
        == "1 bypass canary probe(s) got out"
    )
