"""The fast check of plain `cidr` entries (policy/plainentry.py) decides exactly as the full
check in validate.py: same Policy, same errors (text and line), same warnings."""

from __future__ import annotations

import pytest

from sentinel.policy import validate
from sentinel.policy.load import PolicyError, parse_policy

ENTRIES = [
    "{name: a, cidr: 198.18.0.0/24, ports: [443, 80, 443]}",
    "{name: a, cidr: 198.18.0.2/32, ports: [5432], protocol: udp}",
    "{name: a, cidr: 198.18.0.2, ports: [1, 65535]}",
    "{name: a, cidr: '2001:db8::/32', ports: [53]}",
    "{name: a, cidr: 2001:db8::1/128, ports: [53]}",
    "{name: a, cidr: 0.0.0.0/0, ports: [443]}",  # enforce: refused; audit: warned
    "{name: a, cidr: 10.0.0.0/7, ports: [443]}",  # very wide: warned
    "{name: a, cidr: 169.254.0.0/16, ports: [80]}",  # the metadata service: warned
    "{name: a, cidr: 198.18.0.1/24, ports: [443]}",  # host bits set
    "{name: a, cidr: 198.018.0.0/24, ports: [443]}",  # not canonical: ipaddress decides
    "{name: a, cidr: 198.18.0.0/24, ports: [0]}",
    "{name: a, cidr: 198.18.0.0/24, ports: [65536]}",
    "{name: a, cidr: 198.18.0.0/24, ports: [true]}",
    "{name: a, cidr: 198.18.0.0/24, ports: []}",
    "{name: a, cidr: 198.18.0.0/24, ports: 443}",
    "{name: a, cidr: 198.18.0.0/24, ports: ['443']}",
    "{name: a, cidr: 198.18.0.0/24, ports: [443], protocol: icmp}",
    "{name: a, cidr: 198.18.0.0/24, ports: [443], extra: 1}",
    "{name: a, cidr: 198.18.0.0/24, host: db.test, ports: [443]}",
    "{name: A, cidr: 198.18.0.0/24, ports: [443]}",
    "{name: 7, cidr: 198.18.0.0/24, ports: [443]}",
    "{cidr: 198.18.0.0/24, ports: [443]}",
    "{name: a, cidr: 7, ports: [443]}",
    "{name: a, cidr: null, ports: [443]}",
    "{name: a, host: db.test, ports: [443]}",
]


def outcome(text: str):
    try:
        policy = parse_policy(text, "p.yaml")
    except PolicyError as exc:
        return "error", str(exc)
    return "ok", policy


@pytest.mark.parametrize("mode", ["enforce", "audit", "bogus"])
@pytest.mark.parametrize("entry", ENTRIES)
def test_the_fast_check_decides_as_the_full_check(monkeypatch, entry, mode):
    # twice the entry: the duplicate-name check runs over what either check built
    text = f"version: 1\nmode: {mode}\nallow:\n  - {entry}\n  - {entry.replace('a,', 'b,', 1)}\n"
    fast = outcome(text)
    monkeypatch.setattr(validate, "plain_cidr_entry", lambda value, mode: None)
    assert fast == outcome(text)


def test_a_big_policy_reads_the_same_both_ways(monkeypatch):
    rows = "".join(
        f"  - {{name: e{i}, cidr: 198.19.{i // 64}.{i % 64 * 4}/30, ports: [443, 8443]}}\n"
        for i in range(2_000)
    )
    text = f"version: 1\nallow:\n{rows}"
    real, taken = validate.plain_cidr_entry, []
    monkeypatch.setattr(
        validate, "plain_cidr_entry", lambda v, m: taken.append(real(v, m)) or taken[-1]
    )
    fast = parse_policy(text)
    assert len(taken) == 2_000 and all(taken)  # every entry took the fast check
    monkeypatch.setattr(validate, "plain_cidr_entry", lambda value, mode: None)
    assert fast == parse_policy(text) and len(fast.allow) == 2_000


def test_quiet_network_is_cidr_problem_without_a_message():
    """safety.quiet_network (the plain entries' check) says "no problem" exactly when
    cidr_problem finds neither an error nor a warning, in both modes."""
    import ipaddress
    import random

    from sentinel.policy.safety import cidr_problem, quiet_network

    rng = random.Random(17)
    nets = [
        "0.0.0.0/0", "128.0.0.0/1", "10.0.0.0/7", "10.0.0.0/8", "169.0.0.0/8", "168.0.0.0/7",
        "169.254.0.0/16", "169.254.169.0/24", "169.254.169.254/32", "169.254.169.255/32",
        "169.254.169.252/30", "169.254.170.0/24", "::/0", "2000::/15", "2001::/16",
        "2001:db8::/32", "::ffff:0:0/96", "fe80::/10", "::ffff:198.18.0.0/120",
        "::ffff:c612:2/128", "::fffe:0:0/96", "::fffe:ffff:0:0/96", "::/96", "::fffe:0:0/95",
    ]  # fmt: skip
    for _ in range(300):  # inside ::ffff:0:0/96 (IPv4-mapped: refused), at every prefix
        prefix = rng.randint(96, 128)
        base = (0xFFFF << 32 | rng.getrandbits(32)) >> (128 - prefix) << (128 - prefix)
        nets.append(str(ipaddress.IPv6Network((base, prefix))))
    for _ in range(3000):
        if rng.random() < 0.5:
            prefix = rng.randint(0, 32)
            base = rng.choice(
                [rng.getrandbits(32), 0xA9FEA9FE ^ rng.getrandbits(rng.randint(0, 12))]
            )
            nets.append(
                str(ipaddress.IPv4Network((base >> (32 - prefix) << (32 - prefix), prefix)))
            )
        else:
            prefix = rng.randint(0, 128)
            base = rng.getrandbits(128) >> (128 - prefix) << (128 - prefix) if prefix else 0
            nets.append(str(ipaddress.IPv6Network((base, prefix))))
    for text in nets:
        net = ipaddress.ip_network(text)
        for mode in ("enforce", "audit"):
            assert quiet_network(net) == (cidr_problem(net, mode) == (None, None)), (text, mode)
