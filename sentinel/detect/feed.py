"""The capture feed: the running monitor's logged packets, for `sentinel capture`.

Only one socket can bind an NFLOG group (a second bind gets EPERM, and a capture that bound
first would blind the monitor), so a capture never reads the kernel: the monitor hands every
NFLOG message it read to `CaptureFeed.offer` (one call on its reader thread, never blocking),
and the feed serves them on a Unix socket in the state directory, `capture.sock`, mode 0600 and
accepting only root or the daemon's own uid (SO_PEERCRED).

Bounded: at most `MAX_CLIENTS` readers, each with its own queue of `QUEUE` packets; the last
`RING` packets are kept so a capture without --follow shows what was logged recently. A reader
too slow for the traffic never slows the monitor: its queue overflows and the packets it could
not take are counted per reader. Every record carries the reader's sequence number and its drop
count so far, and an idle feed sends a status record every second, so the reader can show each
drop (and `shown + dropped == last seq` holds exactly).

Wire format (SOCK_SEQPACKET, one record per message): `HEADER` = magic, kind, seq, dropped,
time, the event id's 16 bytes (zeros when the packet made no event: malformed or foreign), then
the NFLOG message body unchanged (nfgenmsg + TLVs: what pcap link type 239 holds). The reader's
first message is a JSON request {"history": bool, "follow": bool}. stdlib only: the daemon's
memory and start-up do not change; scapy is imported by the reader alone.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sentinel.errors import SentinelError
from sentinel.log import get_logger

SOCKET_NAME = "capture.sock"
MAGIC = b"SNCF"
HEADER = struct.Struct("!4sB3xQQd16s")
PACKET, STATUS, END = 1, 2, 3
MAX_CLIENTS = 4
QUEUE = 4096  # packets per reader
RING = 256  # recent packets for a capture without --follow
STATUS_EVERY = 1.0
SO_PEERCRED = getattr(socket, "SO_PEERCRED", 17)
log = get_logger("capture_feed")


@dataclass(frozen=True)
class Record:
    kind: int  # PACKET | STATUS | END
    # PACKET: its number among the packets offered to this reader; STATUS/END: every packet up
    # to this number was sent before this record or dropped. A gap in the numbers = drops.
    seq: int
    dropped: int  # packets this reader could not take so far (a cross-check of the gaps)
    ts: float
    event_id: str | None
    body: bytes  # NFLOG message (PACKET) or JSON (STATUS, END)


def encode(
    kind: int, seq: int, dropped: int, ts: float, event_id: str | None, body: bytes
) -> bytes:
    raw_id = uuid.UUID(event_id).bytes if event_id else bytes(16)
    return HEADER.pack(MAGIC, kind, seq, dropped, ts, raw_id) + body


def decode(message: bytes) -> Record:
    if len(message) < HEADER.size:
        raise ValueError(f"short feed record ({len(message)} bytes)")
    magic, kind, seq, dropped, ts, raw_id = HEADER.unpack_from(message)
    if magic != MAGIC:
        raise ValueError("not a capture feed record")
    event_id = str(uuid.UUID(bytes=raw_id)) if any(raw_id) else None
    return Record(kind, seq, dropped, ts, event_id, message[HEADER.size :])


# --- the daemon side ------------------------------------------------------------------------
class _Reader:
    """One connected capture: its queue, counters and sender thread."""

    def __init__(
        self, sock: socket.socket, history: list[tuple], follow: bool, lock: threading.Lock
    ) -> None:
        self.sock, self.follow, self.lock = sock, follow, lock
        self.queue: deque[tuple] = deque((n, *item) for n, item in enumerate(history, 1))
        self.offered, self.dropped, self.sent = len(history), 0, 0
        self.wake = threading.Event()
        self.closed = False
        self.thread = threading.Thread(target=self._send_loop, name="capture-feed", daemon=True)

    def offer(self, item: tuple) -> None:  # on the monitor's thread, under the feed's lock
        if self.closed:
            return
        self.offered += 1
        if len(self.queue) >= QUEUE:
            if not self.dropped:
                log.warning("capture_feed_dropping", reason="reader too slow", queue=QUEUE)
            self.dropped += 1
            return
        self.queue.append((self.offered, *item))
        self.wake.set()

    def _send_loop(self) -> None:
        try:
            self._send_all()
        except OSError:
            pass  # the reader went away
        finally:
            self.closed = True
            self.sock.close()
            log.info("capture_client_closed", sent=self.sent, dropped=self.dropped)

    def _send_all(self) -> None:
        if not self.follow:
            self._drain()
            self._send(END, self._settled(), 0.0, None, b"{}")
            return
        self._send(STATUS, self._settled(), time.time(), None, b"{}")  # "you are admitted"
        while not self.closed:
            if not self.wake.wait(STATUS_EVERY):
                self._send(STATUS, self._settled(), time.time(), None, b"{}")
            self.wake.clear()
            self._drain()

    def _settled(self) -> int:
        """The highest packet number such that every packet up to it was sent or dropped."""
        with self.lock:
            return self.queue[0][0] - 1 if self.queue else self.offered

    def _drain(self) -> None:
        while self.queue and not self.closed:
            seq, ts, event_id, body = self.queue.popleft()
            self._send(PACKET, seq, ts, event_id, body)
            self.sent += 1

    def _send(self, kind: int, seq: int, ts: float, event_id: str | None, body: bytes) -> None:
        message = encode(kind, seq, self.dropped, ts, event_id, body)
        while not self.closed:  # a stopped reader blocks us here, never the monitor
            try:
                self.sock.send(message)
                return
            except TimeoutError:
                continue

    def close(self) -> None:
        self.closed = True
        self.wake.set()


class CaptureFeed:
    """A service of `sentinel run`: hooks into the monitor, serves `capture.sock`."""

    def __init__(self, monitor: Any, directory: Path) -> None:
        self.monitor = monitor
        self.path = Path(directory) / SOCKET_NAME
        self.ring: deque[tuple] = deque(maxlen=RING)
        self.readers: tuple[_Reader, ...] = ()
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()
        self.counts = {"offered": 0, "refused": 0, "readers": 0}

    def offer(self, body: bytes, ts: float, event_id: str | None) -> None:
        """The monitor's tap: one NFLOG message it has handled (and the event it went to)."""
        item = (ts, event_id, body)
        with self.lock:
            self.counts["offered"] += 1
            self.ring.append(item)
            for reader in self.readers:
                reader.offer(item)

    def offer_many(self, items: list[tuple[bytes, float, str | None]]) -> None:
        """`offer` for the messages of one read, (message, time, event id) each, in order,
        under one lock (the monitor hands a read's batch, issue 17)."""
        with self.lock:
            self.counts["offered"] += len(items)
            ring, readers = self.ring, self.readers
            for body, ts, event_id in items:
                item = (ts, event_id, body)
                ring.append(item)
                for reader in readers:
                    reader.offer(item)

    def start(self) -> CaptureFeed:
        if self.monitor is None:
            return self
        try:
            self.listener = self._listen()
        except OSError as exc:  # a view must never stop enforcement: no feed, said loudly
            log.error("capture_feed_unavailable", socket=str(self.path), error=str(exc))
            return self
        self.monitor.tap, self.monitor.tap_many = self.offer, self.offer_many
        self.thread = threading.Thread(target=self._accept_loop, name="capture-accept")
        self.thread.daemon = True
        self.thread.start()
        log.info("capture_feed_listening", socket=str(self.path))
        return self

    def _listen(self) -> socket.socket:
        """Bound under a temporary name, made 0600, listening, then renamed into place: no
        moment where the socket is reachable with wider permissions."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{SOCKET_NAME}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.bind(str(tmp))
            os.chmod(tmp, 0o600)
            sock.listen(MAX_CLIENTS)
            os.replace(tmp, self.path)
        except OSError:
            sock.close()
            tmp.unlink(missing_ok=True)
            raise
        sock.settimeout(0.5)
        return sock

    def _accept_loop(self) -> None:
        assert self.listener is not None
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed by stop()
            try:
                self._admit(conn)
            except (OSError, ValueError) as exc:
                log.warning("capture_client_refused", error=str(exc))
                conn.close()

    def _admit(self, conn: socket.socket) -> None:
        _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, SO_PEERCRED, 12))
        if uid not in (0, os.getuid()):
            raise ValueError(f"uid {uid} may not read the capture feed")
        conn.settimeout(2.0)
        request = json.loads(conn.recv(4096) or b"{}")
        conn.settimeout(1.0)
        with self.lock:
            self.readers = tuple(r for r in self.readers if not r.closed)
            if len(self.readers) >= MAX_CLIENTS:
                self.counts["refused"] += 1
                raise ValueError(f"already {MAX_CLIENTS} capture readers")
            history = list(self.ring) if request.get("history") else []
            reader = _Reader(conn, history, bool(request.get("follow")), self.lock)
            if reader.follow:
                self.readers = (*self.readers, reader)
            self.counts["readers"] += 1
        reader.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.monitor is not None and getattr(self.monitor, "tap", None) == self.offer:
            self.monitor.tap = self.monitor.tap_many = None
        if self.listener is not None:
            self.listener.close()
            self.path.unlink(missing_ok=True)
        if self.thread:
            self.thread.join(timeout=5)
        for reader in self.readers:
            reader.close()
        for reader in self.readers:
            reader.thread.join(timeout=2)

    def stats(self) -> dict[str, int]:
        return {**self.counts, "dropped": sum(r.dropped for r in self.readers)}


def capture_feed_service(ctx: Any) -> CaptureFeed:
    """Factory for `run.services.SERVICES` (after the monitor it hooks into)."""
    from sentinel.store.state import state_dir

    return CaptureFeed(ctx.services.get("monitor"), state_dir())


# --- the reader side ------------------------------------------------------------------------
def read_feed(directory: Path, history: bool, follow: bool, timeout: float = 0.5) -> Iterator:
    """Records from the running monitor's feed; None every `timeout` s of silence (so the
    caller can check for a stop). Raises SentinelError when there is no feed to read."""
    path = Path(directory) / SOCKET_NAME
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        raise SentinelError(_no_feed(path, exc)) from None
    try:
        sock.sendall(json.dumps({"history": history, "follow": follow}).encode())
        sock.settimeout(5.0)
        try:
            first = sock.recv(1 << 17)  # a follower is admitted with a status record
        except TimeoutError:
            first = b""
        if not first:
            raise SentinelError(
                f"the capture feed {path} refused this reader (at most "
                f"{MAX_CLIENTS} at a time) or did not answer"
            )
        yield decode(first)
        sock.settimeout(timeout)
        while True:
            try:
                message = sock.recv(1 << 17)
            except TimeoutError:
                yield None
                continue
            if not message:
                return  # the sentinel stopped (or refused us: too many readers)
            yield decode(message)
    finally:
        sock.close()


def _no_feed(path: Path, exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"cannot read the capture feed {path}: permission denied (root only)"
    return (
        f"no capture feed at {path} ({exc.strerror}): is `sentinel run` running with this "
        "state directory (SENTINEL_STATE_DIR)?"
    )
