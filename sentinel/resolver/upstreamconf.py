"""Which upstream resolver a policy names (`dns.upstream`; `auto` = resolv.conf), without
dnspython: a one-shot apply of a policy that names no host reads this and nothing more."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from sentinel.errors import SentinelError


def resolv_conf_upstream(path: str = "/etc/resolv.conf") -> str:
    """The first nameserver of resolv.conf, read once at start-up (`upstream: auto`)."""
    try:
        for line in Path(path).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                return parts[1].split("%")[0]
    except OSError as exc:
        raise SentinelError(f"dns.upstream auto: cannot read {path}: {exc.strerror}") from None
    raise SentinelError(f"dns.upstream auto: no nameserver in {path}")


def parse_upstream(setting: str) -> tuple[str, int]:
    if setting == "auto":
        return resolv_conf_upstream(), 53
    try:
        ipaddress.ip_address(setting)
        return setting, 53
    except ValueError:
        host, _, port = setting.rpartition(":")
        return host.strip("[]"), int(port)
