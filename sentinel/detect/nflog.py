"""The NFLOG monitor: every packet the ruleset logs becomes an event; one attempt, one event.

Source: a raw NETLINK_NETFILTER socket bound to the policy's NFLOG group (see docs/report.md for
why not libpcap; the socket is `sentinel.enforce.nflog_socket`). We ask the kernel for the first
128 bytes of each packet (headers only), for per-instance sequence numbers, so a message lost to
a full socket buffer is counted, never silently missed, and for messages in batches (one read
returns up to `QTHRESH` of them, flushed at least every 10 ms). Parsing is
`sentinel.detect.packets`, folding `sentinel.detect.flows`; this module is the reader thread,
the heartbeats and the kernel-counter readings.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from sentinel.detect.canary import CANARY_MARK
from sentinel.detect.flows import CANARY_PREFIX, PREFIX_VERDICT, Folder
from sentinel.detect.l2 import NFPROTO_NETDEV, parse_frame
from sentinel.detect.packets import Flow, parse_ip, parse_nflog
from sentinel.enforce.nflog_socket import RCVBUF, Malformed, NflogSocket
from sentinel.enforce.snapshot import applied_info, kernel_snapshot
from sentinel.store.events import Event

# the names importers knew here before parsing and folding got modules of their own
__all__ = [
    "CANARY_PREFIX",
    "PREFIX_VERDICT",
    "Flow",
    "Folder",
    "Monitor",
    "parse_ip",
    "parse_nflog",
]
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
        rcvbuf: int = RCVBUF,
        emit_many: Callable[[list[Event]], Any] | None = None,
    ) -> None:
        self.group = policy.nflog_group
        self.rcvbuf = rcvbuf  # the kernel socket's buffer: what a burst may queue while we read
        self.folder = Folder(policy.monitor.fold_window)
        self.emit = emit
        self.update = update or emit
        # the batch form of `emit`: the events of the messages one read returned, in one call
        # (fold updates too, unless `update` goes elsewhere)
        self.emit_many = emit_many
        self._updates_batched = update is None
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
        # its batch form, set and cleared with it: a read's (message, time, event id) triples
        self.tap_many: Callable[[list[tuple[bytes, float, str | None]]], None] | None = None

    def start(self) -> Monitor:
        """Binds the group (raises OSError if that fails) and starts the reader thread."""
        self._sock = NflogSocket(self.group, self.rcvbuf)
        # our bind made the kernel's instance, whose numbering starts at 0: so messages lost
        # before the first one we read are counted too
        self._next_seq = 0
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
            if bodies:
                self.handle_many(bodies, now)
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
        event_id = self._handle(body, now, None)
        if self.tap is not None:
            self.tap(body, now, event_id)

    def handle_many(self, bodies: list[bytes], now: float) -> None:
        """The messages one read returned: their events go to `emit_many` in one batch (one
        pass over the bus for up to QTHRESH attempts), or one by one without it."""
        if self.emit_many is None:
            for body in bodies:
                self.handle(body, now)
            return
        out: list[Event] = []
        tap, tap_many = self.tap, self.tap_many
        if tap is None:
            for body in bodies:
                self._handle(body, now, out)
        elif tap_many is None:
            for body in bodies:
                tap(body, now, self._handle(body, now, out))
        else:
            tap_many([(body, now, self._handle(body, now, out)) for body in bodies])
        if out:
            self.emit_many(out)

    def _handle(self, body: bytes, now: float, out: list[Event] | None) -> str | None:
        """The event id the message went to (new or folded), None if it made none. Its event
        (and fold updates) are appended to `out` when given, else emitted."""
        self.counts["messages"] += 1
        try:
            packet = parse_nflog(body)
            self._check_seq(packet.seq)
            verdict = PREFIX_VERDICT.get(packet.prefix)
            if verdict is None:  # someone else's NFLOG rule in our group
                self.counts["foreign"] += 1
                return None
            if packet.family == NFPROTO_NETDEV:  # the netdev egress table: an Ethernet frame
                flow = parse_frame(packet.payload)
            else:
                flow = parse_ip(packet.payload)
            if packet.mark == CANARY_MARK:
                verdict = CANARY_PREFIX + verdict
        except (Malformed, struct.error, ValueError):
            self.counts["malformed"] += 1
            return None
        self.counts["packets"] += 1
        event, evicted = self.folder.feed(flow, verdict, now)
        for update in evicted:
            if out is not None and self._updates_batched:
                out.append(update)
            else:
                self.update(update)
        if event is None:
            self.counts["folded"] += 1
            return self.folder.event_id(flow, verdict)
        self.counts["events"] += 1
        if out is not None:
            out.append(event)
        else:
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
    from sentinel.store.events import DEFAULT_QUEUE, EventStore, db_path

    parser = argparse.ArgumentParser(prog="python -m sentinel.detect.nflog")
    parser.add_argument("--policy", required=True)
    parser.add_argument("--heartbeat", type=float, default=5.0)
    parser.add_argument("--snapshot-every", type=float, default=30.0, help="kernel counters")
    parser.add_argument("--seconds", type=float, default=3600, help="exit after this long")
    # smaller than the defaults only to make a test shed on purpose (tests/test_headroom_netns)
    parser.add_argument("--rcvbuf", type=int, default=RCVBUF, help="kernel socket buffer, bytes")
    parser.add_argument("--store-queue", type=int, default=DEFAULT_QUEUE, help="events queued")
    args = parser.parse_args(argv)
    policy = load_policy(args.policy)
    store = EventStore(
        db_path(), maxsize=args.store_queue, retention=policy.monitor.retention
    ).start()

    def emit(event: Event) -> None:
        store.put(event)
        metrics.observe_event(event)

    def emit_many(events: list[Event]) -> None:
        for event in events:
            store.put(event)
        metrics.observe_events(events)

    monitor = Monitor(
        policy,
        emit,
        emit_many=emit_many,
        heartbeat=args.heartbeat,
        snapshot_every=args.snapshot_every,
        rcvbuf=args.rcvbuf,
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
    return Monitor(ctx.policy, ctx.emit, emit_many=ctx.emit_many)
