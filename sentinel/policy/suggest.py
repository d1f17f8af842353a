"""Learn mode: a policy proposed from what the app really tried to reach (`policy suggest`).

Read-only. Sources: the event store (or an evidence bundle) for the attempts every layer saw in
a window, `applied.json` for the policy in force and its pins, and the kernel's per-entry set
counters for the allowlisted traffic that was let through without being logged.

Rules: one entry per destination *name* (the DNS layer's relayed answers tie an address to the
name the app asked for; CNAME targets collapse onto that name), with the ports and protocol that
were seen; an address seen without any name becomes a single-address `cidr` entry, commented as
such. Never a range wider than the one address seen, never loopback, never the sentinel's own
traffic (marked packets are accepted before anything is logged) or its canary probes.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from sentinel.errors import SentinelError
from sentinel.evidence.report import _iso, join_attempts
from sentinel.policy.load import Allow, Policy, parse_policy
from sentinel.policy.observed import Observations
from sentinel.store.events import Event

SERVICE_PROTOCOLS = ("tcp", "udp")
DENY_FALLBACK = ("198.51.100.7", "2001:db8:dead::7")  # documentation addresses
_SLUG = re.compile(r"[^a-z0-9_-]+")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


@dataclass
class Destination:
    """One name (or one address seen without a name) and what was seen going to it."""

    key: str  # the name, or the address
    named: bool
    layers: Counter = field(default_factory=Counter)
    attempts: int = 0
    first: float = 0.0
    last: float = 0.0
    verdicts: Counter = field(default_factory=Counter)
    ports: set[tuple[str, int]] = field(default_factory=set)  # (protocol, port)
    lookup_ports: set[int] = field(default_factory=set)  # ports seen only at name resolution
    addresses: set[str] = field(default_factory=set)

    def add(self, record: dict[str, Any]) -> None:
        self.attempts += 1
        self.layers.update(record["layers"])
        self.verdicts[record["verdict"]] += 1
        ts = record["ts"]
        self.first = ts if not self.first else min(self.first, ts)
        self.last = max(self.last, ts)
        if record["dst_ip"]:
            self.addresses.add(record["dst_ip"])
        port, proto = record["dst_port"], record["protocol"]
        if port is not None and proto in SERVICE_PROTOCOLS:
            self.ports.add((proto, int(port)))
        elif port is not None and proto == "dns" and "dns" not in record["layers"]:
            self.lookup_ports.add(int(port))  # the guard saw getaddrinfo(name, port)

    def comment(self) -> str:
        layers = ", ".join(f"{k}={v}" for k, v in sorted(self.layers.items()))
        verdicts = ", ".join(f"{k}={v}" for k, v in sorted(self.verdicts.items()))
        return (
            f"{self.attempts} attempt(s) ({layers}; {verdicts}), "
            f"first {_iso(self.first)}, last {_iso(self.last)}"
        )


@dataclass
class Entry:
    allow: Allow
    comments: list[str]
    test_port: int
    observed: Destination | None = None  # what was seen going there (attempts)
    carried: bool = False  # the entry comes from the policy in force (its traffic was counted)


@dataclass
class Suggestion:
    entries: list[Entry]
    skipped: list[str]
    deny_test: str
    observations: Observations

    def text(self) -> str:
        return render(self)


# --- learning -------------------------------------------------------------------------------
def suggest(obs: Observations) -> Suggestion:
    skipped: list[str] = []
    excluded = _own_addresses(obs.in_force)
    owners = _cname_owners(obs.events)
    answers = _answers(obs.events)
    for name, addresses in obs.applied.get("pins", {}).items():  # answered from pins: no event
        for address in addresses:
            answers.setdefault(str(address), []).append((0.0, name))
    dests: dict[str, Destination] = {}
    for record in join_attempts(obs.events):
        key, named = _attribute(record, answers, owners)
        if key is None:
            continue
        if not named:
            reason = _never(key, excluded)
            if reason:
                skipped.append(f"{key}: {reason}")
                continue
        elif not _valid_name(key):
            skipped.append(f"{key!r}: not a valid DNS name")
            continue
        dests.setdefault(key, Destination(key, named)).add(record)
    entries = _carried_over(obs, skipped)
    names = {e.allow.name for e in entries}
    for dest in sorted(dests.values(), key=lambda d: (not d.named, d.key)):
        for entry in _entries_for(dest, names, skipped):
            _merge(entries, entry)
    suggestion = Suggestion(entries, sorted(set(skipped)), "", obs)
    suggestion.deny_test = _deny_target(suggestion)
    _self_check(suggestion)
    return suggestion


def _answers(events: list[Event]) -> dict[str, list[tuple[float, str]]]:
    """address -> [(ts, asked name)] from the DNS layer's relayed answers."""
    out: dict[str, list[tuple[float, str]]] = {}
    for e in events:
        answer = e.detail.get("answer") if e.layer == "dns" else None
        if e.dst_name and isinstance(answer, dict):
            for address in answer.get("addresses", []):
                out.setdefault(str(address), []).append((e.ts, e.dst_name))
    return out


