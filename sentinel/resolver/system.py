"""Addresses for allowlisted names: the system resolver, used by `apply` before DNS pinning."""

from __future__ import annotations

import ipaddress
import socket

from sentinel.policy.load import IPAddress, Policy


def system_pins(
    policy: Policy, skip: set[str] | None = None
) -> tuple[dict[str, list[IPAddress]], list[str]]:
    """Resolve every allowlisted name once; returns (pins, names that did not resolve)."""
    pins: dict[str, list[IPAddress]] = {}
    missing = []
    for host in policy.hostnames:
        if host in (skip or ()):
            continue
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError):
            missing.append(host)
            continue
        addresses = {ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos}
        pins[host] = sorted(addresses, key=lambda a: (a.version, int(a)))
    return pins, missing
