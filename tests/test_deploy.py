"""Deploy files: compose against the Compose Specification schema (and `docker-compose config`
when Debian's docker-compose is installed; no engine is needed for it), the pod example against
the Kubernetes v1.33 schema, the exported policies kept current, and the Dockerfile checked
statically (Docker cannot build here)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import needs_tools

from sentinel.policy.export import to_cilium, to_network_policy
from sentinel.policy.load import parse_policy

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SCHEMAS = ROOT / "tests" / "schemas"
SECRETS = {"POSTGRES_PASSWORD": "pw-test", "NEO4J_PASSWORD": "neo-test"}


def _validate(doc, schema_file: str) -> None:
    schema = json.loads((SCHEMAS / schema_file).read_text())
    # the compose schema names its draft with a URI jsonschema does not know (2019-09 + '#')
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    if "compose" in schema_file:
        cls = jsonschema.Draft7Validator
    errors = list(cls(schema).iter_errors(doc))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_validates_against_compose_spec():
    _validate(compose(), "compose-spec.json")


def test_compose_schema_is_not_vacuous():
    doc = compose()
    doc["services"]["sentinel"]["cap_ad"] = ["NET_ADMIN"]
    with pytest.raises(AssertionError, match="cap_ad"):
        _validate(doc, "compose-spec.json")


def test_docker_compose_config():
    needs_tools("docker-compose")
    env = {**os.environ, **SECRETS}
    done = subprocess.run(
        ["docker-compose", "-f", str(DEPLOY / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    assert resolved["services"]["mem0"]["environment"]["OLLAMA_BASE_URL"] == "http://ollama:11434"
    missing = {k: v for k, v in env.items() if k not in SECRETS}
    done = subprocess.run(
        ["docker-compose", "-f", str(DEPLOY / "compose.yaml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        env=missing,
    )
    assert done.returncode != 0 and "POSTGRES_PASSWORD" in done.stderr  # secrets are required


def test_compose_shape():
    services = compose()["services"]
    assert set(services) == {"mem0", "sentinel", "postgres", "neo4j", "ollama"}
    mem0, sentinel = services["mem0"], services["sentinel"]
    assert mem0["image"] == "mem0-fixed:local"
    assert mem0["environment"]["OLLAMA_BASE_URL"] == "${OLLAMA_BASE_URL:-http://ollama:11434}"
    assert sentinel["network_mode"] == "service:mem0"
    assert set(sentinel["cap_add"]) == {"NET_ADMIN", "NET_RAW"}
    assert "privileged" not in sentinel
    assert "../policies/mem0.yaml:/etc/sentinel/policy.yaml:ro" in sentinel["volumes"]
    assert "sentinel-state:/var/lib/sentinel" in sentinel["volumes"]
    assert sentinel["healthcheck"]["test"] == ["CMD", "sentinel", "status"]
    # the guard is mounted into mem0 and switched on
    assert any(
        v.startswith("../sentinel/guard/pythonpath:/opt/sentinel-guard:ro") for v in mem0["volumes"]
    )
    assert (ROOT / "sentinel" / "guard" / "pythonpath").is_dir()
    assert mem0["environment"]["SENTINEL_STATE_DIR"] == "/var/lib/sentinel"
    assert mem0["environment"]["PYTHONPATH"] == "/opt/sentinel-guard"
    assert mem0["environment"]["SENTINEL_POLICY"] == "/etc/sentinel/policy.yaml"
    # the app sees the state (the gate) but cannot change it
    assert "sentinel-state:/var/lib/sentinel:ro" in mem0["volumes"]


def test_compose_has_no_secret_values():
    text = (DEPLOY / "compose.yaml").read_text()
    for key in ("PASSWORD", "WEBHOOK_URL", "ROUTING_KEY", "SECRET"):
        for line in text.splitlines():
            if key in line and ":" in line and not line.strip().startswith("#"):
                value = line.split(":", 1)[1].strip()
                assert value.startswith("${") or "${" in value, line


def _gate_script() -> str:
    """mem0's entrypoint script as the container's shell receives it ($$ -> $)."""
    entry = compose()["services"]["mem0"]["entrypoint"]
    assert entry[:2] == ["/bin/sh", "-c"]
    return entry[2].replace("$$", "$")


def test_gate_waits_for_this_namespace(tmp_path):
    """The gate opens only for a ready file naming the container's own network namespace."""
    ready = tmp_path / "ready"
    script = _gate_script().replace("/var/lib/sentinel/ready", str(ready))
    script = script.replace("-gt 180", "-gt 2")

    def run():
        return subprocess.run(
            ["sh", "-c", script, "gate", "echo", "app-started"],
            capture_output=True,
            text=True,
            timeout=30,
        )

    done = run()  # no file: waits, then refuses to start the app
    assert done.returncode == 1 and "app-started" not in done.stdout
    ready.write_text("net:[1]\n")  # stale: an earlier container's namespace
    done = run()
    assert done.returncode == 1 and "app-started" not in done.stdout
    ready.write_text(os.readlink("/proc/self/ns/net") + "\n")
    done = run()
    assert done.returncode == 0 and done.stdout.strip() == "app-started", done.stderr


