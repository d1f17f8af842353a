"""What one NFLOG message says: the packet's flow (family, protocol, addresses, ports or ICMP
type and id), the rule's prefix, the mark and the kernel's sequence number. Pure; bad input
raises `Malformed`.

The message body is the same "nfgenmsg + TLVs" layout that libpcap hands out as link type 239
(DLT_NFLOG), so `parse_nflog` reads either. This is the monitor's per-packet hot path (100,000
attempts in 10 s, issue 17): one pass over the attributes keeping only the four it needs,
precompiled structs, and `inet_ntop` for addresses (`ipaddress` only for the IPv4-compatible and
-mapped IPv6 forms, whose text `inet_ntop` writes differently).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import NamedTuple

from sentinel.enforce.nflog_socket import Malformed

# packet attributes (linux/netfilter/nfnetlink_log.h: 2 is the mark, 3 the timestamp)
NFULA_PACKET_HDR, NFULA_MARK, NFULA_PAYLOAD, NFULA_PREFIX, NFULA_SEQ = 1, 2, 9, 10, 12
PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}
_V6_EXT = {0, 43, 60, 51}  # hop-by-hop, routing, destination options, AH (fragment: 44)
_TLV = struct.Struct("=HH")
_GENMSG = struct.Struct("!BBH")
_U16 = struct.Struct("!H")
_PORTS = struct.Struct("!HH")
_V4 = struct.Struct("!H2xHxB2x4s4s")  # from offset 2: total length, fragment, protocol, addresses
_V6 = struct.Struct("!HB1x16s16s")  # from offset 4: payload length, next header, addresses
_ntoa = socket.inet_ntoa
_flow = _packet = tuple.__new__  # a Flow (NflogPacket) from all its fields, without NamedTuple's
# Python-level __new__


class NflogPacket(NamedTuple):
    family: int  # AF_INET / AF_INET6 as the kernel reports it
    group: int
    prefix: str
    payload: bytes
    seq: int | None
    mark: int = 0


class Flow(NamedTuple):  # a tuple: built and hashed once per packet, the folder's key
    family: int  # 4 | 6
    protocol: str
    src_ip: str
    dst_ip: str
    src_port: int | None = None
    dst_port: int | None = None
    icmp_type: int | None = None
    icmp_id: int | None = None
    link: str | None = None  # logged by the netdev egress table: "netdev", "arp", "frame", "mld"
    groups: tuple[int, tuple[str, ...]] | None = None  # an MLD report: (records, groups seen)


def iter_tlvs(data: bytes | memoryview, offset: int = 0) -> dict[int, bytes]:
    """NFLOG attributes: u16 length (incl. 4-byte header), u16 type, value, pad to 4."""
    attrs: dict[int, bytes] = {}
    end = len(data)
    while offset + 4 <= end:
        length, kind = _TLV.unpack_from(data, offset)
        if length < 4 or offset + length > end:
            raise Malformed(f"attribute length {length} at offset {offset}")
        attrs[kind & 0x3FFF] = bytes(data[offset + 4 : offset + length])
        offset += (length + 3) & ~3
    return attrs


def parse_nflog(body: bytes | memoryview) -> NflogPacket:
    """An nfgenmsg header (family, version, big-endian group) followed by TLVs; every
    attribute's length is checked, only payload, prefix, sequence number and mark are kept
    (the last of each, as `iter_tlvs` would).

    The kernel writes one group's messages with the same attributes in the same order, so a
    message of a length seen before usually has the same layout: all its attribute headers are
    then read by one precompiled struct and compared with that layout's (`_Layout`); only when
    they are the same are its values taken from where that layout had them, which is what the
    walk over the attributes would give for such a message. Anything else is walked."""
    end = len(body)
    if end < 4:
        raise Malformed("short nfgenmsg")
    layout = _LAYOUTS.get(end)
    if layout is not None and layout.heads.unpack_from(body, 0) == layout.expected:
        family, _version, group = _GENMSG.unpack_from(body, 0)
        payload = bytes(body[layout.payload[0] : layout.payload[1]])
        prefix = layout.prefix and body[layout.prefix[0] : layout.prefix[1]]
        seq = layout.seq and body[layout.seq[0] : layout.seq[1]]
        mark = layout.mark and body[layout.mark[0] : layout.mark[1]]
    else:
        family, group, payload, prefix, seq, mark = _walk(body, end)
    text = _prefix_text(prefix) if prefix else ""
    number = int.from_bytes(seq, "big") if seq is not None and len(seq) == 4 else None
    marked = int.from_bytes(mark, "big") if mark is not None and len(mark) == 4 else 0
    return _packet(NflogPacket, (family, group, text, payload, number, marked))


class _Layout(NamedTuple):
    heads: struct.Struct  # every attribute header (length, type) of the message, in one read
    expected: tuple[int, ...]  # what they were in the message this layout was learnt from
    payload: tuple[int, int]  # (start, end) of the last payload attribute's value
    prefix: tuple[int, int] | None
    seq: tuple[int, int] | None
    mark: tuple[int, int] | None


_LAYOUTS: dict[int, _Layout] = {}  # message length -> the layout last learnt at that length
_MAX_LAYOUTS = 64
_PREFIXES: dict[bytes, str] = {}  # a prefix attribute's bytes -> its text
_KEPT = {NFULA_PAYLOAD: 0, NFULA_PREFIX: 1, NFULA_SEQ: 2, NFULA_MARK: 3}


def _walk(body: bytes | memoryview, end: int) -> tuple:
    """The walk over every attribute; learns the message's layout for `parse_nflog`."""
    family, _version, group = _GENMSG.unpack_from(body, 0)
    spans: list[tuple[int, int] | None] = [None, None, None, None]
    heads: list[tuple[int, int, int]] = []  # (offset, length, raw type)
    offset = 4
    while offset + 4 <= end:
        length, kind = _TLV.unpack_from(body, offset)
        if length < 4 or offset + length > end:
            raise Malformed(f"attribute length {length} at offset {offset}")
        heads.append((offset, length, kind))
        at = _KEPT.get(kind & 0x3FFF)
        if at is not None:
            spans[at] = (offset + 4, offset + length)
        offset += (length + 3) & ~3
    payload, prefix, seq, mark = (
        None if span is None else body[span[0] : span[1]] for span in spans
    )
    if payload is None:
        raise Malformed("no payload attribute")
    if end not in _LAYOUTS and len(_LAYOUTS) < _MAX_LAYOUTS:
        fmt, at = "=", 0
        for head_at, _length, _kind in heads:
            fmt += f"{head_at - at}xHH"
            at = head_at + 4
        expected = tuple(v for _at, length, kind in heads for v in (length, kind))
        _LAYOUTS[end] = _Layout(struct.Struct(fmt), expected, spans[0], *spans[1:])  # type: ignore[arg-type]
    return family, group, bytes(payload), prefix, seq, mark


