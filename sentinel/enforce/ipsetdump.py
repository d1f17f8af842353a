"""Our ipsets read straight from the kernel (one NETLINK_NETFILTER dump), not via `ipset save`.

`ipset save` looks every entry's protocol up with getprotobynumber(), which opens and reads
/etc/protocols once per entry: 20,000 entries cost ~0.2 s of CPU, most of what verifying an
apply took. The kernel's own dump carries the same facts in a fixed binary layout per entry of
a `hash:net,port ... counters` set; this reads them with one `struct` pass per chunk.

Exact or nothing: `read()` returns None (and the caller asks `ipset save`) when the socket
cannot be used, a set of ours is of another type, or any entry is not in the expected layout
(no counters, a nomatch flag, another protocol than TCP/UDP, a padding attribute): the text
tool then decides, as it always did. tests/test_ipsetdump.py compares both on a real kernel.
"""

from __future__ import annotations

import re
import socket
import struct
from collections.abc import Iterable, Iterator, Mapping
from itertools import repeat

from sentinel.enforce.kernelstate import OUR_SET_FAMILY, IpSet, our_sets

NETLINK_NETFILTER = 12
NFNL_SUBSYS_IPSET, IPSET_CMD_SAVE, IPSET_PROTOCOL = 6, 8, 6
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP, NLM_F_DUMP_INTR = 0x1, 0x300, 0x10
ATTR_PROTOCOL, ATTR_SETNAME, ATTR_TYPENAME, ATTR_ADT = 1, 2, 3, 8
NESTED, NET_ORDER = 0x8000, 0x4000
_HDR = struct.Struct("=IHHII")  # nlmsghdr
_ATTR = struct.Struct("=HH")
_PROTO = {6: "tcp", 17: "udp"}


def _hdr(length: int, kind: int) -> bytes:
    return _ATTR.pack(length, kind)


def _layout(family: int) -> tuple[struct.Struct, re.Pattern[bytes]]:
    """One entry of hash:net,port with counters, as the kernel lists it: DATA { IP { IPADDR },
    PORT, CIDR, PROTO, BYTES, PACKETS }. Returns a struct of the values (all in network byte
    order: the headers are skipped) and a pattern every entry's headers and padding must match
    (checked for a whole chunk at once)."""
    width = 4 if family == 4 else 16
    ip = _hdr(8 + width, NESTED | 1) + _hdr(4 + width, 1 if family == 4 else 2)  # IPADDR_IPV4/6
    data = _hdr(4 + len(ip) + width + 8 + 8 + 8 + 12 + 12, NESTED | 7)
    port, cidr, proto = _hdr(6, NET_ORDER | 4), _hdr(5, 3), _hdr(5, 7)
    nbytes, packets = _hdr(12, NET_ORDER | 24), _hdr(12, NET_ORDER | 25)
    one = b"".join(
        [
            re.escape(data + ip),
            b".{%d}" % width,
            re.escape(port),
            rb"..\0\0",
            re.escape(cidr),
            rb".\0\0\0",
            re.escape(proto),
            rb"[\x06\x11]\0\0\0",  # TCP or UDP, nothing else
            re.escape(nbytes),
            b".{8}",
            re.escape(packets),
            b".{8}",
        ]
    )
    values = struct.Struct(f">12x{width}s4xH2x4xB3x4xB3x4xQ4xQ")
    return values, re.compile(b"(?:%s)*" % one, re.S)


_LAYOUT = {4: _layout(4), 6: _layout(6)}
# the same entries' address, and the 17 bytes from PORT to PROTO (their headers and padding
# fixed by the layout's pattern, so equal bytes are an equal "/CIDR,PROTO:PORT")
_FIELDS = {family: struct.Struct(f">12x{width}s4x17s27x") for family, width in ((4, 4), (6, 16))}
# the same entries' BYTES and PACKETS alone (the 40 + address bytes before them skipped)
_COUNTS = {family: struct.Struct(f">{40 + width}xQ4xQ") for family, width in ((4, 4), (6, 16))}
# ... and as 32-bit words: an entry's index in words, and where its BYTES and PACKETS are
_WORDS = {4: (16, (11, 12, 14, 15)), 6: (19, (14, 15, 17, 18))}
assert all(f.size == _COUNTS[f_].size == _LAYOUT[f_][0].size for f_, f in _FIELDS.items())
assert all(_WORDS[f][0] * 4 == _COUNTS[f].size for f in (4, 6))
_IDLE = (0, 0)  # (packets, bytes) of every entry without traffic: one tuple shared


