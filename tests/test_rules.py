"""Rule rendering and the decision function: pure, no root."""

from __future__ import annotations

import ipaddress

import pytest

from sentinel.enforce.render import render_rules
from sentinel.errors import SentinelError
from sentinel.policy.decide import (
    Packet,
    decide,
    placeholder_pins,
    prepare_ruleset,
    run_policy_tests,
)
from sentinel.policy.load import load_policy, parse_policy

ip = ipaddress.ip_address
PINS = {
    "postgres": [ip("198.18.0.2"), ip("2001:db8::2")],
    "neo4j": [ip("198.18.0.3")],
    "ollama": [ip("198.18.0.4")],
}

EXPECTED_V4 = """\
*filter
:SENTINEL-DENY - [0:0]
:SENTINEL-OUT - [0:0]
-A OUTPUT -j SENTINEL-OUT
-A SENTINEL-DENY -j NFLOG --nflog-prefix "sentinel:deny" --nflog-group 1
-A SENTINEL-DENY -p tcp -j REJECT --reject-with tcp-reset
-A SENTINEL-DENY -j REJECT --reject-with icmp-port-unreachable
-A SENTINEL-OUT -m mark --mark 0x5e47 -j ACCEPT
-A SENTINEL-OUT -d 127.0.0.11/32 -j SENTINEL-DENY
-A SENTINEL-OUT -o lo -j ACCEPT
-A SENTINEL-OUT -d 127.0.0.1/32 -p udp -m udp --dport 5300 -j ACCEPT
-A SENTINEL-OUT -d 127.0.0.1/32 -p tcp -m tcp --dport 5300 -j ACCEPT
-A SENTINEL-OUT -m set --match-set sentinel-allow4 dst,dst -j ACCEPT
-A SENTINEL-OUT -m set --match-set sentinel-held4 dst,dst -m conntrack --ctstate ESTABLISHED -j ACCEPT
-A SENTINEL-OUT -m conntrack --ctstate RELATED,ESTABLISHED --ctdir REPLY -j ACCEPT
-A SENTINEL-OUT -j SENTINEL-DENY
COMMIT
*nat
:SENTINEL-DNS - [0:0]
-A OUTPUT -j SENTINEL-DNS
-A SENTINEL-DNS -m mark --mark 0x5e47 -j RETURN
-A SENTINEL-DNS -p udp -m udp --dport 53 -j REDIRECT --to-ports 5300
-A SENTINEL-DNS -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 5300
COMMIT
"""


@pytest.fixture
def mem0():
    return load_policy("policies/mem0.yaml")


def test_v4_ruleset_is_exactly_the_expected_text(mem0):
    assert render_rules(mem0, PINS).save_text(4) == EXPECTED_V4


def test_v6_has_neighbour_discovery_and_v6_reject(mem0):
    text = render_rules(mem0, PINS).save_text(6)
    assert (
        "-A SENTINEL-OUT -p ipv6-icmp -m owner ! --uid-owner 0-4294967294 -m icmp6 --icmpv6-type 135"
        " -m hl --hl-eq 255 -m length --length 0:96 -j ACCEPT"
    ) in text
    assert "--reject-with icmp6-port-unreachable" in text
    assert "127.0.0.11" not in text


def test_set_entries_cover_every_pin_port_and_protocol(mem0):
    sets = {s.name: s.entries for s in render_rules(mem0, PINS).sets}
    assert sets["sentinel-allow4"] == (
        "198.18.0.2,tcp:5432",
        "198.18.0.3,tcp:7474",
        "198.18.0.3,tcp:7687",
        "198.18.0.4,tcp:11434",
    )
    assert sets["sentinel-allow6"] == ("2001:db8::2,tcp:5432",)


def test_cidr_and_literal_entries_need_no_pins():
    policy = parse_policy(
        "version: 1\nallow:\n  - {name: lan, cidr: 10.20.0.0/16, ports: [443]}\n"
        "  - {name: lit, host: 2001:db8::7, ports: [53], protocol: udp}\n"
    )
    sets = {s.name: s.entries for s in render_rules(policy, {}).sets}
    assert sets == {
        "sentinel-allow4": ("10.20.0.0/16,tcp:443",),
        "sentinel-allow6": ("2001:db8::7,udp:53",),
        "sentinel-held4": (),
        "sentinel-held6": (),
    }


