"""The shipped compose file up under a real engine: healthy, rules in force in mem0's namespace,
pins for every upstream from Docker's embedded DNS."""

from __future__ import annotations

import json

SERVICES = ("postgres", "mem0", "sentinel")


def _ip(stack, service: str) -> str:
    nets = stack.engine.docker(
        "inspect", "-f", "{{json .NetworkSettings.Networks}}", stack.container(service)
    ).stdout
    return next(iter(json.loads(nets).values()))["IPAddress"]


def test_every_service_healthy_and_status_in_sync(stack):
    states = stack.wait_healthy(SERVICES)
    assert states == {s: "healthy" for s in SERVICES}, (states, stack.logs()[-4000:])
    status = stack.exec("sentinel", "sentinel", "status", "--format", "json", check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    data = json.loads(status.stdout)
    assert data["in_sync"] and data["mode"] == "enforce"
    # sentinel applied in mem0's namespace, and the gate opened for exactly that one
    ns = stack.exec("mem0", "readlink", "/proc/self/ns/net").stdout.strip()
    assert stack.exec("sentinel", "readlink", "/proc/self/ns/net").stdout.strip() == ns
    assert stack.exec("mem0", "cat", "/var/lib/sentinel/ready").stdout.strip() == ns
    # pins: what Docker's embedded DNS (the `auto` upstream) says each container's address is
    assert data["pins"] == {s: [_ip(stack, s)] for s in ("postgres", "neo4j", "ollama")}
