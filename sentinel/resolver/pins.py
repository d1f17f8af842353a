"""Pins: the addresses an allowlisted name may be reached at, and their lifecycle.

A pin is born from an upstream answer (TTL clamped to the policy's min/max), refreshed before
it expires, and when the addresses change the old ones stay allowed for `stale_grace` so
established and pooled connections do not break. While the upstream is down the last good
addresses keep being served until `stale_grace` after their expiry, then the name fails
closed (no pins, SERVFAIL). Every change is pushed to `on_change(pins)` *before* the caller
gets the addresses, so an answer is never released ahead of the rule that allows it.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterable
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

from sentinel.enforce.marks import family_of, marked_socket
from sentinel.errors import SentinelError
from sentinel.policy.load import DnsSettings, IPAddress
from sentinel.resolver.loops import own_query
from sentinel.store.events import Event

MAX_CNAME_DEPTH = 8
# Answers that are never pinned, for any name: they would point the app at itself, at the
# node's link-local services (169.254.169.254 is the cloud metadata endpoint) or nowhere.
_NEVER = [
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "224.0.0.0/4",
        "255.255.255.255/32",
        "::/128",
        "::1/128",
        "fe80::/10",
        "ff00::/8",
        "::ffff:0:0/96",
    )
]
# Internal ranges: fine for internal names (compose services), DNS rebinding for external ones.
_INTERNAL = [
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
]
_INTERNAL_SUFFIXES = (
    ".local",
    ".internal",
    ".lan",
    ".home.arpa",
    ".localdomain",
    ".svc",
    ".cluster.local",
    ".svc.cluster.local",
)


def normalize(name: str) -> str:
    return name.strip().rstrip(".").lower()


def is_external(name: str) -> bool:
    """Single-label names (compose services) and private suffixes are internal; FQDNs are not."""
    name = normalize(name)
    return "." in name and not name.endswith(_INTERNAL_SUFFIXES)


def rebinding_filter(name: str, addresses: Iterable[IPAddress]) -> tuple[list, list]:
    """(kept, dropped): see docs/dns.md, "DNS rebinding"."""
    kept, dropped = [], []
    external = is_external(name)
    for a in addresses:
        bad = any(a in n for n in _NEVER if n.version == a.version) or (
            external and any(a in n for n in _INTERNAL if n.version == a.version)
        )
        (dropped if bad else kept).append(a)
    return kept, dropped


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
        sock = marked_socket(family_of(self.address), kind, self.mark)
        sock.setblocking(False)  # dnspython requires it of sockets it is given (timeouts)
        return sock

    def query(self, name: str, rdtype: int) -> dns.message.Message:
        q = dns.message.make_query(name if name.endswith(".") else name + ".", rdtype)
        try:
            with (
                own_query(q.to_wire()),
                self._socket(socket.SOCK_DGRAM) as udp,
                self._socket(socket.SOCK_STREAM) as tcp,
            ):
                reply, _ = dns.query.udp_with_fallback(
                    q,
                    self.address,
                    timeout=self.timeout,
                    port=self.port,
                    udp_sock=udp,
                    tcp_sock=tcp,
                )
        except (OSError, dns.exception.DNSException) as exc:
            raise UpstreamError(f"{self.address}:{self.port}: {type(exc).__name__}: {exc}") from exc
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
class Resolution:
    addresses: tuple[IPAddress, ...]
    ttl: float  # clamped
    cnames: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()  # rebinding filter
    nxdomain: bool = False


def _chase(upstream: Upstream, name: str, rdtype: int) -> tuple[list, list[str], float, bool]:
    """Addresses of one type at the end of the CNAME chain, the chain, min TTL, NXDOMAIN."""
    target, chain, ttls = dns.name.from_text(name), [], []
    for _ in range(MAX_CNAME_DEPTH):
        reply = upstream.query(target.to_text(), rdtype)
        found = False
        for _hop in range(MAX_CNAME_DEPTH):  # follow the chain inside this answer
            rrset = reply.get_rrset(reply.answer, target, 1, rdtype)
            if rrset is not None:
                ttls.append(rrset.ttl)
                return [ipaddress.ip_address(r.address) for r in rrset], chain, min(ttls), False
            cname = reply.get_rrset(reply.answer, target, 1, dns.rdatatype.CNAME)
            if cname is None:
                break
            ttls.append(cname.ttl)
            target = cname[0].target
            chain.append(target.to_text(omit_final_dot=True))
            found = True
        if not found:  # no answer and no further CNAME: NODATA or NXDOMAIN
            nx = reply.rcode() == dns.rcode.NXDOMAIN
            return [], chain, float(min(ttls, default=0)), nx
    raise UpstreamError(f"{name}: CNAME chain longer than {MAX_CNAME_DEPTH}")


def resolve(upstream: Upstream, name: str, settings: DnsSettings) -> Resolution:
    """A and AAAA through the upstream, CNAMEs followed, rebinding filtered, TTL clamped."""
    v4, chain4, ttl4, nx4 = _chase(upstream, name, dns.rdatatype.A)
    v6, chain6, ttl6, nx6 = _chase(upstream, name, dns.rdatatype.AAAA)
    kept, dropped = rebinding_filter(name, [*v4, *v6])
    ttls = [t for t, found in ((ttl4, v4), (ttl6, v6)) if found] or [settings.min_ttl]
    ttl = min(max(min(ttls), settings.min_ttl), settings.max_ttl)
    return Resolution(
        addresses=tuple(sorted(set(kept), key=lambda a: (a.version, int(a)))),
        ttl=ttl,
        cnames=tuple(dict.fromkeys([*chain4, *chain6])),
        dropped=tuple(str(a) for a in sorted(set(dropped), key=lambda a: (a.version, int(a)))),
        nxdomain=nx4 and nx6,
    )


@dataclass
class Pin:
    addresses: tuple[IPAddress, ...] = ()
    ttl: float = 0.0
    expires: float = 0.0  # monotonic: end of the (clamped) TTL
    refresh_at: float = 0.0
    retiring: dict[IPAddress, float] = field(default_factory=dict)  # address -> allowed until
    resolved: bool = False
    nxdomain: bool = False
    failing: bool = False
    stale: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def allowed(self) -> list[IPAddress]:
        return sorted({*self.addresses, *self.retiring}, key=lambda a: (a.version, int(a)))


Emit = Callable[[Event], None]
OnChange = Callable[[dict[str, list[IPAddress]]], None]


class PinManager:
    """Owns every pin. Thread-safe; `tick()` is driven by the daemon's refresher thread."""

    def __init__(
        self,
        settings: DnsSettings,
        upstream: Upstream,
        names: Iterable[str],
        emit: Emit,
        on_change: OnChange,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings, self.upstream, self.emit = settings, upstream, emit
        self.on_change, self.clock = on_change, clock
        self._pins: dict[str, Pin] = {normalize(n): Pin() for n in names}
        self._names = frozenset(self._pins)  # read on every query: no per-query set building
        self._commit = threading.Lock()  # orders on_change calls: the kernel gets the latest

    # --- queries --------------------------------------------------------------------
    def names(self) -> frozenset[str]:
        return self._names

    def pins(self) -> dict[str, list[IPAddress]]:
        return {name: pin.allowed() for name, pin in self._pins.items() if pin.allowed()}

    def lookup(self, name: str) -> tuple[tuple[IPAddress, ...], float, bool] | None:
        """(addresses, TTL to answer with, nxdomain) for an allowlisted name, pin in force;
        None when the name fails closed (upstream down past stale_grace, or never resolved)."""
        pin = self._pins.get(normalize(name))
        if pin is None:
            return None
        now = self.clock()
        # While the upstream is failing nothing waits for it: a stale pin is served at once,
        # a name without one gets SERVFAIL at once (the refresher keeps retrying); blocking
        # each query on an upstream timeout would break the app before the grace ran out.
        if not pin.failing and (not pin.resolved or now >= pin.expires):
            self.refresh(normalize(name))
            now = self.clock()
        if not pin.resolved:
            return None
        remaining = pin.expires - now
        if remaining <= 0:  # stale but within grace: short TTL so the app asks again soon
            return pin.addresses, min(self.settings.min_ttl, 5.0), pin.nxdomain
        return pin.addresses, remaining, pin.nxdomain

    # --- lifecycle ------------------------------------------------------------------
    def set_names(self, names: Iterable[str]) -> None:
        """A reloaded policy: new names start unresolved, dropped names lose their pins."""
        wanted = {normalize(n) for n in names}
        for name in wanted - set(self._pins):
            self._pins[name] = Pin()
        for name in set(self._pins) - wanted:
            del self._pins[name]
        self._names = frozenset(self._pins)

    def refresh(self, name: str) -> bool:
        """Re-resolve one name now; returns whether the upstream answered."""
        pin = self._pins.get(name)
        if pin is None:
            return False
        with pin.lock:
            if pin.resolved and self.clock() < pin.refresh_at:
                return True  # another thread refreshed it while we waited for the lock
            try:
                res = resolve(self.upstream, name, self.settings)
            except UpstreamError as exc:
                self._failed(name, pin, str(exc))
                return False
            self._resolved(name, pin, res)
            return True

    def refresh_all(self, names: Iterable[str] | None = None) -> None:
        """Resolve many names in parallel (start-up, reload): one slow name does not add up."""
        todo = [normalize(n) for n in (self._pins if names is None else names)]
        with ThreadPoolExecutor(max_workers=min(16, max(1, len(todo)))) as pool:
            list(pool.map(self.refresh, todo))

    def tick(self) -> float:
        """Refresh what is due, retire what is over; returns seconds until the next due item."""
        now = self.clock()
        due = [name for name, pin in list(self._pins.items()) if now >= pin.refresh_at]
        if due:
            self.refresh_all(due)
        self._expire(self.clock())
        due = [p.refresh_at for p in self._pins.values()]
        due += [t for p in self._pins.values() for t in p.retiring.values()]
        due += [p.expires + self.settings.stale_grace for p in self._pins.values() if p.stale]
        return max(0.05, min(due, default=now + 1.0) - self.clock())

    def _resolved(self, name: str, pin: Pin, res: Resolution) -> None:
        now = self.clock()
        if res.dropped:
            self.emit(
                _event(
                    "dns_rebinding",
                    name,
                    "blocked",
                    dropped=list(res.dropped),
                    kept=[str(a) for a in res.addresses],
                )
            )
        if pin.failing or pin.stale:
            self.emit(_event("dns_upstream_recovered", name, "info"))
        old = set(pin.addresses)
        new = set(res.addresses)
        for address in old - new:
            pin.retiring[address] = now + self.settings.stale_grace
        for address in new:
            pin.retiring.pop(address, None)
        pin.addresses, pin.ttl, pin.nxdomain = res.addresses, res.ttl, res.nxdomain
        pin.expires, pin.refresh_at = now + res.ttl, now + max(0.8 * res.ttl, res.ttl - 30)
        pin.resolved, pin.failing, pin.stale = True, False, False
        if old != new:
            started = self.clock()
            self._push()
            self.emit(
                _event(
                    "pin_changed",
                    name,
                    "info",
                    added=sorted(map(str, new - old)),
                    removed=sorted(map(str, old - new)),
                    grace_s=self.settings.stale_grace,
                    ttl_s=res.ttl,
                    cnames=list(res.cnames),
                    apply_ms=round((self.clock() - started) * 1000, 2),
                )
            )

    def _failed(self, name: str, pin: Pin, error: str) -> None:
        now = self.clock()
        pin.refresh_at = now + min(5.0, max(0.5, pin.ttl / 4 if pin.ttl else 1.0))
        if not pin.failing:
            pin.failing = True
            self.emit(
                _event(
                    "dns_upstream_failing",
                    name,
                    "info",
                    error=error,
                    upstream=f"{self.upstream.address}:{self.upstream.port}",
                )
            )

    def _expire(self, now: float) -> None:
        changed = False
        for name, pin in self._pins.items():
            over = [a for a, until in pin.retiring.items() if until <= now]
            for address in over:
                del pin.retiring[address]
                changed = True
            if pin.resolved and pin.failing and now >= pin.expires and not pin.stale:
                pin.stale = True  # serving the last good answer past its TTL
                self.emit(
                    _event(
                        "stale_pins",
                        name,
                        "info",
                        addresses=[str(a) for a in pin.addresses],
                        fail_closed_in_s=self.settings.stale_grace,
                    )
                )
            if pin.stale and now >= pin.expires + self.settings.stale_grace:
                self.emit(
                    _event(
                        "pins_expired", name, "blocked", addresses=[str(a) for a in pin.addresses]
                    )
                )
                pin.addresses, pin.resolved, pin.stale = (), False, False
                changed = True
        if changed:
            self._push()

    def _push(self) -> None:
        with self._commit:
            self.on_change(self.pins())


def _event(kind: str, name: str, verdict: str, **detail: object) -> Event:
    return Event(
        layer="dns", kind=kind, verdict=verdict, protocol="dns", dst_name=name, detail=detail
    )
