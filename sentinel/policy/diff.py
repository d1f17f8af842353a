"""`policy suggest --diff FILE`: what a suggestion would add to an existing policy, and which of
its entries nothing used in the window (no attempt, no allowed packet counted by the kernel)."""

from __future__ import annotations

import ipaddress
from typing import Any

from sentinel.enforce.render import render_rules
from sentinel.evidence.report import _iso
from sentinel.policy.decide import Packet, decide
from sentinel.policy.explain import allow_lines
from sentinel.policy.load import Allow, Policy
from sentinel.policy.suggest import Entry, Suggestion, entry_matches


def compare(s: Suggestion, existing: Policy) -> dict[str, list[dict[str, Any]]]:
    pins_text = s.observations.applied.get("pins", {})
    pins = {k: [ipaddress.ip_address(a) for a in v] for k, v in pins_text.items()}
    ruleset = render_rules(existing, pins)
    added = []
    for entry in s.entries:
        missing = [
            port for port in entry.allow.ports if not _covered(entry, port, existing, ruleset, pins)
        ]
        if missing:
            added.append({"entry": entry, "ports": missing})
    lines = allow_lines(existing)
    unused, used = [], []
    for i, allow in enumerate(existing.allow):
        packets = sum(
            n
            for e, n in s.observations.allowed_packets.items()
            if entry_matches(allow, e, pins_text)
        )
        attempts = sum(
            e.observed.attempts for e in s.entries if e.observed and _uses(allow, e, pins)
        )
        row = {"allow": allow, "line": lines[i], "packets": packets, "attempts": attempts}
        (used if packets or attempts else unused).append(row)
    return {"added": added, "unused": unused, "used": used}


def _covered(entry: Entry, port: int, existing: Policy, ruleset, pins) -> bool:  # noqa: ANN001
    a = entry.allow
    if a.host and any(
        x.host == a.host and x.protocol == a.protocol and port in x.ports for x in existing.allow
    ):
        return True
    addresses = _addresses(entry, pins)
    return bool(addresses) and all(
        decide(ruleset, Packet(ip, port, a.protocol)) == "allow" for ip in addresses
    )


def _addresses(entry: Entry, pins) -> list:  # noqa: ANN001
    a = entry.allow
    if a.cidr is not None:
        return [a.cidr.network_address]
    seen = entry.observed.addresses if entry.observed else set()
    return [ipaddress.ip_address(x) for x in seen] or list(pins.get(a.host or "", []))


def _uses(allow: Allow, entry: Entry, pins) -> bool:  # noqa: ANN001
    """Did the traffic behind a suggested entry go to this existing entry?"""
    a = entry.allow
    ports = set(allow.ports) & set(a.ports)
    if allow.protocol != a.protocol or not ports:
        return False
    if allow.host and a.host == allow.host:
        return True
    for ip in _addresses(entry, {}):
        if allow.cidr is not None and ip.version == allow.cidr.version and ip in allow.cidr:
            return True
        if ip == allow.literal or ip in pins.get(allow.host or "", []):
            return True
    return False


def render_diff(s: Suggestion, existing: Policy) -> str:
    result = compare(s, existing)
    w = s.observations.window
    out = [
        f"--- {existing.source}",
        f"+++ suggested from {s.observations.source}, {_iso(w.since)} .. {_iso(w.until)}",
    ]
    for row in result["added"]:
        a = row["entry"].allow
        ports = ",".join(map(str, row["ports"]))
        why = row["entry"].comments[0] if row["entry"].comments else ""
        out.append(f"+ {a.name}: {_where(a)} {a.protocol}/{ports}  # {why}")
    for row in result["unused"]:
        a = row["allow"]
        ports = ",".join(map(str, a.ports))
        out.append(
            f"- {a.name} ({existing.source}:{row['line']}): {_where(a)} {a.protocol}/{ports}  "
            "# unused in the window: no attempts, no allowed packets counted"
        )
    for row in result["used"]:
        a = row["allow"]
        out.append(
            f"= {a.name} ({existing.source}:{row['line']}): in use, "
            f"{row['attempts']} attempt(s), {row['packets']} allowed packet(s)"
        )
    if not s.observations.counters_known:
        out.append("# kernel set counters unavailable: 'unused' is judged from attempts only")
    out.append(
        f"{len(result['added'])} to add, {len(result['unused'])} unused, "
        f"{len(result['used'])} in use"
    )
    return "\n".join(out) + "\n"


def _where(a: Allow) -> str:
    return f"host {a.host}" if a.host else f"cidr {a.cidr}"
