"""One registry of event kinds: docs/alerts.md's table is generated from it, the router, the
report and the metrics read it, and every kind a producer emits is in it."""

from __future__ import annotations

import ast
import re
import time
from pathlib import Path

from sentinel.alerts.router import Router
from sentinel.detect.canary import CanaryResult, CanaryService, result_events
from sentinel.evidence.report import _is_attempt
from sentinel.policy.load import parse_policy
from sentinel.store import kinds
from sentinel.store.events import Event

ROOT = Path(__file__).resolve().parents[1]


def test_docs_table_is_the_registry():
    text = (ROOT / "docs" / "alerts.md").read_text()
    found = re.search(r"<!-- kinds:begin -->\n(.*?)<!-- kinds:end -->", text, re.S)
    assert found, "docs/alerts.md lost its kinds:begin/kinds:end markers"
    assert found.group(1) == kinds.markdown_table(), "regenerate: python -m sentinel.store.kinds"


def _literal_kinds() -> set[tuple[str, str]]:
    """Every kind named as a literal where the code builds an event: Event(kind=...) and the
    resolver's _event("kind", ...) helper."""
    out = set()
    for path in (ROOT / "sentinel").rglob("*.py"):
        if "lab" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if name == "Event":
                for kw in node.keywords:
                    if kw.arg == "kind" and isinstance(kw.value, ast.Constant):
                        out.add((str(path.relative_to(ROOT)), kw.value.value))
                    if kw.arg == "kind" and isinstance(kw.value, ast.IfExp):
                        for side in (kw.value.body, kw.value.orelse):
                            if isinstance(side, ast.Constant):
                                out.add((str(path.relative_to(ROOT)), side.value))
            if name == "_event" and node.args and isinstance(node.args[0], ast.Constant):
                out.add((str(path.relative_to(ROOT)), node.args[0].value))
    return out


def test_every_kind_the_code_builds_is_registered():
    found = _literal_kinds()
    assert len(found) >= 15  # the scan sees the producers
    # `test` is the correlation id of `sentinel alert test`, never emitted as an event
    missing = {(f, k) for f, k in found if not kinds.known(k) and k != "test"}
    assert not missing, missing


def test_router_takes_severity_from_the_registry():
    router = Router(digest_windows={"P2": 1.0, "P3": 1.0})
    for port, kind in enumerate(kinds.KINDS, 1000):  # one destination each: no dedup between
        event = Event(layer=kind.layers[0], kind=kind.name, dst_ip="198.18.5.5", dst_port=port)
        alerts = router.route(event, now=0.0)
        if kind.severity == kinds.P1:
            assert [a.severity for a in alerts] == ["P1"], kind.name
        else:
            assert alerts == [], kind.name
    digests = {a.severity: a.details["counts"] for a in router.tick(now=5.0)}
    for kind in kinds.KINDS:
        if kind.severity in ("P2", "P3"):
            assert digests[kind.severity].get(kind.name) == 1, kind.name
        else:
            assert all(kind.name not in c for c in digests.values()), kind.name


def test_report_and_metrics_share_the_attempt_definition():
    from prometheus_client import generate_latest

    from sentinel.evidence import metrics

    def blocked_total() -> float:
        text = generate_latest(metrics.REGISTRY).decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("sentinel_blocked_attempts_total{")
        )

    events = [
        Event(layer="netfilter", kind="egress_attempt", protocol="tcp"),
        Event(layer="dns", kind="egress_attempt", protocol="dns"),
        Event(layer="guard", kind="egress_attempt", protocol="tcp"),
        Event(layer="dns", kind="pins_expired", verdict="blocked"),  # not an attempt
        Event(layer="tamper", kind="tamper", verdict="blocked"),  # not an attempt
        Event(layer="canary", kind="canary_escaped", verdict="audited"),  # not an attempt
        Event(layer="dns", kind="dns_rebinding", verdict="blocked"),  # not an attempt
    ]
    before = blocked_total()
    for e in events:
        metrics.observe_event(e)
    assert blocked_total() - before == sum(_is_attempt(e) for e in events) == 3