def test_everything_in_audit_mode_renders_as_two_halves_the_kernel_takes():
    """hash:net refuses a /0 prefix (tests/test_wide_cidr_netns.py applies this for real)."""
    policy = parse_policy(
        "version: 1\nmode: audit\nallow:\n  - {name: all4, cidr: 0.0.0.0/0, ports: [443]}\n"
        "  - {name: all6, cidr: '::/0', ports: [443], protocol: udp}\n"
    )
    ruleset = render_rules(policy, {})
    sets = {s.name: s.entries for s in ruleset.sets}
    assert sets["sentinel-allow4"] == ("0.0.0.0/1,tcp:443", "128.0.0.0/1,tcp:443")
    assert sets["sentinel-allow6"] == ("8000::/1,udp:443", "::/1,udp:443")
    for dst, proto in (
        ("0.0.0.1", "tcp"),
        ("127.255.255.255", "tcp"),
        ("128.0.0.0", "tcp"),
        ("255.255.255.254", "tcp"),
        ("::2", "udp"),
        ("7fff::1", "udp"),
        ("8000::", "udp"),
        ("ffff::1", "udp"),
    ):
        assert decide(ruleset, Packet(ip(dst), 443, proto)) == "allow", dst
    assert decide(ruleset, Packet(ip("198.18.5.5"), 80, "tcp")) == "audit"


def test_ipv6_entries_are_written_as_the_kernel_prints_them():
    """inet_ntop's form (the set dump, `ipset save`), not ipaddress's ::c612:2: apply's
    read-back compares the two as text (tests/test_mapped_aaaa_netns.py on a real kernel)."""
    policy = parse_policy(
        "version: 1\nallow:\n  - {name: compat, host: '::198.18.0.2', ports: [5432]}\n"
        "  - {name: net, cidr: '::c612:0/120', ports: [443]}\n"
        "  - {name: nat64, cidr: '64:ff9b::/96', ports: [443]}\n"
    )
    assert render_rules(policy, {}).sets[1].entries == (
        "64:ff9b::/96,tcp:443",
        "::198.18.0.0/120,tcp:443",
        "::198.18.0.2,tcp:5432",
    )


def test_audit_mode_logs_then_accepts():
    policy = load_policy("policies/mem0-audit.yaml")
    text = render_rules(policy, PINS).save_text(4)
    assert '-A SENTINEL-DENY -j NFLOG --nflog-prefix "sentinel:audit" --nflog-group 1' in text
    assert "-A SENTINEL-DENY -j ACCEPT" in text
    assert "REJECT" not in text


def test_render_is_deterministic_and_hash_tracks_content(mem0):
    a, b = render_rules(mem0, PINS), render_rules(mem0, dict(reversed(list(PINS.items()))))
    assert a.sha256() == b.sha256()
    moved = {**PINS, "ollama": [ip("198.18.0.40")]}
    assert render_rules(mem0, moved).sha256() != a.sha256()


@pytest.mark.parametrize(
    "dst, port, proto, marked, verdict",
    [
        ("198.18.0.2", 5432, "tcp", False, "allow"),
        ("198.18.0.2", 5433, "tcp", False, "deny"),  # allowlisted ip, wrong port
        ("198.18.0.2", 5432, "udp", False, "deny"),  # right port, wrong protocol
        ("198.18.5.5", 5432, "tcp", False, "deny"),  # other ip, allowlisted port
        ("2001:db8::2", 5432, "tcp", False, "allow"),
        ("2001:db8::5", 443, "tcp", False, "deny"),
        ("127.0.0.1", 8080, "tcp", False, "allow"),  # loopback
        ("127.0.0.11", 53, "udp", False, "deny"),  # Docker's resolver, unmarked
        ("127.0.0.11", 53, "udp", True, "allow"),  # ... and the sentinel itself
        ("198.18.5.5", 443, "tcp", True, "allow"),  # sentinel's own marked traffic
        ("198.18.5.5", 0, "icmp", False, "deny"),
    ],
)
def test_decide(mem0, dst, port, proto, marked, verdict):
    assert decide(render_rules(mem0, PINS), Packet(ip(dst), port, proto, marked)) == verdict


def test_decide_in_audit_mode_reports_audit():
    policy = load_policy("policies/mem0-audit.yaml")
    assert decide(render_rules(policy, PINS), Packet(ip("198.18.5.5"), 443, "tcp")) == "audit"


def test_shipped_policy_tests_pass_with_placeholder_pins(mem0):
    results = run_policy_tests(mem0, placeholder_pins(mem0))
    assert results and all(r.passed for r in results)


def test_failing_policy_tests_block_the_apply():
    policy = parse_policy(
        "version: 1\nallow:\n  - {name: pg, host: postgres, ports: [5432]}\n"
        "tests:\n  - {to: 'pg:5433', expect: allow}\n"
        "  - {to: 'postgres:5432', expect: deny}\n",
        "t.yaml",
    )
    with pytest.raises(SentinelError) as info:
        prepare_ruleset(policy, {"postgres": [ip("198.18.0.2")]})
    assert "t.yaml:5: pg:5433 expect allow, got deny" in info.value.message
    assert "t.yaml:6: postgres:5432 expect deny, got allow" in info.value.message


def test_unresolved_name_fails_an_allow_test(mem0):
    results = run_policy_tests(mem0, {})
    assert not [r for r in results if r.test.expect == "allow" and r.passed]
