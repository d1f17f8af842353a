"""The pinning resolver: the only DNS server the app can reach.

The ruleset REDIRECTs every app packet to port 53 (UDP and TCP, any address, both families)
to this server on 127.0.0.1/::1:listen_port. An allowlisted name is answered with its pinned
addresses (CNAME chains flattened onto the asked name, TTL = what is left of the clamped
upstream TTL); the pin is in the kernel before the answer leaves. Any other name is REFUSED
(or NXDOMAIN) and handed to `emit` as an egress attempt; in audit mode it is relayed to the
upstream instead and recorded as audited.

Hot path: queries are parsed by hand (header + one question, wire.py) and cached answers are
byte templates with the id patched in; dnspython is used for the upstream side (upstream.py).
"""

from __future__ import annotations

import math
import socket
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from sentinel.evidence import metrics
from sentinel.log import correlation, get_logger
from sentinel.resolver import loops
from sentinel.resolver.answers import answer_summary
from sentinel.resolver.drops import DropCounter
from sentinel.resolver.fold import RefusalFolder
from sentinel.resolver.pins import PinManager, Upstream
from sentinel.resolver.wire import (
    AAAA,
    FORMERR,
    IN,
    NOERROR,
    NOTIMP,
    NXDOMAIN,
    REFUSED,
    SERVFAIL,
    A,
    Query,
    address_record,
    parse_query,
    qtype_text,
    recv_exact,
    refused_response,
    response,
)
from sentinel.store.events import Event

CACHE_SLACK = 1.0  # a cached answer's TTL may be up to this many seconds too high
MAX_TCP_CLIENTS = 64
MAX_CACHE = 10_000
MALFORMED_LOGGED = 100  # log each of the first 100 malformed queries, then every 1000th
HOUSEKEEPING = 0.5  # seconds between fold flushes and drop-counter readings
log = get_logger("dns")


