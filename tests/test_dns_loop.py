"""An upstream that hands the sentinel's own queries back to it (Docker's embedded resolver
forwards from the app's namespace, into the DNS redirect) must not loop, and each app query is
one attempt. Real sockets on loopback: the "Docker" forwarder relays every query it receives to
the resolver's own port, as the REDIRECT does in a compose deployment."""

from __future__ import annotations

import os
import socket
import threading
import time

import dns.message
import dns.rcode
import pytest

from sentinel.policy.load import DnsSettings
from sentinel.resolver import loops
from sentinel.resolver.pins import PinManager, Upstream
from sentinel.resolver.server import PinningResolver

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="SO_MARK on the upstream socket")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopingForwarder:
    """Like Docker's 127.0.0.11 for a name outside its network: forwards, unmarked, to what
    turns out to be the sentinel again. Counts what it relays (bounded: at most 500)."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.relayed = 0
        self.stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.stop.is_set() and self.relayed < 500:
            try:
                wire, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            self.relayed += 1
            threading.Thread(target=self._relay, args=(wire, peer), daemon=True).start()

    def _relay(self, wire: bytes, peer) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(3)
            s.sendto(wire, self.target)
            try:
                self.sock.sendto(s.recvfrom(4096)[0], peer)
            except OSError:
                pass


@pytest.fixture
def looped():
    port = free_port()
    forwarder = LoopingForwarder(port)
    events: list = []
    upstream = Upstream("127.0.0.1", forwarder.port, timeout=2.0)
    settings = DnsSettings(min_ttl=5, max_ttl=30, stale_grace=10)
    pins = PinManager(settings, upstream, ["ext.example"], events.append, lambda *_: None)

    def make(mode: str) -> PinningResolver:
        resolver = PinningResolver(
            pins, events.append, port=port, mode=mode, upstream=upstream, addresses=("127.0.0.1",)
        )
        resolver.start()
        made.append(resolver)
        return resolver

    made: list[PinningResolver] = []
    yield make, forwarder, events
    forwarder.stop.set()
    for r in made:
        r.stop()


def ask(port: int, name: str) -> tuple[dns.message.Message, float]:
    q = dns.message.make_query(name, "A")
    start = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(8)
        s.sendto(q.to_wire(), ("127.0.0.1", port))
        reply = dns.message.from_wire(s.recvfrom(4096)[0])
    return reply, time.monotonic() - start


def attempts(events: list) -> list:
    return [e for e in events if e.kind == "egress_attempt"]


def test_audit_relay_handed_back_is_answered_servfail_once_and_counted_once(looped):
    make, forwarder, events = looped
    resolver = make("audit")
    reply, took = ask(resolver.port, "api.openai.com")
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert took < 5, took  # no loop running until the timeouts end it
    assert len(attempts(events)) == 1, [e.dst_name for e in attempts(events)]
    assert resolver.stats()["upstream_loops"] >= 1
    assert forwarder.relayed <= 3  # the query, its one echo, at most one retry


def test_pin_query_handed_back_fails_closed_without_looping(looped):
    make, forwarder, events = looped
    resolver = make("enforce")
    reply, took = ask(resolver.port, "ext.example")
    assert reply.rcode() == dns.rcode.SERVFAIL  # fail closed: no address could be pinned
    assert took < 7, took
    assert resolver.stats()["upstream_loops"] >= 1
    assert forwarder.relayed <= 6
    assert not attempts(events)  # an allowlisted name is never an attempt


def test_query_key_ignores_case_but_not_id():
    a = dns.message.make_query("API.openai.com", "A")
    b = dns.message.make_query("api.OPENAI.com", "A")
    b.id = a.id
    assert loops.query_key(a.to_wire()) == loops.query_key(b.to_wire())
    b.id = (a.id + 1) % 65536
    assert loops.query_key(a.to_wire()) != loops.query_key(b.to_wire())
    assert loops.query_key(b"\x00" * 5) is None
    with loops.own_query(a.to_wire()):
        assert loops.is_own(a.to_wire()) and not loops.is_own(b.to_wire())
    assert not loops.is_own(a.to_wire())
