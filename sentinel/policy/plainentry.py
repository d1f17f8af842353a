"""The fast check of the commonest allow entry: `{name, cidr, ports[, protocol]}`, all valid."""

from __future__ import annotations

from typing import Any

from sentinel.policy import safety
from sentinel.policy.model import NAME_RE, PROTOCOLS, Allow
from sentinel.policy.netparse import fast_network

_ALLOW_KEYS = frozenset({"name", "host", "cidr", "ports", "protocol"})


def plain_cidr_entry(value: Any, mode: Any) -> Allow | None:
    """A `cidr` entry that allow_entry would accept without a problem or a warning, built
    without composing any message path (10,000 of them are most of a big policy). Any doubt
    returns None and allow_entry checks it in full, words the problem and finds its line.
    `mode` changes nothing here: a network it accepts has no problem in any mode."""
    if type(value) is not dict or "host" in value or not value.keys() <= _ALLOW_KEYS:
        return None
    name, ports, protocol = value.get("name"), value.get("ports"), value.get("protocol", "tcp")
    if type(name) is not str or not NAME_RE.match(name) or protocol not in PROTOCOLS:
        return None
    if type(ports) is not list or not ports:
        return None
    for port in ports:
        if type(port) is not int or not 0 < port < 65536:
            return None
    network = fast_network(value.get("cidr"))
    if network is None or not safety.quiet_network(network):
        return None
    listed = tuple(ports)
    unique = _PORTS.get(listed)  # a big allowlist repeats a few port lists
    if unique is None:
        unique = tuple(sorted(set(listed)))
        if len(_PORTS) < 1024:
            _PORTS[listed] = unique
    return Allow(name=name, ports=unique, protocol=protocol, cidr=network)


_PORTS: dict[tuple[int, ...], tuple[int, ...]] = {}  # as written -> sorted, without repeats
