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

from sentinel.log import correlation, get_logger
from sentinel.policy.load import Policy
from sentinel.resolver.pins import PinManager
from sentinel.store import kinds
from sentinel.store.events import Event
from sentinel.store.kinds import QUIET_KINDS

log = get_logger("daemon")


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

    def add_sink(self, sink: Callable[[Event], None]) -> None:
        self.sinks.append(sink)

    def emit(self, event: Event) -> None:
        """Fan an event out to every sink; a failing sink never stops the others."""
        if not kinds.known(event.kind):  # sentinel.store.kinds is the one table of kinds
            log.error("unregistered_event_kind", kind=event.kind, layer=event.layer)
        with correlation(event.id):
            for sink in list(self.sinks):
                try:
                    sink(event)
                except Exception:  # noqa: BLE001
                    log.exception("sink_failed", sink=getattr(sink, "__qualname__", str(sink)))

    def run_applied_hooks(self, policy: Policy, pins: dict) -> None:
        for hook in self.applied_hooks:
            try:
                hook(policy, pins)
            except Exception:  # noqa: BLE001 - one hook must not stop the others
                log.exception("applied_hook_failed", hook=getattr(hook, "__qualname__", ""))


def log_sink(event: Event) -> None:
    fields = dict(vars(event))  # shallow, the logger only reads it (to_dict deep-copies)
    fields.pop("id")
    log.info("event", event_id=event.id, **fields)


def quiet_log_sink(event: Event) -> None:
    """Log every event except the periodic bookkeeping ones (those are only stored)."""
    if event.kind not in QUIET_KINDS and event.last_ts is None:
        log_sink(event)
