"""`sentinel export`: the policy as NetworkPolicy / CiliumNetworkPolicy, validated against the
vendored published schemas (tests/schemas) and checked entry by entry against the policy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from sentinel.policy.export import ExportOptions, classify, to_cilium, to_network_policy, warnings
from sentinel.policy.load import Allow, load_policy, parse_policy

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "tests" / "schemas"
MEM0 = ROOT / "policies" / "mem0.yaml"

MIXED = """\
version: 1
mode: audit
allow:
  - {name: postgres, host: postgres, ports: [5432]}
  - {name: cache, host: redis.cache.svc.cluster.local, ports: [6379]}
  - {name: openai, host: api.example.com, ports: [443]}
  - {name: lan, cidr: 10.20.0.0/16, ports: [443, 8443]}
  - {name: syslog, host: 198.18.7.7, ports: [514], protocol: udp}
  - {name: v6, cidr: "2001:db8:1::/48", ports: [443]}
"""


def _validator(name: str) -> jsonschema.Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def validate(doc: dict, schema: str) -> None:
    errors = sorted(_validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


K8S = "k8s-v1.33.0-networkpolicy-networking-v1.json"
CILIUM = "cilium-v2-ciliumnetworkpolicy-subset.json"


def test_classify():
    def kind(**kw):
        t = classify(Allow(name="x", ports=(1,), **kw))
        return (t.kind, t.value, t.namespace)

    assert kind(host="postgres") == ("service", "postgres", None)
    assert kind(host="redis.cache.svc.cluster.local") == ("service", "redis", "cache")
    assert kind(host="redis.cache.svc") == ("service", "redis", "cache")
    assert kind(host="api.example.com") == ("fqdn", "api.example.com", None)
    assert kind(host="198.18.7.7") == ("cidr", "198.18.7.7/32", None)
    assert kind(host="2001:db8::7") == ("cidr", "2001:db8::7/128", None)


@pytest.mark.parametrize("source", ["mem0", "mixed"])
def test_outputs_validate_against_schemas(source):
    policy = load_policy(MEM0) if source == "mem0" else parse_policy(MIXED)
    validate(to_network_policy(policy), K8S)
    validate(to_cilium(policy), CILIUM)


def test_schemas_reject_broken_documents():
    """The validators are not vacuous: typos and wrong types fail."""
    doc = to_network_policy(load_policy(MEM0))
    doc["spec"]["egress"][1]["ports"][0]["protocl"] = "TCP"
    with pytest.raises(AssertionError, match="protocl"):
        validate(doc, K8S)
    doc = to_cilium(load_policy(MEM0))
    doc["spec"]["egress"][1]["toPorts"][0]["ports"][0]["port"] = 5432  # must be a string
    with pytest.raises(AssertionError):
        validate(doc, CILIUM)
    doc = to_cilium(load_policy(MEM0))
    doc["spec"]["egress"][0]["toFQDNs"] = [{"matchName": "a b"}]
    with pytest.raises(AssertionError):
        validate(doc, CILIUM)


def _k8s_allowed(doc: dict) -> set[tuple]:
    out = set()
    for rule in doc["spec"]["egress"]:
        for peer in rule["to"]:
            key = json.dumps(peer, sort_keys=True)
            out |= {(key, p["protocol"], p["port"]) for p in rule["ports"]}
    return out


def test_network_policy_matches_policy():
    doc = to_network_policy(parse_policy(MIXED), ExportOptions(namespace="prod"))
    spec = doc["spec"]
    assert doc["metadata"]["namespace"] == "prod"
    assert spec["podSelector"] == {"matchLabels": {"app": "mem0"}}
    assert spec["policyTypes"] == ["Egress"]  # egress only: default deny for everything else

    def peer(p):
        return json.dumps(p, sort_keys=True)

    dns = peer(
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    )
    assert _k8s_allowed(doc) == {
        (dns, "UDP", 53),
        (dns, "TCP", 53),
        (peer({"podSelector": {"matchLabels": {"app": "postgres"}}}), "TCP", 5432),
        (
            peer(
                {
                    "podSelector": {"matchLabels": {"app": "redis"}},
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "cache"}},
                }
            ),
            "TCP",
            6379,
        ),
        (peer({"ipBlock": {"cidr": "10.20.0.0/16"}}), "TCP", 443),
        (peer({"ipBlock": {"cidr": "10.20.0.0/16"}}), "TCP", 8443),
        (peer({"ipBlock": {"cidr": "198.18.7.7/32"}}), "UDP", 514),
        (peer({"ipBlock": {"cidr": "2001:db8:1::/48"}}), "TCP", 443),
    }
    # the DNS name cannot be expressed: left out (denied), and said so
    assert doc["metadata"]["annotations"]["sentinel.io/not-expressible"] == "openai"
    assert any("api.example.com" in w for w in warnings(parse_policy(MIXED), "k8s"))
    assert any("audit" in w for w in warnings(parse_policy(MIXED), "k8s"))


def test_cilium_matches_policy():
    doc = to_cilium(parse_policy(MIXED))
    egress = doc["spec"]["egress"]
    assert doc["spec"]["endpointSelector"] == {"matchLabels": {"app": "mem0"}}
    dns = egress[0]
    assert dns["toEndpoints"] == [
        {
            "matchLabels": {
                "k8s:io.kubernetes.pod.namespace": "kube-system",
                "k8s:k8s-app": "kube-dns",
            }
        }
    ]
    assert dns["toPorts"][0]["ports"] == [{"port": "53", "protocol": "ANY"}]
    assert dns["toPorts"][0]["rules"]["dns"] == [
        {"matchPattern": "postgres.*.svc.cluster.local"},
        {"matchPattern": "redis.cache.svc.cluster.local"},
        {"matchName": "api.example.com"},
    ]
    rules = egress[1:]
    assert len(rules) == 6  # one per allow entry, in policy order
    assert rules[0]["toEndpoints"] == [{"matchLabels": {"app": "postgres"}}]
    assert rules[1]["toEndpoints"] == [
        {"matchLabels": {"app": "redis", "k8s:io.kubernetes.pod.namespace": "cache"}}
    ]
    assert rules[2]["toFQDNs"] == [{"matchName": "api.example.com"}]
    assert rules[2]["toPorts"] == [{"ports": [{"port": "443", "protocol": "TCP"}]}]
    assert rules[3]["toCIDR"] == ["10.20.0.0/16"]
    assert rules[3]["toPorts"][0]["ports"] == [
        {"port": "443", "protocol": "TCP"},
        {"port": "8443", "protocol": "TCP"},
    ]
    assert rules[4] == {
        "toCIDR": ["198.18.7.7/32"],
        "toPorts": [{"ports": [{"port": "514", "protocol": "UDP"}]}],
    }
    # nothing else is allowed: no rule without a peer (which would mean "any destination")
    assert all(set(r) - {"toPorts"} for r in egress)


def test_empty_allowlist_allows_only_dns():
    policy = parse_policy("version: 1\nallow: []\n")
    assert len(to_network_policy(policy)["spec"]["egress"]) == 1
    cilium = to_cilium(policy)
    assert len(cilium["spec"]["egress"]) == 1
    assert "rules" not in cilium["spec"]["egress"][0]["toPorts"][0]  # no names to answer
    validate(to_network_policy(policy), K8S)
    validate(cilium, CILIUM)


@pytest.mark.parametrize("target", ["k8s", "cilium"])
def test_cli_export(target):
    exe = str(Path(sys.executable).with_name("sentinel"))
    done = subprocess.run(
        [
            exe,
            "export",
            target,
            "--policy",
            "policies/mem0.yaml",
            "--namespace",
            "prod",
            "--app-label",
            "app=mem0",
            "--app-label",
            "tier=api",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    doc = yaml.safe_load(done.stdout)
    validate(doc, K8S if target == "k8s" else CILIUM)
    sel = doc["spec"]["podSelector" if target == "k8s" else "endpointSelector"]
    assert sel == {"matchLabels": {"app": "mem0", "tier": "api"}}
    bad = subprocess.run(
        [exe, "export", "nomad", "-p", "policies/mem0.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "nomad" in bad.stderr
