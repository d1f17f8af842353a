"""The report's time window: `--last`, `--since`/`--until` parsing and ISO rendering."""

from __future__ import annotations

import datetime as dt
import math
import time
from collections import namedtuple
from typing import Any

from sentinel.durations import parse_duration
from sentinel.errors import BadInput

TEN_MINUTES = 600.0


class Window(namedtuple("Window", "since until")):
    """[since, until) in epoch seconds (floats). A named tuple, not a dataclass: the report
    imports no dataclasses (nor typing.NamedTuple, ~2 ms at import with its forward refs)."""

    __slots__ = ()

    @property
    def seconds(self) -> float:
        return self.until - self.since

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "until": self.until,
            "seconds": round(self.seconds, 3),
            "since_iso": iso(self.since),
            "until_iso": iso(self.until),
        }


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def parse_last(value: str) -> float:
    seconds = parse_duration(value or "")
    if not seconds:
        raise BadInput(f"--last: {value!r} is not a positive duration (examples: 90s, 10m, 1h, 7d)")
    return seconds


def parse_time(option: str, value: str, now: float) -> float:
    """An ISO 8601 time (UTC if no zone), epoch seconds, or a duration ago ('15m')."""
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    if parse_duration(text) is not None:
        return now - parse_last(text)
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(
            f"{option}: {value!r} is not a time (ISO 8601 like 2026-01-31T12:00:00Z, "
            "epoch seconds, or a duration ago like 15m)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def _in_range(option: str, value: str | None, ts: float) -> float:
    """`ts` when a clock can show it (finite, years 1-9999); else bad input naming `option`."""
    try:
        if math.isfinite(ts):
            iso(ts)
            return ts
    except (OverflowError, ValueError, OSError):
        pass
    raise BadInput(f"{option}: {value!r} is out of range (a time between the years 1 and 9999)")


def parse_window(
    last: str | None, since: str | None, until: str | None, now: float | None = None
) -> Window:
    now = time.time() if now is None else now
    if last is not None and since is not None:
        raise BadInput("use either --last or --since, not both")
    end = _in_range("--until", until, parse_time("--until", until, now)) if until else now
    if since:
        start = _in_range("--since", since, parse_time("--since", since, now))
    else:
        start = _in_range("--last", last, end - parse_last(last or "10m"))
    if start >= end:
        raise BadInput(f"the window is empty: since {iso(start)} is not before {iso(end)}")
    return Window(start, end)
