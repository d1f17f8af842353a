"""The pinning resolver and pin lifecycle without root: a fake upstream and a fake clock."""

from __future__ import annotations

import io
import ipaddress
import json

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from sentinel import log
from sentinel.policy.load import DnsSettings
from sentinel.resolver.pins import PinManager, UpstreamError, is_external, rebinding_filter
from sentinel.resolver.server import PinningResolver, parse_query

ip = ipaddress.ip_address


class FakeUpstream:
    """Answers from a dict; `down` makes every query fail like a timeout."""

    address, port = "198.18.0.53", 53

    def __init__(self, records: dict, ttl: int = 60) -> None:
        self.records, self.ttl, self.down, self.asked = records, ttl, False, []
        self.fail: dict[int, str] = {}  # rdtype -> error, like dnsmasq's REFUSED for AAAA

    def query(self, name: str, rdtype: int) -> dns.message.Message:
        self.asked.append((name, int(rdtype)))
        if self.down:
            raise UpstreamError("timeout")
        if int(rdtype) in self.fail:
            raise UpstreamError(self.fail[int(rdtype)])
        reply = dns.message.make_response(dns.message.make_query(name, rdtype))
        entry = self.records.get(name.rstrip("."))
        if entry is None:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        elif "CNAME" in entry:
            reply.answer.append(dns.rrset.from_text(name, self.ttl, "IN", "CNAME", entry["CNAME"]))
        else:
            kind = "A" if rdtype == 1 else "AAAA"
            if entry.get(kind):
                reply.answer.append(
                    dns.rrset.from_text_list(name, self.ttl, "IN", kind, entry[kind])
                )
        return dns.message.from_wire(reply.to_wire())  # indexes the sections like a real reply


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


RECORDS = {
    "postgres": {"A": ["198.18.0.2"], "AAAA": ["2001:db8::2"]},
    "db.internal": {"CNAME": "postgres."},
    "evil.example.com": {"A": ["127.0.0.1", "10.1.2.3", "198.18.5.5"]},
    "meta.example.com": {"A": ["169.254.169.254"]},
}


@pytest.fixture
def world():
    events, pushes, clock = [], [], Clock()
    upstream = FakeUpstream(RECORDS)
    settings = DnsSettings(min_ttl=5, max_ttl=30, stale_grace=10)
    names = ["postgres", "db.internal", "evil.example.com", "meta.example.com", "gone.example"]
    pins = PinManager(settings, upstream, names, events.append, pushes.append, clock=clock)
    resolver = PinningResolver(pins, events.append, port=0)
    return pins, resolver, upstream, clock, events, pushes


def ask(resolver: PinningResolver, name: str, rdtype: str = "A", **kw) -> dns.message.Message:
    wire = resolver.handle(dns.message.make_query(name, rdtype, **kw).to_wire(), 4242, "udp")
    return dns.message.from_wire(wire)


def kinds(events: list) -> list[str]:
    return [e.kind for e in events]


def test_allowlisted_name_is_answered_with_clamped_ttl_after_the_pin_is_pushed(world):
    pins, resolver, upstream, clock, events, pushes = world
    upstream.ttl = 3600
    reply = ask(resolver, "postgres")
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.RA
    assert [r.address for r in reply.answer[0]] == ["198.18.0.2"]
    assert reply.answer[0].ttl == 30  # clamped to max_ttl
    assert pushes and pushes[-1]["postgres"] == [ip("198.18.0.2"), ip("2001:db8::2")]
    assert [r.address for r in ask(resolver, "postgres", "AAAA").answer[0]] == ["2001:db8::2"]
    upstream.ttl = 1
    pins.refresh("db.internal")
    assert pins.lookup("db.internal")[1] == 5  # clamped up to min_ttl


