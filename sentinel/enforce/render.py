"""Pure rendering: (policy, pins) -> Ruleset, and a decision function over it.

The ruleset has a constant number of iptables rules; allowlisted ip/net + proto + port live in
one ipset per family (hash:net,port), so per-packet cost does not grow with the allowlist and a
10,000-entry apply is one `ipset restore`. Rules render in the exact canonical form that
`iptables-save` prints, so the kernel can be compared with the expectation as text.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sentinel.enforce.kernelstate import (  # noqa: F401 - re-exported: the names stay here too
    CHAIN_DENY,
    CHAIN_DNS,
    CHAIN_OUT,
    HELD_SET,
    NETDEV_TABLE,
    OUR_SETS,
    SET_NAME,
    IpSet,
    canonical_lines,
    ruleset_hash,
)

if TYPE_CHECKING:  # `status` reads rules without loading the policy module (and PyYAML)
    from sentinel.policy.load import Allow, IPAddress, Policy

DOCKER_DNS = "127.0.0.11/32"  # Docker's embedded resolver: reachable only by the sentinel
# Neighbour discovery as the kernel sends it (RFC 4861: hop limit 255; no user socket, so a raw
# ICMPv6 socket cannot use these rules to carry data): type -> (destination, max IPv6 length)
ICMP6_ND = {133: ("ff02::2/128", 64), 135: (None, 96), 136: (None, 96)}
MLD2_REPORT, MLD_MAX_LEN = 143, 40 + 8 + 8 + 20 * 8  # the kernel's own reports: hop limit 1
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
    ctdir: str | None = None
    kernel_only: bool = False  # no user-space socket: the kernel's own ND/MLD
    hop_limit: int | None = None
    max_len: int | None = None
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
        if self.kernel_only:
            out += ["-m", "owner", "!", "--uid-owner", "0-4294967294"]
        if self.icmp6_type is not None:
            out += ["-m", "icmp6", "--icmpv6-type", str(self.icmp6_type)]
        if self.hop_limit is not None:
            out += ["-m", "hl", "--hl-eq", str(self.hop_limit)]
        if self.max_len is not None:
            out += ["-m", "length", "--length", f"0:{self.max_len}"]
        if self.match_set:
            out += ["-m", "set", "--match-set", self.match_set, "dst,dst"]
        if self.mark is not None:
            out += ["-m", "mark", "--mark", hex(self.mark)]
        if self.ctstate:
            out += ["-m", "conntrack", "--ctstate", self.ctstate]
        if self.ctdir:
            out += ["--ctdir", self.ctdir]
        return [*out, "-j", self.target, *self.target_args]

    def save_line(self) -> str:
        return " ".join(["-A", self.chain, *self.args()])


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
class Link:
    """What the netdev layer is rendered for: the namespace's interfaces other than lo, and
    its own IPv6 addresses (whose solicited-node groups are the only MLD reports let out)."""

    devices: tuple[str, ...] = ()
    v6_addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class Ruleset:
    """Everything one apply puts into the kernel (pure data; render_rules builds it)."""

    mode: str
    policy_sha256: str
    rules: tuple[tuple[int, Rule], ...]  # (family, rule)
    sets: tuple[IpSet, ...]
    hooks: tuple[Hook, ...]
    netdev: str = ""  # `table netdev sentinel`, as `nft list` prints it (no counters, no indent)
    link: Link = Link()

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
            "# nft (netdev egress: frames that skip the IP stack)\n" + (self.netdev or "(none)\n")
        )

    def sha256(self) -> str:
        cached = self.__dict__.get("_sha256")  # frozen: computed once (20,000 entries sorted)
        if cached is None:
            cached = ruleset_hash(self.save_text(4), self.save_text(6), self.sets, self.netdev)
            object.__setattr__(self, "_sha256", cached)
        return cached


def render_rules(
    policy: Policy, pins: Pins, link: Link | None = None, held: Iterable[str] = ()
) -> Ruleset:
    """Pure: the complete ruleset for both families. Hosts without pins get no entries.
    `link` (read by `netfilter.read_link`) adds the netdev egress table; without it, none.
    `held`: set entries ("ip,proto:port") retired by pin moves, kept for established flows."""
    rules = [(f, r) for f in (4, 6) for r in _filter_rules(policy, f) + _nat_rules(policy, f)]
    hooks = tuple(
        Hook(f, t, "OUTPUT", c)
        for f in (4, 6)
        for t, c in (("filter", CHAIN_OUT), ("nat", CHAIN_DNS))
    )
    link = link or Link()
    sets = _sets(policy, pins) + _held_sets(held)
    netdev = render_netdev(policy, link)
    return Ruleset(policy.mode, policy.sha256, tuple(rules), sets, hooks, netdev, link)


MLD_TYPES = "mld-listener-query, mld-listener-report, mld-listener-done, mld2-listener-report"
SOLICITED_PREFIX = "0xff0200000000000000000001ff"  # ff02::1:ff00:0/104 (+ aux len, sources 0)


def render_netdev(policy: Policy, link: Link) -> str:
    """Pure: `table netdev sentinel` with an egress chain on every interface but lo, in the
    text `nft list table` prints. Frames leave the stack with a route attached; a frame
    without one that a user-space socket owns (AF_PACKET) is logged to the NFLOG group and
    dropped (audit: logged, let through), and so is every MLD report but one naming only the
    namespace's own solicited-node groups (IPV6_JOIN_GROUP needs no privilege)."""
    if not link.devices:
        return ""
    devices = sorted(link.devices)
    hook = (
        f'device "{devices[0]}"' if len(devices) == 1 else f"devices = {{ {', '.join(devices)} }}"
    )
    verdict = "drop" if policy.mode == "enforce" else "accept"
    log = f'counter log prefix "{NFLOG_PREFIX[policy.mode]}" group {policy.nflog_group} {verdict}'
    lines = [
        f"table netdev {NETDEV_TABLE} {{",
        "chain egress {",
        f"type filter hook egress {hook} priority filter; policy accept;",
    ]
    own = sorted({int(ipaddress.IPv6Address(a)) & 0xFFFFFF for a in link.v6_addresses})
    if own:
        groups = (
            f"0x{own[0]:x}" if len(own) == 1 else "{ " + ", ".join(f"0x{g:x}" for g in own) + " }"
        )
        for n in (1, 2):  # one report names one group, or two (a link-local and a global)
            records = " ".join(
                f"@th,{64 + 160 * i},8 {{ 0x2, 0x3, 0x4 }} @th,{72 + 160 * i},128 "
                f"{SOLICITED_PREFIX} @th,{200 + 160 * i},24 {groups}"
                for i in range(n)
            )
            lines.append(f"icmpv6 type mld2-listener-report @th,48,16 0x{n:x} {records} accept")
    lines += [
        f"icmpv6 type {{ {MLD_TYPES} }} {log}",
        "meta rtclassid 0-4294967295 accept",  # a route is attached: it passed the IP stack
        f"ether type ip6 meta skuid 0-4294967295 {log}",
        f"meta skuid 0-4294967295 {log}",  # IPv4, ARP and any other ethertype
        "}",
        "}",
    ]
    return "\n".join(lines) + "\n"


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
        out += _nd_rules()
    # Enforce: an established flow the app opened is allowed only while its destination is
    # (the set rule above), so a reload, a switch from audit, or a flow opened before the
    # sentinel started cannot keep a connection open; replies to inbound flows pass.
    ctdir = "REPLY" if policy.mode == "enforce" else None
    out += [
        # Before conntrack so the set's per-entry counters see every packet ("netflow").
        Rule("filter", CHAIN_OUT, "ACCEPT", match_set=SET_NAME[family]),
        Rule("filter", CHAIN_OUT, "ACCEPT", match_set=HELD_SET[family], ctstate="ESTABLISHED"),
        Rule("filter", CHAIN_OUT, "ACCEPT", ctstate="RELATED,ESTABLISHED", ctdir=ctdir),
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


def _nft_set(items: list[str]) -> str:
    return "{ " + ", ".join(items) + " }"


def _nd_rules() -> list[Rule]:
    """ND and MLD only as the kernel sends them: no user socket, RFC hop limits, short; MLD
    report contents (which groups) are checked in the netdev table (`render_netdev`)."""
    out = [
        Rule(
            "filter",
            CHAIN_OUT,
            "ACCEPT",
            dst=dst,
            proto="ipv6-icmp",
            kernel_only=True,
            icmp6_type=kind,
            hop_limit=255,
            max_len=max_len,
        )
        for kind, (dst, max_len) in ICMP6_ND.items()
    ]
    return out + [
        Rule(
            "filter",
            CHAIN_OUT,
            "ACCEPT",
            dst="ff02::16/128",
            proto="ipv6-icmp",
            kernel_only=True,
            icmp6_type=MLD2_REPORT,
            hop_limit=1,
            max_len=MLD_MAX_LEN,
        )
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
            family = entries[net.version]
            for text in _set_nets(net):
                for port in allow.ports:
                    family.add(f"{text},{allow.protocol}:{port}")
    return tuple(IpSet(SET_NAME[f], f, tuple(sorted(entries[f]))) for f in (4, 6))


def _held_sets(held: Iterable[str]) -> tuple[IpSet, ...]:
    entries: dict[int, set[str]] = {4: set(), 6: set()}
    for entry in held:
        entries[6 if ":" in entry.partition(",")[0] else 4].add(entry)
    return tuple(IpSet(HELD_SET[f], f, tuple(sorted(entries[f]))) for f in (4, 6))


def held_after_pin_change(old: Ruleset, new: Ruleset) -> list[str]:
    """Pure: what the held sets hold once `old` becomes `new` through a pin change: what
    was held or allowed before and is not allowed now."""

    def entries(r: Ruleset, names: dict[int, str]) -> set[str]:
        return {e for s in r.sets if s.name in names.values() for e in s.entries}

    allowed = entries(new, SET_NAME)
    return sorted((entries(old, HELD_SET) | entries(old, SET_NAME)) - allowed)


def held_entries(ruleset: Ruleset) -> list[str]:
    return sorted(e for s in ruleset.sets if s.name in HELD_SET.values() for e in s.entries)


def _networks(allow: Allow, pins: Pins) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    if allow.cidr is not None:
        return [allow.cidr]
    literal = allow.literal
    addresses = [literal] if literal is not None else list(pins.get(allow.host or "", ()))
    return [ipaddress.ip_network(a) for a in addresses]


def _set_nets(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[str, ...]:
    """The set entries' networks for one network: itself, but `0.0.0.0/0` as 0.0.0.0/1 +
    128.0.0.0/1 and `::/0` as ::/1 + 8000::/1, because the kernel's hash:net sets refuse a
    /0 prefix (the policy allows /0 in audit mode only: sentinel/policy/safety.py). Everything
    that reads the sets (apply's read-back, decide, explain, the report) sees the halves."""
    if net.prefixlen:
        return (_net_text(net),)
    return tuple(_net_text(half) for half in net.subnets(prefixlen_diff=1))


def _net_text(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """The network as the kernel's set dump and `ipset save` print it (inet_ntop; host entries
    without /32 or /128): ipaddress words IPv6 with an IPv4 address inside its own way
    (::ffff:c612:2, ::c612:2 where inet_ntop prints ::ffff:198.18.0.2, ::198.18.0.2), and
    apply's read-back compares the two as text."""
    family, full = (socket.AF_INET, 32) if net.version == 4 else (socket.AF_INET6, 128)
    text = socket.inet_ntop(family, net.network_address.packed)
    return text if net.prefixlen == full else f"{text}/{net.prefixlen}"
