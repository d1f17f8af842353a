"""Set entries written straight to the kernel (NETLINK_NETFILTER), not through `ipset restore`.

`ipset restore` resolves every entry's address with getaddrinfo(), and glibc stats
/etc/resolv.conf on every call: 20,000 entries cost ~0.13 s of CPU, most of an apply's tool
time. The kernel takes the same entries as IPSET_CMD_ADD messages of ~1,000 entries each
(one `ATTR_ADT` list of `DATA { IP { IPADDR }, CIDR, PORT, PROTO }`, the layout `ipset`
itself sends); built here from the entries' text with one dict lookup per network and port.

Only filling, swapping and destroying the staging copies happens here; sets are created by
`ipset restore` (it negotiates the type's revision). Exact or nothing: `encode` returns None
for an entry that is not in the form render.py writes ("NET[/CIDR],tcp|udp:PORT"), before
anything is sent, and the caller uses `ipset restore` as it always did. Every request is
acknowledged before the next; a refusal raises SentinelError naming the set and the cause.
A swap or destroy of a set that a reader is dumping (`sentinel status`, the monitor's counter
snapshot) is refused by the kernel while that dump is open: it is tried again until BUSY_WAIT.
tests/test_ipsetload.py compares the result with `ipset restore`'s on a real kernel.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections.abc import Iterable

from sentinel.errors import SentinelError

NETLINK_NETFILTER, SOL_NETLINK, NETLINK_CAP_ACK = 12, 270, 10
NFNL_SUBSYS_IPSET, IPSET_PROTOCOL = 6, 6
CMD_DESTROY, CMD_SWAP, CMD_ADD = 3, 6, 9
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL = 0x1, 0x4, 0x200
ATTR_PROTOCOL, ATTR_SETNAME, ATTR_SETNAME2, ATTR_DATA, ATTR_ADT, ATTR_LINENO = 1, 2, 3, 7, 8, 9
ATTR_IP, ATTR_CIDR, ATTR_PORT, ATTR_PROTO = 1, 3, 4, 7
IPADDR = {4: 1, 6: 2}  # IPSET_ATTR_IPADDR_IPV4 / _IPV6
NESTED, NET_ORDER = 0x8000, 0x4000
# the kernel's answers while a dump of the set is open (EBUSY: swap; IPSET_ERR_BUSY: destroy)
BUSY = (errno.EBUSY, 4100)
BUSY_WAIT = 5.0  # seconds: a dump of 20,000 entries takes milliseconds
PER_MESSAGE = 1000  # entries: ATTR_ADT's length is 16 bits (1,000 IPv6 entries: 52,000 bytes)
_HDR = struct.Struct("=IHHII")  # nlmsghdr
_ATTR = struct.Struct("=HH")
_PROTO = {"tcp": 6, "udp": 17}
_AF = {4: (socket.AF_INET, 32), 6: (socket.AF_INET6, 128)}
# the kernel's ipset error numbers (include/uapi/linux/netfilter/ipset/ip_set.h: the core enum
# from IPSET_ERR_PRIVATE = 4096; ip_set_hash.h: from IPSET_ERR_TYPE_SPECIFIC = 4352), in words
_REASONS = {
    4097: "protocol error (kernel and sentinel speak different ipset protocols)",
    4098: "the set type is not supported by this kernel",
    4100: "the set is busy",
    4101: "the second set does not exist",
    4102: "the sets cannot be swapped: their types do not match",
    4103: "element already exists",
    4104: "invalid CIDR",
    4105: "invalid netmask",
    4106: "invalid family",
    4108: "the set is referenced by a rule",
    4109: "invalid IPv4 address",
    4110: "invalid IPv6 address",
    4111: "the set was created without counters",
    4352: "set is full",
    4353: "invalid (null-valued) element",
    4354: "invalid protocol",
    4355: "protocol missing",
}


def _attr(kind: int, value: bytes) -> bytes:
    pad = b"\0" * (-len(value) % 4)
    return _ATTR.pack(4 + len(value), kind) + value + pad


def _head(family: int) -> tuple[struct.Struct, bytes, dict[str, int]]:
    """DATA { IP { IPADDR }, CIDR } of one network as one struct (the address and the prefix
    length the only values), DATA's length counting PORT and PROTO; valid prefix texts."""
    width, full = (4, 32) if family == 4 else (16, 128)
    fixed = _ATTR.pack(4 + 4 + 4 + width + 8 + 16, NESTED | ATTR_DATA)
    fixed += _ATTR.pack(8 + width, NESTED | ATTR_IP) + _ATTR.pack(
        4 + width, NET_ORDER | IPADDR[family]
    )
    layout = struct.Struct(f"={len(fixed)}s{width}sHHB3x")
    return layout, fixed, {str(n): n for n in range(1, full + 1)}


_HEAD = {4: _head(4), 6: _head(6)}


def _net(text: str, family: int) -> bytes:
    """DATA's header, IP and CIDR of one network; ValueError when not a plain form."""
    layout, fixed, prefixes = _HEAD[family]
    addr, slash, cidr = text.partition("/")
    prefix = prefixes.get(cidr) if slash else _AF[family][1]
    if prefix is None:
        raise ValueError(text)
    try:
        packed = socket.inet_pton(_AF[family][0], addr)
    except OSError:
        raise ValueError(text) from None
    return layout.pack(fixed, packed, 5, ATTR_CIDR, prefix)