class Counters(Mapping):
    """{(set, entry): (packets, bytes)}, decoded from the dump's chunks on first use: `status`
    needs the entries (the hash) but no counter, and 20,000 (key, counters) pairs cost about
    a third of the decoding. Read-only, in the dump's order."""

    __slots__ = ("_chunks", "_built", "_by_entry")

    def __init__(self) -> None:
        self._chunks: list[tuple[str, int, bytes, list[str]]] = []
        self._built: dict[tuple[str, str], tuple[int, int]] | None = None
        self._by_entry: dict[str, tuple[int, int]] | None = None

    def add(self, name: str, family: int, adt: bytes, entries: list[str]) -> None:
        self._chunks.append((name, family, adt, entries))

    def _columns(self) -> Iterator[tuple[str, list[str], Iterable[tuple[int, int]] | None]]:
        """(set, entries, their (packets, bytes)), None for a chunk whose entries all read 0
        (an idle allowlist: no pair is decoded or made for it)."""
        for name, family, adt, entries in self._chunks:
            if not entries:
                continue
            if _idle(adt, family):
                yield name, entries, None
                continue
            nbytes, packets = zip(*_COUNTS[family].iter_unpack(adt), strict=True)
            yield name, entries, zip(packets, nbytes, strict=True)

    def _dict(self) -> dict[tuple[str, str], tuple[int, int]]:
        if self._built is None:
            built: dict[tuple[str, str], tuple[int, int]] = {}
            for name, entries, counts in self._columns():
                keys = zip(repeat(name), entries, strict=False)
                built.update(
                    dict.fromkeys(keys, _IDLE) if counts is None else zip(keys, counts, strict=True)
                )
            self._built = built
        return self._built

    def by_entry(self) -> dict[str, tuple[int, int]]:
        """{entry: (packets, bytes)}, an entry in two sets counted as the later one (what
        `{e: pb for (_set, e), pb in counters.items()}` gives), without the pairs' keys."""
        if self._by_entry is None:
            out: dict[str, tuple[int, int]] = {}
            for _name, entries, counts in self._columns():
                out.update(
                    dict.fromkeys(entries, _IDLE)
                    if counts is None
                    else zip(entries, counts, strict=True)
                )
            self._by_entry = out
        return self._by_entry

    def __getitem__(self, key: tuple[str, str]) -> tuple[int, int]:
        return self._dict()[key]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())

    def __repr__(self) -> str:
        return f"Counters({self._dict()!r})"


def read(counters: bool = True) -> tuple[list[IpSet], Counters, set[str]] | None:
    """(our sets in OUR_SETS order, their per-entry counters, every set's name) or None.
    `counters=False`: the counters stay empty (an apply's read-backs compare entries only)."""
    try:
        messages = _dump()
    except OSError:
        return None
    families = OUR_SET_FAMILY
    names: set[str] = set()
    entries: dict[str, list[str]] = {}
    counted = Counters()
    for attrs in messages:
        name = attrs.get(ATTR_SETNAME, b"").rstrip(b"\0").decode()
        names.add(name)
        if name not in families:
            continue
        kind = attrs.get(ATTR_TYPENAME)
        if kind is not None and kind.rstrip(b"\0") != b"hash:net,port":
            return None
        found = entries.setdefault(name, [])
        adt = attrs.get(ATTR_ADT)
        if adt is not None and not _entries(adt, families[name], name, found, counted, counters):
            return None
    return our_sets(entries), counted, names


def _entries(
    adt: bytes, family: int, name: str, out: list[str], counters: Counters, keep: bool = True
) -> bool:
    """Append one chunk's entries to `out` (its counters to `counters`, decoded when used).
    Column-wise: the text after the address ("/CIDR,PROTO:PORT") is made once per distinct
    (cidr, proto, port) bytes; the addresses and the joining are C-level maps."""
    values, layout = _LAYOUT[family]
    if len(adt) % values.size or layout.fullmatch(adt) is None:
        return False
    if not adt:
        return True
    addrs, keys = zip(*_FIELDS[family].iter_unpack(adt), strict=True)
    full = 32 if family == 4 else 128
    suffix = {k: _suffix(k, full) for k in set(keys)}
    if family == 4:
        nets = map(socket.inet_ntoa, addrs)
    else:
        nets = map(socket.inet_ntop, repeat(socket.AF_INET6), addrs)
    chunk = list(map(str.__add__, nets, map(suffix.__getitem__, keys)))
    out += chunk
    if keep:
        counters.add(name, family, adt, chunk)
    return True


def _suffix(key: bytes, full: int) -> str:
    """ "/CIDR,PROTO:PORT" ("/CIDR" left out for a single address) of an entry's 17 bytes from
    PORT to PROTO: the port at 0 (network order), the cidr at 8, the protocol at 16."""
    cidr = key[8]
    return f"{'' if cidr == full else f'/{cidr}'},{_PROTO[key[16]]}:{key[0] << 8 | key[1]}"


def _idle(adt: bytes, family: int) -> bool:
    """Every entry of the chunk reads 0 packets and 0 bytes: its BYTES and PACKETS words
    compared with zeros a column at a time (strided views, no entry decoded)."""
    step, at = _WORDS[family]
    words = memoryview(adt).cast("I")
    zeros = bytes(4 * (len(words) // step))
    return all(words[i::step].tobytes() == zeros for i in at)


def _dump() -> Iterable[dict[int, bytes]]:
    """The top-level attributes of every message of one IPSET_CMD_SAVE dump (all sets)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.settimeout(5)
        sock.bind((0, 0))
        body = struct.pack("=BBH", socket.AF_INET, 0, 0) + _hdr(5, ATTR_PROTOCOL)
        body += bytes([IPSET_PROTOCOL, 0, 0, 0])
        kind = (NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_SAVE
        sock.send(_HDR.pack(_HDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body)
        messages = []
        for _ in range(100_000):  # bounded: a dump ends with NLMSG_DONE long before this
            data = sock.recv(1 << 18)
            offset = 0
            while offset + _HDR.size <= len(data):
                length, kind, flags, _seq, _pid = _HDR.unpack_from(data, offset)
                if length < _HDR.size:
                    raise OSError("malformed netlink message")
                if flags & NLM_F_DUMP_INTR:  # the sets changed while being dumped
                    raise OSError("ipset dump interrupted")
                if kind == NLMSG_DONE:
                    return messages
                if kind == NLMSG_ERROR:
                    raise OSError("ipset dump refused")
                messages.append(_attrs(data, offset + _HDR.size + 4, offset + length))
                offset += (length + 3) & ~3
        raise OSError("ipset dump did not end")


def _attrs(data: bytes, offset: int, end: int) -> dict[int, bytes]:
    out = {}
    while offset + 4 <= end:
        length, kind = _ATTR.unpack_from(data, offset)
        if length < 4:
            raise OSError("malformed netlink attribute")
        out[kind & ~(NESTED | NET_ORDER)] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return out
