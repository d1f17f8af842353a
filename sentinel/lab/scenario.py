"""The lab's scenario: the topology's "internet" addresses, the lab policy and alert secrets,
and the catalogue of scripted violations the workload commits, each with the layer expected to
see it (the guard, or the network layer when the guard cannot)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ENFORCER = ("run",)  # the sidecar's command: the daemon (it alone watches and alerts)
OUTSIDE4, OUTSIDE6 = "198.18.5.5", "2001:db8::5"
OPENAI, TELEMETRY = "api.openai.com", "us.i.posthog.com"
ALERT_PORT = 9099
MARKER = ".sentinel-lab"
READY_TIMEOUT = 30.0  # sentinel in force; generous for slow CI machines
SETTLE_TIMEOUT = 10.0  # events reach the store / alerts reach the receiver
APP_TIMEOUT = 120.0
LAB_SECRETS = {  # fake values for the local receiver; real ones only ever come from the env
    "SLACK_WEBHOOK_URL": f"http://127.0.0.1:{ALERT_PORT}/slack",
    "PAGERDUTY_URL": f"http://127.0.0.1:{ALERT_PORT}/pagerduty",
    "PAGERDUTY_ROUTING_KEY": "lab-routing-key",
    "SENTINEL_WEBHOOK_URL": f"http://127.0.0.1:{ALERT_PORT}/webhook",
    "SENTINEL_WEBHOOK_SECRET": "lab-webhook-secret",
}

LAB_POLICY = """\
# sentinel lab: the mem0 policy, with alert sinks pointed at the lab's local receiver.
version: 1
mode: enforce
allow:
  - {name: postgres, host: postgres, ports: [5432], protocol: tcp}
  - {name: neo4j,    host: neo4j,    ports: [7474, 7687], protocol: tcp}
  - {name: ollama,   host: ollama,   ports: [11434], protocol: tcp}
dns:
  upstream: auto          # the app namespace's resolv.conf: the lab's DNS host
  min_ttl: 30s
  refuse_with: refused
alerts:
  slack:     {webhook_url_env: SLACK_WEBHOOK_URL, channel: "#wingman-alerts"}
  pagerduty: {routing_key_env: PAGERDUTY_ROUTING_KEY, url_env: PAGERDUTY_URL}
  webhook:   {url_env: SENTINEL_WEBHOOK_URL, hmac_secret_env: SENTINEL_WEBHOOK_SECRET}
  dedup_window: 1m
monitor:
  tamper_interval: 2s
tests:
  - {to: "postgres:5432", expect: allow}
  - {to: "ollama:11434", expect: allow}
  - {to: "198.18.5.5:443", expect: deny}
  - {to: "[2001:db8::5]:443", expect: deny}
"""


@dataclass(frozen=True)
class Violation:
    action: str  # the workload's action name
    what: str
    protocol: str
    port: int
    name: str | None = None  # by-name calls: blocked before any address exists
    ip: str | None = None
    guard_sees: bool = True  # a subprocess is invisible to the in-process guard

    @property
    def network_layer(self) -> str:
        return "dns" if self.name else "netfilter"

    def expected_layer(self, guard_on: bool) -> str:
        return "guard" if guard_on and self.guard_sees else self.network_layer

    def matches(self, attempt: dict[str, Any]) -> bool:
        name = (attempt.get("dst_name") or "").rstrip(".").lower()
        if self.name and name == self.name:
            return True
        return (
            self.ip is not None
            and attempt.get("dst_ip") == self.ip
            and attempt.get("dst_port") == self.port
            and (attempt.get("protocol") or self.protocol) == self.protocol
        )


VIOLATIONS = (
    Violation("openai_https_by_name", "OpenAI-style HTTPS call by name", "tcp", 443, name=OPENAI),
    Violation("telemetry_by_name", "telemetry call by name", "tcp", 443, name=TELEMETRY),
    Violation("ip_literal", "TCP to an IP literal", "tcp", 443, ip=OUTSIDE4),
    Violation("ipv6", "TCP over IPv6", "tcp", 443, ip=OUTSIDE6),
    Violation("udp", "UDP datagram", "udp", 443, ip=OUTSIDE4),
    Violation("curl_subprocess", "curl subprocess", "tcp", 80, ip=OUTSIDE4, guard_sees=False),
)


def active_layers(rep: dict[str, Any] | None) -> set[str]:
    """Layers that demonstrably reported in this run (a layer not wired up cannot be asked to)."""
    if not rep:
        return set()
    layers = set(rep.get("attempts_by_layer", {}))
    if (rep.get("guard") or {}).get("status") == "ok":
        layers.add("guard")
    return layers
