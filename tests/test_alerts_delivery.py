"""Delivery against a real local HTTP receiver (threaded http.server on loopback) that records
requests and answers as scripted: 200/202, 400, 429 + Retry-After, 500, slow.

Time-heavy guarantees (windows, breaker 30 s, backoff, Retry-After, rate limits) run on a fake
clock the test advances; threads poll every 10 ms of real time, so nothing sleeps for real.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import structlog
from test_alerts_schemas import validate_pagerduty, validate_slack, validate_webhook

from sentinel.alerts import AlertDispatcher, Backoff
from sentinel.alerts.breaker import CLOSED, HALF_OPEN, OPEN
from sentinel.lab.alertreceiver import Answer, Receiver
from sentinel.policy.load import parse_policy
from sentinel.store.events import Event

POLICY = """
version: 1
mode: enforce
alerts:
  slack:     {webhook_url_env: T_SLACK_URL, channel: "#wingman-alerts"}
  pagerduty: {routing_key_env: T_PD_KEY, url_env: T_PD_URL, resolve_after: 10m}
  webhook:   {url_env: T_HOOK_URL, hmac_secret_env: T_HOOK_SECRET}
  dedup_window: 60s
"""
PD_KEY = "R0123456789abcdef0123456789abcde"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def drive(clock: Clock, until, step: float = 0.5, timeout: float = 20.0) -> bool:
    """Advance the fake clock in steps until `until()` holds (bounded in real time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if until():
            return True
        clock.advance(step)
        time.sleep(0.01)
    return until()


def settle(seconds: float = 0.3) -> None:
    """Let worker threads run a few polls (to check that nothing *more* happens)."""
    time.sleep(seconds)


def attempt(port: int = 443, dst: str = "198.18.5.5", exe: str = "/usr/bin/python3") -> Event:
    return Event(
        layer="netfilter",
        kind="egress_attempt",
        protocol="tcp",
        dst_ip=dst,
        dst_port=port,
        exe=exe,
        pid=4242,
    )


@pytest.fixture
def rx():
    with Receiver() as receiver:
        yield receiver


def env_for(rx: Receiver) -> dict[str, str]:
    return {
        "T_SLACK_URL": rx.url("/slack/services/T0000/B0000/slacksecretpath"),
        "T_PD_KEY": PD_KEY,
        "T_PD_URL": rx.url("/pagerduty/v2/enqueue"),
        "T_HOOK_URL": rx.url("/hook/hooksecretpath"),
        "T_HOOK_SECRET": "hook-hmac-secret",
    }


@pytest.fixture
def make(tmp_path, rx):
    made: list[AlertDispatcher] = []

    def _make(clock=None, policy: str = POLICY, start: bool = True, state=None, **kw):
        kw.setdefault("tick", 0.01)
        kw.setdefault("backoff", Backoff(base=0.2, cap=2.0))
        d = AlertDispatcher(
            parse_policy(policy),
            state or tmp_path / "state",
            clock or time.time,
            environ=env_for(rx),
            **kw,
        )
        made.append(d)
        return d.start() if start else d

    yield _make
    for d in made:
        if not d._stopping.is_set():
            d.stop()


def p1_bodies(rx: Receiver, prefix: str) -> list[dict]:
    return [r.json() for r in rx.accepted(prefix)]


# --- the happy path -------------------------------------------------------------------------
def test_one_attempt_gives_one_page_and_one_slack_message_within_5s(rx, make):
    d = make()
    ev = attempt()
    submitted = time.time()
    d.submit(ev)
    assert rx.wait_for(
        lambda: rx.accepted("/pagerduty") and rx.accepted("/slack") and rx.accepted("/hook"),
        timeout=5,
    )
    settle()
    pages, slacks, hooks = rx.accepted("/pagerduty"), rx.accepted("/slack"), rx.accepted("/hook")
    assert (len(pages), len(slacks), len(hooks)) == (1, 1, 1)
    assert max(r.at for r in pages + slacks) - submitted < 5
    page = pages[0].json()
    validate_pagerduty(page)
    validate_slack(slacks[0].json())
    validate_webhook(hooks[0].json())
    assert page["event_action"] == "trigger" and page["routing_key"] == PD_KEY
    assert page["payload"]["severity"] == "critical"
    assert page["payload"]["custom_details"]["correlation_id"] == ev.id
    assert page["payload"]["custom_details"]["priority"] == "P1"
    assert slacks[0].json()["channel"] == "#wingman-alerts"
    assert hooks[0].headers["x-sentinel-signature"].startswith("sha256=")
    stats = d.stats()
    assert stats["sent"] == 3 and stats["dropped"] == 0 and stats["alerts"] == 1


def test_flood_of_1000_attempts_gives_one_incident_plus_rollups(rx, make):
    clock = Clock()
    d = make(clock)
    for _ in range(1000):
        d.submit(attempt())
    assert rx.wait_for(lambda: len(rx.accepted("/pagerduty")) == 1, timeout=5)
    assert drive(clock, lambda: len(rx.accepted("/pagerduty")) >= 2, step=5)
    assert drive(clock, lambda: len(rx.accepted("/slack")) >= 2, step=1)
    settle()
    pages = p1_bodies(rx, "/pagerduty")
    assert len(pages) == 2  # one incident, one roll-up; not 1,000 pages
    assert len({p["dedup_key"] for p in pages}) == 1
    details = [p["payload"]["custom_details"] for p in pages]
    assert [x["count"] for x in details] == [1, 999]
    assert [x["rollup"] for x in details] == [False, True]
    assert "999 more egress attempts" in pages[1]["payload"]["summary"]
    assert len(rx.accepted("/slack")) == 2
    stats = d.stats()
    assert stats["deduped"] == 999 and stats["rollups"] == 1 and stats["alerts"] == 1


def test_p2_events_are_grouped_into_one_digest_for_slack_and_webhook(rx, make):
    clock = Clock()
    d = make(clock, digest_windows={"P2": 900.0})
    for kind in ("stale_pins", "dns_upstream_failing", "stale_pins"):
        d.submit(Event(layer="dns", kind=kind, verdict="info"))
    assert rx.wait_for(lambda: d.stats()["events"] == 3, timeout=5)
    settle(0.1)
    assert rx.recorded() == []  # nothing before the 15 min window ends
    assert drive(clock, lambda: rx.accepted("/slack") and rx.accepted("/hook"), step=60)
    settle(0.1)
    hooks = p1_bodies(rx, "/hook")
    assert len(hooks) == 1 and hooks[0]["severity"] == "P2" and hooks[0]["count"] == 3
    assert len(rx.accepted("/slack")) == 1
    assert rx.recorded("/pagerduty") == []  # P2 is not routed to PagerDuty by default


def test_resolve_is_sent_to_pagerduty_once_quiet(rx, make):
    clock = Clock()
    d = make(clock)
    d.submit(attempt())
    assert rx.wait_for(lambda: len(rx.accepted("/pagerduty")) == 1, timeout=5)
    clock.advance(590)  # resolve_after is 10m: not yet
    settle(0.2)
    assert len(rx.accepted("/pagerduty")) == 1
    assert drive(clock, lambda: len(rx.accepted("/pagerduty")) == 2, step=5)
    pages = p1_bodies(rx, "/pagerduty")
    validate_pagerduty(pages[1])
    assert pages[1]["event_action"] == "resolve"
    assert pages[1]["dedup_key"] == pages[0]["dedup_key"]
    assert rx.wait_for(lambda: len(rx.accepted("/hook")) == 2, timeout=5)
    assert p1_bodies(rx, "/hook")[1]["action"] == "resolve"
    settle(0.2)
    assert len(rx.accepted("/slack")) == 1  # no "resolved" noise in the channel
    assert d.stats()["resolves"] == 1


def test_a_resolve_never_overtakes_its_trigger(rx, make):
    """docs/alerts.md: the outbox delivers in priority then FIFO order. PagerDuty is down past
    resolve_after, so the resolve is queued behind its still undelivered trigger; once the sink
    is back the trigger goes first."""
    clock = Clock()
    rx.always("/pagerduty", Answer(503, "maintenance"))
    d = make(clock, backoff=Backoff(base=1.0, cap=20.0))
    d.submit(attempt())
    assert rx.wait_for(lambda: len(rx.recorded("/pagerduty")) >= 1, timeout=5)
    drive(clock, lambda: d.stats()["resolves"] == 1, step=5, timeout=10)  # 10m quiet: resolve
    assert d.stats()["resolves"] == 1 and not rx.accepted("/pagerduty")
    rx.always("/pagerduty", Answer(202, "{}"))
    assert drive(clock, lambda: len(rx.accepted("/pagerduty")) == 2, step=1.0, timeout=20)
    accepted = [r.json()["event_action"] for r in rx.accepted("/pagerduty")]
    assert accepted == ["trigger", "resolve"], accepted


# --- failure handling -----------------------------------------------------------------------
def test_400_is_not_retried_and_counted_as_failed(rx, make):
    clock = Clock()
    rx.always("/hook", Answer(400, "invalid_payload"))
    d = make(clock)
    d.submit(attempt())
    assert rx.wait_for(lambda: len(rx.recorded("/hook")) == 1, timeout=5)
    drive(clock, lambda: False, step=10, timeout=0.5)  # 100+ s of fake time pass
    assert len(rx.recorded("/hook")) == 1
    hook = d.stats()["sinks"]["webhook"]
    assert hook["failed"] == 1 and hook["retries"] == 0 and hook["pending"] == 0
    assert "HTTP 400" in hook["last_result"]
    assert d.stats()["sinks"]["pagerduty"]["sent"] == 1  # other sinks unaffected


def test_429_retry_after_is_honoured(rx, make):
    clock = Clock()
    rx.script("/pagerduty", Answer(429, "slow down", {"Retry-After": "30"}))
    d = make(clock)
    d.submit(attempt())
    assert rx.wait_for(lambda: d.stats()["sinks"]["pagerduty"]["retries"] == 1, timeout=5)
    for _ in range(29):
        clock.advance(1)
        time.sleep(0.01)
    settle(0.2)
    assert len(rx.recorded("/pagerduty")) == 1  # waited, as asked
    clock.advance(1.5)
    assert rx.wait_for(lambda: len(rx.accepted("/pagerduty")) == 1, timeout=5)
    stats = d.stats()["sinks"]["pagerduty"]
    assert stats["sent"] == 1 and stats["retries"] == 1
    assert stats["breaker"] == CLOSED  # 429 is not a failure of the sink


def test_5xx_is_retried_with_exponential_backoff_and_jitter(rx, make):
    clock = Clock()
    rx.script("/hook", *[Answer(500, "oops")] * 4)
    with structlog.testing.capture_logs() as logs:
        d = make(clock, backoff=Backoff(base=2.0, cap=60.0))
        d.submit(attempt())
        seen: list[float] = []

        def progressed() -> bool:
            while len(seen) < len(rx.recorded("/hook")):
                seen.append(clock())
            return bool(rx.accepted("/hook"))

        assert drive(clock, progressed, step=0.1, timeout=30)
    progressed()
    assert len(rx.recorded("/hook")) == 5 and len(rx.accepted("/hook")) == 1
    waits = [e["retry_in"] for e in logs if e["event"] == "alert_retry" and e["sink"] == "webhook"]
    assert len(waits) == 4
    for n, wait in enumerate(waits):  # base * 2**n, jittered into [50%, 100%]
        assert 2.0 * 2**n * 0.5 <= wait <= 2.0 * 2**n, waits
    assert any(w < 2.0 * 2**n for n, w in enumerate(waits))  # jitter: not all at the maximum
    gaps = [b - a for a, b in zip(seen, seen[1:], strict=False)]
    for wait, gap in zip(waits, gaps, strict=True):  # and the retries did wait that long
        assert gap >= wait - 0.5, (waits, gaps)
    assert d.stats()["sinks"]["webhook"]["retries"] == 4


def test_408_is_retried_like_a_5xx_and_other_4xx_are_not(rx, make):
    """docs/alerts.md: 408 (the receiver timed the request out) is retried with backoff, unlike
    the rest of 4xx."""
    clock = Clock()
    rx.script("/hook", Answer(408, "request timeout"))
    d = make(clock, backoff=Backoff(base=2.0, cap=60.0))
    d.submit(attempt())
    assert drive(clock, lambda: bool(rx.accepted("/hook")), step=0.1, timeout=30)
    assert len(rx.recorded("/hook")) == 2 and len(rx.accepted("/hook")) == 1
    hook = d.stats()["sinks"]["webhook"]
    assert hook["retries"] == 1 and hook["failed"] == 0 and hook["sent"] == 1, hook


def test_slow_receiver_times_out_and_the_alert_is_retried(rx, make):
    import httpx

    rx.script("/hook", Answer(200, "late", delay=2.0))
    d = make(timeout=httpx.Timeout(0.3), backoff=Backoff(base=0.05, cap=0.1))
    d.submit(attempt())
    assert rx.wait_for(lambda: len(rx.recorded("/hook")) == 2, timeout=10)
    assert rx.wait_for(lambda: d.stats()["sinks"]["webhook"]["sent"] == 1, timeout=5)
    first, second = rx.recorded("/hook")
    # same alert id: a receiver that did act on the late one can drop the redelivery
    assert first.headers["x-sentinel-alert-id"] == second.headers["x-sentinel-alert-id"]
    assert d.stats()["sinks"]["webhook"]["retries"] == 1


def test_breaker_opens_half_opens_and_closes_with_prd_numbers(rx, make):
    clock = Clock()
    rx.always("/hook", Answer(500, "down"))
    d = make(clock, backoff=Backoff(base=0.1, cap=0.2))
    for port in range(1, 7):
        d.submit(attempt(port=port))
    breaker = d.workers["webhook"].breaker
    assert drive(clock, lambda: breaker.state == OPEN, step=0.1, timeout=10)
    assert len(rx.recorded("/hook")) == 5  # 5 consecutive failures opened it
    opened_at = clock()
    for _ in range(29):  # open: no request at all for 30 s
        clock.advance(1)
        time.sleep(0.01)
    settle(0.2)
    assert len(rx.recorded("/hook")) == 5 and breaker.state == OPEN
    rx.always("/hook", Answer(200, "back"))
    clock.now = opened_at + 30
    assert breaker.state == HALF_OPEN
    assert drive(clock, lambda: len(rx.accepted("/hook")) >= 3, step=0.2, timeout=10)
    assert rx.wait_for(lambda: breaker.state == CLOSED, timeout=5)
    assert drive(clock, lambda: d.stats()["sinks"]["webhook"]["pending"] == 0, step=0.2)
    ids = [r.json()["alert_id"] for r in rx.accepted("/hook")]
    assert len(ids) == len(set(ids)) == 6  # every alert, once
    stats = d.stats()
    assert stats["sinks"]["webhook"]["breaker_opened"] == 1
    assert stats["sinks"]["webhook"]["breaker"] == CLOSED


def test_sink_down_then_back_delivers_everything_once(rx, make):
    clock = Clock()
    for prefix in ("/pagerduty", "/slack", "/hook"):
        rx.always(prefix, Answer(503, "maintenance"))
    d = make(clock, digest_windows={"P2": 120.0}, backoff=Backoff(base=1.0, cap=20.0))
    for port in range(1, 11):  # 10 distinct destinations
        d.submit(attempt(port=port))
    for _ in range(200):  # and a flood on one of them
        d.submit(attempt(port=1))
    # down for five minutes of (fake) time: breakers open and half-open repeatedly
    drive(clock, lambda: False, step=2.0, timeout=1.5)
    assert all(w.breaker.opened_count >= 1 for w in d.workers.values())
    for prefix in ("/pagerduty", "/slack", "/hook"):
        rx.always(prefix, Answer(200, "ok") if prefix != "/pagerduty" else Answer(202, "{}"))
    assert drive(
        clock,
        lambda: (
            all(s["pending"] == 0 for s in d.stats()["sinks"].values())
            and d.stats()["rollups"] >= 1
        ),
        step=1.0,
        timeout=30,
    )
    for prefix in ("/pagerduty", "/hook"):
        bodies = p1_bodies(rx, prefix)
        ids = [b.get("alert_id") or b["payload"]["custom_details"]["alert_id"] for b in bodies]
        assert len(ids) == len(set(ids)), f"duplicate deliveries to {prefix}"
    hooks = [b for b in p1_bodies(rx, "/hook") if b["kind"] == "egress_attempt"]
    assert len([h for h in hooks if not h["rollup"]]) == 10
    assert sum(h["count"] for h in hooks) == 210  # every attempt accounted for
    stats = d.stats()
    assert stats["dropped"] == 0
    assert all(s["retries"] > 0 and s["sent"] > 0 for s in stats["sinks"].values())


def test_restart_with_a_full_outbox_delivers_it_and_reports_drops(rx, make, tmp_path):
    policy = POLICY.replace("dedup_window: 60s", "dedup_window: 60s\n  routing: {P1: [webhook]}")
    rx.always("/hook", Answer(500, "down"))
    # the alert budget (20 a minute) is off here: this is about the outbox bound alone
    first = make(policy=policy, start=False, outbox_rows=20, budget=(0, 60.0))
    for port in range(1, 26):
        first.submit(attempt(port=port, exe=f"/bin/p{port}"))  # 25 distinct alerts
    first.stop()  # never started: stop() routes what was queued into the outbox
    rx.always("/hook", Answer(200, "ok"))
    second = make(policy=policy, outbox_rows=20, budget=(0, 60.0))
    assert rx.wait_for(lambda: second.stats()["sinks"]["webhook"]["pending"] == 0, timeout=10)
    assert rx.wait_for(lambda: len(rx.accepted("/hook")) == 20, timeout=5)
    bodies = p1_bodies(rx, "/hook")
    assert len({b["alert_id"] for b in bodies}) == 20
    assert (
        bodies[0]["dropped_alerts"] == 5
        and "5 earlier alerts were dropped" in (bodies[0]["dropped_note"])
    )
    assert all(b["dropped_alerts"] == 0 for b in bodies[1:])
    ports = sorted(b["details"]["dst_port"] for b in bodies)
    assert ports == list(range(6, 26))  # oldest evicted first
    hook = second.stats()["sinks"]["webhook"]
    assert hook["dropped"] == 5 and hook["dropped_unreported"] == 0 and hook["sent"] == 20


def test_an_event_the_router_raises_on_costs_no_other_event_its_alert(rx, make):
    d = make(start=False)
    real = d.router.route

    def route(event, now):  # a router bug hit by one event of a batch
        if event.dst_ip == "198.18.9.9":
            raise ValueError("router bug")
        return real(event, now)

    d.router.route = route
    errors = _alert_errors()
    for dst in ("198.18.5.5", "198.18.9.9", "198.18.6.6"):  # one batch: the bad one between
        d.submit(attempt(dst=dst))
    d.start()
    assert rx.wait_for(lambda: len(rx.accepted("/pagerduty")) == 2, timeout=5)
    settle()
    pages = p1_bodies(rx, "/pagerduty")
    assert sorted(p["payload"]["custom_details"]["destination"] for p in pages) == [
        "198.18.5.5:443/tcp",
        "198.18.6.6:443/tcp",
    ]
    assert d.stats()["route_errors"] == 1
    assert _alert_errors() == errors + 1  # and in /metrics' error count


def _alert_errors() -> float:
    from sentinel.evidence import metrics

    value = metrics.REGISTRY.get_sample_value("sentinel_error_count_total", {"component": "alerts"})
    return value or 0.0


def test_submit_never_blocks_and_overflow_is_reported(rx, make):
    d = make(start=False, queue_size=5)
    t0 = time.monotonic()
    accepted = [d.submit(attempt(port=p, exe=f"/bin/p{p}")) for p in range(1, 10_001)]
    assert time.monotonic() - t0 < 2.0
    assert accepted.count(True) == 5
    d.start()
    assert rx.wait_for(lambda: len(rx.accepted("/hook")) == 5, timeout=10)
    first = p1_bodies(rx, "/hook")[0]
    assert first["dropped_alerts"] == 9995
    stats = d.stats()
    assert stats["events_dropped"] == 9995 and stats["dropped"] >= 9995


def test_a_batch_from_the_bus_is_queued_and_its_overflow_reported_as_one_by_one(rx, make):
    d = make(start=False, queue_size=5)
    batch = [attempt(port=p, exe=f"/bin/p{p}") for p in range(1, 10_001)]
    assert d.submit_many(batch[:3]) == 3
    assert d.submit_many(batch[3:]) == 2  # room for two more: the rest is overflow
    d.start()
    assert rx.wait_for(lambda: len(rx.accepted("/hook")) == 5, timeout=10)
    bodies = p1_bodies(rx, "/hook")
    assert sorted(b["details"]["dst_port"] for b in bodies) == [1, 2, 3, 4, 5]  # the first
    assert bodies[0]["dropped_alerts"] == 9995
    stats = d.stats()
    assert stats["events_dropped"] == 9995 and stats["dropped"] >= 9995


def test_secrets_never_reach_logs_or_stats(rx, make):
    clock = Clock()
    secrets = list(env_for(rx).values())
    # a service that echoes the request back in its error, URL and key included
    rx.always("/pagerduty", Answer(400, f"bad key {PD_KEY} for {env_for(rx)['T_PD_URL']}"))
    rx.script("/slack", Answer(500, f"err {env_for(rx)['T_SLACK_URL']}"))
    with structlog.testing.capture_logs() as logs:
        d = make(clock)
        d.submit(attempt())
        assert drive(clock, lambda: d.stats()["sinks"]["slack"]["sent"] == 1, step=0.5)
        assert rx.wait_for(lambda: d.stats()["sinks"]["pagerduty"]["failed"] == 1, timeout=5)
        stats = json.dumps(d.stats())
    text = json.dumps(logs, default=str) + stats
    assert logs, "expected retry/rejection log lines"
    for secret in secrets:
        assert secret not in text


def test_alert_test_command(rx, tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    exe = str(Path(sys.executable).with_name("sentinel"))
    env = {"PATH": "/usr/bin:/bin", "SENTINEL_STATE_DIR": str(tmp_path), **env_for(rx)}
    ok = subprocess.run(
        [exe, "alert", "test", "--policy", str(policy)], env=env, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert [line.split()[:2] for line in ok.stdout.splitlines()] == [
        ["ok", "pagerduty"],
        ["ok", "slack"],
        ["ok", "webhook"],
    ]
    pages = p1_bodies(rx, "/pagerduty")
    assert pages[0]["payload"]["severity"] == "info"
    validate_pagerduty(pages[0])
    validate_slack(p1_bodies(rx, "/slack")[0])
    for secret in env_for(rx).values():
        assert secret not in ok.stdout + ok.stderr
    rx.always("/hook", Answer(500, "boom"))
    del env["T_SLACK_URL"]
    bad = subprocess.run(
        [exe, "alert", "test", "--policy", str(policy)], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 1
    assert "FAIL slack" in bad.stdout and "T_SLACK_URL is not set" in bad.stdout
    assert "FAIL webhook" in bad.stdout and "HTTP 500" in bad.stdout
    none = tmp_path / "none.yaml"
    none.write_text("version: 1\nmode: enforce\n")
    empty = subprocess.run(
        [exe, "alert", "test", "--policy", str(none)], env=env, capture_output=True, text=True
    )
    assert empty.returncode == 1 and "no alert sinks configured" in empty.stderr


def test_breaker_open_raises_sink_degraded_and_summary_reads_counters(rx, make, tmp_path):
    from sentinel.alerts import read_summary

    clock = Clock()
    seen: list[Event] = []
    rx.always("/hook", Answer(500, "down"))
    d = make(clock, on_event=seen.append, backoff=Backoff(base=0.1, cap=0.2))
    d.submit(attempt())
    assert drive(clock, lambda: d.workers["webhook"].breaker.state == OPEN, step=0.1)
    assert [e.kind for e in seen] == ["sink_degraded"] and seen[0].detail["sink"] == "webhook"
    assert rx.wait_for(lambda: d.stats()["sinks"]["pagerduty"]["sent"] == 1, timeout=5)
    d.stop()
    summary = read_summary(tmp_path / "state")
    assert summary["webhook"]["retries"] == 5 and summary["webhook"]["pending"] >= 1
    assert summary["pagerduty"]["sent"] == 1
    assert read_summary(tmp_path / "nowhere") == {}
