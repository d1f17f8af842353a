"""The fast network parser agrees with ipaddress.ip_network(strict=True) or steps aside."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sentinel.policy import netparse
from sentinel.policy.netparse import fast_network

CASES = [
    "198.18.0.0/15",
    "198.18.0.1",
    "198.18.0.1/32",
    "0.0.0.0/0",
    "10.0.0.0/8",
    "10.0.0.1/8",
    "010.0.0.0/8",
    "10.0.0.0/08",
    "10.0.0.0/33",
    "10.0.0.0/",
    "10.0.0.0/-1",
    "10.0.0.0/ 8",
    "1.2.3",
    "0x7f000001",
    "2001:db8::/32",
    "2001:DB8::/32",
    "2001:db8::1/128",
    "::/0",
    "2001:db8:0:0::/64",
    "::ffff:1.2.3.4",
    "::ffff:1.2.3.0/120",
    "fe80::1%eth0",
    "",
    "/",
    "2001:db8::/129",
    "2001:db8::1/32",
    "1.2.3.4/٣",
    "::1",
    "1.2.3.4/32/1",
]


def reference(text):
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        return None


@pytest.mark.parametrize("text", CASES)
def test_agrees_or_steps_aside(text):
    fast = fast_network(text)
    assert fast is None or fast == reference(text)
    if fast is not None:
        assert type(fast) is type(reference(text)) and str(fast) == str(reference(text))


def test_canonical_forms_take_the_fast_path():
    for text in ("198.18.0.0/15", "2001:db8::/32", "198.18.0.7", "::/0"):
        assert fast_network(text) == ipaddress.ip_network(text)


@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_v4_networks(number, prefix):
    net = ipaddress.IPv4Network((number, prefix), strict=False)
    for text in (str(net), f"{ipaddress.IPv4Address(number)}/{prefix}"):
        fast = fast_network(text)
        assert fast is None or fast == reference(text)
    assert fast_network(str(net)) == net


@given(st.integers(0, 2**128 - 1), st.integers(0, 128))
def test_v6_networks(number, prefix):
    net = ipaddress.IPv6Network((number, prefix), strict=False)
    for text in (str(net), f"{ipaddress.IPv6Address(number)}/{prefix}", net.exploded):
        fast = fast_network(text)
        assert fast is None or fast == reference(text)


def same_object(fast, ref):
    """What the constructor would have built: type, attributes, address slots, behaviour."""
    assert type(fast) is type(ref) and vars(fast).keys() == vars(ref).keys()
    assert fast.network_address._ip == ref.network_address._ip
    assert getattr(fast.network_address, "_scope_id", None) == getattr(
        ref.network_address, "_scope_id", None
    )
    assert (fast.netmask, fast.prefixlen, hash(fast)) == (ref.netmask, ref.prefixlen, hash(ref))
    assert fast.broadcast_address == ref.broadcast_address and str(fast) == str(ref)
    if ref.prefixlen >= ref.max_prefixlen - 1:
        assert list(fast.hosts()) == list(ref.hosts())


def test_the_assembled_network_is_the_constructors():
    assert netparse._build is netparse._assembled  # this Python's ipaddress passed the check
    for text in ("198.18.0.0/15", "2001:db8::/32", "0.0.0.0/0", "::/0", "10.0.0.0/31", "::1"):
        same_object(fast_network(text), ipaddress.ip_network(text))


@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_v4_assembled(number, prefix):
    net = ipaddress.IPv4Network((number, prefix), strict=False)
    same_object(fast_network(str(net)), net)


@given(st.integers(0, 2**128 - 1), st.integers(0, 128))
def test_v6_assembled(number, prefix):
    net = ipaddress.IPv6Network((number, prefix), strict=False)
    fast = fast_network(str(net))  # None for an embedded IPv4 form (ipaddress decides)
    if fast is not None:
        same_object(fast, net)
