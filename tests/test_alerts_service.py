"""The dispatcher as a `sentinel run` service: bus in, own events back out (once), fold
updates skipped, reload swaps sinks without losing or blocking events."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from sentinel.alerts.breaker import OPEN
from sentinel.alerts.dispatcher import Backoff
from sentinel.alerts.service import AlertService
from sentinel.lab.alertreceiver import Answer, Receiver
from sentinel.policy.load import parse_policy
from sentinel.run.daemon import Context
from sentinel.store.events import Event

POLICY = """
version: 1
mode: enforce
alerts:
  webhook: {url_env: S_HOOK_URL}
  dedup_window: 60s
"""


def _attempt(port: int = 443) -> Event:
    return Event(
        layer="netfilter", kind="egress_attempt", dst_ip="198.18.5.5", dst_port=port, exe="/x"
    )


def test_service_on_the_daemon_bus(state_dir, monkeypatch):
    with Receiver() as rx:
        monkeypatch.setenv("S_HOOK_URL", rx.url("/hook/one"))
        ctx = Context(parse_policy(POLICY), Path("p.yaml"), "nft")
        seen: list[Event] = []
        ctx.add_sink(seen.append)
        service = AlertService(ctx, tick=0.01, backoff=Backoff(base=0.05, cap=0.1))
        service.start()
        try:
            first = _attempt()
            ctx.emit(first)
            ctx.emit(dataclasses.replace(first, packets=3, last_ts=time.time()))  # fold update
            assert rx.wait_for(lambda: len(rx.accepted("/hook/one")) == 1, timeout=5)
            stats = service.stats()
            assert stats["events"] == 1 and stats["updates_ignored"] == 1

            # the breaker opens: sink_degraded goes to the bus (for the store) and is routed once
            rx.always("/hook/one", Answer(500, "down"))
            for port in range(1, 4):
                ctx.emit(_attempt(port))
            breaker = service.dispatcher.workers["webhook"].breaker
            assert rx.wait_for(lambda: breaker.state == OPEN, timeout=10)
            assert rx.wait_for(lambda: any(e.kind == "sink_degraded" for e in seen), timeout=5)
            assert rx.wait_for(lambda: service.stats()["events"] == 5, timeout=5)
            time.sleep(0.2)
            assert service.stats()["events"] == 5  # 4 attempts + 1 sink_degraded, not doubled

            # reload with a new webhook URL: the new sink delivers, queued rows carry over
            monkeypatch.setenv("S_HOOK_URL2", rx.url("/hook/two"))
            old = service.dispatcher
            ctx.policy = parse_policy(POLICY.replace("S_HOOK_URL", "S_HOOK_URL2"))
            for hook in ctx.reload_hooks:
                hook(ctx.policy)
            assert service.dispatcher is not old
            ctx.emit(_attempt(9))
            assert rx.wait_for(lambda: len(rx.accepted("/hook/two")) >= 4, timeout=10)
            ports = {r.json()["details"].get("dst_port") for r in rx.accepted("/hook/two")}
            assert {1, 2, 3, 9} <= ports  # rows from before the reload, and the new one
            same = service.dispatcher
            for hook in ctx.reload_hooks:
                hook(ctx.policy)  # unchanged alert settings: no swap
            assert service.dispatcher is same
        finally:
            service.stop()
