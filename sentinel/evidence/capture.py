"""`sentinel capture`: the packets the ruleset logs, live from the running monitor's feed.

The feed (sentinel/detect/feed.py) hands over each NFLOG message the monitor read, with the
event it went to. Here each one is dissected with scapy (the NFLOG wrapper is ours to unpack:
scapy has no NFLOG layer; the IP packet inside is scapy's), printed as one line (text or JSON),
and optionally written to a pcap with link type 239 (DLT_NFLOG: the message body as is), which
tcpdump and Wireshark decode. Packets the feed had to drop for this reader are shown where they
were dropped and counted in the summary. scapy is imported here only, when the command runs.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from sentinel.detect.canary import CANARY_MARK
from sentinel.detect.feed import END, PACKET, Record, read_feed
from sentinel.detect.flows import PREFIX_VERDICT
from sentinel.detect.packets import PROTO_NAMES, Malformed, parse_nflog
from sentinel.errors import BadInput, SentinelError

LINKTYPE_NFLOG = 239
FORMATS = ("text", "json")


def _scapy() -> Any:
    """scapy's IP layers, imported on first use (about 0.7 s and 45 MB: never in the daemon)."""
    logging.getLogger("scapy").setLevel(logging.ERROR)  # no "no route" chatter on import
    try:
        from scapy.layers import inet, inet6, ipsec, l2, sctp  # noqa: F401 - binds the layers
        from scapy.utils import PcapWriter
    except ImportError:
        raise SentinelError(
            "sentinel capture needs scapy: pip install 'sentinel[capture]'"
        ) from None
    return inet, inet6, PcapWriter


@dataclass
class Dissected:
    """One logged packet as scapy reads it."""

    layer: str  # netfilter | canary | unknown
    verdict: str  # blocked | audited | foreign | malformed
    family: int | None = None
    protocol: str | None = None
    src: str | None = None
    dst: str | None = None
    sport: int | None = None
    dport: int | None = None
    flags: str | None = None  # TCP flags as scapy prints them ("S", "FPU", "" for NULL)
    icmp_type: int | None = None
    fragment: str | None = None  # "first" | "later" when the packet is a fragment
    ip_proto: int | None = None  # protocol number after the IP header and extension headers
    summary: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def dissect(body: bytes) -> Dissected:
    """An NFLOG message body -> its verdict (prefix, mark) and scapy's dissection of the IP
    packet inside. Never raises: what cannot be read says so in `verdict`/`summary`."""
    inet, inet6, _ = _scapy()
    try:
        message = parse_nflog(body)
    except Malformed as exc:
        return Dissected("unknown", "malformed", summary=str(exc))
    verdict = PREFIX_VERDICT.get(message.prefix, "foreign")
    layer = "canary" if message.mark == CANARY_MARK else "netfilter"
    payload = message.payload
    version = payload[0] >> 4 if payload else 0
    if version not in (4, 6):
        return Dissected(layer, verdict, summary=f"not IP (version {version})")
    pkt = inet.IP(payload) if version == 4 else inet6.IPv6(payload)
    out = Dissected(layer, verdict, version, src=pkt.src, dst=pkt.dst, summary=pkt.summary())
    _fragment(out, pkt, inet, inet6)
    _transport(out, pkt, inet, inet6)
    return out


def _fragment(out: Dissected, pkt: Any, inet: Any, inet6: Any) -> None:
    if out.family == 4 and (pkt.frag or pkt.flags.MF):
        out.fragment = "first" if pkt.frag == 0 else "later"
    frag6 = pkt.getlayer(inet6.IPv6ExtHdrFragment)
    if frag6 is not None and (frag6.offset or frag6.m):
        out.fragment = "first" if frag6.offset == 0 else "later"


def _transport(out: Dissected, pkt: Any, inet: Any, inet6: Any) -> None:
    """The first layer after the IP header and any IPv6 extension headers."""
    ext6 = (
        inet6.IPv6ExtHdrHopByHop,
        inet6.IPv6ExtHdrRouting,
        inet6.IPv6ExtHdrDestOpt,
        inet6.IPv6ExtHdrFragment,
    )
    number, inner = (pkt.proto if out.family == 4 else pkt.nh), pkt.payload
    for _ in range(16):  # bounded, like the monitor's own walk
        if not isinstance(inner, ext6):
            break
        number, inner = inner.nh, inner.payload
    out.ip_proto = number
    out.protocol = PROTO_NAMES.get(number)
    if isinstance(inner, inet.TCP | inet.UDP):
        out.sport, out.dport = inner.sport, inner.dport
        if isinstance(inner, inet.TCP):
            out.flags = str(inner.flags)
    elif number in (1, 58) and hasattr(inner, "type"):
        out.icmp_type = inner.type
    elif out.protocol is None:  # SCTP, GRE, ESP, AH, 253...: scapy's name when it knows one
        known = inner.name not in ("Raw", "Padding", "NoPayload") and not out.fragment == "later"
        out.protocol = inner.name.split()[0].lower() if known else f"ip-{number}"
        if hasattr(inner, "sport") and hasattr(inner, "dport"):
            out.sport, out.dport = inner.sport, inner.dport


def packet_json(record: Record, d: Dissected) -> dict[str, Any]:
    return {
        "type": "packet",
        "ts": record.ts,
        "time": _iso(record.ts),
        "layer": d.layer,
        "verdict": d.verdict,
        "family": d.family,
        "protocol": d.protocol,
        "src": d.src,
        "dst": d.dst,
        "sport": d.sport,
        "dport": d.dport,
        "flags": d.flags,
        "icmp_type": d.icmp_type,
        "fragment": d.fragment,
        "ip_proto": d.ip_proto,
        "event_id": record.event_id,
        "feed_seq": record.seq,
        "summary": d.summary,
    }


