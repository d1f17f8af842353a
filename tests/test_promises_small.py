"""The smaller promises of README and docs, each driven through its real producer: the pin
refresh schedule docs/dns.md states, docs/guard.md's snippet naming a real store method, the
report's canary section judged by its window, P3 queue saturation from a really full submit
queue going out as the P3 digest, and per-sink rate limits on real deliveries."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from sentinel.detect.canary import CanaryService
from sentinel.evidence.report import Window, build_report, violation
from sentinel.policy.load import DnsSettings, parse_policy
from sentinel.resolver.pins import PinManager
from sentinel.store.events import EventStore, db_path
from tests.test_alerts_delivery import Clock as DeliveryClock
from tests.test_alerts_delivery import attempt, drive, make, rx, settle  # noqa: F401 - fixtures
from tests.test_dns import Clock, FakeUpstream

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("ttl", "refresh_after"), [(60, 48.0), (3600, 2880.0), (10, 8.0)])
def test_pins_refresh_when_docs_dns_says(ttl, refresh_after):
    text = (ROOT / "docs" / "dns.md").read_text()
    assert "A pin is refreshed at 80 % of its TTL" in text
    clock, upstream = Clock(), FakeUpstream({"postgres": {"A": ["198.18.0.2"]}})
    upstream.ttl = ttl
    pins = PinManager(
        DnsSettings(min_ttl=1, max_ttl=7200, stale_grace=10),
        upstream,
        ["postgres"],
        lambda e: None,
        lambda p: None,
        clock=clock,
    )
    pins.refresh_all()
    asked = len(upstream.asked)
    clock.now += refresh_after - 0.5
    pins.tick()
    assert len(upstream.asked) == asked  # not yet
    clock.now += 1.0
    pins.tick()
    assert len(upstream.asked) > asked  # refreshed at the documented moment


def test_guard_docs_snippet_names_real_store_methods():
    text = (ROOT / "docs" / "guard.md").read_text()
    methods = set(re.findall(r"(?<![.\w])store\.(\w+)", text))  # not sentinel.store.events
    assert methods, "docs/guard.md no longer shows the store hook-up"
    for name in methods:
        assert callable(getattr(EventStore, name, None)), f"EventStore has no {name}()"


def test_report_canary_section_is_judged_by_its_window(state_dir):
    """A real canary round (its probe escapes to a local listener) recorded by the real store:
    the window that holds it fails the report; a later window without probes does not."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        policy = parse_policy(f"version: 1\ncanary: {{target: 127.0.0.1, port: {port}}}\n")
        store = EventStore(db_path()).start()
        service = CanaryService(policy, store.put)
        before = time.time()
        results = service.run_once()
        assert "escaped" in {r.outcome for r in results}
        assert store.flush(10)
        store.stop()
    finally:
        listener.close()
    after = time.time() + 0.001
    applied = {"ruleset_sha256": "x", "applied_at": before}
    kernel = {"sha256": "x", "present": True, "nflog_packets": {4: 0, 6: 0}, "set_counters": {}}
    held = build_report(Window(before - 1, after), applied=applied, kernel=kernel)
    assert held["canary"]["escaped"] >= 1 and held["canary"]["probes_in_window"] == len(results)
    assert "canary probe(s) got out" in violation(held)
    later = build_report(Window(after, after + 60), applied=applied, kernel=kernel)
    assert later["canary"]["escaped"] == 0 and later["canary"]["probes_in_window"] == 0
    assert later["canary"]["last_run"]  # the last round is still shown, outside the window
    assert violation(later) is None


# --- alerting producers on real deliveries (the local receiver; the fake clock of the
# delivery tests moves time, threads poll in real time) ---------------------------------------


def test_a_really_full_submit_queue_raises_queue_saturation_sent_as_the_p3_digest(make, rx):  # noqa: F811
    clock = DeliveryClock()
    d = make(clock, start=False, queue_size=10, digest_windows={"P2": 60.0, "P3": 60.0})
    for port in range(1000, 1011):  # 11 into a queue of 10: 10 queued, 1 dropped and counted
        d.submit(attempt(port=port))
    d.start()  # the router's first round finds the queue at 100%
    assert drive(
        clock,
        lambda: (
            rx.accepted("/hook")
            and any(
                r.json()["kind"] == "digest" and r.json()["severity"] == "P3"
                for r in rx.accepted("/hook")
            )
        ),
        step=5.0,
    )
    digest = next(r.json() for r in rx.accepted("/hook") if r.json()["kind"] == "digest")
    assert digest["details"]["counts"] == {"queue_saturation": 1}
    sample = digest["details"]["samples"][0]["detail"]
    assert sample["depth"] == 10 and sample["capacity"] == 10
    assert d.stats()["events_dropped"] == 1
    assert not [r for r in rx.accepted("/pagerduty") if "queue_saturation" in r.body.decode()]


def test_per_sink_rate_limits_hold_on_real_deliveries(make, rx):  # noqa: F811
    clock = DeliveryClock()
    d = make(clock)
    for port in range(2000, 2006):  # six P1 alerts at one instant, one destination each
        d.submit(attempt(port=port))
    assert rx.wait_for(lambda: len(rx.accepted("/hook")) == 6)  # webhook: 10/s, burst 10
    settle()
    assert len(rx.accepted("/slack")) == 1  # Slack: 1/s, burst 1
    assert len(rx.accepted("/pagerduty")) == 2  # PagerDuty: 2/s, burst 2
    clock.advance(1.0)
    assert rx.wait_for(lambda: len(rx.accepted("/slack")) == 2)
    assert rx.wait_for(lambda: len(rx.accepted("/pagerduty")) == 4)
    settle()
    assert len(rx.accepted("/slack")) == 2 and len(rx.accepted("/pagerduty")) == 4
    assert drive(clock, lambda: len(rx.accepted("/slack")) == 6, step=1.0)
    assert d.stats()["dropped"] == 0


def test_digest_windows_default_to_15_minutes_and_1_hour_and_are_settable(tmp_path):
    from sentinel.alerts import AlertDispatcher

    default = AlertDispatcher(parse_policy("version: 1\n"), tmp_path / "a", mark=None)
    assert default.router.digest_windows == {"P2": 900.0, "P3": 3600.0}
    default.stop()
    set_ = parse_policy("version: 1\nalerts: {digest_window: {P2: 5m, P3: 2h}}\n")
    custom = AlertDispatcher(set_, tmp_path / "b", mark=None)
    assert custom.router.digest_windows == {"P2": 300.0, "P3": 7200.0}
    custom.stop()
    with pytest.raises(Exception, match=r"alerts.digest_window.P4"):
        parse_policy("version: 1\nalerts: {digest_window: {P4: 1m}}\n", "p.yaml")
