"""Attempts, not packets: the NFLOG monitor's folding. Pure.

A packet of a flow already seen within `window` seconds (SYN retransmits, repeated UDP datagrams,
pings of one `ping` run) adds to that flow's packet count instead of making a new event. The
event is emitted at the first packet (so alerts are immediate); when the flow goes quiet and it
had more than one packet, an update with the same id and the final count follows. Expiry and the
size cap close the least recently seen flows first, as `sentinel.folding.OpenItems` does for the
resolver's folding of refusals (the open flows here are kept as plain tuples: `Folder`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import MISSING, fields
from typing import Any

from sentinel.detect.packets import Flow
from sentinel.ids import new_id
from sentinel.store.events import Event

CANARY_PREFIX = "canary-"  # verdict prefix for the sentinel's own canary probes (by mark)
PREFIX_VERDICT = {"sentinel:deny": "blocked", "sentinel:audit": "audited"}


def flow_event(flow: Flow, verdict: str, now: float, event_id: str | None = None) -> Event:
    """The event of a flow's first packet (seen at `now`), with a new id unless given."""
    if flow.icmp_type is None and not flow.link and not flow.groups:
        detail: dict[str, Any] = {}  # an address and ports only: the flood's case
    else:
        detail = {}
        if flow.icmp_type is not None:
            detail["arp_op" if flow.link == "arp" else "icmp_type"] = flow.icmp_type
        if flow.link:
            detail["link_layer"] = flow.link  # logged by the netdev egress table
        if flow.groups:
            detail["records"], detail["groups"] = flow.groups[0], list(flow.groups[1])
    canary = verdict.startswith(CANARY_PREFIX)  # our own probe: recorded, never an attempt
    if _FIELDS_IN_ORDER:  # every field, in the dataclass' order: the state as __init__ sets it
        event = _new(Event)
        _setattr(
            event,
            "__dict__",
            {
                "layer": "canary" if canary else "netfilter",
                "kind": "canary_probe" if canary else "egress_attempt",
                "verdict": verdict[_CANARY_CUT:] if canary else verdict,
                "protocol": flow.protocol,
                "dst_ip": flow.dst_ip,
                "dst_port": flow.dst_port,
                "dst_name": None,
                "packets": 1,
                "pid": None,
                "exe": None,
                "stack": None,
                "detail": detail,
                "ts": now,
                "id": event_id or new_id(),  # not uuid4: no system call per attempt
                "family": flow.family,
                "src_ip": flow.src_ip,
                "src_port": flow.src_port,
                "last_ts": None,
            },
        )
        return event
    return sighting(
        {
            "layer": "canary" if canary else "netfilter",
            "kind": "canary_probe" if canary else "egress_attempt",
            "verdict": verdict.removeprefix(CANARY_PREFIX),
            "protocol": flow.protocol,
            "dst_ip": flow.dst_ip,
            "dst_port": flow.dst_port,
            "family": flow.family,
            "src_ip": flow.src_ip,
            "src_port": flow.src_port,
            "detail": detail,
            "ts": now,
            "id": event_id or new_id(),  # not uuid4: no system call per attempt (sentinel.ids)
        }
    )


_GIVEN = ("layer", "kind", "detail", "ts", "id")  # what `sighting` is always handed


def _defaults() -> dict[str, Any] | None:
    """Every field's default, in field order; None when an Event cannot be made from field
    values alone (a __post_init__, or a field without a plain default beyond `_GIVEN`)."""
    if hasattr(Event, "__post_init__"):
        return None
    out: dict[str, Any] = {}
    for f in fields(Event):
        if f.name in _GIVEN:
            out[f.name] = None
        elif f.default is not MISSING:
            out[f.name] = f.default
        else:
            return None
    return out


_DEFAULTS = _defaults()
_new = object.__new__
_setattr = object.__setattr__
_CANARY_CUT = len(CANARY_PREFIX)
# the fields `flow_event` writes out in full, in this order; any other Event takes `sighting`
_FIELDS_IN_ORDER = _DEFAULTS is not None and tuple(_DEFAULTS) == (
    "layer", "kind", "verdict", "protocol", "dst_ip", "dst_port", "dst_name", "packets", "pid",
    "exe", "stack", "detail", "ts", "id", "family", "src_ip", "src_port", "last_ts",
)  # fmt: skip


def sighting(values: dict[str, Any]) -> Event:
    """`Event(**values)` (`values` holds at least the `_GIVEN` fields) without the frozen
    dataclass' per-field `object.__setattr__` calls: the monitor makes one per attempt (issue
    17). The same event: equal, hashed and copied (`replace`) as one made by `Event(...)`
    (tests/test_monitor.py compares them)."""
    if _DEFAULTS is None:  # Event grew something this shortcut cannot honour
        return Event(**values)
    event = _new(Event)
    state = _DEFAULTS.copy()
    state.update(values)
    _setattr(event, "__dict__", state)
    return event


class Folder:
    """Folds packets of one flow seen within `window` seconds of each other into one event.

    An open flow is kept as plain tuples (last packet time, packets, the event's id and time;
    the rest of the event follows from the key, the flow and verdict), not as objects: the
    garbage collector stops tracking such tuples, and a flood keeps `window` x rate flows open
    (20,000 at 10,000 attempts/s), which as objects it rescanned in every collection (~15% of
    the monitor's time, issue 17). Least recently seen first, as `sentinel.folding.OpenItems`
    (the resolver's folding) keeps them."""

    def __init__(self, window: float, max_flows: int = 200_000) -> None:
        self.window, self.max_flows = window, max_flows
        # flow + verdict -> (last packet time, packets, event id, event time)
        self._open: OrderedDict[tuple, tuple[float, int, str, float]] = OrderedDict()

    def feed(self, flow: Flow, verdict: str, now: float) -> tuple[Event | None, list[Event]]:
        """(new event or None when folded, updates for flows pushed out by the size cap)."""
        key = flow + (verdict,)  # a plain tuple: a tuple subclass (Flow) is always tracked
        items = self._open
        current = items.get(key)
        if current is not None and now - current[0] <= self.window:
            items[key] = (now, current[1] + 1, current[2], current[3])
            items.move_to_end(key)
            return None, []
        event = flow_event(flow, verdict, now)
        closed = [(key, items.pop(key))] if current is not None else []
        items[key] = (now, 1, event.id, now)
        while len(items) > self.max_flows:
            closed.append(items.popitem(last=False))
        if not closed:
            return event, closed
        return event, [u for u in map(_update, closed) if u is not None]

    def expire(self, now: float, everything: bool = False) -> list[Event]:
        """Close quiet flows; the updates (count > 1) are returned."""
        items, closed = self._open, []
        while items:
            key = next(iter(items))
            current = items[key]
            if not everything and now - current[0] <= self.window:
                break
            del items[key]
            closed.append((key, current))
        return [u for u in map(_update, closed) if u is not None]

    def __len__(self) -> int:
        return len(self._open)

    def event_id(self, flow: Flow, verdict: str) -> str | None:
        """The id of the open event a packet of this flow was folded into."""
        current = self._open.get(flow + (verdict,))
        return current[2] if current is not None else None


_flow = tuple.__new__


def _update(item: tuple[tuple, tuple[float, int, str, float]]) -> Event | None:
    """The event of a flow that closed with more than one packet: the event its first packet
    made (the same id and time), with the count and the last packet's time."""
    key, (last, packets, event_id, ts) = item
    if packets == 1:
        return None
    event = flow_event(_flow(Flow, key[:-1]), key[-1], ts, event_id)
    state = dict(vars(event))
    state.update(packets=packets, last_ts=last)
    return sighting(state)
