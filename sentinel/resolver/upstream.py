"""The real resolver behind the pins, and how one name is resolved through it.

One path for every command that resolves (`apply`, `run`, the lab): the upstream named by the
policy's `dns.upstream` (`auto` = the first nameserver of resolv.conf, read once), asked over
sockets that carry the sentinel's mark, so the app's DNS redirect and deny never catch them.

Each record type stands alone: A and AAAA are asked in parallel and each chain of CNAME hops
is followed per type. A type the upstream refuses, fails (SERVFAIL) or never answers does not
take the other type down with it: real servers do all three (dnsmasq REFUSES AAAA for a name it
only has an A record for; some middleboxes drop AAAA). A name fails only when every type fails.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype

from sentinel.enforce.marks import family_of, marked_socket
from sentinel.policy.load import DnsSettings, IPAddress
from sentinel.resolver.loops import own_query
from sentinel.resolver.rebinding import rebinding_filter
from sentinel.resolver.upstreamconf import parse_upstream, resolv_conf_upstream  # noqa: F401

MAX_CNAME_DEPTH = 8
CNAME = int(dns.rdatatype.CNAME)
TYPES = (("A", dns.rdatatype.A, 4), ("AAAA", dns.rdatatype.AAAA, 6))
# the second type's chase runs here while the caller chases the first (never a pool worker
# waiting on its own pool: refresh_all's pool is a different one)
_TYPE_POOL = ThreadPoolExecutor(max_workers=64, thread_name_prefix="dns-type")
_LOCAL = threading.local()  # one marked UDP socket per thread and upstream, reused


class UpstreamError(Exception):
    pass


@dataclass(frozen=True)
class Upstream:
    """The real resolver. Every socket carries the sentinel's mark, which exempts it from the
    app's DNS redirect and deny (the app cannot set a mark without CAP_NET_ADMIN)."""

    address: str
    port: int = 53
    mark: int = 0x5E47
    timeout: float = 2.0

    def _socket(self, kind: int) -> socket.socket:
        try:
            sock = marked_socket(family_of(self.address), kind, self.mark)
        except PermissionError:
            # no CAP_NET_ADMIN (an unprivileged `apply --dry-run`): ask unmarked; that reaches
            # the upstream wherever our redirect is not in force (a daemon answers where it is)
            sock = socket.socket(family_of(self.address), kind)
        sock.setblocking(False)  # dnspython requires it of sockets it is given (timeouts)
        return sock

    def _udp(self) -> socket.socket:
        socks = getattr(_LOCAL, "socks", None)
        if socks is None:
            socks = _LOCAL.socks = {}
        key = (self.address, self.port, self.mark)
        if key not in socks:
            socks[key] = self._socket(socket.SOCK_DGRAM)
        return socks[key]

    def _drop_udp(self) -> None:
        sock = getattr(_LOCAL, "socks", {}).pop((self.address, self.port, self.mark), None)
        if sock is not None:
            sock.close()

    def query(self, name: str, rdtype: int) -> dns.message.Message:
        """One question; a truncated UDP answer is asked again over TCP (also marked). The
        thread's UDP socket is reused: a late answer to an earlier question is skipped (id and
        question are checked), never taken for this one."""
        q = dns.message.make_query(name if name.endswith(".") else name + ".", rdtype)
        where = f"{self.address}:{self.port}"
        try:
            with own_query(q.to_wire()):
                return self.checked(self._ask(q))
        except (OSError, dns.exception.DNSException) as exc:
            raise UpstreamError(f"{where}: {type(exc).__name__}: {exc}") from exc

    def _ask(self, q: dns.message.Message) -> dns.message.Message:
        """UDP first (the thread's socket), TCP again after a truncated answer."""
        try:
            reply = dns.query.udp(
                q,
                self.address,
                timeout=self.timeout,
                port=self.port,
                sock=self._udp(),
                ignore_unexpected=True,
                ignore_errors=True,
            )
        except OSError:
            self._drop_udp()  # a fresh socket next time
            raise
        if reply.flags & dns.flags.TC:
            reply = self.tcp(q)
        return reply

    def tcp(self, q: dns.message.Message) -> dns.message.Message:
        """The question again over TCP (after a truncated UDP answer), on a marked socket."""
        with self._socket(socket.SOCK_STREAM) as tcp:
            tcp.settimeout(self.timeout)  # dnspython wants a connected socket
            tcp.connect((self.address, self.port))
            tcp.setblocking(False)
            return dns.query.tcp(q, self.address, timeout=self.timeout, port=self.port, sock=tcp)

    def checked(self, reply: dns.message.Message) -> dns.message.Message:
        """An answer (NOERROR / NXDOMAIN), or UpstreamError naming the rcode."""
        if reply.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise UpstreamError(f"{self.address}:{self.port}: {dns.rcode.to_text(reply.rcode())}")
        return reply

    def forward(self, wire: bytes) -> bytes:
        """Relay a raw query (audit mode only)."""
        with own_query(wire), self._socket(socket.SOCK_DGRAM) as udp:
            udp.settimeout(self.timeout)  # blocking with a timeout: plain socket calls here
            udp.sendto(wire, (self.address, self.port))
            return udp.recvfrom(65535)[0]