def _service(text: str) -> bytes:
    """PORT and PROTO of "tcp:443"; ValueError for anything else."""
    proto, colon, port = text.partition(":")
    if not colon or proto not in _PROTO or not (port.isascii() and port.isdigit()):
        raise ValueError(text)
    number = int(port)
    if number > 65535:
        raise ValueError(text)
    return _attr(NET_ORDER | ATTR_PORT, number.to_bytes(2, "big")) + _attr(
        ATTR_PROTO, bytes([_PROTO[proto]])
    )


def encode(name: str, family: int, entries: Iterable[str]) -> list[bytes] | None:
    """The ADD requests' attributes that put `entries` into set `name`; None when any entry is
    not in render.py's form (then `ipset restore` reads them, as it always did)."""
    nets: dict[str, bytes] = {}
    services: dict[str, bytes] = {}
    chunks: list[bytes] = []
    try:
        for entry in entries:
            net, comma, service = entry.partition(",")
            if not comma:
                return None
            head = nets.get(net)
            if head is None:
                head = nets[net] = _net(net, family)
            tail = services.get(service)
            if tail is None:
                tail = services[service] = _service(service)
            chunks.append(head + tail)
    except ValueError:
        return None
    top = _top(name) + _attr(NET_ORDER | ATTR_LINENO, bytes(4))
    out = []
    for i in range(0, len(chunks), PER_MESSAGE):
        adt = b"".join(chunks[i : i + PER_MESSAGE])
        out.append(top + _ATTR.pack(4 + len(adt), NESTED | ATTR_ADT) + adt)
    return out


def _top(name: str) -> bytes:
    return _attr(ATTR_PROTOCOL, bytes([IPSET_PROTOCOL])) + _attr(
        ATTR_SETNAME, name.encode() + b"\0"
    )


class Session:
    """One NETLINK_NETFILTER socket; every request is acknowledged before the next is sent."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.seq = sock, 0

    @classmethod
    def open(cls) -> Session | None:
        """None when this process cannot talk netlink (the caller uses the ipset tool)."""
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError:
            return None
        try:
            sock.settimeout(10)
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)  # a refusal: no copy of 50 kB
            sock.bind((0, 0))
        except OSError:
            sock.close()
            return None
        return cls(sock)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def add(self, name: str, family: int, requests: list[bytes]) -> None:
        for attrs in requests:
            self._request(CMD_ADD, family, attrs, NLM_F_EXCL, f"add to {name}")

    def swap(self, name: str, other: str) -> None:
        attrs = _top(name) + _attr(ATTR_SETNAME2, other.encode() + b"\0")
        self._patient(CMD_SWAP, attrs, f"swap {name} {other}")

    def destroy(self, name: str) -> None:
        self._patient(CMD_DESTROY, _top(name), f"destroy {name}")

    def _patient(self, cmd: int, attrs: bytes, what: str) -> None:
        """A request the kernel refuses while a reader's dump holds the set: tried again (1 ms,
        doubling to 50 ms apart) until it is done or BUSY_WAIT has passed."""
        deadline, pause = time.monotonic() + BUSY_WAIT, 0.001
        while True:
            error = self._send(cmd, 0, attrs, 0, what)
            if -error not in BUSY or time.monotonic() >= deadline:
                break
            time.sleep(pause)
            pause = min(2 * pause, 0.05)
        _check(error, what)

    def _request(self, cmd: int, family: int, attrs: bytes, flags: int, what: str) -> None:
        _check(self._send(cmd, family, attrs, flags, what), what)

    def _send(self, cmd: int, family: int, attrs: bytes, flags: int, what: str) -> int:
        """The kernel's answer to one request: 0, or its (negative) error number."""
        self.seq += 1
        af = {4: socket.AF_INET, 6: socket.AF_INET6}.get(family, socket.AF_UNSPEC)
        body = struct.pack("=BBH", af, 0, 0) + attrs
        header = _HDR.pack(
            _HDR.size + len(body),
            (NFNL_SUBSYS_IPSET << 8) | cmd,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            self.seq,
            0,
        )
        try:
            self.sock.send(header + body)
            for _ in range(64):  # bounded: the acknowledgement is the next message of ours
                data = self.sock.recv(1 << 16)
                if len(data) < _HDR.size + 4:
                    raise OSError("short netlink reply")
                _length, kind, _flags, seq, _pid = _HDR.unpack_from(data)
                if kind == NLMSG_ERROR and seq == self.seq:
                    (error,) = struct.unpack_from("=i", data, _HDR.size)
                    break
            else:
                raise OSError("no acknowledgement")
        except OSError as exc:
            raise SentinelError(f"ipset {what}: netlink: {exc}") from None
        return error


def _check(error: int, what: str) -> None:
    if error:
        reason = _REASONS.get(-error) or os.strerror(-error)
        if -error in BUSY:
            reason += f" (a reader of the sets held it for {BUSY_WAIT:g} s)"
        raise SentinelError(f"ipset {what} refused by the kernel: {reason}")
