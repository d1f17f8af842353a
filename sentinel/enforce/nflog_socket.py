"""The kernel end of the NFLOG monitor: a NETLINK_NETFILTER socket bound to one NFLOG group
(bind, copy mode, sequence numbers), and the netlink message framing. Privileged (CAP_NET_ADMIN
in the app's namespace), so it lives with the rest of the kernel access; the parsing of what it
reads is in sentinel/detect/nflog.py."""

from __future__ import annotations

import errno
import os
import socket
import struct
import time


class Malformed(ValueError):
    """An NFLOG message or IP packet we cannot read: counted, never fatal."""


NETLINK_NETFILTER = 12
SO_RCVBUFFORCE = 33
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 1
NLM_F_ACK = 4
# config attributes and values (linux/netfilter/nfnetlink_log.h)
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_NLBUFSIZ, NFULA_CFG_TIMEOUT = 1, 2, 3, 4
NFULA_CFG_QTHRESH, NFULA_CFG_FLAGS = 5, 6
NFULNL_CFG_CMD_BIND, NFULNL_CFG_CMD_UNBIND = 1, 2
NFULNL_COPY_PACKET = 2
NFULNL_CFG_F_SEQ = 1
COPY_RANGE = 128  # IPv6 + extension headers + TCP ports fit; we never need payload bytes
# Batching (issue 17: 100,000 attempts in 10 s): the kernel sends up to QTHRESH messages in one
# netlink datagram of at most NLBUFSIZ bytes (its maximum is 128 KiB), and whatever it holds
# after FLUSH_TIMEOUT (1/100 s). One read then returns a batch: a tenth of the system calls
# and of the socket buffer's per-datagram overhead of one message a datagram, so a burst of
# ~100,000 messages fits in RCVBUF while the reader catches up.
QTHRESH, NLBUFSIZ, FLUSH_TIMEOUT = 100, 64 << 10, 1
RCVBUF = 32 << 20


# -------------------------------------------------------------------
def _attr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def _config_msg(group: int, seq: int, *attrs: bytes) -> bytes:
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, group) + b"".join(attrs)
    kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
    return struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


class NflogSocket:
    """One NFLOG group on a netlink socket: bind, configure, read packets."""

    def __init__(self, group: int, rcvbuf: int = RCVBUF) -> None:
        self.group = group
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            try:  # as root, past net.core.rmem_max: a flood must not overflow us
                self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.bind((0, 0))
            self._seq = 0
            self._request(_attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND])))
            self._request(
                _attr(NFULA_CFG_MODE, struct.pack("!IBB", COPY_RANGE, NFULNL_COPY_PACKET, 0)),
                _attr(NFULA_CFG_FLAGS, struct.pack("!H", NFULNL_CFG_F_SEQ)),
                _attr(NFULA_CFG_NLBUFSIZ, struct.pack("!I", NLBUFSIZ)),
                _attr(NFULA_CFG_QTHRESH, struct.pack("!I", QTHRESH)),
                _attr(NFULA_CFG_TIMEOUT, struct.pack("!I", FLUSH_TIMEOUT)),  # 1/100 s
            )
        except OSError:
            self.sock.close()
            raise
        self._buf = bytearray(1 << 18)  # > NLBUFSIZ: a datagram is never cut short
        self._timeout: float | None = None

    def _request(self, *attrs: bytes) -> None:
        self._seq += 1
        self.sock.send(_config_msg(self.group, self._seq, *attrs))
        deadline = time.monotonic() + 5
        self.sock.settimeout(5)
        while time.monotonic() < deadline:
            data = self.sock.recv(65536)
            for kind, _flags, seq, body in iter_nlmsgs(data):
                if kind == NLMSG_ERROR and seq == self._seq:
                    code = -struct.unpack_from("=i", body, 0)[0]
                    if code:
                        raise OSError(code, f"NFLOG group {self.group}: {os.strerror(code)}")
                    return
        raise OSError(errno.ETIMEDOUT, "no answer from nfnetlink_log")

    def recv(self, timeout: float) -> list[bytes]:
        """Message bodies of NFLOG packets; raises OSError(ENOBUFS) when the kernel dropped."""
        if timeout != self._timeout:  # settimeout is a system call of its own
            self.sock.settimeout(timeout)
            self._timeout = timeout
        try:
            n = self.sock.recv_into(self._buf)
        except TimeoutError:
            return []
        packet_kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
        view = memoryview(self._buf)[:n]
        return [bytes(body) for kind, _f, _s, body in iter_nlmsgs(view) if kind == packet_kind]

    def close(self) -> None:
        try:
            self.sock.send(_config_msg(self.group, 0, _attr(NFULA_CFG_CMD, b"\x02")))
        except OSError:
            pass
        self.sock.close()


def iter_nlmsgs(data: bytes | memoryview):
    offset = 0
    while offset + 16 <= len(data):
        length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", data, offset)
        if length < 16 or offset + length > len(data):
            raise Malformed(f"netlink message length {length}")
        yield kind, flags, seq, data[offset + 16 : offset + length]
        offset += (length + 3) & ~3