def test_sentinel_writes_ready_only_once_everything_is_up():
    # `sentinel run --ready-file` writes the file after apply, resolver and services are up
    # (tests/test_run.py checks that against a real daemon) and removes it when it stops
    command = compose()["services"]["sentinel"]["command"][0]
    steps = [s.strip() for s in command.split("&&")]
    assert steps == [
        "rm -f /var/lib/sentinel/ready",
        "exec sentinel run --ready-file /var/lib/sentinel/ready",
    ]


def test_mem0_runs_without_capabilities():
    # required: with CAP_NET_RAW an app can send AF_PACKET frames netfilter never sees
    # (docs/deploy.md); tests/e2e/test_c_faults.py shows both sides under a real engine
    assert compose()["services"]["mem0"]["cap_drop"] == ["ALL"]
    assert "cap_add" not in compose()["services"]["mem0"]


def test_dockerfile_static():
    text = (ROOT / "Dockerfile.sentinel").read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    base = next(line for line in instructions if line.startswith("FROM "))
    assert base == "FROM ${BASE}", base  # tests/e2e builds it on an offline Debian base
    default = next(line for line in instructions if line.startswith("ARG BASE="))
    assert re.match(r"ARG BASE=python:3\.1\d-slim", default), default
    install = next(line for line in instructions if "apt-get install" in line)
    for pkg in ("iptables", "nftables", "ipset", "iproute2"):
        assert pkg in install, pkg
    assert "libpcap" not in install  # the monitor reads netlink; nothing uses libpcap
    assert "--no-install-recommends" in install
    assert re.search(r'HEALTHCHECK .*\n?.*CMD \["sentinel", "status"\]', text)
    assert 'ENTRYPOINT ["sentinel"]' in text
    assert any("sentinel guard path --compile" in line for line in instructions)  # guard bytecode
    # Deliberately NOT set: in a container's own namespace the root-netns check already passes,
    # and with host networking refusing is correct (see docs/deploy.md).
    assert not any("SENTINEL_ALLOW_ROOT_NETNS" in line for line in instructions)


def test_pod_example_validates_and_uses_native_sidecar():
    pod = yaml.safe_load((DEPLOY / "k8s" / "mem0-pod.yaml").read_text())
    _validate(pod, "k8s-v1.33.0-pod-v1.json")
    inits = {c["name"]: c for c in pod["spec"]["initContainers"]}
    sidecar = inits["sentinel"]
    assert sidecar["restartPolicy"] == "Always"
    caps = sidecar["securityContext"]["capabilities"]
    assert set(caps["add"]) == {"NET_ADMIN", "NET_RAW"} and caps["drop"] == ["ALL"]
    # the compose gate's readiness: the ready file holds this namespace's id, and status passes
    probe = sidecar["startupProbe"]["exec"]["command"]
    assert probe[:2] == ["sh", "-c"] and "readlink /proc/self/ns/net" in probe[2]
    assert "/var/lib/sentinel/ready" in probe[2] and probe[2].endswith("sentinel status")
    assert sidecar["args"] == ["run", "--ready-file", "/var/lib/sentinel/ready"]
    app = pod["spec"]["containers"][0]
    assert "NET_ADMIN" not in str(app["securityContext"])
    env = {e["name"]: e["value"] for e in app["env"]}
    assert env["PYTHONPATH"] == "/opt/sentinel-guard"
    assert pod["metadata"]["labels"]["app"] == "mem0"  # what the exported policies select


def test_pod_schema_is_not_vacuous():
    pod = yaml.safe_load((DEPLOY / "k8s" / "mem0-pod.yaml").read_text())
    pod["spec"]["initContainers"][1]["restartPolcy"] = "Always"
    with pytest.raises(AssertionError, match="restartPolcy"):
        _validate(pod, "k8s-v1.33.0-pod-v1.json")


@pytest.mark.parametrize(
    ("file", "render", "schema"),
    [
        ("networkpolicy.yaml", to_network_policy, "k8s-v1.33.0-networkpolicy-networking-v1.json"),
        ("ciliumnetworkpolicy.yaml", to_cilium, "cilium-v2-ciliumnetworkpolicy-subset.json"),
    ],
)
def test_exported_policies_are_current_and_valid(file, render, schema):
    committed = yaml.safe_load((DEPLOY / "k8s" / file).read_text())
    policy = parse_policy((ROOT / "policies" / "mem0.yaml").read_bytes(), "policies/mem0.yaml")
    assert committed == render(policy), f"regenerate deploy/k8s/{file} (see docs/deploy.md)"
    _validate(committed, schema)