def packet_text(record: Record, d: Dissected) -> str:
    where = f"{_host(d.dst)}:{d.dport}" if d.dport is not None else str(d.dst)
    parts = [_iso(record.ts), d.layer, d.verdict, f"IPv{d.family}", d.protocol or "?", where]
    if d.sport is not None:
        parts.append(f"sport={d.sport}")
    if d.flags is not None:
        parts.append(f"flags=[{d.flags or 'none'}]")
    if d.icmp_type is not None:
        parts.append(f"type={d.icmp_type}")
    if d.fragment:
        parts.append(f"fragment={d.fragment}")
    parts.append(f"event={record.event_id or '-'}")
    return " ".join(parts)


def _host(address: str | None) -> str:
    return f"[{address}]" if address and ":" in address else str(address)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class Capture:
    """The reader's side of one capture: counts, output, pcap."""

    fmt: str
    out: TextIO
    count: int | None = None
    pcap: Any = None
    shown: int = 0
    dropped: int = 0
    last_seq: int = 0
    feed_dropped: int = 0  # the feed's own count (cross-check of the gaps)

    def take(self, record: Record) -> bool:
        """Handle one record; False once --count is reached or the feed ended."""
        gap = record.seq - self.last_seq - (1 if record.kind == PACKET else 0)
        if gap > 0:
            self._show_drop(gap)
        self.last_seq = max(self.last_seq, record.seq)
        self.feed_dropped = record.dropped
        if record.kind == END:
            return False
        if record.kind != PACKET:
            return True
        self._show(record)
        return self.count is None or self.shown < self.count

    def _show(self, record: Record) -> None:
        d = dissect(record.body)
        if self.fmt == "json":
            self.out.write(json.dumps(packet_json(record, d)) + "\n")
        else:
            self.out.write(packet_text(record, d) + "\n")
        self.out.flush()
        if self.pcap is not None:
            sec = int(record.ts)
            self.pcap.write_packet(record.body, sec=sec, usec=int((record.ts - sec) * 1e6))
        self.shown += 1

    def _show_drop(self, gap: int) -> None:
        self.dropped += gap
        if self.fmt == "json":
            line = json.dumps({"type": "dropped", "count": gap, "total": self.dropped})
        else:
            line = (
                f"-- feed dropped {gap} packets (this reader was too slow; {self.dropped} so far)"
            )
        self.out.write(line + "\n")
        self.out.flush()

    def summary(self, reason: str) -> dict[str, Any]:
        return {
            "type": "summary",
            "packets": self.shown,
            "dropped": self.dropped,
            "feed_dropped": self.feed_dropped,
            "ended": reason,
        }


def check_args(count: int | None, fmt: str, pcap: Path | None) -> None:
    """Bad input before anything is connected or written."""
    if fmt not in FORMATS:
        raise BadInput(f"--format: {fmt!r} is not one of: {', '.join(FORMATS)}")
    if count is not None and count < 1:
        raise BadInput(f"--count: {count} is not a positive number of packets")
    if pcap is not None and not pcap.parent.is_dir():
        raise BadInput(f"--pcap: directory {pcap.parent} does not exist")
    if pcap is not None and pcap.is_dir():
        raise BadInput(f"--pcap: {pcap} is a directory (name a file)")


def run_capture(
    directory: Path,
    count: int | None,
    follow: bool,
    pcap_path: Path | None,
    fmt: str,
    out: TextIO,
    err: Callable[[str], None],
) -> dict[str, Any]:
    """Read the feed until --count, the end of the recent packets (no --follow), a signal,
    or the sentinel stopping. Returns the summary; raises SentinelError when the feed is lost
    while following."""
    check_args(count, fmt, pcap_path)
    _, _, PcapWriter = _scapy()
    records = read_feed(directory, history=not follow, follow=follow)
    first = next(records)  # connects and is admitted (or raises) before any file is created
    pcap = None
    if pcap_path is not None:
        try:
            pcap = PcapWriter(str(pcap_path), linktype=LINKTYPE_NFLOG, sync=True)
        except OSError as exc:
            records.close()
            raise BadInput(f"--pcap: {pcap_path}: cannot write ({exc.strerror})") from None
        pcap.write_header(None)  # a valid (empty) pcap even if no packet comes
    capture = Capture(fmt, out, count, pcap)
    stop = _stop_on_signals()
    err(f"capture: reading {'live' if follow else 'recent'} packets from {directory}")
    reason = "feed closed"
    try:
        for record in _chain(first, records):
            if stop.is_set():
                reason = "signal"
                break
            if record is not None and not capture.take(record):
                reason = "count" if record.kind == PACKET else "end of recent packets"
                break
    finally:
        records.close()
        if pcap is not None:
            pcap.close()
    summary = capture.summary(reason)
    if fmt == "json":
        out.write(json.dumps(summary) + "\n")
    err(
        f"capture: {capture.shown} packets, {capture.dropped} dropped by the feed"
        + (f", pcap {pcap_path} (link type {LINKTYPE_NFLOG})" if pcap_path else "")
    )
    if reason == "feed closed" and follow:
        raise SentinelError("capture: the feed closed (sentinel stopped, or too many readers)")
    return summary


def _chain(first: Any, rest: Any) -> Any:
    yield first
    yield from rest


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    return stop
