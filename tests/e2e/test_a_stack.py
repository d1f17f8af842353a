"""The shipped compose file up under a real engine: healthy, rules in force in mem0's namespace."""

from __future__ import annotations

SERVICES = ("postgres", "mem0", "sentinel")


def test_every_service_healthy_and_status_in_sync(stack):
    states = stack.wait_healthy(SERVICES)
    assert states == {s: "healthy" for s in SERVICES}, (states, stack.logs()[-4000:])
    status = stack.exec("sentinel", "sentinel", "status", "--format", "json", check=False)
    print(status.stdout)
    assert status.returncode == 0, status.stdout + status.stderr