def _prefix_text(raw: bytes | memoryview) -> str:
    if type(raw) is not bytes:
        raw = bytes(raw)
    text = _PREFIXES.get(raw)
    if text is None:
        text = raw.split(b"\0", 1)[0].decode("ascii", "replace")
        if len(_PREFIXES) < _MAX_LAYOUTS:
            _PREFIXES[raw] = text
    return text


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
    end = len(p)
    if end < 20:
        raise Malformed("short IPv4 header")
    ihl = (p[0] & 0x0F) * 4
    if ihl < 20 or end < ihl:
        raise Malformed("bad IPv4 header length")
    total, frag, proto, src, dst = _V4.unpack_from(p, 2)
    if total < ihl:
        raise Malformed("IPv4 total length shorter than the header")
    end = min(end, total)  # bytes past the packet's own length are not its ports (scapy)
    start = ihl if frag & 0x1FFF == 0 else end  # ports only in the first fragment
    return _transport(4, proto, _ntoa(src), _ntoa(dst), p, start, end)


def _v6_text(raw: bytes) -> str:
    text = socket.inet_ntop(socket.AF_INET6, raw)
    return str(ipaddress.IPv6Address(raw)) if "." in text else text  # ::ffff:a.b.c.d forms


def _parse_v6(p: bytes) -> Flow:
    end = len(p)
    if end < 40:
        raise Malformed("short IPv6 header")
    payload_length, nxt, src, dst = _V6.unpack_from(p, 4)
    src, dst = _v6_text(src), _v6_text(dst)
    offset = 40
    if payload_length or nxt != 0:  # 0 after a hop-by-hop header: a jumbogram (RFC 2675)
        end = min(end, 40 + payload_length)
    for _ in range(8):  # bounded walk over extension headers
        if nxt == 44:  # fragment header: ports only in the first fragment
            if end < offset + 8:
                raise Malformed("short fragment header")
            first = _U16.unpack_from(p, offset + 2)[0] >> 3 == 0
            nxt, offset = p[offset], offset + 8
            if not first:
                return _transport(6, nxt, src, dst, p, end, end)
        elif nxt in _V6_EXT:
            if end < offset + 2:
                raise Malformed("short extension header")
            size = (p[offset + 1] + 2) * 4 if nxt == 51 else (p[offset + 1] + 1) * 8
            nxt, offset = p[offset], offset + size
        else:
            break
    return _transport(6, nxt, src, dst, p, offset, end)


def _transport(family: int, proto: int, src: str, dst: str, p: bytes, at: int, end: int) -> Flow:
    """The flow of a transport header at `p[at:end]` (empty when `at >= end`)."""
    name = PROTO_NAMES.get(proto) or f"ip-{proto}"
    left = end - at
    if left >= 4 and (proto == 17 or proto == 6):
        sport, dport = _PORTS.unpack_from(p, at)
        return _flow(Flow, (family, name, src, dst, sport, dport, None, None, None, None))
    if left >= 1 and (proto == 1 or proto == 58):
        ident = _U16.unpack_from(p, at + 4)[0] if left >= 6 else None
        return _flow(Flow, (family, name, src, dst, None, None, p[at], ident, None, None))
    return Flow(family, name, src, dst)  # other protocol, or a non-first fragment
