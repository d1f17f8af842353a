"""Guard datagrams, parsed with limits: anything out of bounds is `Malformed`, never an exception
that escapes the receiver's loop.

`guard.sock` is 0666 (apps run as any user), so every byte of a datagram is hostile input: it
may be huge, deeply nested (`[[[[...` makes `json` recurse), carry NaN/Infinity, integers past
what SQLite stores (`10**23`), wrong types, or control characters. `decode()` checks size, JSON
nesting depth, every field's type and range, and returns a plain dict with only known fields,
strings escaped (`sentinel.escape`) and clipped. What a datagram *claims* (pid, exe, interval,
ts) is only ever a claim: the receiver takes identity and time from the kernel and its own clock.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from sentinel.escape import escape_controls

MAX_DATAGRAM = 65536
MAX_DEPTH = 4  # {"counters": {...}} / {"stack": [...]}: deeper is never a guard message
MAX_INT = 2**53  # exact in a JSON double and well inside SQLite's 64-bit integers
MAX_PID = 4_194_304  # linux pid_max limit
MAX_STACK = 64
MAX_COUNTERS = 64
MIN_INTERVAL, MAX_INTERVAL = 0.05, 60.0  # a claimed heartbeat interval is clamped into this
TYPES = ("egress_attempt", "heartbeat", "fail_closed")
PROTOCOLS = ("tcp", "udp", "dns", "raw", "tamper", "any", "other")
_ID = re.compile(r"^[0-9A-Za-z-]{1,64}$")
_SHA = re.compile(r"^[0-9a-f]{0,64}$")


class Malformed(ValueError):
    """A datagram the receiver refuses; `reason` is short and safe to log and count by."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _no_constants(name: str) -> Any:
    raise Malformed(f"JSON constant {name} (NaN/Infinity) is not allowed")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 16:
        raise Malformed("integer out of range")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise Malformed("number out of range")
    return value


def parse_json(data: bytes) -> dict[str, Any]:
    """Bytes -> a JSON object, within size and depth limits; Malformed otherwise."""
    if len(data) > MAX_DATAGRAM:
        raise Malformed("datagram too large")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed("not UTF-8") from None
    if _depth_exceeded(text):
        raise Malformed(f"JSON nested deeper than {MAX_DEPTH}")
    try:
        value = json.loads(
            text,
            parse_constant=_no_constants,
            parse_int=_bounded_int,
            parse_float=_finite_float,
        )
    except Malformed:
        raise
    except (ValueError, RecursionError, OverflowError, TypeError) as exc:
        raise Malformed(f"not JSON ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise Malformed("not a JSON object")
    return value


def _depth_exceeded(text: str) -> bool:
    """Cheap upper bound first: without that many brackets there is nothing to walk."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif ch in "]}":
            depth -= 1
    return False


# --- field checks -----------------------------------------------------------------------------
def text(msg: dict[str, Any], key: str, limit: int = 1024) -> str | None:
    value = msg.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Malformed(f"{key}: not a string")
    return escape_controls(value[:limit])


def integer(msg: dict[str, Any], key: str, low: int = 0, high: int = MAX_INT) -> int | None:
    value = msg.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise Malformed(f"{key}: not an integer")
    if not low <= value <= high:
        raise Malformed(f"{key}: {value} out of range {low}..{high}")
    return value


def number(msg: dict[str, Any], key: str) -> float | None:
    value = msg.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Malformed(f"{key}: not a finite number")
    return float(value)


def flag(msg: dict[str, Any], key: str) -> bool:
    value = msg.get(key)
    if value is not None and not isinstance(value, bool):
        raise Malformed(f"{key}: not a boolean")
    return bool(value)


def choice(msg: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str | None:
    value = msg.get(key)
    if value is not None and value not in allowed:
        raise Malformed(f"{key}: not one of {', '.join(allowed)}")
    return value


def string_list(msg: dict[str, Any], key: str, limit: int = MAX_STACK) -> list[str]:
    value = msg.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Malformed(f"{key}: not a list of strings")
    return [escape_controls(v[:2048]) for v in value[-limit:]]


def counters(msg: dict[str, Any], key: str = "counters") -> dict[str, int]:
    value = msg.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_COUNTERS:
        raise Malformed(f"{key}: not a mapping of at most {MAX_COUNTERS} counters")
    out = {}
    for name, count in value.items():
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_INT:
            raise Malformed(f"{key}.{escape_controls(name[:40])}: not a counter")
        out[escape_controls(name[:64])] = count
    return out


def decode(data: bytes) -> dict[str, Any]:
    """A datagram -> the checked fields of a guard message (unknown fields are dropped)."""
    msg = parse_json(data)
    if msg.get("v") != 1 or isinstance(msg.get("v"), bool):
        raise Malformed("not a guard message (v != 1)")
    kind = choice(msg, "type", TYPES)
    if kind is None:
        raise Malformed("type: missing")
    pid = integer(msg, "pid", 0, MAX_PID)
    if pid is None:
        raise Malformed("pid: missing")
    ident = msg.get("id")
    if ident is not None and (not isinstance(ident, str) or not _ID.match(ident)):
        raise Malformed("id: not an event id")
    sha = text(msg, "policy_sha256", 64)
    if sha is not None and not _SHA.match(sha):
        raise Malformed("policy_sha256: not a sha256")
    interval = number(msg, "interval")
    return {
        "type": kind,
        "pid": pid,
        "id": ident,
        "exe": text(msg, "exe", 4096),
        "mode": choice(msg, "mode", ("enforce", "audit")),
        "ts": number(msg, "ts"),
        # egress_attempt
        "event": text(msg, "event", 64),
        "verdict": choice(msg, "verdict", ("blocked", "audited")),
        "host": text(msg, "host", 1024),
        "ip": _ip(msg),
        "port": integer(msg, "port", 0, 65535),
        "protocol": choice(msg, "protocol", PROTOCOLS),
        "reason": text(msg, "reason", 1024),
        "frame": text(msg, "frame", 2048),
        "stack": string_list(msg, "stack"),
        "dropped": integer(msg, "dropped", 0, MAX_INT) or 0,
        "fail_closed": flag(msg, "fail_closed"),
        # heartbeat / fail_closed
        "state": choice(msg, "state", ("running", "exit")),
        "interval": None if interval is None else min(MAX_INTERVAL, max(MIN_INTERVAL, interval)),
        "claimed_interval": interval,
        "policy_sha256": sha,
        "counters": counters(msg),
        "argv0": text(msg, "argv0", 4096),
        "fail_reason": text(msg, "fail_reason", 1024),
        "generation": integer(msg, "generation", 0, MAX_INT),
        "enforce": flag(msg, "enforce"),
    }


def _ip(msg: dict[str, Any]) -> str | None:
    import ipaddress

    value = msg.get("ip")
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise Malformed("ip: not an address")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise Malformed("ip: not an address") from None