def test_question_case_and_id_are_echoed_and_cached_answers_stay_right(world):
    _, resolver, upstream, *_ = world
    first = ask(resolver, "PoStGrEs")
    q = dns.message.make_query("pOSTGRES", "A")
    cached = resolver._cached(q.to_wire())
    assert cached is not None  # second query served from the template cache
    reply = dns.message.from_wire(cached)
    assert reply.id == q.id and reply.question[0].name.to_text() == "pOSTGRES."
    assert [r.address for r in reply.answer[0]] == [r.address for r in first.answer[0]]
    edns = ask(resolver, "postgres", use_edns=0)
    assert [r.address for r in edns.answer[0]] == ["198.18.0.2"]


def test_other_names_are_refused_and_recorded(world):
    _, resolver, _, _, events, _ = world
    reply = ask(resolver, "api.openai.com", "AAAA")
    assert reply.rcode() == dns.rcode.REFUSED and not reply.answer
    event = events[-1]
    assert (event.layer, event.kind, event.dst_name, event.verdict) == (
        "dns",
        "egress_attempt",
        "api.openai.com",
        "blocked",
    )
    assert event.detail == {"qtype": "AAAA", "src_port": 4242, "transport": "udp"}
    resolver.refuse_rcode = 3
    assert ask(resolver, "x.example").rcode() == dns.rcode.NXDOMAIN


def test_non_address_types_of_allowlisted_names_get_no_data(world):
    _, resolver, upstream, *_ = world
    for rdtype in ("MX", "TXT", "HTTPS"):
        reply = ask(resolver, "postgres", rdtype)
        assert reply.rcode() == dns.rcode.NOERROR and not reply.answer
    assert not upstream.asked  # nothing was forwarded


def test_cname_chain_is_flattened_and_pinned_for_the_asked_name(world):
    pins, resolver, *_ = world
    reply = ask(resolver, "db.internal")
    assert [r.address for r in reply.answer[0]] == ["198.18.0.2"]
    assert reply.answer[0].name.to_text() == "db.internal."
    assert pins.pins()["db.internal"] == [ip("198.18.0.2"), ip("2001:db8::2")]


def test_rebinding_answers_are_dropped_and_reported(world):
    pins, resolver, _, _, events, _ = world
    reply = ask(resolver, "evil.example.com")
    assert [r.address for r in reply.answer[0]] == ["198.18.5.5"]
    assert pins.pins()["evil.example.com"] == [ip("198.18.5.5")]
    event = next(e for e in events if e.kind == "dns_rebinding")
    assert event.detail["dropped"] == ["10.1.2.3", "127.0.0.1"]
    assert not ask(resolver, "meta.example.com").answer  # metadata endpoint never pinned


def test_rebinding_rules():
    assert not is_external("postgres") and not is_external("db.svc.cluster.local")
    assert is_external("api.openai.com")
    kept, dropped = rebinding_filter("postgres", [ip("10.0.0.5"), ip("127.0.0.1")])
    assert kept == [ip("10.0.0.5")] and dropped == [ip("127.0.0.1")]
    kept, dropped = rebinding_filter("x.example.com", [ip("fd00::1"), ip("fe80::1"), ip("::1")])
    assert kept == [] and len(dropped) == 3
    # an IPv4 address inside IPv6 (mapped, compatible): never pinned; NAT64 (DNS64) is kept
    embedded = [ip("::ffff:198.18.0.2"), ip("::198.18.0.2"), ip("64:ff9b::c612:2")]
    kept, dropped = rebinding_filter("postgres", embedded)
    assert kept == [ip("64:ff9b::c612:2")] and dropped == embedded[:2]


