"""Pure rendering: (policy, pins) -> Ruleset, and a decision function over it.

The ruleset has a constant number of iptables rules; allowlisted ip/net + proto + port live in
one ipset per family (hash:net,port), so per-packet cost does not grow with the allowlist and a
10,000-entry apply is one `ipset restore`. Rules render in the exact canonical form that
`iptables-save` prints, so the kernel can be compared with the expectation as text.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # `status` reads rules without loading the policy module (and PyYAML)
    from sentinel.policy.load import Allow, IPAddress, Policy

CHAIN_OUT = "SENTINEL-OUT"
CHAIN_DENY = "SENTINEL-DENY"
CHAIN_DNS = "SENTINEL-DNS"
SET_NAME = {4: "sentinel-allow4", 6: "sentinel-allow6"}
DOCKER_DNS = "127.0.0.11/32"  # Docker's embedded resolver: reachable only by the sentinel
ICMP6_NDP = (133, 135, 136, 143)  # router/neighbour solicitation, advert, MLDv2 report
NFLOG_PREFIX = {"enforce": "sentinel:deny", "audit": "sentinel:audit"}
Pins = Mapping[str, Iterable["IPAddress"]]


@dataclass(frozen=True)
class Rule:
    """One iptables rule; fields in the order iptables-save prints them."""

    table: str
    chain: str
    target: str
    dst: str | None = None
    oif: str | None = None
    proto: str | None = None
    dport: int | None = None
    icmp6_type: int | None = None
    match_set: str | None = None
    mark: int | None = None
    ctstate: str | None = None
    target_args: tuple[str, ...] = ()

    def args(self) -> list[str]:
        out: list[str] = []
        if self.dst:
            out += ["-d", self.dst]
        if self.oif:
            out += ["-o", self.oif]
        if self.proto:
            out += ["-p", self.proto]
        if self.dport is not None:
            out += ["-m", self.proto or "", "--dport", str(self.dport)]
        if self.icmp6_type is not None:
            out += ["-m", "icmp6", "--icmpv6-type", str(self.icmp6_type)]
        if self.match_set:
            out += ["-m", "set", "--match-set", self.match_set, "dst,dst"]
        if self.mark is not None:
            out += ["-m", "mark", "--mark", hex(self.mark)]
        if self.ctstate:
            out += ["-m", "conntrack", "--ctstate", self.ctstate]
        return [*out, "-j", self.target, *self.target_args]

    def save_line(self) -> str:
        return " ".join(["-A", self.chain, *self.args()])


@dataclass(frozen=True)
class IpSet:
    name: str
    family: int
    entries: tuple[str, ...]  # "198.18.0.2,tcp:5432", "10.20.0.0/16,tcp:443"

    def create_line(self, name: str | None = None) -> str:
        inet = "inet" if self.family == 4 else "inet6"
        maxelem = max(65536, 2 * len(self.entries))
        return f"create {name or self.name} hash:net,port family {inet} maxelem {maxelem} counters"


@dataclass(frozen=True)
class Hook:
    """A jump from a built-in chain into one of ours, always at position 1."""

    family: int
    table: str
    builtin: str
    chain: str

    def save_line(self) -> str:
        return f"-A {self.builtin} -j {self.chain}"


@dataclass(frozen=True)
class Ruleset:
    mode: str
    policy_sha256: str
    rules: tuple[tuple[int, Rule], ...]  # (family, rule)
    sets: tuple[IpSet, ...]
    hooks: tuple[Hook, ...]

    def chains(self, family: int, table: str) -> list[str]:
        return list(
            dict.fromkeys(r.chain for f, r in self.rules if f == family and r.table == table)
        )

    def tables(self, family: int) -> list[str]:
        return list(dict.fromkeys(r.table for f, r in self.rules if f == family))

    def table_lines(self, family: int, table: str) -> list[str]:
        """Our chains and rules of one table, as iptables-save prints them (no counters)."""
        hooks = [h.save_line() for h in self.hooks if h.family == family and h.table == table]
        rules = [r.save_line() for f, r in self.rules if f == family and r.table == table]
        return canonical_lines(self.chains(family, table), hooks, rules)

    def save_text(self, family: int) -> str:
        out = []
        for table in self.tables(family):
            out += [f"*{table}", *self.table_lines(family, table), "COMMIT"]
        return "\n".join(out) + "\n"

    def ipset_text(self) -> str:
        out = []
        for s in self.sets:
            out += [s.create_line(), *(f"add {s.name} {e}" for e in s.entries)]
        return "\n".join(out) + "\n"

    def text(self) -> str:
        """The whole ruleset as dry-run and evidence show it."""
        return (
            f"# sentinel ruleset {self.sha256()} mode={self.mode} policy={self.policy_sha256}\n"
            f"# ipset\n{self.ipset_text()}# iptables (IPv4)\n{self.save_text(4)}"
            f"# ip6tables (IPv6)\n{self.save_text(6)}"
        )

    def sha256(self) -> str:
        return ruleset_hash(self.save_text(4), self.save_text(6), self.sets)


def canonical_lines(chains: Iterable[str], hooks: Iterable[str], rules: Iterable[str]) -> list[str]:
    """One order for expected and kernel text: chains sorted, hooks, rules grouped by chain."""
    chains = sorted(chains)
    by_chain = sorted(
        rules, key=lambda line: chains.index(line.split()[1]) if line.split()[1] in chains else -1
    )
    return [f":{c} - [0:0]" for c in chains] + list(hooks) + by_chain


def ruleset_hash(v4_text: str, v6_text: str, sets: Iterable[IpSet]) -> str:
    """Hash of what matters: rules per family and set contents (order-free)."""
    h = hashlib.sha256()
    for part in (v4_text, "\0", v6_text):
        h.update(part.encode())
    for s in sorted(sets, key=lambda s: s.name):
        h.update(f"\0{s.name}\0".encode())
        h.update("\n".join(sorted(s.entries)).encode())
    return h.hexdigest()


def render_rules(policy: Policy, pins: Pins) -> Ruleset:
    """Pure: the complete ruleset for both families. Hosts without pins get no entries."""
    rules = [(f, r) for f in (4, 6) for r in _filter_rules(policy, f) + _nat_rules(policy, f)]
    hooks = tuple(
        Hook(f, t, "OUTPUT", c)
        for f in (4, 6)
        for t, c in (("filter", CHAIN_OUT), ("nat", CHAIN_DNS))
    )
    return Ruleset(policy.mode, policy.sha256, tuple(rules), _sets(policy, pins), hooks)


def _filter_rules(policy: Policy, family: int) -> list[Rule]:
    out = [Rule("filter", CHAIN_OUT, "ACCEPT", mark=policy.mark)]  # the sentinel's own sockets
    if family == 4:  # app queries must not reach Docker's resolver around ours
        out.append(Rule("filter", CHAIN_OUT, CHAIN_DENY, dst=DOCKER_DNS))
    out.append(Rule("filter", CHAIN_OUT, "ACCEPT", oif="lo"))
    # A REDIRECTed DNS packet still carries its original output device (eth0) through the rest
    # of the OUTPUT hook, so `-o lo` misses it: accept it by its new destination, the resolver.
    loopback = "127.0.0.1/32" if family == 4 else "::1/128"
    out += [
        Rule("filter", CHAIN_OUT, "ACCEPT", dst=loopback, proto=p, dport=policy.dns.listen_port)
        for p in ("udp", "tcp")
    ]
    if family == 6:  # neighbour discovery, or allowlisted IPv6 upstreams are unreachable
        out += [
            Rule("filter", CHAIN_OUT, "ACCEPT", proto="ipv6-icmp", icmp6_type=t) for t in ICMP6_NDP
        ]
    out += [
        # Before conntrack so the set's per-entry counters see every packet ("netflow").
        Rule("filter", CHAIN_OUT, "ACCEPT", match_set=SET_NAME[family]),
        Rule("filter", CHAIN_OUT, "ACCEPT", ctstate="RELATED,ESTABLISHED"),
        Rule("filter", CHAIN_OUT, CHAIN_DENY),
    ]
    prefix = NFLOG_PREFIX[policy.mode]
    nflog = ("--nflog-prefix", f'"{prefix}"', "--nflog-group", str(policy.nflog_group))
    out.append(Rule("filter", CHAIN_DENY, "NFLOG", target_args=nflog))
    if policy.mode == "audit":
        return [*out, Rule("filter", CHAIN_DENY, "ACCEPT")]
    unreachable = "icmp-port-unreachable" if family == 4 else "icmp6-port-unreachable"
    return out + [
        Rule(
            "filter", CHAIN_DENY, "REJECT", proto="tcp", target_args=("--reject-with", "tcp-reset")
        ),
        Rule("filter", CHAIN_DENY, "REJECT", target_args=("--reject-with", unreachable)),
    ]


def _nat_rules(policy: Policy, family: int) -> list[Rule]:
    """Every app DNS packet (any address, UDP and TCP) lands on the sentinel's resolver."""
    port = ("--to-ports", str(policy.dns.listen_port))
    return [
        Rule("nat", CHAIN_DNS, "RETURN", mark=policy.mark),
        Rule("nat", CHAIN_DNS, "REDIRECT", proto="udp", dport=53, target_args=port),
        Rule("nat", CHAIN_DNS, "REDIRECT", proto="tcp", dport=53, target_args=port),
    ]


def _sets(policy: Policy, pins: Pins) -> tuple[IpSet, ...]:
    entries: dict[int, set[str]] = {4: set(), 6: set()}
    for allow in policy.allow:
        for net in _networks(allow, pins):
            text, family = _net_text(net), entries[net.version]
            for port in allow.ports:
                family.add(f"{text},{allow.protocol}:{port}")
    return tuple(IpSet(SET_NAME[f], f, tuple(sorted(entries[f]))) for f in (4, 6))


def _networks(allow: Allow, pins: Pins) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    if allow.cidr is not None:
        return [allow.cidr]
    literal = allow.literal
    addresses = [literal] if literal is not None else list(pins.get(allow.host or "", ()))
    return [ipaddress.ip_network(a) for a in addresses]


def _net_text(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    # ipset prints host entries without the /32 or /128
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
