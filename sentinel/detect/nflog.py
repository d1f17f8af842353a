"""The NFLOG monitor: every packet the ruleset logs becomes an event; one attempt, one event.

Source: a raw NETLINK_NETFILTER socket bound to the policy's NFLOG group (see docs/report.md for
why not libpcap). The message body is the same "nfgenmsg + TLVs" layout that libpcap hands out
as link type 239 (DLT_NFLOG), so `parse_nflog` reads either. We ask the kernel for the first
128 bytes of each packet (headers only) and for per-instance sequence numbers, so a message lost
to a full socket buffer is counted, never silently missed.

Folding: a packet of a flow already seen within `fold_window` (SYN retransmits, repeated UDP
datagrams, pings of one `ping` run) adds to that flow's packet count instead of making a new
event. The event is emitted at the first packet (so alerts are immediate); when the flow goes
quiet and it had more than one packet, an update with the same id and the final count follows.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from sentinel.detect.canary import CANARY_MARK
from sentinel.enforce.nflog_socket import Malformed, NflogSocket
from sentinel.enforce.snapshot import applied_info, kernel_snapshot
from sentinel.store.events import Event

# packet attributes (linux/netfilter/nfnetlink_log.h: 2 is the mark, 3 the timestamp)
NFULA_PACKET_HDR, NFULA_MARK, NFULA_PAYLOAD, NFULA_PREFIX, NFULA_SEQ = 1, 2, 9, 10, 12
CANARY_PREFIX = "canary-"  # verdict prefix for the sentinel's own canary probes (by mark)
PREFIX_VERDICT = {"sentinel:deny": "blocked", "sentinel:audit": "audited"}
PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}
_V6_EXT = {0, 43, 60, 51}  # hop-by-hop, routing, destination options, AH (fragment: 44)


@dataclass(frozen=True)
class NflogPacket:
    family: int  # AF_INET / AF_INET6 as the kernel reports it
    group: int
    prefix: str
    payload: bytes
    seq: int | None
    mark: int = 0


@dataclass(frozen=True)
class Flow:
    family: int  # 4 | 6
    protocol: str
    src_ip: str
    dst_ip: str
    src_port: int | None = None
    dst_port: int | None = None
    icmp_type: int | None = None
    icmp_id: int | None = None


# --- parsing (pure) ---------------------------------------------------------------------
def iter_tlvs(data: bytes | memoryview, offset: int = 0) -> dict[int, bytes]:
    """NFLOG attributes: u16 length (incl. 4-byte header), u16 type, value, pad to 4."""
    attrs: dict[int, bytes] = {}
    end = len(data)
    while offset + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4 or offset + length > end:
            raise Malformed(f"attribute length {length} at offset {offset}")
        attrs[kind & 0x3FFF] = bytes(data[offset + 4 : offset + length])
        offset += (length + 3) & ~3
    return attrs


def parse_nflog(body: bytes | memoryview) -> NflogPacket:
    """An nfgenmsg header (family, version, big-endian group) followed by TLVs."""
    if len(body) < 4:
        raise Malformed("short nfgenmsg")
    family, _version, group = struct.unpack_from("!BBH", body, 0)
    attrs = iter_tlvs(body, 4)
    if NFULA_PAYLOAD not in attrs:
        raise Malformed("no payload attribute")
    prefix = attrs.get(NFULA_PREFIX, b"").split(b"\0", 1)[0].decode("ascii", "replace")
    seq = struct.unpack("!I", attrs[NFULA_SEQ])[0] if len(attrs.get(NFULA_SEQ, b"")) == 4 else None
    mark = struct.unpack("!I", attrs[NFULA_MARK])[0] if len(attrs.get(NFULA_MARK, b"")) == 4 else 0
    return NflogPacket(family, group, prefix, attrs[NFULA_PAYLOAD], seq, mark)


def parse_ip(packet: bytes) -> Flow:
    if not packet:
        raise Malformed("empty payload")
    version = packet[0] >> 4
    if version == 4:
        return _parse_v4(packet)
    if version == 6:
        return _parse_v6(packet)
    raise Malformed(f"IP version {version}")


def _parse_v4(p: bytes) -> Flow:
    if len(p) < 20:
        raise Malformed("short IPv4 header")
    ihl = (p[0] & 0x0F) * 4
    if ihl < 20 or len(p) < ihl:
        raise Malformed("bad IPv4 header length")
    total = struct.unpack_from("!H", p, 2)[0]
    if total < ihl:
        raise Malformed("IPv4 total length shorter than the header")
    p = p[:total]  # bytes past the packet's own length are not its ports (found by scapy)
    frag_offset = struct.unpack_from("!H", p, 6)[0] & 0x1FFF
    src, dst = str(ipaddress.IPv4Address(p[12:16])), str(ipaddress.IPv4Address(p[16:20]))
    return _transport(4, p[9], src, dst, p[ihl:] if frag_offset == 0 else b"")


def _parse_v6(p: bytes) -> Flow:
    if len(p) < 40:
        raise Malformed("short IPv6 header")
    src, dst = str(ipaddress.IPv6Address(p[8:24])), str(ipaddress.IPv6Address(p[24:40]))
    nxt, offset = p[6], 40
    payload_length = struct.unpack_from("!H", p, 4)[0]
    if payload_length or nxt != 0:  # 0 after a hop-by-hop header: a jumbogram (RFC 2675)
        p = p[: 40 + payload_length]
    for _ in range(8):  # bounded walk over extension headers
        if nxt == 44:  # fragment header: ports only in the first fragment
            if len(p) < offset + 8:
                raise Malformed("short fragment header")
            first = struct.unpack_from("!H", p, offset + 2)[0] >> 3 == 0
            nxt, offset = p[offset], offset + 8
            if not first:
                return _transport(6, nxt, src, dst, b"")
        elif nxt in _V6_EXT:
            if len(p) < offset + 2:
                raise Malformed("short extension header")
            size = (p[offset + 1] + 2) * 4 if nxt == 51 else (p[offset + 1] + 1) * 8
            nxt, offset = p[offset], offset + size
        else:
            break
    return _transport(6, nxt, src, dst, p[offset:])


def _transport(family: int, proto: int, src: str, dst: str, rest: bytes) -> Flow:
    name = PROTO_NAMES.get(proto, f"ip-{proto}")
    if proto in (6, 17) and len(rest) >= 4:
        sport, dport = struct.unpack_from("!HH", rest, 0)
        return Flow(family, name, src, dst, sport, dport)
    if proto in (1, 58) and len(rest) >= 1:
        ident = struct.unpack_from("!H", rest, 4)[0] if len(rest) >= 6 else None
        return Flow(family, name, src, dst, icmp_type=rest[0], icmp_id=ident)
    return Flow(family, name, src, dst)  # other protocol, or a non-first fragment


def flow_event(flow: Flow, verdict: str, now: float, seq: int | None = None) -> Event:
    detail: dict[str, Any] = {}
    if flow.icmp_type is not None:
        detail["icmp_type"] = flow.icmp_type
    canary = verdict.startswith(CANARY_PREFIX)  # our own probe: recorded, never an attempt
    return Event(
        layer="canary" if canary else "netfilter",
        kind="canary_probe" if canary else "egress_attempt",
        verdict=verdict.removeprefix(CANARY_PREFIX),
        protocol=flow.protocol,
        dst_ip=flow.dst_ip,
        dst_port=flow.dst_port,
        family=flow.family,
        src_ip=flow.src_ip,
        src_port=flow.src_port,
        detail=detail,
        ts=now,
    )


# --- folding (pure) ---------------------------------------------------------------------
@dataclass
class _Open:
    event: Event
    packets: int
    last: float


class Folder:
    """Folds packets of one flow seen within `window` seconds of each other into one event."""

    def __init__(self, window: float, max_flows: int = 200_000) -> None:
        self.window = window
        self.max_flows = max_flows
        self._open: OrderedDict[tuple, _Open] = OrderedDict()  # least recently seen first

    def feed(
        self, flow: Flow, verdict: str, now: float, seq: int | None = None
    ) -> tuple[Event | None, list[Event]]:
        """(new event or None when folded, updates for flows pushed out by the size cap)."""
        key = (flow, verdict)
        current = self._open.get(key)
        if current is not None and now - current.last <= self.window:
            current.packets += 1
            current.last = now
            self._open.move_to_end(key)
            return None, []
        evicted = [self._close(self._open.pop(key))] if current is not None else []
        event = flow_event(flow, verdict, now, seq)
        self._open[key] = _Open(event, 1, now)
        while len(self._open) > self.max_flows:
            evicted.append(self._close(self._open.popitem(last=False)[1]))
        return event, [e for e in evicted if e is not None]

    def expire(self, now: float, everything: bool = False) -> list[Event]:
        """Close quiet flows; the updates (count > 1) are returned."""
        out = []
        while self._open:
            key, current = next(iter(self._open.items()))
            if not everything and now - current.last <= self.window:
                break
            del self._open[key]
            update = self._close(current)
            if update is not None:
                out.append(update)
        return out

    def __len__(self) -> int:
        return len(self._open)

    def event_id(self, flow: Flow, verdict: str) -> str | None:
        """The id of the open event a packet of this flow was folded into."""
        current = self._open.get((flow, verdict))
        return current.event.id if current is not None else None

    @staticmethod
    def _close(current: _Open) -> Event | None:
        if current.packets == 1:
            return None
        return replace(current.event, packets=current.packets, last_ts=current.last)


# --- the monitor ------------------------------------------------------------------------
Emit = Callable[[Event], Any]


class Monitor:
    """Reads the NFLOG group in a thread and emits one event per attempt, plus heartbeats."""

    def __init__(
        self,
        policy: Any,
        emit: Emit,
        update: Emit | None = None,
        heartbeat: float = 5.0,
        info: Callable[[], dict[str, Any]] | None = None,
        snapshot: Callable[[], dict[str, Any]] | None = None,
        snapshot_every: float = 30.0,
    ) -> None:
        self.group = policy.nflog_group
        self.folder = Folder(policy.monitor.fold_window)
        self.emit = emit
        self.update = update or emit
        self.heartbeat = heartbeat
        self.info = info or applied_info
        self.snapshot = snapshot or kernel_snapshot
        self.snapshot_every = snapshot_every
        self.counts = {
            "messages": 0,
            "packets": 0,
            "events": 0,
            "folded": 0,
            "malformed": 0,
            "foreign": 0,
            "overruns": 0,
            "lost": 0,  # from sequence-number gaps
            "errors": 0,
            "heartbeats": 0,
            "snapshots": 0,
            "snapshot_errors": 0,
        }
        self._sock: NflogSocket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._snapper: threading.Thread | None = None
        self._next_seq: int | None = None
        self.started_at = 0.0
        # the capture feed (detect/feed.py): (message, time, event id or None), never blocks
        self.tap: Callable[[bytes, float, str | None], None] | None = None

    def start(self) -> Monitor:
        """Binds the group (raises OSError if that fails) and starts the reader thread."""
        self._sock = NflogSocket(self.group)
        self.started_at = time.time()
        self._thread = threading.Thread(target=self._run, name="nflog-monitor", daemon=True)
        self._thread.start()
        if self.snapshot_every > 0:
            self._snapper = threading.Thread(target=self._snap_loop, name="kernel-counters")
            self._snapper.daemon = True
            self._snapper.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for thread in (self._thread, self._snapper):
            if thread:
                thread.join(timeout)
        for update in self.folder.expire(time.time(), everything=True):
            self.update(update)
        self._beat("stopped")
        if self._sock:
            self._sock.close()
            self._sock = None

    def stats(self) -> dict[str, int]:
        return {**self.counts, "open_flows": len(self.folder)}

    def _run(self) -> None:
        assert self._sock is not None
        self._beat("started")
        next_beat = time.monotonic() + self.heartbeat
        while not self._stop.is_set():
            try:
                bodies = self._sock.recv(timeout=0.2)
            except Malformed:
                self.counts["malformed"] += 1
                bodies = []
            except OSError as exc:
                bodies = []
                if exc.errno == errno.ENOBUFS:
                    self.counts["overruns"] += 1  # the seq gap says how many
                else:  # keep reading: a dead reader would look like a quiet network
                    self.counts["errors"] += 1
                    time.sleep(0.2)
            now = time.time()
            for body in bodies:
                self.handle(body, now)
            for update in self.folder.expire(now):
                self.update(update)
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + self.heartbeat
                self._beat("running")

    def _snap_loop(self) -> None:
        """Kernel counters (NFLOG rule per family, allowlist set entries) every
        `snapshot_every` s, so the report can count per window across counter resets
        (every apply re-creates the rules and swaps the sets, which zeroes them)."""
        while True:
            self._snap()
            if self._stop.wait(self.snapshot_every):
                self._snap()  # a last reading at a clean stop
                return

    def _snap(self) -> None:
        try:
            detail = self.snapshot()
        except Exception:  # noqa: BLE001 - missing tools or a busy lock: count, retry later
            self.counts["snapshot_errors"] += 1
            return
        self.counts["snapshots"] += 1
        self.emit(Event(layer="sentinel", kind="kernel_counters", verdict="info", detail=detail))

    def handle(self, body: bytes, now: float) -> None:
        """One NFLOG message -> at most one new event. Never raises on bad input."""
        event_id = self._handle(body, now)
        if self.tap is not None:
            self.tap(body, now, event_id)

    def _handle(self, body: bytes, now: float) -> str | None:
        """The event id the message went to (new or folded), None if it made none."""
        self.counts["messages"] += 1
        try:
            packet = parse_nflog(body)
            self._check_seq(packet.seq)
            verdict = PREFIX_VERDICT.get(packet.prefix)
            if verdict is None:  # someone else's NFLOG rule in our group
                self.counts["foreign"] += 1
                return None
            flow = parse_ip(packet.payload)
            if packet.mark == CANARY_MARK:
                verdict = CANARY_PREFIX + verdict
        except (Malformed, struct.error, ValueError):
            self.counts["malformed"] += 1
            return None
        self.counts["packets"] += 1
        event, evicted = self.folder.feed(flow, verdict, now)
        for update in evicted:
            self.update(update)
        if event is None:
            self.counts["folded"] += 1
            return self.folder.event_id(flow, verdict)
        self.counts["events"] += 1
        self.emit(event)
        return event.id

    def _check_seq(self, seq: int | None) -> None:
        if seq is None:
            return
        if self._next_seq is not None and seq != self._next_seq:
            self.counts["lost"] += (seq - self._next_seq) % (1 << 32)
        self._next_seq = (seq + 1) % (1 << 32)

    def _beat(self, state: str) -> None:
        self.counts["heartbeats"] += 1
        detail = {
            "state": state,
            "interval": self.heartbeat,
            "group": self.group,
            "started_at": self.started_at,
            "pid": os.getpid(),
            **self.info(),
            "stats": self.stats(),
        }
        self.emit(Event(layer="sentinel", kind="monitor_heartbeat", verdict="info", detail=detail))


# --- standalone entry point (until `sentinel run` starts us) ----------------------------
def main(argv: list[str] | None = None) -> int:
    import argparse
    import signal

    from sentinel.evidence import metrics
    from sentinel.policy.load import load_policy
    from sentinel.store.events import EventStore, db_path

    parser = argparse.ArgumentParser(prog="python -m sentinel.detect.nflog")
    parser.add_argument("--policy", required=True)
    parser.add_argument("--heartbeat", type=float, default=5.0)
    parser.add_argument("--snapshot-every", type=float, default=30.0, help="kernel counters")
    parser.add_argument("--seconds", type=float, default=3600, help="exit after this long")
    args = parser.parse_args(argv)
    policy = load_policy(args.policy)
    store = EventStore(db_path(), retention=policy.monitor.retention).start()

    def emit(event: Event) -> None:
        store.put(event)
        metrics.observe_event(event)

    monitor = Monitor(
        policy, emit, heartbeat=args.heartbeat, snapshot_every=args.snapshot_every
    ).start()
    metrics.watch_store(store)
    metrics.watch_monitor(monitor)
    metrics.serve(policy.monitor.metrics_port)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print("ready", flush=True)
    done.wait(args.seconds)
    monitor.stop()
    store.stop()
    print(f"stopped {monitor.stats()} {store.stats()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def monitor_service(ctx: Any) -> Monitor:
    """Factory for `run.services.SERVICES`. Events and fold updates (same id, `last_ts` set) both go
    to `ctx.emit`; sinks that must act once per attempt (alerts) skip events with `last_ts`."""
    return Monitor(ctx.policy, ctx.emit)