def test_address_change_keeps_old_addresses_for_the_grace(world):
    pins, _, upstream, clock, events, pushes = world
    upstream.ttl = 5
    pins.refresh("postgres")
    upstream.records = {**RECORDS, "postgres": {"A": ["198.18.0.99"]}}
    clock.now += 5
    pins.tick()
    assert pins.lookup("postgres")[0] == (ip("198.18.0.99"),)
    allowed = pins.pins()["postgres"]
    assert ip("198.18.0.2") in allowed and ip("198.18.0.99") in allowed  # old one in grace
    change = [e for e in events if e.kind == "pin_changed" and e.dst_name == "postgres"][-1]
    assert change.detail["removed"] == ["198.18.0.2", "2001:db8::2"]
    clock.now += 10.1
    pins.tick()
    assert pins.pins()["postgres"] == [ip("198.18.0.99")]
    assert pushes[-1]["postgres"] == [ip("198.18.0.99")]


def test_upstream_down_serves_stale_then_fails_closed_then_recovers(world):
    pins, resolver, upstream, clock, events, pushes = world
    upstream.ttl = 5
    pins.refresh("postgres")
    upstream.down = True
    clock.now += 5
    pins.tick()
    assert "dns_upstream_failing" in kinds(events) and "stale_pins" in kinds(events)
    asked = len(upstream.asked)
    assert pins.lookup("postgres")[0] == (ip("198.18.0.2"), ip("2001:db8::2"))
    assert len(upstream.asked) == asked  # a stale answer never waits for the upstream
    clock.now += 10
    pins.tick()
    assert "pins_expired" in kinds(events)
    assert "postgres" not in pins.pins() and "postgres" not in pushes[-1]
    assert ask(resolver, "postgres").rcode() == dns.rcode.SERVFAIL
    upstream.down = False
    clock.now += 5
    pins.tick()
    assert "dns_upstream_recovered" in kinds(events)
    assert [r.address for r in ask(resolver, "postgres").answer[0]] == ["198.18.0.2"]


def test_nxdomain_for_an_allowlisted_name_is_passed_on(world):
    _, resolver, *_ = world
    assert ask(resolver, "gone.example").rcode() == dns.rcode.NXDOMAIN


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"\x00" * 11,
        bytes.fromhex("1234 8100 0001 0000 0000 0000 0000 0100 01"),
        bytes.fromhex("1234 0100 0002 0000 0000 0000 0000 0100 01"),
        bytes.fromhex("1234 0100 0001 0000 0000 0000 c00c 0001 0001"),
    ],
    ids=["empty", "short", "response", "two-questions", "compressed-question"],
)
def test_malformed_queries_are_not_parsed(wire):
    assert parse_query(wire) is None


def test_every_log_line_has_a_correlation_id():
    out = io.StringIO()
    log.configure(stream=out)
    logger = log.get_logger("test")
    logger.info("one")
    with log.correlation("abc"):
        logger.info("two")
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert lines[0]["cid"] and lines[1]["cid"] == "abc" and lines[1]["component"] == "test"
    log.configure()


def test_audit_mode_relays_other_names_and_records_them_as_audited(world):
    pins, _, upstream, _, events, _ = world
    relayed = []

    def forward(wire: bytes) -> bytes:
        relayed.append(wire)
        reply = dns.message.make_response(dns.message.from_wire(wire))
        reply.answer.append(dns.rrset.from_text("api.openai.com.", 60, "IN", "A", "198.18.5.5"))
        return reply.to_wire()

    upstream.forward = forward
    resolver = PinningResolver(pins, events.append, port=0, mode="audit", upstream=upstream)
    reply = ask(resolver, "api.openai.com")
    assert [r.address for r in reply.answer[0]] == ["198.18.5.5"] and relayed
    assert events[-1].kind == "egress_attempt" and events[-1].verdict == "audited"


