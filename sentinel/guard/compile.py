"""Policy + DNS pins -> the JSON allowlist the in-process guard reads (standard-library JSON).

Format sentinel-guard-allowlist/2 (docs/guard.md); the guard also still reads /1.

The sentinel writes it atomically to `$SENTINEL_STATE_DIR/guard/allowlist.json` on `apply` and
whenever pins change; guards in running apps re-read it within about half a second.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sentinel.atomic import write_atomic
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


def policy_stat(policy: Policy) -> list[int] | None:
    """[size, mtime_ns] of the policy file when it still holds exactly the bytes the policy was
    parsed from (checked by hash, the stat taken before the read and unchanged after it), so a
    guard can skip hashing an unchanged file at every start; None when that cannot be shown."""
    try:
        with open(policy.source, "rb") as f:
            before = os.fstat(f.fileno())
            raw = f.read()
        after = os.stat(policy.source)
    except OSError:
        return None
    key = [before.st_size, before.st_mtime_ns]
    if key != [after.st_size, after.st_mtime_ns]:
        return None
    text = raw.decode("utf-8", "replace")
    return key if hashlib.sha256(text.encode()).hexdigest() == policy.sha256 else None


def compile_allowlist(policy: Policy, pins: Mapping[str, Iterable[Any]]) -> dict[str, Any]:
    """Pure: one entry per host rule (with the addresses its name is pinned to right now), and
    the CIDR rules as a few sorted hex blobs, one per (protocol, ports, family, prefix), which the
    guard searches without parsing each network (10,000 CIDRs load in well under 1 ms)."""
    entries = []
    groups: dict[tuple[str, tuple[int, ...], int, int], set[bytes]] = {}
    for allow in policy.allow:
        if allow.cidr is not None:
            key = (allow.protocol, allow.ports, allow.cidr.version, allow.cidr.prefixlen)
            groups.setdefault(key, set()).add(allow.cidr.network_address.packed)
            continue
        if allow.literal is not None:
            addresses = [str(allow.literal)]
        else:
            addresses = _addresses(pins.get(allow.host or "", ()))
        entries.append(
            {
                "name": allow.name,
                "host": allow.host,
                "ports": list(allow.ports),
                "protocol": allow.protocol,
                "addresses": addresses,
            }
        )
    nets = [
        {
            "protocol": protocol,
            "ports": list(ports),
            "family": family,
            "prefix": prefix,
            "networks": b"".join(sorted(packed)).hex(),
        }
        for (protocol, ports, family, prefix), packed in sorted(groups.items())
    ]
    return {
        "format": ALLOWLIST_FORMAT,
        "policy": policy.source,
        "policy_sha256": policy.sha256,
        "policy_stat": policy_stat(policy),
        "mode": policy.mode,
        "generated_at": time.time(),
        "entry_count": len(policy.allow),
        "entries": entries,
        "nets": nets,
    }


def write_allowlist(
    policy: Policy, pins: Mapping[str, Iterable[Any]], state_dir: str | Path
) -> Path:
    """Atomic write (temp file + rename, world-readable: the app may run as another user)."""
    path = allowlist_path(state_dir)
    data = compile_allowlist(policy, pins)
    try:
        # compact: the C encoder (indent= falls back to pure Python: 1 s at 10,000 entries)
        text = json.dumps(data, separators=(",", ":"), sort_keys=True)
        write_atomic(path, text, mode=0o644)
    except OSError as exc:
        raise SentinelError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
