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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype

from sentinel.errors import SentinelError
from sentinel.policy.load import DnsSettings, IPAddress
from sentinel.resolver.rebinding import rebinding_filter

SO_MARK = getattr(socket, "SO_MARK", 36)
MAX_CNAME_DEPTH = 8
TYPES = (("A", dns.rdatatype.A, 4), ("AAAA", dns.rdatatype.AAAA, 6))
# the second type's chase runs here while the caller chases the first (never a pool worker
# waiting on its own pool: refresh_all's pool is a different one)
_TYPE_POOL = ThreadPoolExecutor(max_workers=64, thread_name_prefix="dns-type")


def resolv_conf_upstream(path: str = "/etc/resolv.conf") -> str:
    """The first nameserver of resolv.conf, read once at start-up (`upstream: auto`)."""
    try:
        for line in Path(path).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                return parts[1].split("%")[0]
    except OSError as exc:
        raise SentinelError(f"dns.upstream auto: cannot read {path}: {exc.strerror}") from None
    raise SentinelError(f"dns.upstream auto: no nameserver in {path}")


def parse_upstream(setting: str) -> tuple[str, int]:
    if setting == "auto":
        return resolv_conf_upstream(), 53
    try:
        ipaddress.ip_address(setting)
        return setting, 53
    except ValueError:
        host, _, port = setting.rpartition(":")
        return host.strip("[]"), int(port)


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
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        sock = socket.socket(family, kind)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, self.mark)
        except PermissionError:
            # no CAP_NET_ADMIN (an unprivileged `apply --dry-run`): ask unmarked; that reaches
            # the upstream wherever our redirect is not in force (a daemon answers where it is)
            pass
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)  # dnspython requires it of sockets it is given (timeouts)
        return sock

    def query(self, name: str, rdtype: int) -> dns.message.Message:
        """One question; a truncated UDP answer is asked again over TCP (also marked)."""
        q = dns.message.make_query(name if name.endswith(".") else name + ".", rdtype)
        where = f"{self.address}:{self.port}"
        try:
            with self._socket(socket.SOCK_DGRAM) as udp:
                reply = dns.query.udp(
                    q, self.address, timeout=self.timeout, port=self.port, sock=udp
                )
            if reply.flags & dns.flags.TC:
                with self._socket(socket.SOCK_STREAM) as tcp:
                    tcp.settimeout(self.timeout)  # dnspython wants a connected socket
                    tcp.connect((self.address, self.port))
                    tcp.setblocking(False)
                    reply = dns.query.tcp(
                        q, self.address, timeout=self.timeout, port=self.port, sock=tcp
                    )
        except (OSError, dns.exception.DNSException) as exc:
            raise UpstreamError(f"{where}: {type(exc).__name__}: {exc}") from exc
        if reply.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise UpstreamError(f"{where}: {dns.rcode.to_text(reply.rcode())}")
        return reply

    def forward(self, wire: bytes) -> bytes:
        """Relay a raw query (audit mode only)."""
        with self._socket(socket.SOCK_DGRAM) as udp:
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


def chase(upstream: Upstream, name: str, rdtype: str) -> TypeAnswer:
    """Follow one type's CNAME chain to its addresses (several queries when the upstream does
    not include the whole chain, as dnsmasq and unbound do for local data)."""
    code = dns.rdatatype.from_text(rdtype)
    target, chain, ttls = dns.name.from_text(name), [], []
    try:
        for _ in range(MAX_CNAME_DEPTH):
            reply = upstream.query(target.to_text(), code)
            found = False
            for _hop in range(MAX_CNAME_DEPTH):  # follow the chain inside this answer
                rrset = reply.get_rrset(reply.answer, target, 1, code)
                if rrset is not None:
                    ttls.append(rrset.ttl)
                    addresses = tuple(ipaddress.ip_address(r.address) for r in rrset)
                    return TypeAnswer(rdtype, addresses, min(ttls), tuple(chain))
                cname = reply.get_rrset(reply.answer, target, 1, dns.rdatatype.CNAME)
                if cname is None:
                    break
                ttls.append(cname.ttl)
                target = cname[0].target
                chain.append(target.to_text(omit_final_dot=True))
                found = True
            if not found:  # no answer and no further CNAME: NODATA or NXDOMAIN
                nx = reply.rcode() == dns.rcode.NXDOMAIN
                return TypeAnswer(rdtype, (), float(min(ttls, default=0)), tuple(chain), nx)
        raise UpstreamError(f"{name}: CNAME chain longer than {MAX_CNAME_DEPTH}")
    except UpstreamError as exc:
        return TypeAnswer(rdtype, chain=tuple(chain), error=str(exc))


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