# --- per record type (issue 12) --------------------------------------------------------------
def test_a_type_that_fails_keeps_the_other_and_is_answered_from_the_pin_at_once(world):
    pins, resolver, upstream, clock, events, pushes = world
    upstream.fail = {28: "198.18.0.53:53: REFUSED"}  # dnsmasq: A-only name, AAAA REFUSED
    reply = ask(resolver, "postgres")
    assert [r.address for r in reply.answer[0]] == ["198.18.0.2"]
    assert pushes[-1]["postgres"] == [ip("198.18.0.2")]
    asked = len(upstream.asked)
    aaaa = ask(resolver, "postgres", "AAAA")
    assert aaaa.rcode() == dns.rcode.NOERROR and not aaaa.answer  # NODATA from the pin
    assert len(upstream.asked) == asked  # ...without asking the upstream again
    failing = [e for e in events if e.kind == "dns_type_failing" and e.dst_name == "postgres"]
    assert len(failing) == 1 and failing[0].detail["qtype"] == "AAAA"
    assert "REFUSED" in failing[0].detail["error"] and failing[0].verdict == "info"
    assert "dns_upstream_failing" not in kinds(events)  # the name is not failing
    clock.now += 60
    pins.tick()  # the next refresh fails the same way: still one event for the episode
    assert [e.dst_name for e in events if e.kind == "dns_type_failing"].count("postgres") == 1
    upstream.fail = {}
    clock.now += 60
    pins.tick()
    assert "dns_type_recovered" in kinds(events)
    assert pins.pins()["postgres"] == [ip("198.18.0.2"), ip("2001:db8::2")]


def test_the_failing_type_is_counted_in_the_metrics(world):
    from sentinel.evidence.metrics import REGISTRY

    pins, resolver, upstream, *_ = world
    before = REGISTRY.get_sample_value("sentinel_dns_type_failures_total", {"qtype": "AAAA"})
    upstream.fail = {28: "SERVFAIL"}
    pins.refresh("postgres")
    after = REGISTRY.get_sample_value("sentinel_dns_type_failures_total", {"qtype": "AAAA"})
    assert after == (before or 0) + 1


def test_a_and_aaaa_are_asked_in_parallel(world):
    import threading

    pins, _, upstream, *_ = world
    started = {1: threading.Event(), 28: threading.Event()}
    plain = upstream.query

    def query(name, rdtype):  # noqa: ANN001, ANN202 - each type waits until the other started
        started[int(rdtype)].set()
        if not started[28 if int(rdtype) == 1 else 1].wait(5):
            raise UpstreamError("the other type was not asked meanwhile")
        return plain(name, rdtype)

    upstream.query = query
    assert pins.refresh("postgres")
    assert pins.pins()["postgres"] == [ip("198.18.0.2"), ip("2001:db8::2")]


def test_a_type_that_starts_failing_keeps_its_last_addresses_until_the_grace(world):
    pins, resolver, upstream, clock, events, pushes = world
    upstream.ttl = 5
    pins.refresh("postgres")
    upstream.fail = {28: "timeout"}  # a middlebox starts dropping AAAA
    clock.now += 5
    pins.tick()
    assert pins.pins()["postgres"] == [ip("198.18.0.2"), ip("2001:db8::2")]  # not narrowed
    assert [r.address for r in ask(resolver, "postgres", "AAAA").answer[0]] == ["2001:db8::2"]
    failing = [e for e in events if e.kind == "dns_type_failing" and e.dst_name == "postgres"]
    assert failing[0].detail["kept"] == ["2001:db8::2"]
    clock.now += 10.1  # past the AAAA answer's end + stale_grace (10 s)
    pins.tick()
    assert pins.pins()["postgres"] == [ip("198.18.0.2")]
    assert pushes[-1]["postgres"] == [ip("198.18.0.2")]
    expired = [e for e in events if e.kind == "pins_expired" and e.dst_name == "postgres"]
    assert expired and expired[-1].detail == {"qtype": "AAAA", "addresses": ["2001:db8::2"]}
    assert not ask(resolver, "postgres", "AAAA").answer


