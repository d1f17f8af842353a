"""Issue 13 rendering, pure: the netdev egress table (AF_PACKET, MLD contents), neighbour
discovery as only the kernel sends it, and established flows bound to the policy in force.
The same texts are applied and read back in tests/test_l2_netns.py."""

from __future__ import annotations

import ipaddress

from sentinel.enforce.render import Link, held_after_pin_change, render_rules
from sentinel.policy.decide import Packet, decide, prepare_ruleset
from sentinel.policy.load import load_policy

PINS = {"postgres": [ipaddress.ip_address("198.18.0.2")]}
LINK = Link(("eth0",), ("2001:db8::10", "fe80::1:2:3"))

EXPECTED_NETDEV = """\
table netdev sentinel {
chain egress {
type filter hook egress device "eth0" priority filter; policy accept;
icmpv6 type mld2-listener-report @th,48,16 0x1 @th,64,8 { 0x2, 0x3, 0x4 } \
@th,72,128 0xff0200000000000000000001ff @th,200,24 { 0x10, 0x20003 } accept
icmpv6 type mld2-listener-report @th,48,16 0x2 @th,64,8 { 0x2, 0x3, 0x4 } \
@th,72,128 0xff0200000000000000000001ff @th,200,24 { 0x10, 0x20003 } \
@th,224,8 { 0x2, 0x3, 0x4 } @th,232,128 0xff0200000000000000000001ff \
@th,360,24 { 0x10, 0x20003 } accept
icmpv6 type { mld-listener-query, mld-listener-report, mld-listener-done, \
mld2-listener-report } counter log prefix "sentinel:deny" group 1 drop
meta rtclassid 0-4294967295 accept
ether type ip6 meta skuid 0-4294967295 counter log prefix "sentinel:deny" group 1 drop
meta skuid 0-4294967295 counter log prefix "sentinel:deny" group 1 drop
}
}
"""


def mem0(name: str = "policies/mem0.yaml"):
    return load_policy(name)


def test_netdev_table_is_exactly_the_expected_text():
    assert render_rules(mem0(), PINS, LINK).netdev == EXPECTED_NETDEV


def test_netdev_table_covers_every_device_and_logs_without_dropping_in_audit():
    text = render_rules(mem0("policies/mem0-audit.yaml"), PINS, Link(("eth1", "eth0"))).netdev
    assert "type filter hook egress devices = { eth0, eth1 } priority filter;" in text
    assert 'log prefix "sentinel:audit" group 1 accept' in text
    assert " drop" not in text
    # no IPv6 address: no MLD report is let out at all
    assert "mld2-listener-report @th" not in text


def test_no_link_no_netdev_table_and_the_hash_tracks_it():
    policy = mem0()
    bare, linked = render_rules(policy, PINS), render_rules(policy, PINS, LINK)
    assert bare.netdev == "" and "(none)" in bare.text()
    assert bare.sha256() != linked.sha256()
    pending = prepare_ruleset(policy, PINS, pending_ok=True, link=LINK)
    assert pending.sha256() == linked.sha256()
    assert "table netdev sentinel" in linked.text()


def test_established_flows_need_the_allowlist_in_enforce_only():
    enforce = render_rules(mem0(), PINS).save_text(4)
    audit = render_rules(mem0("policies/mem0-audit.yaml"), PINS).save_text(4)
    assert "--ctstate RELATED,ESTABLISHED --ctdir REPLY -j ACCEPT" in enforce
    assert "--ctstate RELATED,ESTABLISHED -j ACCEPT" in audit


def test_neighbour_discovery_only_as_the_kernel_sends_it():
    lines = [
        x for x in render_rules(mem0(), PINS).save_text(6).splitlines() if "--icmpv6-type" in x
    ]
    assert lines == [
        "-A SENTINEL-OUT -d ff02::2/128 -p ipv6-icmp -m owner ! --uid-owner 0-4294967294 -m icmp6"
        " --icmpv6-type 133 -m hl --hl-eq 255 -m length --length 0:64 -j ACCEPT",
        "-A SENTINEL-OUT -p ipv6-icmp -m owner ! --uid-owner 0-4294967294 -m icmp6 --icmpv6-type 135"
        " -m hl --hl-eq 255 -m length --length 0:96 -j ACCEPT",
        "-A SENTINEL-OUT -p ipv6-icmp -m owner ! --uid-owner 0-4294967294 -m icmp6 --icmpv6-type 136"
        " -m hl --hl-eq 255 -m length --length 0:96 -j ACCEPT",
        "-A SENTINEL-OUT -d ff02::16/128 -p ipv6-icmp -m owner ! --uid-owner 0-4294967294 -m icmp6"
        " --icmpv6-type 143 -m hl --hl-eq 1 -m length --length 0:216 -j ACCEPT",
    ]


def test_a_pin_move_holds_the_retired_address_for_open_flows_until_a_full_apply():
    policy = mem0()
    old = render_rules(policy, {"postgres": [ipaddress.ip_address("198.18.0.2")]})
    moved = render_rules(policy, {"postgres": [ipaddress.ip_address("198.18.0.99")]})
    held = held_after_pin_change(old, moved)
    assert held == ["198.18.0.2,tcp:5432"]
    new = render_rules(policy, {"postgres": [ipaddress.ip_address("198.18.0.99")]}, held=held)
    sets = {s.name: s.entries for s in new.sets}
    assert sets["sentinel-held4"] == ("198.18.0.2,tcp:5432",)
    assert sets["sentinel-allow4"] == ("198.18.0.99,tcp:5432",)
    # established only: a new connection to the retired address is denied
    assert (
        "-A SENTINEL-OUT -m set --match-set sentinel-held4 dst,dst -m conntrack --ctstate "
        "ESTABLISHED -j ACCEPT"
    ) in new.save_text(4)
    assert decide(new, Packet(ipaddress.ip_address("198.18.0.2"), 5432, "tcp")) == "deny"
    # moving back allows it again (and it is no longer merely held)
    back = render_rules(policy, {"postgres": [ipaddress.ip_address("198.18.0.2")]})
    assert held_after_pin_change(new, back) == ["198.18.0.99,tcp:5432"]
