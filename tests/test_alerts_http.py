"""The marked client: SO_MARK is set before connect() (httpcore's socket_options come too late
for the SYN), sink host names resolve over marked DNS sockets, errors never show the URL."""

from __future__ import annotations

import socket
import threading

import dns.message
import dns.rrset
import pytest

from sentinel.alerts import http as alert_http
from sentinel.alerts.http import make_client, post, resolve_marked
from sentinel.enforce.marks import SO_MARK
from sentinel.lab.alertreceiver import Receiver
from sentinel.redact import add_secret

MARK = 0x5E47


class _SpySocket(socket.socket):
    calls: list[tuple] = []

    def setsockopt(self, *args):
        _SpySocket.calls.append(("setsockopt", *args))
        return super().setsockopt(*args)

    def connect(self, address):
        _SpySocket.calls.append(("connect", address))
        return super().connect(address)


def test_mark_is_set_before_connect(monkeypatch):
    _SpySocket.calls = []
    monkeypatch.setattr(alert_http.socket, "socket", _SpySocket)
    with Receiver() as rx, make_client(MARK) as client:
        result = post(client, rx.url("/hook"), b"{}", {"Content-Type": "application/json"})
    assert result.outcome == "ok", result
    names = [c[0] for c in _SpySocket.calls]
    mark_at = _SpySocket.calls.index(("setsockopt", socket.SOL_SOCKET, SO_MARK, MARK))
    assert mark_at < names.index("connect")


class _TinyDns:
    """A loopback DNS server answering A/AAAA for one name (counts queries)."""

    def __init__(self, name: str, v4: str, v6: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.name, self.v4, self.v6 = name, v4, v6
        self.queries = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            self.queries += 1
            query = dns.message.from_wire(data)
            reply = dns.message.make_response(query)
            q = query.question[0]
            if q.name.to_text().rstrip(".") == self.name:
                rdtype = dns.rdatatype.to_text(q.rdtype)
                addr = self.v4 if rdtype == "A" else self.v6
                reply.answer.append(dns.rrset.from_text(q.name, 60, "IN", rdtype, addr))
            self.sock.sendto(reply.to_wire(), peer)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


def test_resolve_marked(tmp_path):
    server = _TinyDns("hooks.example.test", "198.18.7.7", "2001:db8::77")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n198.18.0.2 postgres pg # comment\n")
    try:
        ns = [("127.0.0.1", server.port)]
        assert resolve_marked("198.18.5.5", MARK, ns) == ["198.18.5.5"]
        assert resolve_marked("[2001:db8::5]", MARK, ns) == ["2001:db8::5"]
        assert resolve_marked("pg", MARK, ns, hosts_file=hosts) == ["198.18.0.2"]
        assert server.queries == 0  # literals and hosts entries need no DNS
        got = resolve_marked("hooks.example.test", MARK, ns, hosts_file=hosts)
        assert got == ["198.18.7.7", "2001:db8::77"]
        with pytest.raises(OSError):
            resolve_marked("nope.example.test", MARK, ns, timeout=0.5, hosts_file=hosts)
    finally:
        server.close()


def test_connect_errors_do_not_reveal_the_url():
    url = "http://127.0.0.1:9/services/T000/B000/very-secret-path-123"
    add_secret(url)
    with make_client(MARK) as client:
        result = post(client, url, b"{}", {})
    assert result.outcome == "retry" and result.status is None
    assert "very-secret-path-123" not in result.detail