def test_a_pin_is_refreshed_at_80_percent_of_its_ttl():
    clock, upstream = Clock(), FakeUpstream(RECORDS, ttl=3600)
    settings = DnsSettings(min_ttl=5, max_ttl=3600, stale_grace=10)
    pins = PinManager(settings, upstream, ["postgres"], [].append, [].append, clock=clock)
    pins.refresh("postgres")
    asked = len(upstream.asked)
    start = clock.now
    clock.now = start + 0.8 * 3600 - 1
    pins.tick()
    assert len(upstream.asked) == asked  # 2879 s: not yet
    clock.now = start + 0.8 * 3600
    pins.tick()
    assert len(upstream.asked) == asked + 2  # 2880 s = 80 % of 3600: A and AAAA again


def test_adopted_applied_pins_are_kept_while_the_name_fails_until_the_grace(world):
    import time as wall

    pins, resolver, upstream, clock, events, _ = world
    upstream.down = True
    applied = {
        "pins": {"postgres": ["198.18.0.2", "2001:db8::2"]},
        "pins_valid_until": {"postgres": {"A": wall.time() + 3, "AAAA": wall.time() + 3}},
    }
    assert pins.adopt(applied) == ["postgres"]
    pins.refresh_all()
    pins.expire()
    assert pins.current()["postgres"] == [ip("198.18.0.2"), ip("2001:db8::2")]
    clock.now += 3 + 10 + 0.5  # validity + stale_grace
    pins.tick()
    assert "postgres" not in pins.current() and "pins_expired" in kinds(events)


# --- attempts, not packets (issue 12) --------------------------------------------------------
def test_refusals_of_one_name_within_the_fold_window_are_one_attempt(world):
    pins, _, upstream, clock, events, _ = world
    wall = Clock()
    resolver = PinningResolver(pins, events.append, port=0, fold_window=2.0)
    resolver.folder.clock = wall
    for qtype in ("A", "AAAA", "A", "AAAA"):  # one getaddrinfo: A + AAAA, each retried by glibc
        assert ask(resolver, "api.openai.com", qtype).rcode() == dns.rcode.REFUSED
        wall.now += 0.5
    attempts = [e for e in events if e.kind == "egress_attempt"]
    assert len(attempts) == 1 and attempts[0].last_ts is None  # emitted at the first query
    wall.now += 1.0  # still within 2 s of the last query: nothing closes yet
    assert resolver.folder.flush() == 0
    wall.now += 1.1
    assert resolver.folder.flush() == 1
    update = events[-1]
    assert update.id == attempts[0].id and update.packets == 4  # same attempt, its query count
    assert update.detail["queries"] == 4 and update.detail["qtypes"] == ["A", "AAAA"]
    assert update.last_ts == 1000.0 + 1.5
    ask(resolver, "api.openai.com")  # a new lookup after the window is a new attempt
    assert len([e for e in events if e.kind == "egress_attempt" and e.last_ts is None]) == 2


def test_a_single_refusal_has_no_update_and_other_names_do_not_fold(world):
    pins, _, _, _, events, _ = world
    resolver = PinningResolver(pins, events.append, port=0, fold_window=2.0)
    ask(resolver, "a.example")
    ask(resolver, "b.example")
    assert [e.dst_name for e in events if e.kind == "egress_attempt"] == ["a.example", "b.example"]
    assert resolver.folder.flush(everything=True) == 0  # single queries need no update


def test_audit_mode_records_the_relayed_answer_with_cnames_for_policy_suggest(world):
    pins, _, upstream, _, events, _ = world

    def forward(wire: bytes) -> bytes:
        reply = dns.message.make_response(dns.message.from_wire(wire))
        reply.answer.append(dns.rrset.from_text("api.example.com.", 60, "IN", "CNAME", "edge.cdn."))
        reply.answer.append(dns.rrset.from_text("edge.cdn.", 30, "IN", "A", "198.18.5.5"))
        return reply.to_wire()

    upstream.forward = forward
    resolver = PinningResolver(pins, events.append, port=0, mode="audit", upstream=upstream)
    ask(resolver, "api.example.com")
    answer = events[-1].detail["answer"]
    assert events[-1].dst_name == "api.example.com"
    assert answer == {
        "rcode": "NOERROR",
        "addresses": ["198.18.5.5"],
        "cnames": ["edge.cdn"],
        "ttl": 30,
    }


