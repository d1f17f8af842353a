"""The policy as frozen, typed objects: what load.py builds and every later stage reads."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from sentinel.errors import BadInput

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MODES = ("enforce", "audit")
PROTOCOLS = ("tcp", "udp")
SEVERITIES = ("P1", "P2", "P3")
SINKS = ("slack", "pagerduty", "webhook")
DEFAULT_MARK = 0x5E47
DEFAULT_NFLOG_GROUP = 1
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")  # an allow entry's name


@dataclass(frozen=True)
class Allow:
    """One allowlist entry: a host (pinned by DNS) or a cidr, its ports and protocol."""

    name: str
    ports: tuple[int, ...]
    protocol: str = "tcp"
    host: str | None = None  # DNS name or IP literal, resolved into pins
    cidr: IPNetwork | None = None

    @property
    def literal(self) -> IPAddress | None:
        """The host as an address when it is an IP literal (needs no DNS)."""
        try:
            return ipaddress.ip_address(self.host) if self.host else None
        except ValueError:
            return None


@dataclass(frozen=True)
class DnsSettings:
    """The `dns:` section."""

    upstream: str = "auto"  # "auto" = resolv.conf at start-up, else "IP" or "IP:port"
    min_ttl: float = 30.0
    max_ttl: float = 3600.0
    stale_grace: float = 600.0
    refuse_with: str = "refused"  # refused | nxdomain
    listen_port: int = 5300  # the sentinel resolver's port inside the app namespace


@dataclass(frozen=True)
class SinkSettings:
    """One alert sink of the `alerts:` section."""

    kind: str  # slack | pagerduty | webhook
    env: dict[str, str] = field(default_factory=dict, hash=False)  # role -> env var name
    options: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class AlertSettings:
    """The `alerts:` section."""

    sinks: tuple[SinkSettings, ...] = ()
    routing: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (severity, sink kinds)
    dedup_window: float = 300.0
    digest_windows: tuple[tuple[str, float], ...] = (("P2", 900.0), ("P3", 3600.0))

    def sinks_for(self, severity: str) -> tuple[str, ...]:
        return dict(self.routing).get(severity, ())


@dataclass(frozen=True)
class MonitorSettings:
    """The `monitor:` section."""

    tamper_interval: float = 5.0
    fold_window: float = 2.0
    retention: float = 7 * 86400.0
    metrics_port: int = 0  # 0 = off


@dataclass(frozen=True)
class CanarySettings:
    """Scheduled bypass probes to an address of the user's own (off unless target is set)."""

    target: str | None = None  # IPv4 address that accepts on `port` when reachable
    target6: str | None = None
    port: int = 443
    interval: float = 300.0


@dataclass(frozen=True)
class PolicyTest:
    """One of the policy's own `tests:`."""

    to: str  # "host:port" as written
    host: str
    port: int
    protocol: str
    expect: str  # allow | deny
    line: int = 0


@dataclass(frozen=True)
class Policy:
    """A validated policy file (load.py builds it)."""

    version: int
    mode: str
    allow: tuple[Allow, ...]
    dns: DnsSettings = DnsSettings()
    alerts: AlertSettings = AlertSettings()
    monitor: MonitorSettings = MonitorSettings()
    canary: CanarySettings = CanarySettings()
    tests: tuple[PolicyTest, ...] = ()
    nflog_group: int = DEFAULT_NFLOG_GROUP
    mark: int = DEFAULT_MARK
    source: str = "<memory>"
    sha256: str = ""
    warnings: tuple[str, ...] = ()  # "file:line: field: reason" (printed by check, logged by run)

    @property
    def hostnames(self) -> tuple[str, ...]:
        """Allowlisted names that need DNS (IP-literal hosts excluded), in policy order."""
        seen = dict.fromkeys(a.host for a in self.allow if a.host and a.literal is None)
        return tuple(seen)  # type: ignore[arg-type]


class PolicyError(BadInput):
    """All validation errors of one file, one per line."""

    def __init__(self, source: str, problems: list[tuple[int, str]]) -> None:
        self.problems = sorted(problems)
        # one problem per line, always: a value with a newline must not forge another line
        text = "\n".join(f"{source}:{line}: {' '.join(msg.split())}" for line, msg in self.problems)
        super().__init__(text)
