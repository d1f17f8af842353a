"""What `sentinel run` hands its plugged-in services: the live policy, the pins, the event bus.

Services (NFLOG monitor, event store, alert dispatcher, guard receiver) come from
`run.services.SERVICES`: name -> factory(context) returning an object with start()/stop(); they
receive events by `context.add_sink(fn)` and report them with `context.emit(event)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sentinel.log import _CID, get_logger, info_redacted
from sentinel.policy.load import Policy
from sentinel.resolver.pins import PinManager
from sentinel.run import eventlines
from sentinel.store import kinds
from sentinel.store.events import Event, redact_event
from sentinel.store.kinds import QUIET_KINDS
from sentinel.store.model import BUS_REDACTED as _REDACTED

log = get_logger("daemon")

# `_REDACTED`: the redacted event `emit` is handing out in this thread/task: a sink given it
# needs no second redaction (`log_sink` and the store's `put` called any other way redact)


class Service(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


@dataclass
class Context:
    """What a plugged-in service gets: the live policy, the pins, and the event bus."""

    policy: Policy
    policy_path: Path
    backend: str
    pins: PinManager | None = None
    sinks: list[Callable[[Event], None]] = field(default_factory=list)
    reload_hooks: list[Callable[[Policy], None]] = field(default_factory=list)
    # called after every apply and pin change, before the DNS answer that caused it is released
    applied_hooks: list[Callable[[Policy, dict], None]] = field(default_factory=list)
    services: dict[str, Any] = field(default_factory=dict)  # name -> started service
    # a sink's batch form (`emit_many` hands it a whole batch): sink -> fn(list of events)
    batched: dict[Callable[[Event], None], Callable[[list[Event]], None]] = field(
        default_factory=dict
    )

    def add_sink(
        self,
        sink: Callable[[Event], None],
        many: Callable[[list[Event]], None] | None = None,
    ) -> None:
        """Subscribe `sink`; `many`, if given, does for a batch what `sink` does for each of its
        events (in order), so `emit_many` calls it once instead."""
        self.sinks.append(sink)
        if many is not None:
            self.batched[sink] = many

    def emit(self, event: Event) -> None:
        """Fan an event out to every sink; a failing sink never stops the others.

        The event is redacted once, here, and every sink gets that one redacted event: its log
        line and its stored row carry the same text, and nothing unredacted leaves the bus."""
        event = _ready(event)
        token = _CID.set(event.id)  # `correlation(event.id)` without its generator (hot path)
        shared = _REDACTED.set(event)
        try:
            for sink in tuple(self.sinks):
                _call(sink, event)
        finally:
            _REDACTED.reset(shared)
            _CID.reset(token)

    def emit_many(self, events: list[Event]) -> None:
        """`emit` for a batch (the NFLOG monitor's read of up to 100 messages): each event is
        checked and redacted as `emit` does, then each sink in turn is handed the whole batch
        by its batch form, or each event with its correlation id bound, as `emit` would. What
        a sink sees is the same as from `emit` event by event; only the interleaving of sinks
        differs (every sink still sees the events in order)."""
        ready = [_ready(event) for event in events]
        for sink in tuple(self.sinks):
            many = self._batch_form(sink)
            if many is not None:
                _call(many, ready)
                continue
            for event in ready:
                token, shared = _CID.set(event.id), _REDACTED.set(event)
                try:
                    _call(sink, event)
                finally:
                    _REDACTED.reset(shared)
                    _CID.reset(token)

    def _batch_form(self, sink: Callable[[Event], None]) -> Callable[[list[Event]], None] | None:
        try:
            return self.batched.get(sink) or _BATCH_FORMS.get(sink)
        except TypeError:  # an unhashable callable: event by event
            return None

    def run_applied_hooks(self, policy: Policy, pins: dict) -> None:
        for hook in self.applied_hooks:
            try:
                hook(policy, pins)
            except Exception:  # noqa: BLE001 - one hook must not stop the others
                log.exception("applied_hook_failed", hook=getattr(hook, "__qualname__", ""))


def _ready(event: Event) -> Event:
    """An event as every sink gets it: its kind checked against sentinel.store.kinds (the one
    table of kinds), redacted once (a kernel sighting has no free text: as it is)."""
    if not kinds.known(event.kind):
        log.error("unregistered_event_kind", kind=event.kind, layer=event.layer)
    if event.dst_name or event.exe or event.stack or event.detail:
        return redact_event(event)
    return event


def _call(sink: Callable[[Any], None], arg: Any) -> None:
    """One sink's delivery; a failing sink is logged and never stops the others."""
    try:
        sink(arg)
    except Exception:  # noqa: BLE001
        log.exception("sink_failed", sink=getattr(sink, "__qualname__", str(sink)))


def log_sink(event: Event) -> None:
    """The event's JSON log line, from the redacted event `emit` hands every sink (the stored
    row has the same text); an event that did not come through `emit` is redacted here."""
    if _REDACTED.get() is not event:
        event = redact_event(event)
    fields = dict(vars(event))  # shallow: the line only reads it
    fields["event_id"] = fields.pop("id")
    info_redacted("daemon", "event", fields)


def quiet_log_sink(event: Event) -> None:
    """Log every event except the periodic bookkeeping ones (those are only stored)."""
    if event.kind not in QUIET_KINDS and event.last_ts is None:
        log_sink(event)


# the log sinks' batch forms: one line per event, one write per batch (run/eventlines.py)
_BATCH_FORMS: dict[Callable[[Event], None], Callable[[list[Event]], None]] = {
    log_sink: eventlines.log_lines,
    quiet_log_sink: eventlines.quiet_log_lines,
}