# --- the pipelined start-up path's own wire parser (resolver/bulk.py) --------------------------
def test_bulk_parser_reads_what_dnspython_writes_and_rejects_what_is_not_ours():
    from sentinel.resolver.bulk import parse_reply, question_wire
    from sentinel.resolver.upstream import Answer

    q = dns.message.make_query("Models.Internal.", "A")
    reply = dns.message.make_response(q)
    cname = dns.rrset.from_text("models.internal.", 60, "IN", "CNAME", "graph.internal.")
    reply.answer.append(cname)
    reply.answer.append(
        dns.rrset.from_text_list("graph.internal.", 30, "IN", "A", ["198.18.0.3", "198.18.0.4"])
    )
    wire = reply.to_wire()  # dnspython compresses the repeated names
    question = question_wire("models.internal", 1)
    flags, parsed = parse_reply(wire, q.id, question)
    assert flags & 0x8000 and parsed == Answer.from_message(dns.message.from_wire(wire))
    ttl, addresses = parsed.records[("graph.internal", 1)]
    assert ttl == 30 and sorted(addresses) == [ip("198.18.0.3"), ip("198.18.0.4")]
    assert parsed.records[("models.internal", 5)] == (60, ["graph.internal"])
    assert parse_reply(wire, (q.id + 1) % 65536, question) is None  # another id
    assert parse_reply(wire, q.id, question_wire("other.internal", 1)) is None  # another question
    assert parse_reply(q.to_wire(), q.id, question) is None  # a query, not a reply
    assert parse_reply(wire[:-3], q.id, question) is None  # cut short
    pointer_loop = wire[: 12 + len(question)] + b"\xc0" + bytes([12 + len(question)]) + b"\0" * 10
    assert parse_reply(pointer_loop, q.id, question) is None  # never raises, never loops


def test_bulk_parser_never_raises_on_mutated_replies():
    import random

    from sentinel.resolver.bulk import parse_reply, question_wire

    q = dns.message.make_query("graph.internal.", "AAAA")
    reply = dns.message.make_response(q)
    reply.answer.append(dns.rrset.from_text("graph.internal.", 30, "IN", "AAAA", "2001:db8::3"))
    wire, question = bytearray(reply.to_wire()), question_wire("graph.internal", 28)
    rng = random.Random(12)
    for _ in range(3000):  # bounded; flips bytes after the question (what a reply may vary)
        mutated = bytearray(wire)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(12 + len(question), len(mutated))] = rng.randrange(256)
        parse_reply(bytes(mutated[: rng.randint(12, len(mutated))]), q.id, question)


def test_the_answer_ttl_is_what_is_left_of_the_pin_and_never_0(world):
    """docs/dns.md: an allowlisted name's answer carries what is left of the clamped TTL, never
    0 (a 0 would defeat every client cache); stale within the grace, a short TTL."""
    pins, resolver, upstream, clock, *_ = world
    upstream.ttl = 3600
    assert ask(resolver, "postgres").answer[0].ttl == 30  # clamped to max_ttl
    resolver._cache.clear()  # the template cache runs on the real clock; this test moves its own
    clock.now += 12
    assert ask(resolver, "postgres").answer[0].ttl == 18
    resolver._cache.clear()
    clock.now += 17.6  # 0.4 s left
    assert ask(resolver, "postgres").answer[0].ttl == 1
    resolver._cache.clear()
    upstream.down = True  # the refresh fails: stale, inside stale_grace
    clock.now += 3
    reply = ask(resolver, "postgres")
    assert [r.address for r in reply.answer[0]] == ["198.18.0.2"] and reply.answer[0].ttl == 5