def test_canary_service_survives_a_failing_round_and_counts_it(state_dir):
    """The real write fails (canary.json is a directory); the next round runs and writes."""
    emitted: list[Event] = []
    policy = parse_policy("version: 1\ncanary: {target: 127.0.0.1, port: 9, interval: 1s}\n")
    service = CanaryService(policy, emitted.append)
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "canary.json").mkdir()
    service.safe_round()
    service.safe_round()
    assert service.stats()["errors"] == 2 and service.stats()["failing"] == 2
    failed = [e for e in emitted if e.kind == "canary_failed"]
    assert len(failed) == 1 and "canary.json" in failed[0].detail["error"]  # once per streak
    (state_dir / "canary.json").rmdir()
    service.safe_round()
    assert service.stats()["failing"] == 0 and service.stats()["rounds"] == 3
    assert (state_dir / "canary.json").is_file()
    assert all(kinds.known(e.kind) for e in emitted)
    assert {e.kind for e in result_events([CanaryResult("tcp4", "x:1", "escaped", "")])} == {
        "canary_escaped"
    }


def test_the_dns_layer_emits_only_registered_kinds_through_its_whole_life():
    """Drive the pin manager and the resolver through every branch that emits: resolve, pin
    change, rebinding, refusal, upstream down, stale, expired, recovered."""
    import dns.message

    from tests.test_dns import Clock, FakeUpstream

    records = {
        "postgres": {"A": ["198.18.0.2"]},
        "evil.example.com": {"A": ["127.0.0.1", "198.18.5.5"]},
    }
    clock, upstream, events = Clock(), FakeUpstream(records), []
    from sentinel.policy.load import DnsSettings
    from sentinel.resolver.pins import PinManager
    from sentinel.resolver.server import PinningResolver

    pins = PinManager(
        DnsSettings(min_ttl=5, max_ttl=30, stale_grace=10),
        upstream,
        ["postgres", "evil.example.com"],
        events.append,
        lambda p: None,
        clock=clock,
    )
    resolver = PinningResolver(pins, events.append, port=0)
    pins.refresh_all()
    records["postgres"]["A"] = ["198.18.0.7"]
    clock.now += 30
    pins.tick()
    resolver.handle(dns.message.make_query("api.openai.com", "A").to_wire(), 4242, "udp")
    upstream.down = True
    for _ in range(4):
        clock.now += 10
        pins.tick()
    upstream.down = False
    clock.now += 10
    pins.tick()
    seen = {e.kind for e in events}
    wanted = {"pin_changed", "dns_rebinding", "egress_attempt", "dns_upstream_failing"}
    assert wanted | {"stale_pins", "pins_expired", "dns_upstream_recovered"} <= seen, seen
    assert all(kinds.known(k) for k in seen), seen - set(kinds.BY_NAME)


def test_the_dispatcher_emits_only_registered_kinds(tmp_path):
    """Its own events: a breaker that opens (sink_degraded) and a full queue (saturation)."""
    from sentinel.alerts import AlertDispatcher, BreakerSettings
    from sentinel.lab.alertreceiver import Answer, Receiver

    own: list[Event] = []
    with Receiver() as rx:
        rx.script("/hook", then=Answer(500, "down"))
        policy = parse_policy("version: 1\nalerts:\n  webhook: {url_env: HOOK}\n")
        d = AlertDispatcher(
            policy,
            tmp_path,
            environ={"HOOK": rx.url("/hook")},
            queue_size=4,
            breaker=BreakerSettings(consecutive_failures=1),
            tick=0.01,
            mark=None,
            on_event=own.append,
        )
        for port in range(4):
            d.submit(Event(layer="netfilter", kind="egress_attempt", dst_port=port))
        d.start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len({e.kind for e in own}) < 2:
            time.sleep(0.05)
        d.stop()
    assert {e.kind for e in own} == {"sink_degraded", "queue_saturation"}
    assert all(kinds.known(e.kind) for e in own)
