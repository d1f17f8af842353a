"""`sentinel explain DEST`: which layer decides for a destination, the verdict, and why.

Read-only. The netfilter answer comes from `decide.trace`, the same pure function that runs the
policy's own `tests:` over the rendered ruleset; the pins are the ones in force (`applied.json`)
and their TTL is the last `pin_changed` event in the store. The DNS and guard answers follow
the resolver's and the guard's documented rules over the same policy and pins.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sentinel.enforce.render import render_rules
from sentinel.errors import BadInput
from sentinel.policy.decide import Packet, trace
from sentinel.policy.load import Allow, Policy
from sentinel.policy.yamlsrc import load_located

_DEST = re.compile(
    r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^:\s/\[\]]+)):(?P<port>\d{1,5})"
    r"(?:/(?P<proto>[a-z]+))?$"
)
LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
LOOPBACK = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


@dataclass(frozen=True)
class Dest:
    host: str
    port: int
    protocol: str
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    given: str | None = None  # the host as written, when libc reads it as `ip` (inet_aton)

    @property
    def text(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}/{self.protocol}"


def parse_dest(text: str) -> Dest:
    match = _DEST.match(text.strip())
    proto = (match.group("proto") or "tcp") if match else "tcp"
    if not match or not 1 <= int(match.group("port")) <= 65535 or proto not in ("tcp", "udp"):
        raise BadInput(
            f"explain: {text!r} is not HOST:PORT[/tcp|udp] (IPv6 as [addr]:port, port 1-65535)"
        )
    host = match.group("v6") or match.group("host")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if match.group("v6"):
            raise BadInput(f"explain: {host!r} is not an IPv6 address") from None
        try:  # `0x7f000001`, `2130706433`, `1.2.3`: getaddrinfo reads them as numbers, no DNS
            ip = ipaddress.ip_address(socket.inet_ntoa(socket.inet_aton(host)))
        except OSError:
            ip, host = None, host.rstrip(".").lower()
        else:
            return Dest(str(ip), int(match.group("port")), proto, ip, given=host)
    return Dest(str(ip) if ip else host, int(match.group("port")), proto, ip)


def allow_lines(policy: Policy) -> list[int]:
    """The line of each allow entry in the policy file (0 when the file cannot be read)."""
    try:
        doc = load_located(Path(policy.source).read_text())
    except (OSError, ValueError):
        return [0] * len(policy.allow)
    return [doc.line(f"allow[{i}]") for i in range(len(policy.allow))]


def explain(
    policy: Policy,
    dest: Dest,
    applied: dict[str, Any] | None = None,
    store: Path | None = None,
    guard: dict[str, Any] | None = None,
) -> dict[str, Any]:
    applied = applied or {}
    pins = {k: [ipaddress.ip_address(a) for a in v] for k, v in applied.get("pins", {}).items()}
    lines = allow_lines(policy)
    entries = [(a, lines[i]) for i, a in enumerate(policy.allow)]
    name_entries = [(a, n) for a, n in entries if dest.ip is None and a.host == dest.host]
    pin = _pin_record(store, dest.host) if dest.ip is None else None
    layers = []
    if guard is not None:
        layers.append(_guard(policy, dest, pins, entries, name_entries, guard))
    dns_layer, addresses = _dns(policy, dest, pins, name_entries, pin, store)
    if dns_layer is not None:
        layers.append(dns_layer)
    layers.append(_netfilter(policy, dest, pins, entries, addresses))
    active = [x for x in layers if x["layer"] != "guard" or x.get("active")]
    deciding = next((x for x in active if x["verdict"] != "allow"), active[-1])
    return {
        "destination": dest.text,
        **({"read_as": f"inet_aton reads {dest.given!r} as {dest.ip}"} if dest.given else {}),
        "host": dest.host,
        "port": dest.port,
        "protocol": dest.protocol,
        "verdict": deciding["verdict"],
        "decided_by": deciding["layer"],
        "why": deciding["why"],
        "mode": policy.mode,
        "policy": policy.source,
        "policy_sha256": policy.sha256,
        "state_matches_policy": applied.get("policy_sha256") == policy.sha256,
        "entries": [_entry(a, n, policy) for a, n in _matching(entries, dest, pins, addresses)],
        "layers": layers,
    }


def _entry(allow: Allow, line: int, policy: Policy) -> dict[str, Any]:
    return {
        "name": allow.name,
        "where": f"{policy.source}:{line}",
        "host": allow.host,
        "cidr": str(allow.cidr) if allow.cidr is not None else None,
        "ports": list(allow.ports),
        "protocol": allow.protocol,
    }


def _matching(entries, dest: Dest, pins, addresses) -> list[tuple[Allow, int]]:  # noqa: ANN001
    """Entries that name this destination or cover one of its addresses (any port)."""
    out = []
    for allow, line in entries:
        if dest.ip is None and allow.host == dest.host:
            out.append((allow, line))
        elif any(_covers(allow, ip, pins) for ip in addresses):
            out.append((allow, line))
    return out


def _covers(allow: Allow, ip, pins) -> bool:  # noqa: ANN001
    if allow.cidr is not None:
        return ip.version == allow.cidr.version and ip in allow.cidr
    if allow.literal is not None:
        return ip == allow.literal
    return ip in pins.get(allow.host or "", [])


def _ports_ok(allow: Allow, dest: Dest) -> bool:
    return allow.protocol == dest.protocol and dest.port in allow.ports


# --- layers ---------------------------------------------------------------------------------
def _guard(policy, dest, pins, entries, name_entries, guard) -> dict[str, Any]:  # noqa: ANN001
    active = int(guard.get("active", 0))
    base = {"layer": "guard", "active": bool(active), "processes": active}
    note = "" if active else " (no guarded process is reporting: this layer is not in the path)"
    if dest.ip is None:
        if dest.host in LOCAL_NAMES or dest.host.endswith(".localhost"):
            return {**base, "verdict": "allow", "why": "a local name" + note}
        if not name_entries:
            why = f"getaddrinfo({dest.host!r}) raises SecurityError: the name is not allowlisted"
            return {**base, "verdict": _deny(policy), "why": why + note}
        if not any(_ports_ok(a, dest) for a, _ in name_entries):
            why = f"{dest.host} port {dest.port}/{dest.protocol} is not allowlisted"
            return {**base, "verdict": _deny(policy), "why": why + note}
        why = "the name is allowlisted; the connect is checked against its pinned addresses"
        return {**base, "verdict": "allow", "why": why + note}
    if dest.ip.is_loopback:
        return {**base, "verdict": "allow", "why": "loopback" + note}
    if any(_covers(a, dest.ip, pins) and _ports_ok(a, dest) for a, _ in entries):
        return {**base, "verdict": "allow", "why": "an allowlisted address and port" + note}
    why = f"connect to {dest.ip} port {dest.port}/{dest.protocol} raises SecurityError"
    return {**base, "verdict": _deny(policy), "why": why + note}


def _deny(policy: Policy) -> str:
    return "audit" if policy.mode == "audit" else "deny"


def _dns(policy, dest, pins, name_entries, pin, store) -> tuple[dict | None, list]:  # noqa: ANN001
    if dest.ip is not None:
        return None, [dest.ip]
    layer: dict[str, Any] = {"layer": "dns", "name": dest.host}
    if dest.host in LOCAL_NAMES or dest.host.endswith(".localhost"):
        why = "a local name: resolved from /etc/hosts, never sent to the resolver"
        layer.update(verdict="allow", why=why)
        return layer, list(LOOPBACK)
    if not name_entries:
        rcode = policy.dns.refuse_with.upper()
        if policy.mode == "audit":
            seen = _last_answer(store, dest.host)
            layer.update(verdict="audit", relayed_answer=[str(a) for a in seen])
            layer["why"] = (
                f"{dest.host!r} is not allowlisted: relayed to the upstream (mode audit) and "
                "recorded as an audited attempt"
            )
            return layer, seen
        layer.update(verdict="deny", rcode=rcode)
        layer["why"] = f"{dest.host!r} is not allowlisted: answered {rcode}, recorded as an attempt"
        return layer, []
    addresses = pins.get(dest.host, [])
    layer["pinned"] = [str(a) for a in addresses]
    if pin:
        layer["pin"] = pin
    if not addresses:
        layer.update(
            verdict="deny", why="allowlisted, but no pins in force: SERVFAIL (fail closed)"
        )
        return layer, []
    ttl = f", TTL {pin['ttl_s']:g}s set {pin['age_s']:g}s ago" if pin else ""
    layer.update(verdict="allow", why=f"allowlisted: answered from pins {layer['pinned']}{ttl}")
    return layer, addresses


def _netfilter(policy, dest, pins, entries, addresses) -> dict[str, Any]:  # noqa: ANN001
    layer: dict[str, Any] = {"layer": "netfilter", "mode": policy.mode}
    if not addresses:
        layer.update(verdict="deny", checked=[])
        layer["why"] = "no address to connect to: no allow entry or pin covers it"
        return layer
    ruleset = render_rules(policy, pins)
    checked = []
    for ip in addresses:
        t = trace(ruleset, Packet(ip, dest.port, dest.protocol))
        checked.append(
            {
                "address": str(ip),
                "verdict": t.verdict,
                "chain": t.chain,
                "rule": t.rule.save_line() if t.rule else None,
                "set_entry": t.set_entry,
                "set": t.rule.match_set if t.rule and t.rule.match_set else None,
            }
        )
    verdicts = {c["verdict"] for c in checked}
    verdict = "allow" if verdicts == {"allow"} else ("audit" if "audit" in verdicts else "deny")
    first = next((c for c in checked if c["verdict"] == verdict), checked[0])
    if first["set_entry"]:
        why = f"ipset {first['set']} entry {first['set_entry']} ({first['rule']})"
    else:
        why = first["rule"] or f"no rule of ours matched in {first['chain']}"
    layer.update(verdict=verdict, checked=checked, why=why)
    return layer


# --- state ----------------------------------------------------------------------------------
def _events(store: Path | None, kind: str, name: str, limit: int = 1) -> list[tuple[float, dict]]:
    if store is None or not store.exists():
        return []
    try:
        from sentinel.store.schema import readonly_uri  # immutable: no -wal/-shm left behind

        conn = sqlite3.connect(readonly_uri(store), uri=True, timeout=5)
        try:
            rows = conn.execute(
                "SELECT ts, detail FROM events WHERE kind = ? AND dst_name = ? "
                "ORDER BY ts DESC LIMIT ?",
                (kind, name, limit),
            ).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return []
    return [(ts, json.loads(detail or "{}")) for ts, detail in rows]


def _pin_record(store: Path | None, name: str) -> dict[str, Any] | None:
    found = _events(store, "pin_changed", name)
    if not found:
        return None
    ts, detail = found[0]
    return {
        "ttl_s": detail.get("ttl_s"),
        "cnames": detail.get("cnames", []),
        "changed_at": ts,
        "age_s": round(time.time() - ts, 1),
    }


def _last_answer(store: Path | None, name: str) -> list:
    """Addresses in the latest relayed answers for the name (A and AAAA are separate)."""
    seen: set[str] = set()
    for _ts, detail in _events(store, "egress_attempt", name, limit=10):
        seen.update((detail.get("answer") or {}).get("addresses", []))
    return sorted(map(ipaddress.ip_address, seen), key=lambda a: (a.version, int(a)))


# --- output ---------------------------------------------------------------------------------
def render_text(result: dict[str, Any]) -> str:
    out = [
        f"{result['destination']}: {result['verdict'].upper()} "
        f"(decided by {result['decided_by']}; mode {result['mode']})",
        f"  why: {result['why']}",
        *([f"  note: {result['read_as']}"] if result.get("read_as") else []),
        f"  policy: {result['policy']} (sha256 {result['policy_sha256'][:12]})",
    ]
    if not result["state_matches_policy"]:
        out.append("  note: the state directory holds no pins for this policy file")
    for e in result["entries"]:
        where = e["host"] or e["cidr"]
        ports = ",".join(map(str, e["ports"]))
        out.append(f"  entry: {e['name']} at {e['where']}: {where} {e['protocol']}/{ports}")
    if not result["entries"]:
        out.append("  entry: none of the policy's allow entries covers this destination")
    for layer in result["layers"]:
        out.append(f"  {layer['layer']:9} {layer['verdict']:5} {layer['why']}")
        for c in layer.get("checked", []):
            match = c["set_entry"] and f"set {c['set']} {c['set_entry']}" or c["rule"] or "-"
            out.append(f"  {'':9} {c['address']}: {c['verdict']} via {match}")
    return "\n".join(out) + "\n"