class PinningResolver:
    def __init__(
        self,
        pins: PinManager,
        emit: Callable[[Event], None],
        port: int,
        refuse_with: str = "refused",
        mode: str = "enforce",
        upstream: Upstream | None = None,
        addresses: tuple[str, ...] = ("127.0.0.1", "::1"),
        fold_window: float = 2.0,
    ) -> None:
        self.pins, self.emit, self.port = pins, emit, port
        self.refuse_rcode = NXDOMAIN if refuse_with == "nxdomain" else REFUSED
        self.mode, self.upstream, self.addresses = mode, upstream, addresses
        self._cache: dict[bytes, tuple[bytes, float, int]] = {}
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="dns-miss")
        self._tcp_slots = threading.BoundedSemaphore(MAX_TCP_CLIENTS)
        self._stopping = threading.Event()
        self.malformed = 0  # queries we could not parse (FORMERR or dropped): see stats()
        self.loops = 0  # our own upstream queries handed back to us (loops.py): see stats()
        self.cache_hits = 0  # answered from the template cache (not timed: see metrics)
        self._malformed_lock = threading.Lock()
        self.folder = RefusalFolder(fold_window, self._emit)
        self.drops = DropCounter(self._emit, MAX_TCP_CLIENTS)  # queries that never reached us

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        for address in self.addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            try:
                udp = socket.socket(family, socket.SOCK_DGRAM)
                udp.bind((address, self.port))
                tcp = socket.socket(family, socket.SOCK_STREAM)
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((address, self.port))
                tcp.listen(128)
            except OSError as exc:
                if family == socket.AF_INET6:  # IPv6 disabled in this namespace: v4 only
                    log.warning("dns_listen_skipped", address=address, error=str(exc))
                    continue
                raise
            self._socks += [udp, tcp]
            self.drops.watch(udp)
            self._thread(self._serve_udp, udp)
            self._thread(self._serve_tcp, tcp)
        housekeeping = threading.Thread(target=self._housekeeping, daemon=True, name="dns-fold")
        housekeeping.start()
        self._threads.append(housekeeping)
        log.info("dns_listening", addresses=list(self.addresses), port=self.port)

    def _thread(self, target: Callable, sock: socket.socket) -> None:
        t = threading.Thread(target=target, args=(sock,), daemon=True, name=target.__name__)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._stopping.set()
        for sock in self._socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for t in self._threads:
            t.join(timeout=2)
        self.folder.flush(everything=True)  # open attempts get their final query counts
        self.drops.report()

    def invalidate(self) -> None:
        """Pins changed: cached answers are rebuilt on the next query."""
        self._cache = {}

    # --- serving --------------------------------------------------------------------
    def _serve_udp(self, sock: socket.socket) -> None:
        space = socket.CMSG_SPACE(4)
        key = sock.fileno()
        while not self._stopping.is_set():
            try:
                wire, ancdata, _flags, peer = sock.recvmsg(4096, space)
            except OSError:
                return
            if ancdata:  # only present once the socket has dropped something
                self.drops.seen(key, ancdata)
            cached = self._cached(wire)
            if cached is not None:
                sock.sendto(cached, peer)
                self.cache_hits += 1  # the hot path: one increment, read at scrape time
                continue
            try:
                self._pool.submit(self._answer_udp, sock, wire, peer)
            except RuntimeError:  # pool shut down: we are stopping
                return

    def _answer_udp(self, sock: socket.socket, wire: bytes, peer: tuple) -> None:
        reply = self.safe_handle(wire, peer[1], "udp")
        if reply is not None:
            if len(reply) > 512:  # we send no EDNS: truncated, the client retries over TCP
                q = parse_query(wire)
                reply = response(q, NOERROR) if q else reply[:12]
                reply = reply[:2] + bytes([reply[2] | 0x02]) + reply[3:]
            try:
                sock.sendto(reply, peer)
            except OSError:
                pass

    def _serve_tcp(self, sock: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                conn, peer = sock.accept()
            except OSError:
                return
            if not self._tcp_slots.acquire(blocking=False):
                conn.close()
                self.drops.tcp_refused += 1  # one thread accepts: no lock needed
                continue
            threading.Thread(target=self._tcp_client, args=(conn, peer), daemon=True).start()

    def _tcp_client(self, conn: socket.socket, peer: tuple) -> None:
        conn.settimeout(10)
        try:
            while True:
                head = recv_exact(conn, 2)
                wire = recv_exact(conn, struct.unpack("!H", head)[0]) if head else None
                if not wire:
                    return
                reply = self.safe_handle(wire, peer[1], "tcp")
                if reply is None:
                    return
                conn.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            pass
        finally:
            conn.close()
            self._tcp_slots.release()

    def _cached(self, wire: bytes) -> bytes | None:
        if len(wire) < 12:
            return None
        hit = self._cache.get(wire[12:].lower())
        if hit is None or hit[1] <= time.monotonic():
            return None
        template, _, qlen = hit
        flags = bytes([(template[2] & 0xFE) | (wire[2] & 0x01)])
        return wire[:2] + flags + template[3:12] + wire[12 : 12 + qlen] + template[12 + qlen :]

    def safe_handle(self, wire: bytes, src_port: int, transport: str) -> bytes | None:
        """handle(), but an internal failure (e.g. the kernel refused a pin) is a SERVFAIL:
        the answer is never released without its rule, and the client is not left waiting."""
        started = time.perf_counter()
        try:
            reply = self.handle(wire, src_port, transport)
        except Exception:  # noqa: BLE001
            log.exception("dns_query_failed", transport=transport)
            metrics.observe_query(time.perf_counter() - started, failed=True)
            q = parse_query(wire)
            return response(q, SERVFAIL) if q else None
        metrics.observe_query(time.perf_counter() - started)
        return reply

    def stats(self) -> dict[str, int]:
        return {
            "malformed": self.malformed,
            "upstream_loops": self.loops,
            **self.drops.totals(),
            "folded": self.folder.folded,
        }

    def _count_loop(self, q: Query, transport: str) -> bytes:
        with self._malformed_lock:
            self.loops += 1
            count = self.loops
        if count == 1 or count % 1000 == 0:
            log.warning(
                "dns_upstream_loop",
                name=q.name,
                transport=transport,
                loops=count,
                hint="the upstream forwards from the app's namespace back into the redirect "
                "(Docker's 127.0.0.11 does for names outside its network): set dns.upstream "
                "to a resolver address for names that are not container names",
            )
        return response(q, SERVFAIL)

    def _housekeeping(self) -> None:
        while not self._stopping.wait(HOUSEKEEPING):
            try:
                self.folder.flush()
                self.drops.report()
            except Exception:  # noqa: BLE001 - bookkeeping must outlive one bad round
                log.exception("dns_housekeeping_failed")

    def _emit(self, event: Event) -> None:
        with correlation(event.id):
            self.emit(event)

    def _count_malformed(self, wire: bytes, transport: str) -> None:
        with self._malformed_lock:  # the UDP pool and TCP threads count concurrently
            self.malformed += 1
            count = self.malformed
        _MALFORMED.inc()
        if count <= MALFORMED_LOGGED or count % 1000 == 0:
            log.warning("dns_malformed", transport=transport, size=len(wire), malformed=count)

    def handle(self, wire: bytes, src_port: int, transport: str) -> bytes | None:
        q = parse_query(wire)
        if q is None:
            self._count_malformed(wire, transport)
            return refused_response(wire, FORMERR)
        if wire[2] & 0x78:  # opcode other than QUERY
            return response(q, NOTIMP)
        if loops.is_own(wire):  # our own upstream query, handed back: never relay, never count
            return self._count_loop(q, transport)
        if q.qclass != IN or q.name not in self.pins.names():
            return self._refuse(q, src_port, transport)
        if q.qtype not in (A, AAAA):
            return response(q, NOERROR)  # NODATA: no HTTPS/SVCB hints around the pins
        found = self.pins.lookup(q.name)
        if found is None:
            return response(q, SERVFAIL)  # fail closed
        addresses, ttl, nxdomain = found
        if nxdomain:
            return response(q, NXDOMAIN)
        family = 4 if q.qtype == A else 6
        ttl_s = max(1, math.ceil(ttl))  # never 0: that would defeat every client cache
        records = [address_record(a, ttl_s) for a in addresses if a.version == family]
        reply = response(q, NOERROR, records)
        # cache the reply as a template keyed by everything after the header (question and
        # any EDNS record, lower-cased): a hit only patches in the id, RD and the question
        expires = time.monotonic() + min(ttl, CACHE_SLACK)
        if len(self._cache) >= MAX_CACHE:  # keys include EDNS cookies: bound the variety
            self._cache = {}
        self._cache[wire[12:].lower()] = (reply, expires, len(q.question))
        return reply

    def _refuse(self, q: Query, src_port: int, transport: str) -> bytes | None:
        audit = self.mode == "audit" and self.upstream is not None
        detail = {"qtype": qtype_text(q.qtype), "src_port": src_port, "transport": transport}
        reply = response(q, self.refuse_rcode)
        if audit:  # relayed; the answer is recorded before the app gets it (policy suggest)
            try:
                reply = self.upstream.forward(q.wire)  # type: ignore[union-attr]
                detail["answer"] = answer_summary(reply)
            except OSError:
                reply = response(q, SERVFAIL)
        event = Event(
            layer="dns",
            kind="egress_attempt",
            verdict="audited" if audit else "blocked",
            protocol="dns",
            dst_name=q.name,
            dst_port=53,  # what the app asked for, before the redirect
            src_port=src_port,
            detail=detail,
        )
        # later refusals of this name fold into this attempt; a relayed (audit) query is not a
        # refusal: each keeps its own event, which carries its own answer (policy suggest)
        if audit or self.folder.refused(event):
            self._emit(event)
        return reply


def _malformed_counter():  # noqa: ANN202
    from prometheus_client import Counter

    from sentinel.evidence.metrics import REGISTRY

    return Counter(
        "sentinel_dns_malformed", "DNS queries the resolver could not parse", registry=REGISTRY
    )


_MALFORMED = _malformed_counter()