def _cname_owners(events: list[Event]) -> dict[str, str]:
    """CNAME target -> the name the app asked for."""
    owners: dict[str, str] = {}
    for e in events:
        answer = e.detail.get("answer") if e.layer == "dns" else None
        if e.dst_name and isinstance(answer, dict):
            for target in answer.get("cnames", []):
                owners.setdefault(str(target), e.dst_name)
    return owners


def _attribute(
    record: dict[str, Any], answers: dict[str, list[tuple[float, str]]], owners: dict[str, str]
) -> tuple[str | None, bool]:
    name = record["dst_name"]
    if not name and record["dst_ip"]:
        seen = answers.get(record["dst_ip"], [])
        before = [s for s in seen if s[0] <= record["ts"] + 2.0]
        chosen = max(before) if before else min(seen, default=None)
        name = chosen[1] if chosen else None
    if not name:
        return record["dst_ip"], False
    name = name.rstrip(".").lower()
    for _ in range(8):  # a CNAME target the app asked for itself still belongs to the owner
        if name not in owners or owners[name] == name:
            break
        name = owners[name]
    return name, True


def _own_addresses(policy: Policy | None) -> set[str]:
    """Addresses of the sentinel's own probes and resolver: never an app destination."""
    if policy is None:
        return set()
    own = {policy.canary.target, policy.canary.target6}
    upstream = policy.dns.upstream
    if upstream != "auto":
        own.add(upstream.rsplit(":", 1)[0] if upstream.count(":") == 1 else upstream)
    return {str(ipaddress.ip_address(a)) for a in own if a}


def _never(address: str, excluded: set[str]) -> str | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "not an address"
    if str(ip) in excluded:
        return "the sentinel's own canary or resolver address"
    if ip.is_loopback or ip.is_unspecified:
        return "loopback is never an entry (always allowed)"
    if ip.is_link_local or ip.is_multicast:
        return "link-local or multicast: review by hand, never suggested"
    return None


def _valid_name(name: str) -> bool:
    return 0 < len(name) <= 253 and all(_LABEL.match(x) for x in name.split("."))


def _entries_for(dest: Destination, names: set[str], skipped: list[str]) -> list[Entry]:
    ports: dict[str, set[int]] = {}
    notes = []
    for proto, port in dest.ports:
        ports.setdefault(proto, set()).add(port)
    if not ports and dest.lookup_ports:
        ports["tcp"] = set(dest.lookup_ports)
        notes.append("ports seen only at name resolution (guard); protocol tcp assumed")
    if not ports:
        skipped.append(f"{dest.key}: {dest.comment()}; no port seen (only looked up)")
        return []
    out = []
    for proto in sorted(ports):
        slug = _slug(dest.key if dest.named else f"ip-{dest.key}")
        name = _unique(slug if proto == "tcp" or "tcp" not in ports else f"{slug}-udp", names)
        if dest.named:
            allow = Allow(name, tuple(sorted(ports[proto])), proto, host=dest.key)
            seen = ", ".join(sorted(dest.addresses)) or "no connection address recorded"
            comments = [f"{dest.key}: {dest.comment()}", f"  addresses seen: {seen}", *notes]
            if out:
                comments = [f"{dest.key} over {proto}: the same destination as above"]
        else:
            ip = ipaddress.ip_address(dest.key)
            net = ipaddress.ip_network(f"{ip}/{ip.max_prefixlen}")
            allow = Allow(name, tuple(sorted(ports[proto])), proto, cidr=net)
            comments = [
                f"{dest.key}: no name was seen for this address (connections by IP only)",
                f"  {dest.comment()}",
            ]
        out.append(Entry(allow, comments, min(ports[proto]), dest))
    return out


def _merge(entries: list[Entry], new: Entry) -> None:
    """New ports of a name already carried over widen that entry instead of a second one."""
    for i, old in enumerate(entries):
        a = old.allow
        if old.carried and a.host and (a.host, a.protocol) == (new.allow.host, new.allow.protocol):
            ports = tuple(sorted({*a.ports, *new.allow.ports}))
            comments = [*old.comments, *new.comments]
            entries[i] = Entry(replace(a, ports=ports), comments, old.test_port, new.observed, True)
            return
    entries.append(new)


def _carried_over(obs: Observations, skipped: list[str]) -> list[Entry]:
    """Entries of the policy in force whose allowlisted traffic the kernel counted."""
    policy = obs.in_force
    if policy is None or not obs.allowed_packets:
        return []
    pins = obs.applied.get("pins", {})
    out = []
    for allow in policy.allow:
        used = {e: n for e, n in obs.allowed_packets.items() if entry_matches(allow, e, pins)}
        if not used:
            continue
        if allow.cidr is not None and allow.cidr.prefixlen == 0:
            skipped.append(f"{allow.name}: in force as {allow.cidr}, never suggested (everything)")
            continue
        ports = sorted({int(e.rpartition(":")[2]) for e in used})
        comment = (
            f"{allow.name}: in force and used, {sum(used.values())} packet(s) allowed "
            f"to port(s) {', '.join(map(str, ports))} in the window (kernel set counters)"
        )
        out.append(Entry(allow, [comment], ports[0], carried=True))
    return out


