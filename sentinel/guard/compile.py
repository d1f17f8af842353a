"""Policy + DNS pins -> the JSON allowlist the in-process guard reads (standard-library JSON).

The sentinel writes it atomically to `$SENTINEL_STATE_DIR/guard/allowlist.json` on `apply` and
whenever pins change; guards in running apps re-read it within about half a second.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sentinel.atomic import write_json_atomic
from sentinel.errors import SentinelError
from sentinel.guard import ALLOWLIST_FORMAT
from sentinel.policy.load import Policy

ALLOWLIST_DIR = "guard"
ALLOWLIST_NAME = "allowlist.json"


def allowlist_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / ALLOWLIST_DIR / ALLOWLIST_NAME


def _addresses(values: Iterable[Any]) -> list[str]:
    parsed = {ipaddress.ip_address(str(v).split("%")[0]) for v in values}
    return [str(a) for a in sorted(parsed, key=lambda a: (a.version, int(a)))]


def compile_allowlist(policy: Policy, pins: Mapping[str, Iterable[Any]]) -> dict[str, Any]:
    """Pure: one entry per allow rule, with the addresses its name is pinned to right now."""
    entries = []
    for allow in policy.allow:
        if allow.cidr is not None:
            addresses: list[str] = []
        elif allow.literal is not None:
            addresses = [str(allow.literal)]
        else:
            addresses = _addresses(pins.get(allow.host or "", ()))
        entries.append(
            {
                "name": allow.name,
                "host": allow.host,
                "cidr": str(allow.cidr) if allow.cidr is not None else None,
                "ports": list(allow.ports),
                "protocol": allow.protocol,
                "addresses": addresses,
            }
        )
    return {
        "format": ALLOWLIST_FORMAT,
        "policy": policy.source,
        "policy_sha256": policy.sha256,
        "mode": policy.mode,
        "generated_at": time.time(),
        "entries": entries,
    }


def write_allowlist(
    policy: Policy, pins: Mapping[str, Iterable[Any]], state_dir: str | Path
) -> Path:
    """Atomic write (temp file + rename, world-readable: the app may run as another user)."""
    path = allowlist_path(state_dir)
    data = compile_allowlist(policy, pins)
    try:
        write_json_atomic(path, data, indent=1, mode=0o644)
    except OSError as exc:
        raise SentinelError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
