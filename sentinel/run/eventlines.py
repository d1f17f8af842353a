"""The event bus' log lines for a batch of events (the NFLOG monitor hands the bus up to 100
attempts a read, issue 17): the same text `context.log_sink` writes for each, one line each,
made without a dict copy and the generic JSON encoder per line, under one timestamp for the
batch, and written to the log in one call.

A line is the sorted-key JSON object `sentinel.log.info_redacted` writes for the event (its
fields, `event_id` for its id, `cid` the same id, component, event, level, timestamp). Strings,
integers, floats and None are written here with the encoder's own functions; anything else
(a non-empty `detail`, a bool, another type) goes through the encoder `info_redacted` uses, so
the text is the same byte for byte (tests/test_bus_sinks.py compares them).
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Callable
from typing import Any

from sentinel.log import _dumps, info_enabled, write_lines
from sentinel.store.events import COLUMNS, Event
from sentinel.store.kinds import QUIET_KINDS

_string = json.encoder.encode_basestring_ascii  # what the encoder writes for a str (C)
_UTC = datetime.UTC
_EXTRA = {"component": '"daemon"', "event": '"event"', "level": '"info"'}  # constants


def _float(value: float) -> str:
    return float.__repr__(value) if math.isfinite(value) else _dumps(value)


_WRITERS: dict[type, Callable[[Any], str]] = {
    str: _string,
    int: int.__repr__,
    float: _float,
    type(None): lambda _value: "null",
}


def _value(value: Any) -> str:
    if type(value) is dict and not value:
        return "{}"
    return _WRITERS.get(type(value), _dumps)(value)


def _plan() -> list[tuple[str, str | None]]:
    """(the key's text with its separator, the field it is read from or None) in key order;
    `timestamp` and `cid` are filled in per line."""
    sources = {name: name for name in COLUMNS if name != "id"}
    sources.update(event_id="id", cid="id", timestamp="", **dict.fromkeys(_EXTRA, ""))
    return [(_string(key) + ": ", sources[key] or None) for key in sorted(sources)]


_PLAN = _plan()


def event_line(event: Event, stamp: str) -> str:
    """The log line (with its newline) of one redacted event, logged at `stamp` (ISO, UTC):
    the generic way, field by field in key order."""
    state = vars(event)
    parts = []
    for key, name in _PLAN:
        if name is not None:
            parts.append(key + _value(state[name]))
        elif key == '"timestamp": ':
            parts.append(key + _string(stamp))
        else:
            parts.append(key + _EXTRA[key[1:-3]])
    return "{" + ", ".join(parts) + "}\n"


# the fields `_lines` writes, in the dataclass' order; any other Event takes `event_line`
_KNOWN = (
    "layer", "kind", "verdict", "protocol", "dst_ip", "dst_port", "dst_name", "packets", "pid",
    "exe", "stack", "detail", "ts", "id", "family", "src_ip", "src_port", "last_ts",
)  # fmt: skip
_int = int.__repr__


def _lines(events: list[Event], stamp: str) -> str:
    """`event_line` of each event, joined: the same text, written out for the Event of
    `_KNOWN` with the type each field usually has checked inline (anything else: `_value`),
    and the batch's shared time stamps encoded once (~2x faster, issue 17)."""
    at = _string(stamp)
    last_ts, ts_text = None, ""
    out = []
    for event in events:
        d = vars(event)
        v = d["id"]
        cid = _string(v) if type(v) is str else _value(v)
        v = d["ts"]
        if v != last_ts or type(v) is not float:  # one read's events share their time
            ts_text, last_ts = _value(v), v
        v = d["detail"]
        detail = "{}" if type(v) is dict and not v else _value(v)
        v = d["dst_ip"]
        dst_ip = _string(v) if type(v) is str else _value(v)
        v = d["dst_name"]
        dst_name = "null" if v is None else _value(v)
        v = d["dst_port"]
        dst_port = _int(v) if type(v) is int else _value(v)
        v = d["exe"]
        exe = "null" if v is None else _value(v)
        v = d["family"]
        family = _int(v) if type(v) is int else _value(v)
        v = d["kind"]
        kind = _string(v) if type(v) is str else _value(v)
        v = d["last_ts"]
        last = "null" if v is None else _value(v)
        v = d["layer"]
        layer = _string(v) if type(v) is str else _value(v)
        v = d["packets"]
        packets = _int(v) if type(v) is int else _value(v)
        v = d["pid"]
        pid = "null" if v is None else _value(v)
        v = d["protocol"]
        protocol = _string(v) if type(v) is str else _value(v)
        v = d["src_ip"]
        src_ip = _string(v) if type(v) is str else _value(v)
        v = d["src_port"]
        src_port = _int(v) if type(v) is int else _value(v)
        v = d["stack"]
        stack = "null" if v is None else _value(v)
        v = d["verdict"]
        verdict = _string(v) if type(v) is str else _value(v)
        out.append(
            f'{{"cid": {cid}, "component": "daemon", "detail": {detail}, "dst_ip": {dst_ip}, '
            f'"dst_name": {dst_name}, "dst_port": {dst_port}, "event": "event", '
            f'"event_id": {cid}, "exe": {exe}, "family": {family}, "kind": {kind}, '
            f'"last_ts": {last}, "layer": {layer}, "level": "info", "packets": {packets}, '
            f'"pid": {pid}, "protocol": {protocol}, "src_ip": {src_ip}, '
            f'"src_port": {src_port}, "stack": {stack}, "timestamp": {at}, "ts": {ts_text}, '
            f'"verdict": {verdict}}}\n'
        )
    return "".join(out)


def lines(events: list[Event], stamp: str) -> str:
    """The log lines of a batch of redacted events, logged at `stamp`."""
    if COLUMNS == _KNOWN:
        return _lines(events, stamp)
    return "".join([event_line(event, stamp) for event in events])


def timestamp() -> str:
    """Now, as `info_redacted` writes it."""
    return datetime.datetime.now(tz=_UTC).isoformat().replace("+00:00", "Z")


def log_lines(events: list[Event]) -> None:
    """`log_sink` for a batch of events the bus redacted: one line each, one write."""
    if not events or not info_enabled():
        return
    write_lines(lines(events, timestamp()), len(events))


def quiet_log_lines(events: list[Event]) -> None:
    """`quiet_log_sink` for a batch: periodic bookkeeping and fold updates are only stored."""
    log_lines([e for e in events if e.kind not in QUIET_KINDS and e.last_ts is None])
