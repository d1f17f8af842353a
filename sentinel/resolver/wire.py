"""The DNS wire format the resolver speaks to the app, by hand: a query's header and its one
question parsed without dnspython (the hot path), replies built as bytes, TCP framing."""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from sentinel.policy.load import IPAddress
from sentinel.resolver.rebinding import normalize

A, AAAA, IN = 1, 28, 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
MAX_NAME = 255  # RFC 1035: a name is at most 255 octets on the wire


@dataclass(frozen=True)
class Query:
    wire: bytes
    qid: bytes
    rd: int
    question: bytes  # as sent (case preserved, 0x20-safe)
    name: str  # normalized
    qtype: int
    qclass: int


def parse_query(wire: bytes) -> Query | None:
    """Header + the single question; None for anything that is not a plain query."""
    if len(wire) < 17:
        return None
    flags, qdcount = wire[2], struct.unpack("!H", wire[4:6])[0]
    if flags & 0x80 or qdcount != 1:
        return None
    labels, i = [], 12
    while True:
        if i >= len(wire) or i - 12 >= MAX_NAME:  # oversized names are malformed, not asked
            return None
        size = wire[i]
        if size == 0:
            break
        if size & 0xC0 or i + 1 + size > len(wire):  # no compression in a question
            return None
        labels.append(wire[i + 1 : i + 1 + size])
        i += 1 + size
    end = i + 5
    if end > len(wire):
        return None
    qtype, qclass = struct.unpack("!HH", wire[i + 1 : end])
    name = ".".join(_label_text(label) for label in labels)
    return Query(wire, wire[:2], flags & 0x01, wire[12:end], normalize(name), qtype, qclass)


def _label_text(label: bytes) -> str:
    """Printable ASCII as is; any other byte (control, escape, NUL, 8-bit) and a dot or
    backslash inside a label as \\DDD, the way zone files write it: a hostile name cannot smuggle
    terminal escapes or newlines into logs, events and reports, and the one label
    "postgres.internal" is not the two-label name. No allowlisted hostname contains such bytes."""
    if all(_plain(b) for b in label):
        return label.decode("ascii")
    return "".join(chr(b) if _plain(b) else f"\\{b:03d}" for b in label)


def _plain(byte: int) -> bool:
    return 0x21 <= byte <= 0x7E and byte not in (0x2E, 0x5C)  # not "." nor "\\"


def response(q: Query, rcode: int, records: Sequence[bytes] = ()) -> bytes:
    """Header (QR, RD copied, RA) + the question as asked + answer records."""
    counts = struct.pack("!HHHH", 1, len(records), 0, 0)
    header = q.qid + bytes([0x80 | q.rd, 0x80 | rcode]) + counts
    return header + q.question + b"".join(records)


def address_record(address: IPAddress, ttl: int) -> bytes:
    data = address.packed
    rtype = A if address.version == 4 else AAAA
    return b"\xc0\x0c" + struct.pack("!HHIH", rtype, IN, ttl, len(data)) + data


def refused_response(wire: bytes, rcode: int) -> bytes | None:
    """An error reply for a query we could not parse: header only, question dropped."""
    if len(wire) < 12 or wire[2] & 0x80:
        return None
    return wire[:2] + bytes([0x80 | (wire[2] & 0x79), 0x80 | rcode]) + bytes(8)


def qtype_text(qtype: int) -> str:
    import dns.rdatatype

    try:
        return dns.rdatatype.to_text(qtype)
    except Exception:  # noqa: BLE001 - unknown numbers print as TYPEnnn anyway
        return f"TYPE{qtype}"


def recv_exact(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data
