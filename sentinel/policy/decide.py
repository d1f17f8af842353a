"""Pure decision function: what would the rendered ruleset do with a new connection?

Used by `sentinel check` and before every apply to run the policy's own `tests:`; a policy
whose tests fail is never applied.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from sentinel.enforce.render import CHAIN_OUT, Link, Pins, Rule, Ruleset, render_rules
from sentinel.errors import SentinelError
from sentinel.policy.load import IPAddress, Policy, PolicyTest

# stand-ins for `check` (which resolves nothing): reserved ranges large enough for any policy
# (a /24 ran out at 255 hostnames: IndexError)
_PLACEHOLDER4 = ipaddress.ip_network("240.0.0.0/4")
_PLACEHOLDER6 = ipaddress.ip_network("2001:db8:ffff::/64")


@dataclass(frozen=True)
class Packet:
    """A new connection as the rules see it."""

    dst: IPAddress
    port: int
    proto: str  # tcp | udp | icmp
    marked: bool = False  # carries the sentinel's own mark


@dataclass(frozen=True)
class Trace:
    """Why `decide` said what it said: the rule that ended the walk (None: fell off our
    chains), the chain it sits in, and the set entry when the rule matched an ipset."""

    verdict: str
    chain: str
    rule: Rule | None = None
    set_entry: str | None = None


def decide(ruleset: Ruleset, packet: Packet) -> str:
    """'allow', 'deny' or 'audit' (logged and let through) for the first packet of a flow."""
    return trace(ruleset, packet).verdict


def trace(ruleset: Ruleset, packet: Packet) -> Trace:
    """`decide` with its reason (`sentinel explain` shows it)."""
    family = packet.dst.version
    rules = [r for f, r in ruleset.rules if f == family and r.table == "filter"]
    return _walk(rules, CHAIN_OUT, packet, {s.name: set(s.entries) for s in ruleset.sets})


def _walk(rules: list[Rule], chain: str, packet: Packet, sets: dict[str, set[str]]) -> Trace:
    for rule in (r for r in rules if r.chain == chain):
        if not _matches(rule, packet, sets):
            continue
        entry = _set_entry(sets.get(rule.match_set, set()), packet) if rule.match_set else None
        if rule.target == "ACCEPT":
            return Trace("allow" if chain == CHAIN_OUT else "audit", chain, rule, entry)
        if rule.target in ("REJECT", "DROP"):
            return Trace("deny", chain, rule, entry)
        if rule.target not in ("NFLOG", "RETURN"):  # a jump into another of our chains
            return _walk(rules, rule.target, packet, sets)
    return Trace("allow", chain)  # fell off our chains: the built-in policy (ACCEPT) applies


def _matches(rule: Rule, p: Packet, sets: dict[str, set[str]]) -> bool:
    if rule.mark is not None and not p.marked:
        return False
    if rule.ctstate:  # a first packet is NEW
        return False
    if rule.oif == "lo" and not p.dst.is_loopback:
        return False
    if rule.dst and p.dst not in ipaddress.ip_network(rule.dst):
        return False
    if rule.proto and rule.proto != p.proto:
        return False
    if rule.dport is not None and rule.dport != p.port:
        return False
    if rule.icmp6_type is not None:
        return False  # tests describe connections, not neighbour discovery
    return not rule.match_set or _set_entry(sets.get(rule.match_set, set()), p) is not None


def _set_entry(entries: set[str], p: Packet) -> str | None:
    for entry in entries:
        net, _, proto_port = entry.partition(",")
        proto, _, port = proto_port.partition(":")
        if proto == p.proto and int(port) == p.port and p.dst in ipaddress.ip_network(net):
            return entry
    return None


def placeholder_pins(policy: Policy) -> dict[str, list[IPAddress]]:
    """Stand-in addresses for `sentinel check`, which resolves nothing."""
    return {
        host: [_PLACEHOLDER4[i + 1], _PLACEHOLDER6[i + 1]]
        for i, host in enumerate(policy.hostnames)
    }


@dataclass(frozen=True)
class PolicyTestResult:
    test: PolicyTest
    got: str
    addresses: tuple[str, ...]

    @property
    def passed(self) -> bool:
        want_allow = self.test.expect == "allow"
        return (self.got == "allow") == want_allow if self.addresses else not want_allow


def run_policy_tests(
    policy: Policy, pins: Pins, ruleset: Ruleset | None = None
) -> list[PolicyTestResult]:
    """Evaluate every `tests:` entry; a name is checked at each of its pinned addresses."""
    ruleset = ruleset or render_rules(policy, pins)
    results = []
    for test in policy.tests:
        addresses = _test_addresses(policy, pins, test.host)
        verdicts = {decide(ruleset, Packet(a, test.port, test.protocol)) for a in addresses}
        # every address must agree with the expectation: one denied pin is a failed "allow"
        got = "allow" if verdicts == {"allow"} else ("audit" if "audit" in verdicts else "deny")
        results.append(PolicyTestResult(test, got, tuple(map(str, addresses))))
    return results


def _test_addresses(policy: Policy, pins: Pins, host: str) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    for allow in policy.allow:  # a test may name the entry instead of its host
        if host in (allow.name, allow.host):
            if allow.literal is not None:
                return [allow.literal]
            return list(pins.get(allow.host or "", ()))
    return list(pins.get(host, ()))


def prepare_ruleset(
    policy: Policy, pins: Pins, pending_ok: bool = False, link: Link | None = None
) -> Ruleset:
    """Render and run the policy's own tests: a policy whose tests fail is never applied.
    With `pending_ok` (the daemon, whose DNS pins arrive later) a test that fails only because
    its name has no pin yet is tolerated: that name simply stays denied (fail closed)."""
    ruleset = render_rules(policy, pins, link)
    failed = [
        r
        for r in run_policy_tests(policy, pins, ruleset)
        if not r.passed and (r.addresses or not pending_ok)
    ]
    if failed:
        lines = [
            f"{policy.source}:{r.test.line}: {r.test.to} expect {r.test.expect}, got {r.got}"
            for r in failed
        ]
        raise SentinelError("policy tests failed, nothing applied:\n" + "\n".join(lines))
    return ruleset
