"""Policy loading and validation: pure, no root."""

from __future__ import annotations

import ipaddress
import textwrap

import pytest

from sentinel.durations import parse_duration
from sentinel.errors import EXIT_BAD_INPUT
from sentinel.policy.load import PolicyError, load_policy, parse_policy

GOOD = """\
version: 1
mode: enforce
allow:
  - {name: postgres, host: postgres, ports: [5432]}
  - {name: lan, cidr: 10.20.0.0/16, ports: [443], protocol: udp}
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(textwrap.dedent(text), "p.yaml")
    assert info.value.code == EXIT_BAD_INPUT
    return info.value.message.splitlines()


def test_shipped_policies_load():
    mem0 = load_policy("policies/mem0.yaml")
    assert mem0.mode == "enforce"
    assert [(a.name, a.host, a.ports) for a in mem0.allow] == [
        ("postgres", "postgres", (5432,)),
        ("neo4j", "neo4j", (7474, 7687)),
        ("ollama", "ollama", (11434,)),
    ]
    assert mem0.hostnames == ("postgres", "neo4j", "ollama")
    assert load_policy("policies/mem0-audit.yaml").mode == "audit"


def test_good_policy_is_frozen_and_typed():
    policy = parse_policy(GOOD)
    assert policy.allow[1].cidr == ipaddress.ip_network("10.20.0.0/16")
    assert policy.allow[1].protocol == "udp"
    assert len(policy.sha256) == 64
    with pytest.raises(AttributeError):
        policy.mode = "audit"  # type: ignore[misc]


def test_error_names_file_line_and_field():
    text = GOOD.replace("ports: [443]", "ports: [70000]")
    assert errors_of(text) == ["p.yaml:5: allow[1].ports[0]: 70000 is not a port"]


def test_all_errors_reported_in_line_order():
    lines = errors_of("""\
        version: 2
        mode: block
        allow:
          - {name: Bad Name, host: "-x-", ports: []}
          - {name: b, cidr: 10.0.0.1/8, host: y, ports: [1]}
        """)
    assert lines[0] == "p.yaml:1: version: 2 is not a supported version (expected 1)"
    assert lines[1] == "p.yaml:2: mode: 'block' is not one of: enforce, audit"
    assert any("allow[0].name: 'Bad Name' is not a valid name" in x for x in lines)
    assert any("allow[0].host: '-x-' is not a DNS name or IP address" in x for x in lines)
    assert any("allow[0].ports: must be a non-empty list" in x for x in lines)
    assert any("p.yaml:5: allow[1]: needs exactly one of host or cidr" in x for x in lines)
    assert any("host bits set" in x for x in lines)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("version: 1\nallow: [\n", "p.yaml:3: invalid YAML"),
        ("version: 1\nversion: 1\n", "p.yaml:2: version: duplicate key"),
        ("", "p.yaml:1: policy: empty policy file"),
        ("- 1\n- 2\n", "p.yaml:1: policy: must be a mapping, not a list"),
        (
            "version: 1\nallow: {a: 1}\n",
            "p.yaml:2: allow: must be a list of entries, not a mapping",
        ),
        ("version: 1\nallwo: []\n", "p.yaml:2: allwo: unknown key"),
        ("version: 1\nmark: 0\n", "p.yaml:2: mark: 0 is not an integer in 1..4294967295"),
        ("version: 1\ndns: {min_ttl: 1h, max_ttl: 1m}\n", "p.yaml:2: dns.min_ttl: must not exceed"),
        (
            "version: 1\ndns: {upstream: resolver.example}\n",
            "p.yaml:2: dns.upstream: 'resolver.example'",
        ),
        (
            "version: 1\nmonitor: {retention: soon}\n",
            "p.yaml:2: monitor.retention: 'soon' is not a duration",
        ),
    ],
)
def test_malformed_policies(text, expected):
    lines = errors_of(text)
    assert any(line.startswith(expected) for line in lines), lines


def test_secrets_must_come_from_environment():
    lines = errors_of("""\
        version: 1
        alerts:
          slack: {webhook_url: "https://hooks.slack.invalid/T000/B000/XXXX"}
          pagerduty: {routing_key_env: "lower-case"}
        """)
    assert (
        "p.yaml:3: alerts.slack.webhook_url: secrets are read from the environment: use webhook_url_env"
        in lines
    )
    assert any(
        "alerts.pagerduty.routing_key_env: 'lower-case' is not an environment variable" in x
        for x in lines
    )
    assert not any("hooks.slack.invalid" in x for x in lines), "a secret must never be echoed"


def test_routing_must_name_configured_sinks():
    lines = errors_of("""\
        version: 1
        alerts:
          slack: {webhook_url_env: SLACK_URL}
          routing: {P1: [pagerduty]}
        """)
    assert any("alerts.routing.P1[0]: 'pagerduty' is not a configured sink" in x for x in lines)


def test_policy_tests_parse_and_cross_check():
    policy = parse_policy(
        GOOD + 'tests:\n  - {to: "postgres:5432", expect: allow}\n'
        '  - {to: "[2001:db8::5]:443", expect: deny}\n'
    )
    assert [(t.host, t.port, t.expect) for t in policy.tests] == [
        ("postgres", 5432, "allow"),
        ("2001:db8::5", 443, "deny"),
    ]
    lines = errors_of(
        GOOD + "tests:\n  - {to: mystery:80, expect: allow}\n  - {to: x, expect: maybe}\n"
    )
    assert any("tests[0].to: 'mystery' is neither an IP" in x for x in lines)
    assert any("tests[1].to: 'x' is not HOST:PORT" in x for x in lines)
    assert any("tests[1].expect: 'maybe' is not one of" in x for x in lines)


@pytest.mark.parametrize(
    "value, seconds",
    [
        ("30s", 30),
        ("10m", 600),
        ("1h", 3600),
        ("7d", 604800),
        ("250ms", 0.25),
        (5, 5.0),
        ("soon", None),
        (-1, None),
        (True, None),
    ],
)
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


def test_unreadable_file_is_bad_input(tmp_path):
    with pytest.raises(Exception) as info:
        load_policy(tmp_path / "missing.yaml")
    assert "cannot read policy" in str(info.value)
    assert info.value.code == EXIT_BAD_INPUT


def test_large_policy_loads_fast_enough():
    entries = "".join(
        f"  - {{name: e{i}, host: 198.18.{i // 250}.{i % 250 + 1}, ports: [443]}}\n"
        for i in range(10_000)
    )
    policy = parse_policy("version: 1\nallow:\n" + entries)
    assert len(policy.allow) == 10_000
