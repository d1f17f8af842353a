"""Validation of a parsed policy document into the model, collecting every problem.

`_Checker` walks the plain data that yamlsrc located, and records (line, message) for each
problem instead of raising, so one `sentinel check` names them all (load.py raises them).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from sentinel.durations import parse_duration
from sentinel.policy import safety
from sentinel.policy.model import (
    DEFAULT_MARK,
    MODES,
    NAME_RE,
    PROTOCOLS,
    SEVERITIES,
    SINKS,
    AlertSettings,
    Allow,
    CanarySettings,
    DnsSettings,
    IPNetwork,
    MonitorSettings,
    Policy,
    PolicyTest,
    SinkSettings,
)
from sentinel.policy.netparse import fast_network
from sentinel.policy.plainentry import plain_cidr_entry
from sentinel.policy.yamlsrc import Located

_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_ENV_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")
# Keys that would put a secret into the file; the env-var form is the only one accepted.
_SECRET_KEYS = {"webhook_url", "routing_key", "url", "hmac_secret", "secret", "token"}


class _Checker:
    """Walks the plain data, collecting (line, message) problems instead of raising."""

    def __init__(self, doc: Located) -> None:
        self.doc = doc
        self.problems: list[tuple[int, str]] = []
        self.warnings: list[tuple[int, str]] = []

    def bad(self, path: str, message: str) -> None:
        self.problems.append((self.doc.line(path), f"{path or 'policy'}: {message}"))

    def warn(self, path: str, message: str) -> None:
        self.warnings.append((self.doc.line(path), f"{path or 'policy'}: {message}"))

    def unsafe_network(self, network: IPNetwork | None, path: str) -> None:
        data = self.doc.data if isinstance(self.doc.data, dict) else {}
        error, warning = safety.cidr_problem(network, data.get("mode", "enforce"))
        if error:
            self.bad(path, error)
        if warning:
            self.warn(path, warning)

    def mapping(self, value: Any, path: str, allowed: set[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.bad(path, f"must be a mapping, not {_kind(value)}")
            return {}
        for key in value:
            if not isinstance(key, str) or key not in allowed:
                sub = f"{path}.{key}" if path else str(key)
                if isinstance(key, str) and key in _SECRET_KEYS:
                    self.bad(sub, f"secrets are read from the environment: use {key}_env")
                else:
                    self.bad(sub, f"unknown key (expected one of: {', '.join(sorted(allowed))})")
        return value

    def policy(self, source: str, digest: str) -> Policy | None:
        top = {
            "version",
            "mode",
            "allow",
            "dns",
            "alerts",
            "monitor",
            "canary",
            "tests",
            "nflog_group",
            "mark",
        }
        data = self.mapping(self.doc.data, "", top)
        if self.doc.data is None:
            self.bad("", "empty policy file")
        version = data.get("version")
        if version != 1:
            self.bad("version", f"{version!r} is not a supported version (expected 1)")
        mode = data.get("mode", "enforce")
        if mode not in MODES:
            self.bad("mode", f"{mode!r} is not one of: {', '.join(MODES)}")
        allow = self.allow_list(data.get("allow"))
        policy = Policy(
            version=1,
            mode=mode if mode in MODES else "enforce",
            allow=allow,
            dns=self.dns(data.get("dns")),
            alerts=self.alerts(data.get("alerts")),
            monitor=self.monitor(data.get("monitor")),
            canary=self.canary(data.get("canary")),
            tests=self.tests(data.get("tests")),
            nflog_group=self.int_in("nflog_group", data.get("nflog_group", 1), 0, 65535),
            mark=self.int_in("mark", data.get("mark", DEFAULT_MARK), 1, 0xFFFFFFFF),
            source=source,
            sha256=digest,
        )
        self.cross_check(policy)
        return policy

    def allow_list(self, value: Any) -> tuple[Allow, ...]:
        if value is None:
            return ()  # deny everything: legal, and what "zero external calls" means
        if not isinstance(value, list):
            self.bad("allow", f"must be a list of entries, not {_kind(value)}")
            return ()
        data = self.doc.data if isinstance(self.doc.data, dict) else {}
        mode = data.get("mode", "enforce")  # as unsafe_network reads it
        entries = [
            plain_cidr_entry(item, mode) or self.allow_entry(item, f"allow[{i}]")
            for i, item in enumerate(value)
        ]
        seen: dict[str, int] = {}
        for i, entry in enumerate(entries):
            if entry and entry.name in seen:
                self.bad(
                    f"allow[{i}].name", f"{entry.name!r} already used by allow[{seen[entry.name]}]"
                )
            elif entry:
                seen[entry.name] = i
        return tuple(e for e in entries if e)

    def allow_entry(self, value: Any, path: str) -> Allow | None:
        before = len(self.problems)
        data = self.mapping(value, path, {"name", "host", "cidr", "ports", "protocol"})
        name = data.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            self.bad(f"{path}.name", f"{name!r} is not a valid name (a-z, 0-9, _ and -, max 32)")
        host, cidr = data.get("host"), data.get("cidr")
        if (host is None) == (cidr is None):
            self.bad(path, "needs exactly one of host or cidr")
        if host is not None and not _valid_host(host):
            self.bad(f"{path}.host", f"{host!r} is not a DNS name or IP address")
        elif host is not None and (why := safety.host_problem(host)):
            self.bad(f"{path}.host", f"{host!r} is {why}")
        network = self.network(cidr, f"{path}.cidr") if cidr is not None else None
        self.unsafe_network(network, f"{path}.cidr")
        ports = self.ports(data.get("ports"), f"{path}.ports")
        protocol = data.get("protocol", "tcp")
        if protocol not in PROTOCOLS:
            self.bad(f"{path}.protocol", f"{protocol!r} is not one of: {', '.join(PROTOCOLS)}")
        if len(self.problems) > before:
            return None
        return Allow(name=name, host=host, cidr=network, ports=ports, protocol=protocol)

    def network(self, value: Any, path: str) -> IPNetwork | None:
        try:
            return fast_network(value) or ipaddress.ip_network(str(value), strict=True)
        except ValueError as exc:
            self.bad(path, f"{value!r} is not a network: {exc}")
            return None

    def ports(self, value: Any, path: str) -> tuple[int, ...]:
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list) or not value:
            self.bad(path, "must be a non-empty list of ports")
            return ()
        out = []
        for i, port in enumerate(value):
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                self.bad(f"{path}[{i}]", f"{port!r} is not a port")
            else:
                out.append(port)
        return tuple(sorted(set(out)))

    def dns(self, value: Any) -> DnsSettings:
        keys = {"upstream", "min_ttl", "max_ttl", "stale_grace", "refuse_with", "listen_port"}
        data = self.mapping(value, "dns", keys)
        d = DnsSettings()
        upstream = data.get("upstream", d.upstream)
        if upstream != "auto" and not _valid_upstream(upstream):
            self.bad("dns.upstream", f"{upstream!r} is not 'auto', IP or IP:port")
        refuse = data.get("refuse_with", d.refuse_with)
        if refuse not in ("refused", "nxdomain"):
            self.bad("dns.refuse_with", f"{refuse!r} is not one of: refused, nxdomain")
        out = DnsSettings(
            upstream=str(upstream),
            min_ttl=self.duration("dns.min_ttl", data.get("min_ttl"), d.min_ttl),
            max_ttl=self.duration("dns.max_ttl", data.get("max_ttl"), d.max_ttl),
            stale_grace=self.duration("dns.stale_grace", data.get("stale_grace"), d.stale_grace),
            refuse_with=refuse,
            listen_port=self.int_in(
                "dns.listen_port", data.get("listen_port", d.listen_port), 1, 65535
            ),
        )
        if out.min_ttl > out.max_ttl:
            self.bad("dns.min_ttl", "must not exceed dns.max_ttl")
        return out

    def alerts(self, value: Any) -> AlertSettings:
        keys = {*SINKS, "routing", "dedup_window", "digest_window"}
        data = self.mapping(value, "alerts", keys)
        sinks = tuple(s for kind in SINKS if kind in data if (s := self.sink(kind, data[kind])))
        routing = self.routing(data.get("routing"), {s.kind for s in sinks})
        window = self.duration("alerts.dedup_window", data.get("dedup_window"), 300.0)
        digest = self.mapping(data.get("digest_window") or {}, "alerts.digest_window", {"P2", "P3"})
        windows = tuple(
            (sev, self.duration(f"alerts.digest_window.{sev}", digest.get(sev), default))
            for sev, default in AlertSettings.digest_windows
        )
        return AlertSettings(sinks, routing, window, windows)

    def sink(self, kind: str, value: Any) -> SinkSettings | None:
        env_keys, option_keys = _SINK_KEYS[kind]
        path = f"alerts.{kind}"
        data = self.mapping(value, path, set(env_keys) | set(option_keys))
        env: dict[str, str] = {}
        for key, required in env_keys.items():
            var = data.get(key)
            if var is None and required:
                self.bad(f"{path}.{key}", "is required (the name of an environment variable)")
            elif var is not None and (not isinstance(var, str) or not _ENV_RE.match(var)):
                self.bad(f"{path}.{key}", f"{var!r} is not an environment variable name")
            elif var is not None:
                env[key.removesuffix("_env")] = var
        options = {}
        for key, check in option_keys.items():
            if key in data:
                options[key] = check(self, f"{path}.{key}", data[key])
        return SinkSettings(kind=kind, env=env, options=options)

    def routing(self, value: Any, configured: set[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
        if value is None:
            order = [k for k in ("pagerduty", "slack", "webhook") if k in configured]
            slack_first = [k for k in ("slack", "webhook") if k in configured]
            return (("P1", tuple(order)), ("P2", tuple(slack_first)), ("P3", tuple(slack_first)))
        data = self.mapping(value, "alerts.routing", set(SEVERITIES))
        out = []
        for sev in SEVERITIES:
            sinks = data.get(sev, [])
            if not isinstance(sinks, list):
                self.bad(f"alerts.routing.{sev}", "must be a list of sink names")
                continue
            for i, sink in enumerate(sinks):
                if sink not in configured:
                    self.bad(f"alerts.routing.{sev}[{i}]", f"{sink!r} is not a configured sink")
            out.append((sev, tuple(s for s in sinks if s in configured)))
        return tuple(out)

    def monitor(self, value: Any) -> MonitorSettings:
        keys = {"tamper_interval", "fold_window", "retention", "metrics_port"}
        data = self.mapping(value, "monitor", keys)
        d = MonitorSettings()
        return MonitorSettings(
            tamper_interval=self.duration(
                "monitor.tamper_interval", data.get("tamper_interval"), d.tamper_interval
            ),
            fold_window=self.duration(
                "monitor.fold_window", data.get("fold_window"), d.fold_window
            ),
            retention=self.duration("monitor.retention", data.get("retention"), d.retention),
            metrics_port=self.int_in("monitor.metrics_port", data.get("metrics_port", 0), 0, 65535),
        )

    def canary(self, value: Any) -> CanarySettings:
        data = self.mapping(value, "canary", {"target", "target6", "port", "interval"})
        d = CanarySettings()
        targets: dict[str, str | None] = {}
        for key, version in (("target", 4), ("target6", 6)):
            addr = data.get(key)
            if addr is not None and (not _is_ip(str(addr)) or _version(str(addr)) != version):
                self.bad(f"canary.{key}", f"{addr!r} is not an IPv{version} address")
            targets[key] = str(addr) if addr is not None else None
        return CanarySettings(
            target=targets["target"],
            target6=targets["target6"],
            port=self.int_in("canary.port", data.get("port", d.port), 1, 65535),
            interval=self.duration("canary.interval", data.get("interval"), d.interval),
        )

    def tests(self, value: Any) -> tuple[PolicyTest, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.bad("tests", f"must be a list, not {_kind(value)}")
            return ()
        return tuple(t for i, item in enumerate(value) if (t := self.test(item, f"tests[{i}]")))

    def test(self, value: Any, path: str) -> PolicyTest | None:
        data = self.mapping(value, path, {"to", "expect", "protocol"})
        to, expect = data.get("to"), data.get("expect")
        protocol = data.get("protocol", "tcp")
        target = _split_host_port(to) if isinstance(to, str) else None
        if target is None:
            self.bad(f"{path}.to", f"{to!r} is not HOST:PORT (IPv6 as [addr]:port)")
        if expect not in ("allow", "deny"):
            self.bad(f"{path}.expect", f"{expect!r} is not one of: allow, deny")
        if protocol not in PROTOCOLS:
            self.bad(f"{path}.protocol", f"{protocol!r} is not one of: {', '.join(PROTOCOLS)}")
        if target is None or expect not in ("allow", "deny") or protocol not in PROTOCOLS:
            return None
        host, port = target
        return PolicyTest(str(to), host, port, protocol, expect, self.doc.line(path))

    def cross_check(self, policy: Policy) -> None:
        self.canary_check(policy)
        names = {a.name for a in policy.allow} | {a.host for a in policy.allow if a.host}
        for i, t in enumerate(policy.tests):
            if not _is_ip(t.host) and t.host not in names:
                self.bad(
                    f"tests[{i}].to", f"{t.host!r} is neither an IP nor an allowlisted host or name"
                )

    def canary_check(self, policy: Policy) -> None:
        """A canary an IP/cidr entry lets out on one of its probes (tcp and udp to its port,
        tcp/853 for IPv4) always 'escapes': a P1 every round, a failing report."""
        c = policy.canary
        for key, addr in (("canary.target", c.target), ("canary.target6", c.target6)):
            if addr is None or not _is_ip(addr):
                continue
            ip = ipaddress.ip_address(addr)
            probes = {("tcp", c.port), ("udp", c.port)} | (
                {("tcp", 853)} if ip.version == 4 else set()
            )
            for i, a in enumerate(policy.allow):
                covers = a.literal == ip or (
                    a.cidr is not None and a.cidr.version == ip.version and ip in a.cidr
                )
                hit = sorted(p for p in probes if covers and p[0] == a.protocol and p[1] in a.ports)
                if hit:
                    what = ", ".join(f"{proto}/{port}" for proto, port in hit)
                    self.bad(
                        key,
                        f"{addr} {what} is allowed by allow[{i}] ({a.name}): probes always escape",
                    )
                    break

    def duration(self, path: str, value: Any, default: float) -> float:
        if value is None:
            return default
        seconds = parse_duration(value)
        if seconds is None:
            self.bad(path, f"{value!r} is not a duration (e.g. 30s, 10m, 1h)")
            return default
        if why := safety.interval_problem(path, seconds):
            self.bad(path, why)
        return seconds

    def int_in(self, path: str, value: Any, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.bad(path, f"{value!r} is not an integer in {low}..{high}")
            return low
        return value


def _opt_channel(c: _Checker, path: str, value: Any) -> Any:
    if not isinstance(value, str) or not value.startswith(("#", "@", "C")):
        c.bad(path, f"{value!r} is not a Slack channel (#name)")
    return value


def _opt_duration(c: _Checker, path: str, value: Any) -> Any:
    return c.duration(path, value, 0.0)


# sink -> ({env key: required}, {option key: checker})
_SINK_KEYS: dict[str, tuple[dict[str, bool], dict[str, Callable[[_Checker, str, Any], Any]]]] = {
    "slack": ({"webhook_url_env": True}, {"channel": _opt_channel}),
    "pagerduty": ({"routing_key_env": True, "url_env": False}, {"resolve_after": _opt_duration}),
    "webhook": ({"url_env": True, "hmac_secret_env": False}, {}),
}


def _split_host_port(text: str) -> tuple[str, int] | None:
    match = re.match(r"^\[([0-9a-fA-F:.]+)\]:(\d+)$", text) or re.match(r"^([^:\s]+):(\d+)$", text)
    if not match or not 1 <= int(match.group(2)) <= 65535:
        return None
    return match.group(1), int(match.group(2))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _version(text: str) -> int:
    return ipaddress.ip_address(text).version


def _valid_host(value: Any) -> bool:
    if not isinstance(value, str) or not value or len(value) > 253:
        return False
    return _is_ip(value) or all(_LABEL_RE.match(label) for label in value.rstrip(".").split("."))


def _valid_upstream(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    if _is_ip(value):
        return True
    hp = _split_host_port(value)
    return hp is not None and _is_ip(hp[0])


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string"}.get(
        type(value), type(value).__name__
    )