@dataclass(frozen=True)
class TypeAnswer:
    """The outcome of one record type: addresses at the end of its CNAME chain, or an error."""

    rdtype: str  # "A" | "AAAA"
    addresses: tuple[IPAddress, ...] = ()
    ttl: float = 0.0  # smallest along the chain (unclamped)
    chain: tuple[str, ...] = ()
    nxdomain: bool = False
    error: str | None = None


@dataclass(frozen=True)
class Resolution:
    addresses: tuple[IPAddress, ...]  # of the types that answered
    ttl: float  # clamped
    cnames: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()  # rebinding filter
    nxdomain: bool = False
    failed: dict[str, str] = field(default_factory=dict)  # rdtype -> error (the others answered)


@dataclass(frozen=True)
class Answer:
    """What a chase needs of one reply: its rcode and its answer records by (owner, type)
    (owner lower-case without the final dot; values are addresses, or CNAME targets)."""

    rcode: int
    records: dict[tuple[str, int], tuple[int, list[Any]]]

    @classmethod
    def from_message(cls, msg: dns.message.Message) -> Answer:
        records: dict[tuple[str, int], tuple[int, list[Any]]] = {}
        for rrset in msg.answer:
            owner = rrset.name.to_text(omit_final_dot=True).lower()
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                values = [ipaddress.ip_address(r.address) for r in rrset]
            elif rrset.rdtype == dns.rdatatype.CNAME:
                values = [r.target.to_text(omit_final_dot=True).lower() for r in rrset]
            else:
                continue
            add_record(records, (owner, int(rrset.rdtype)), rrset.ttl, values)
        return cls(int(msg.rcode()), records)


def add_record(records: dict, key: tuple[str, int], ttl: int, values: list) -> None:
    old = records.get(key)
    records[key] = (min(ttl, old[0]), old[1] + values) if old else (ttl, values)


def chase_steps(name: str, rdtype: str) -> Generator[tuple[str, int], Answer, TypeAnswer]:
    """One type's CNAME chain as a conversation: yields each question (name, type), is sent
    each checked Answer, returns the addresses at the end of the chain. Several questions when
    the upstream does not include the whole chain (dnsmasq and unbound for local data)."""
    code = int(dns.rdatatype.from_text(rdtype))
    target, chain, ttls = name.rstrip(".").lower(), [], []
    for _ in range(MAX_CNAME_DEPTH):
        reply = yield target, code
        found = False
        for _hop in range(MAX_CNAME_DEPTH):  # follow the chain inside this answer
            hit = reply.records.get((target, code))
            if hit is not None:
                ttls.append(hit[0])
                return TypeAnswer(rdtype, tuple(hit[1]), min(ttls), tuple(chain))
            cname = reply.records.get((target, CNAME))
            if cname is None:
                break
            ttls.append(cname[0])
            target = cname[1][0]
            chain.append(target)
            found = True
        if not found:  # no answer and no further CNAME: NODATA or NXDOMAIN
            nx = reply.rcode == dns.rcode.NXDOMAIN
            return TypeAnswer(rdtype, (), float(min(ttls, default=0)), tuple(chain), nx)
    return TypeAnswer(rdtype, error=f"{name}: CNAME chain longer than {MAX_CNAME_DEPTH}")


def chase(upstream: Upstream, name: str, rdtype: str) -> TypeAnswer:
    """Drive one type's chain with one blocking query at a time."""
    steps = chase_steps(name, rdtype)
    try:
        question = next(steps)
        while True:
            try:
                reply = Answer.from_message(upstream.query(question[0] + ".", question[1]))
            except UpstreamError as exc:
                return TypeAnswer(rdtype, error=str(exc))
            question = steps.send(reply)
    except StopIteration as done:
        return done.value


def resolve(
    upstream: Upstream, name: str, settings: DnsSettings, parallel: bool = True
) -> Resolution:
    """A and AAAA through the upstream (in parallel unless told otherwise), CNAMEs followed per
    type, rebinding filtered, TTL clamped. Raises UpstreamError only when every type failed."""
    if parallel:
        second = _TYPE_POOL.submit(chase, upstream, name, "AAAA")
        answers = [chase(upstream, name, "A"), second.result()]
    else:
        answers = [chase(upstream, name, rdtype) for rdtype, _, _ in TYPES]
    return combine(name, answers, settings)


def combine(name: str, answers: list[TypeAnswer], settings: DnsSettings) -> Resolution:
    """The per-type outcomes of one name as one Resolution (UpstreamError when all failed)."""
    failed = {a.rdtype: a.error for a in answers if a.error is not None}
    answered = [a for a in answers if a.error is None]
    if not answered:
        raise UpstreamError("; ".join(f"{t}: {e}" for t, e in failed.items()))
    found = [a for a in answered if a.addresses]
    kept, dropped = rebinding_filter(name, [x for a in found for x in a.addresses])
    ttls = [a.ttl for a in found] or [settings.min_ttl]
    ttl = min(max(min(ttls), settings.min_ttl), settings.max_ttl)
    return Resolution(
        addresses=tuple(sorted(set(kept), key=_order)),
        ttl=ttl,
        cnames=tuple(dict.fromkeys(c for a in answers for c in a.chain)),
        dropped=tuple(str(a) for a in sorted(set(dropped), key=_order)),
        nxdomain=not found and all(a.nxdomain for a in answered),
        failed=failed,
    )


def _order(address: IPAddress) -> tuple[int, int]:
    return (address.version, int(address))
