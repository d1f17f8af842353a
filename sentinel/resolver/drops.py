"""Queries the resolver never saw, counted: a flood can overrun it before it reads a query.

* UDP: each socket has SO_RXQ_OVFL set, so every datagram it reads carries the socket's
  cumulative kernel drop count (receive buffer full); the `drops` column of /proc/net/udp{,6}
  (this namespace, the socket's inode) gives the same counter live, so drops at the very end of
  a burst are seen without waiting for another datagram.
* TCP: connections closed because MAX_TCP_CLIENTS are held.

Every increase becomes one `dns_dropped` event (deltas; the report sums them under coverage and
any drop makes coverage partial), a warning log line and `sentinel_dns_dropped_total{reason}`.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

from sentinel.log import get_logger
from sentinel.store.events import Event

SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
log = get_logger("dns")


class DropCounter:
    def __init__(self, emit: Callable[[Event], None], tcp_cap: int) -> None:
        self.emit, self.tcp_cap = emit, tcp_cap
        self.udp: dict[int, int] = {}  # socket fileno -> cumulative kernel drops
        self._inodes: dict[int, int] = {}  # socket inode -> fileno
        self.tcp_refused = 0
        self._reported = {"udp_dropped": 0, "tcp_refused": 0}

    def watch(self, udp: socket.socket) -> None:
        udp.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        self._inodes[os.fstat(udp.fileno()).st_ino] = udp.fileno()

    def seen(self, key: int, ancdata: list) -> None:
        """The ancillary data of one recvmsg (present only once the socket dropped some)."""
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(data) >= 4:
                self.udp[key] = max(self.udp.get(key, 0), struct.unpack("I", data[:4])[0])

    def totals(self) -> dict[str, int]:
        return {"udp_dropped": sum(self.udp.values()), "tcp_refused": self.tcp_refused}

    def _read_proc(self) -> None:
        for table in ("/proc/net/udp", "/proc/net/udp6"):
            try:
                lines = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                cols = line.split()
                key = self._inodes.get(int(cols[9])) if len(cols) > 12 else None
                if key is not None:
                    self.udp[key] = max(self.udp.get(key, 0), int(cols[-1]))

    def report(self) -> None:
        self._read_proc()
        now = self.totals()
        delta = {k: now[k] - self._reported[k] for k in now}
        if not any(v > 0 for v in delta.values()):
            return
        self._reported = now
        for reason, count in delta.items():
            if count > 0:
                _DROPPED.labels(reason=reason).inc(count)
        log.warning("dns_dropped", **delta)
        detail = {**delta, "totals": now, "tcp_cap": self.tcp_cap}
        self.emit(Event(layer="dns", kind="dns_dropped", verdict="info", detail=detail))


def _dropped_counter():  # noqa: ANN202
    from prometheus_client import Counter

    from sentinel.evidence.metrics import REGISTRY

    return Counter(
        "sentinel_dns_dropped",
        "DNS queries lost before the resolver saw them (udp_dropped: receive buffer full; "
        "tcp_refused: connection cap)",
        ["reason"],
        registry=REGISTRY,
    )


_DROPPED = _dropped_counter()
