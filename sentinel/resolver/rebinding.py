"""DNS rebinding: answers that are never pinned, and internal ranges only for internal names
(docs/dns.md, "DNS rebinding")."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from sentinel.policy.load import IPAddress

# Answers that are never pinned, for any name: they would point the app at itself, at the
# node's link-local services (169.254.169.254 is the cloud metadata endpoint) or nowhere.
# IPv6 with an IPv4 address inside: IPv4-mapped (::ffff:0:0/96, sent as IPv4: a v6 entry never
# matches it) and IPv4-compatible (::/96, deprecated by RFC 4291 2.5.5.1; through a sit device
# sent as IPv4 too); no real upstream answers either, and both read back from the kernel's set
# in another text form than Python's (::ffff:198.18.0.2, not ::ffff:c612:2).
_NEVER = [
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "224.0.0.0/4",
        "255.255.255.255/32",
        "::/96",  # with :: and ::1
        "fe80::/10",
        "ff00::/8",
        "::ffff:0:0/96",
    )
]
# Internal ranges: fine for internal names (compose services), DNS rebinding for external ones.
_INTERNAL = [
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
]
_INTERNAL_SUFFIXES = (
    ".local",
    ".internal",
    ".lan",
    ".home.arpa",
    ".localdomain",
    ".svc",
    ".cluster.local",
    ".svc.cluster.local",
)


def normalize(name: str) -> str:
    return name.strip().rstrip(".").lower()


def is_external(name: str) -> bool:
    """Single-label names (compose services) and private suffixes are internal; FQDNs are not."""
    name = normalize(name)
    return "." in name and not name.endswith(_INTERNAL_SUFFIXES)


def rebinding_filter(name: str, addresses: Iterable[IPAddress]) -> tuple[list, list]:
    """(kept, dropped): see docs/dns.md, "DNS rebinding"."""
    kept, dropped = [], []
    external = is_external(name)
    for a in addresses:
        bad = any(a in n for n in _NEVER if n.version == a.version) or (
            external and any(a in n for n in _INTERNAL if n.version == a.version)
        )
        (dropped if bad else kept).append(a)
    return kept, dropped
