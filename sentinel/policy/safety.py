"""Policy values that parse but would be unsafe: each check returns a reason (or None).

Called from the loader's small hooks (`sentinel/policy/load.py`), so every refusal names the
file, line and field like any other policy error. Refused:

* `cidr: 0.0.0.0/0` or `::/0` in enforce mode (it allows every destination: enforcing nothing);
* a `cidr:` inside ::ffff:0:0/96 (IPv4-mapped: the kernel sends it as IPv4, as for hosts below);
* hosts that are not what they look like: link-local addresses (`169.254.169.254`, the cloud
  metadata service; `fe80::1%eth0`, scoped: netfilter cannot match a zone), IPv4-mapped IPv6
  (`::ffff:198.18.0.2`: the kernel sends IPv4, an IPv6 rule never matches), the unspecified
  address, and names that `inet_aton` reads as an address (`1.2.3` = 1.2.0.3, `0x7f000001` =
  127.0.0.1): the guard, the resolver and libc would disagree about what they mean;
* intervals of 0 (`dns.min_ttl`, `dns.max_ttl`, `monitor.tamper_interval`, `canary.interval`):
  floors of `MIN_INTERVAL` (a 0 s tamper interval spun a core and a 0 s TTL re-queried the
  upstream hundreds of times a second), and a ceiling of `MAX_DURATION` (3650d) for every
  duration (`tamper_interval: 99999999999999999999d` passed check, then `sentinel run` applied
  and died in its loop with an OverflowError).

Warned (printed by `sentinel check`, logged by `sentinel run`): `0.0.0.0/0` in audit mode, very
wide networks, and a DNS upstream that is on none of this network namespace's networks.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

MIN_INTERVAL = 1.0  # seconds
MAX_DURATION = 3650 * 86400.0  # ten years: waits, expiries and timestamps all stay representable
FLOORED = ("dns.min_ttl", "dns.max_ttl", "monitor.tamper_interval", "canary.interval")
_METADATA = ipaddress.ip_address("169.254.169.254")
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")  # IPv4-mapped IPv6: the kernel sends IPv4


def cidr_problem(network: Any, mode: str) -> tuple[str | None, str | None]:
    """(error, warning) for an allowlisted network."""
    if network is None:
        return None, None
    if network.version == 6 and network.subnet_of(_MAPPED):
        return _mapped_network(network), None
    if network.prefixlen == 0:
        reason = f"{network} allows every destination"
        if mode == "enforce":
            return f"{reason}: in enforce mode that enforces nothing (list the networks)", None
        return None, f"{reason} (audit mode: nothing would be reported as an attempt)"
    if (
        network.version == 4
        and network.prefixlen < 8
        or network.version == 6
        and (network.prefixlen < 16)
    ):
        return None, f"{network} is a very wide network ({network.num_addresses:,} addresses)"
    if network.version == 4 and _METADATA in network:
        return None, f"{network} includes the cloud metadata service 169.254.169.254"
    return None, None


_METADATA_INT = int(_METADATA)
_MAPPED_INT = int(_MAPPED.network_address) >> 32


def _mapped_network(network: Any) -> str:
    v4 = ipaddress.ip_network((int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))
    return f"an IPv4-mapped IPv6 network: write {v4} (the kernel sends it as IPv4)"


def quiet_network(network: Any) -> bool:
    """Whether cidr_problem(network, mode) is (None, None) in every mode, without building a
    message: at least /8 (IPv4) or /16 (IPv6); for IPv4 not containing the metadata service,
    for IPv6 not inside ::ffff:0:0/96. The check of 10,000 plain entries (plainentry.py);
    tests/test_plain_entry.py compares it with cidr_problem."""
    prefix = network.prefixlen
    if network.version == 6:
        return prefix >= 16 and not (
            prefix >= 96 and int(network.network_address) >> 32 == _MAPPED_INT
        )
    shift = 32 - prefix
    return prefix >= 8 and (int(network.network_address) >> shift) != (_METADATA_INT >> shift)


def host_problem(host: str) -> str | None:
    """Why an allowlisted host is refused, or None."""
    text = host.strip()
    if ":" not in text and not text.rstrip(".").rpartition(".")[2][:1].isdigit():
        return None  # a name whose last label starts with a letter: nothing to check (fast)
    if "%" in text:
        return "a scoped (link-local) address: netfilter cannot match a zone; not an upstream"
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return _numeric_name(text)
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        return f"an IPv4-mapped IPv6 address: write {mapped} (the kernel sends it as IPv4)"
    if address == _METADATA:
        return "the cloud metadata service (link-local): never an upstream"
    if address.is_link_local:
        return "a link-local address: reachable only on the local link, never an upstream"
    if address.is_unspecified:
        return "the unspecified address: it means this host, not an upstream"
    return None


def _numeric_name(name: str) -> str | None:
    """A 'name' libc would take for an address: 1.2.3, 127.1, 0x7f000001, 0177.0.0.1."""
    try:
        packed = socket.inet_aton(name)
    except (OSError, ValueError):
        packed = None
    if packed is not None:
        return (
            f"not a DNS name: inet_aton reads {name!r} as {socket.inet_ntoa(packed)} "
            "(write the full dotted address, or a real name)"
        )
    if name.rstrip(".").rsplit(".", 1)[-1].isdigit():
        return "not a DNS name: the last label is all digits (no top-level domain is)"
    return None


def interval_problem(path: str, seconds: float) -> str | None:
    if path in FLOORED and seconds < MIN_INTERVAL:
        return f"{seconds:g}s is below the floor of {MIN_INTERVAL:g}s"
    if seconds > MAX_DURATION:
        return f"{seconds:g}s is above the ceiling of {MAX_DURATION / 86400:g}d"
    return None


def upstream_warning(address: str, networks: list[Any] | None = None) -> str | None:
    """A DNS upstream on none of this namespace's networks is reached through a gateway:
    an egress path of its own (the sentinel's exempt traffic). `networks` for tests."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if networks is None:
        from sentinel.enforce.netdev import local_networks

        networks = local_networks()
    nets = networks
    if not nets or any(ip.version == n.version and ip in n for n in nets):
        return None
    shown = ", ".join(str(n) for n in nets if not n.is_loopback)[:200] or "loopback only"
    return (
        f"DNS upstream {address} is on none of this network namespace's networks ({shown}): "
        "its queries leave through a gateway"
    )


def run_warnings(policy: Any, upstream_address: str) -> list[str]:
    """What `sentinel run` logs at start and after a reload: the policy's warnings plus the
    upstream check (only meaningful inside the app's namespace, where the daemon runs)."""
    notes = list(getattr(policy, "warnings", ()))
    note = upstream_warning(upstream_address)
    if note:
        notes.append(f"{policy.source}: dns.upstream: {note}")
    return notes
