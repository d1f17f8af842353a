"""Durations as the policy and the CLI write them: '250ms', '30s', '10m', '1h', '7d', or a
plain number of seconds."""

from __future__ import annotations

import math
import re
from typing import Any

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float | None:
    """Seconds (finite, >= 0), or None when `value` is not a duration."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) and value >= 0 else None
    match = _DURATION.match(str(value).strip())
    if not match:
        return None
    return float(match.group(1)) * _UNITS[match.group(2)]
