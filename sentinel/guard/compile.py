"""Policy + DNS pins -> the allowlist the in-process guard reads.

Two files, written atomically on `apply` and whenever pins change: `guard/allowlist.json`
(format sentinel-guard-allowlist/2, for people and tools; docs/guard.md) and
`guard/allowlist.marshal` (format /4: the same rules as the guard holds them, in `marshal`,
which every Python has loaded before its first line: no `json` at the app's start-up, behind a
header with the payload's length and check, so that a guard refuses a truncated or damaged file
before unmarshalling it). Guards read only the second; guards in running apps re-read it within
about half a second.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import marshal
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sentinel.atomic import write_atomic
from sentinel.errors import SentinelError
from sentinel.guard import ALLOWLIST_FORMAT, GUARD_CHECK_MOD, GUARD_FORMAT, GUARD_MAGIC
from sentinel.policy.load import Policy

ALLOWLIST_DIR = "guard"
ALLOWLIST_NAME = "allowlist.json"
GUARD_NAME = "allowlist.marshal"
MARSHAL_VERSION = 4  # read by every Python 3.4+ (the app's Python may differ from ours)


def allowlist_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / ALLOWLIST_DIR / ALLOWLIST_NAME


def guard_allowlist_path(state_dir: str | Path) -> Path:
    """What the guard reads by default (format /4)."""
    return Path(state_dir) / ALLOWLIST_DIR / GUARD_NAME


def _packed(text: str) -> bytes | None:
    """The guard's reading of an address: packed, IPv4-mapped IPv6 as 4 bytes; None: a name."""
    try:
        ip = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).packed


def guard_document(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A /2 document as the guard holds its rules (format /4): names normalized (lower case, no
    trailing dot) with their (protocol, ports) specs, pinned and literal addresses packed, CIDR
    groups as (width, prefix, sorted packed networks, protocol, ports); ports as frozensets."""
    names: dict[str, list] = {}
    addrs: dict[bytes, list] = {}
    for entry in doc["entries"]:
        spec = (entry["protocol"], frozenset(entry["ports"]))
        host = entry.get("host")
        if host and _packed(host) is None:
            names.setdefault(host.rstrip(".").lower(), []).append(spec)
        for address in entry["addresses"]:
            packed = _packed(address)
            if packed is None:
                raise SentinelError(f"guard allowlist: {address!r} is not an address")
            addrs.setdefault(packed, []).append(spec)
    nets = []
    for group in doc["nets"]:
        width = 4 if group["family"] == 4 else 16
        blob = bytes.fromhex(group["networks"])
        nets.append((width, group["prefix"], blob, group["protocol"], frozenset(group["ports"])))
    keep = ("policy", "policy_sha256", "policy_stat", "mode", "generated_at", "entry_count")
    return {
        **{k: doc[k] for k in keep},
        "format": GUARD_FORMAT,
        "names": {k: tuple(v) for k, v in names.items()},
        "addrs": {k: tuple(v) for k, v in addrs.items()},
        "nets": tuple(nets),
        "rules": len(doc["entries"]) + sum(len(n[2]) // n[0] for n in nets),
    }


def encode_guard_allowlist(doc: Mapping[str, Any]) -> bytes:
    """The bytes of allowlist.marshal for a /2 document."""
    return frame_guard_payload(marshal.dumps(guard_document(doc), MARSHAL_VERSION))


def frame_guard_payload(payload: bytes) -> bytes:
    """The format line, the header (payload length and check, 8 hex digits each) and the
    payload: what lets a guard refuse any truncation or damage before it unmarshals a byte."""
    if len(payload) >= 1 << 32:
        raise SentinelError(f"guard allowlist: {len(payload)} bytes is too large (4 GiB max)")
    check = int.from_bytes(payload, "little") % GUARD_CHECK_MOD
    return GUARD_MAGIC + b"%08x %08x\n" % (len(payload), check) + payload


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
    """Both files, each atomic (temp file + rename, world-readable: the app may run as another
    user); the guard's first. Returns the JSON one's path."""
    path = allowlist_path(state_dir)
    data = compile_allowlist(policy, pins)
    for target, content in (
        (guard_allowlist_path(state_dir), encode_guard_allowlist(data)),
        # compact: the C encoder (indent= falls back to pure Python: 1 s at 10,000 entries)
        (path, json.dumps(data, separators=(",", ":"), sort_keys=True)),
    ):
        try:
            write_atomic(target, content, mode=0o644)
        except OSError as exc:
            raise SentinelError(f"cannot write {target}: {exc.strerror or exc}") from None
    return path