def entry_matches(allow: Allow, set_entry: str, pins: dict[str, list[str]]) -> bool:
    """Does an ipset entry ("198.18.0.2,tcp:5432") belong to this allow entry?"""
    net_text, _, proto_port = set_entry.partition(",")
    proto, _, port = proto_port.partition(":")
    if proto != allow.protocol or not port.isdigit() or int(port) not in allow.ports:
        return False
    net = ipaddress.ip_network(net_text, strict=False)
    if allow.cidr is not None:
        return net.version == allow.cidr.version and net.subnet_of(allow.cidr)  # type: ignore[arg-type]
    addresses = [str(allow.literal)] if allow.literal else pins.get(allow.host or "", [])
    return any(net.version == a.version and a in net for a in map(ipaddress.ip_address, addresses))


def _slug(text: str) -> str:
    slug = _SLUG.sub("-", text.lower().replace(".", "-").replace(":", "-")).strip("-_")
    return (slug if slug[:1].isalnum() else f"x{slug}")[:32] or "entry"


def _unique(slug: str, names: set[str]) -> str:
    name, n = slug, 1
    while name in names:
        n += 1
        name = f"{slug[: 32 - len(str(n)) - 1]}-{n}"
    names.add(name)
    return name


def _deny_target(s: Suggestion) -> str:
    """A canary address (the policy's own, else a documentation address) nothing allows."""
    from sentinel.policy.decide import Packet, decide, placeholder_pins

    policy = parse_policy(render(s, with_tests=False))
    canary = s.observations.in_force.canary if s.observations.in_force else None
    port = canary.port if canary else 443
    candidates = [canary.target, canary.target6] if canary else []
    from sentinel.enforce.render import render_rules

    ruleset = render_rules(policy, placeholder_pins(policy))
    for address in [a for a in candidates if a] + list(DENY_FALLBACK):
        if decide(ruleset, Packet(ipaddress.ip_address(address), port, "tcp")) != "allow":
            return _host_port(address, port)
    raise SentinelError("policy suggest: every canary address is allowed by the suggestion")


def _self_check(s: Suggestion) -> None:
    """The output must pass `sentinel check`: parse it and run its own tests."""
    from sentinel.policy.decide import placeholder_pins, run_policy_tests

    policy = parse_policy(render(s), "<suggestion>")
    failed = [r for r in run_policy_tests(policy, placeholder_pins(policy)) if not r.passed]
    if failed:
        raise SentinelError(f"policy suggest: generated tests fail: {failed[0].test.to}")


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- output ---------------------------------------------------------------------------------
def render(s: Suggestion, with_tests: bool = True) -> str:
    obs = s.observations
    w = obs.window
    carried = sum(e.carried for e in s.entries)
    lines = [
        "# sentinel policy suggest: a proposal, review it before use",
        f"# source: {obs.source}",
        f"# window: {_iso(w.since)} .. {_iso(w.until)}",
        f"# {len(s.entries) - carried} entr(ies) learned from attempts, "
        f"{carried} carried over from the policy in force (their traffic was counted)",
    ]
    if not obs.counters_known:
        lines.append("# kernel set counters unavailable: allowlisted traffic is not carried over")
    lines += [f"# not suggested: {x}" for x in s.skipped]
    lines += ["# dns/alerts/monitor/canary settings: copy them from your current policy", ""]
    lines += ["version: 1", "mode: enforce"]
    lines.append("allow:" if s.entries else "allow: []")
    for entry in s.entries:
        lines += [f"  # {c}" for c in entry.comments]
        lines.append(f"  - {_flow(entry.allow)}")
    if with_tests:
        lines.append("tests:")
        for entry in s.entries:
            a = entry.allow
            host = a.host or str(a.cidr.network_address)  # type: ignore[union-attr]
            proto = "" if a.protocol == "tcp" else f", protocol: {a.protocol}"
            to = json.dumps(_host_port(host, entry.test_port))
            lines.append(f"  - {{to: {to}, expect: allow{proto}}}")
        lines.append("  # a canary address: nothing that was not seen may be reached")
        lines.append(f"  - {{to: {json.dumps(s.deny_test)}, expect: deny}}")
    return "\n".join(lines) + "\n"


def _flow(a: Allow) -> str:
    where = f"host: {json.dumps(a.host)}" if a.host else f"cidr: {a.cidr}"
    ports = ", ".join(map(str, a.ports))
    return f"{{name: {json.dumps(a.name)}, {where}, ports: [{ports}], protocol: {a.protocol}}}"
