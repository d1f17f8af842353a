"""The store's writer: `EventStore.put()` does not block; one thread commits batches.

`put()` redacts the event (unless the bus already did: `model.redact_once`) and appends it
to a bounded in-memory queue. The writer thread takes everything queued (up to `batch`) and
commits it in one transaction: under load batches grow by themselves, and after an idle
spell it waits `linger` so a burst shares one transaction. Between batches it deletes at
most one chunk of expired events, sized so a chunk takes about `PRUNE_TARGET`, and paced (at
most `PRUNE_RATE` rows/s, so the WAL checkpoints keep up):
pruning a large backlog never holds new events up for much longer than one chunk.

Durability bound: an event is committed (in the WAL, surviving the process being killed)
within `linger` (idle) or `COMMIT_EVERY` (under load) + one batch commit of `put()` returning
True, while the writer keeps up.
`flush()` waits for everything put so far; `stop()` (the daemon's shutdown, SIGTERM) flushes
and then writes whatever else was queued. Kernel sightings (layer `netfilter`) meeting a full
queue wait up to `PUT_WAIT` for room: the monitor then reads the NFLOG socket later, and the
kernel's socket buffer behind it (32 MiB) holds the burst, its overflow counted by sequence
number. Once such a wait runs out, the next ones shed at once until a batch commits again (a
stalled writer must not stall the monitor). Other producers (DNS answers, the guard receiver)
never wait. A full queue sheds the event: `put()` returns False,
and the count is written to the `shed` table with the next batch (report: shed_events; metrics:
sentinel_events_shed_total). A batch the database refuses is counted the same way. What a
SIGKILL or a crash takes with it is the queue: the events put since the last commit.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sentinel.store.checkpoint import SAFETY_PAGES, Checkpointer
from sentinel.store.model import Event, redact_once
from sentinel.store.rows import PRUNE_CHUNK, prune, write_events
from sentinel.store.schema import connect, db_path
from sentinel.store.sessions import close_session, open_session, record, recover

DEFAULT_QUEUE = 50_000
PUT_WAIT = 1.0  # s a kernel sighting waits for room in a full queue before it is shed
WAIT_LAYERS = frozenset({"netfilter"})  # producers with the kernel's socket buffer behind them
DEFAULT_RETENTION = 7 * 86400.0
BATCH = 5000  # the most events in one transaction
LINGER = 0.002  # s: after idling, let a burst gather before committing it
# s: under load (PACE_FROM or more events queued when a commit ends), at most one commit this
# often: a commit costs ~1 ms whatever its size, so a flood's batches of ~100 spent half the
# writer's time there (issue 17); a flood of 10,000/s now commits ~400 at a time. A trickle
# (a few events queued meanwhile) is committed at once, as before.
COMMIT_EVERY = 0.04
PACE_FROM = 64
IDLE_WAKE = 0.5  # s: the writer's sign of life (watchdog) while nothing arrives
PRUNE_EVERY = 60.0  # s between pruning rounds once the backlog is gone
PRUNE_TARGET = 0.005  # s: the length of one prune transaction the chunk size aims for
PRUNE_MIN = 50
PRUNE_PAUSE = 2.0  # a pause of this many times a chunk's length before the next chunk
PRUNE_RATE = 20_000  # rows/s at most (a backlog of 500,000 takes 25 s or more)
_WRITE_ERRORS = (sqlite3.Error, ValueError, OverflowError, TypeError)


class EventStore:
    """Batching writer: `put()` queues (kernel sightings wait, bounded, for room); a thread
    commits batches."""

    def __init__(
        self,
        path: Path | None = None,
        maxsize: int = DEFAULT_QUEUE,
        retention: float = DEFAULT_RETENTION,
        batch: int = BATCH,
        on_error: Callable[[Exception], None] | None = None,
        linger: float = LINGER,
    ) -> None:
        self.path = path or db_path()
        self.retention = retention
        self.batch = batch
        self.maxsize = maxsize
        self.linger = linger
        self.on_error = on_error
        self._pending: deque[Event] = deque()
        self._lock = threading.Lock()  # the bound check, the counters, the shed tally
        self._shed: dict[str, int] = {}  # not yet persisted
        self._counts = {"put": 0, "written": 0, "shed": 0, "batches": 0, "errors": 0}
        self._max_depth = 0
        self._done = 0  # events the writer is finished with (committed, or counted as shed)
        self._done_changed = threading.Condition()
        self._write_lock = threading.Lock()  # one batch at a time
        self._wake = threading.Event()
        self._idle = True  # the writer waits (or is about to): put() must wake it
        self._stopping = False
        self._stalled = False  # a kernel sighting's wait ran out: shed at once until a commit
        self._prune_size = PRUNE_CHUNK // 10
        self._next_prune = 0.0
        self._settled = 0  # of the events put: committed, or their loss in the shed table
        self._lost = 0  # events of failed batches whose shed count is not written yet
        self._conn = connect(self.path)  # fail early, in the caller's thread
        self._counts["shed"] += recover(self._conn, self.path)  # what killed writers lost
        self._session = open_session(self._conn, self.path)
        self._conn.execute(f"PRAGMA wal_autocheckpoint={SAFETY_PAGES}")
        self._checkpointer = Checkpointer(self.path, on_error)
        self._thread = threading.Thread(target=self._run, name="event-store", daemon=True)
        self._started = False
        self.last_loop = time.monotonic()

    def start(self) -> EventStore:
        if not self._started:
            self._started = True
            self._checkpointer.start()
            self._thread.start()
        return self

    def put(self, event: Event) -> bool:
        """Queue an event, redacted (once: the bus's own redacted event as it is); False (and
        counted) when the queue is full (after waiting up to PUT_WAIT for room, for a kernel
        sighting)."""
        if event.dst_name or event.exe or event.stack or event.detail:
            event = redact_once(event)  # a kernel sighting has no free text: as it is
        return self._queue(event)

    __call__ = put  # usable directly as an emit callback

    def put_many(self, events: list[Event], redacted: bool = False) -> int:
        """`put` for each event, in order, under one lock while the queue has room for them
        all; how many were queued (the others shed and counted, as `put` sheds them).
        `redacted=True` only for a batch every event of which is already redacted: the bus'
        batch (`run.context.Context.emit_many` redacts each before any sink sees it)."""
        if not redacted:
            events = [
                redact_once(e) if e.dst_name or e.exe or e.stack or e.detail else e for e in events
            ]
        n = len(events)
        with self._lock:
            fits = len(self._pending) + n <= self.maxsize
            if fits:
                self._pending.extend(events)
                self._counts["put"] += n
        if not fits:  # event by event: kernel sightings wait for room, the rest shed
            return sum(map(self._queue, events))
        if self._idle and n:
            self._idle = False
            self._wake.set()
        return n

    def _queue(self, event: Event) -> bool:
        """Append a redacted event, or shed it (after a kernel sighting's bounded wait)."""
        if len(self._pending) >= self.maxsize and not self._room(event.layer):
            return self._shed_one(event.layer)
        with self._lock:
            self._pending.append(event)
            self._counts["put"] += 1
        if self._idle:
            self._idle = False
            self._wake.set()
        return True

    def _room(self, layer: str) -> bool:
        """Wait (bounded) until the queue has room, for producers that have a kernel buffer
        behind them; False at once for the others, while stalled, or without a writer."""
        if layer not in WAIT_LAYERS or self._stalled or self._stopping:
            return False
        if not (self._started and self._thread.is_alive()):
            return False
        self._wake.set()
        with self._done_changed:
            room = self._done_changed.wait_for(lambda: len(self._pending) < self.maxsize, PUT_WAIT)
        if not room:
            self._stalled = True
        return room

    def _shed_one(self, layer: str) -> bool:
        with self._lock:
            self._shed[layer] = self._shed.get(layer, 0) + 1
            self._counts["shed"] += 1
        return False

    def stats(self) -> dict[str, int]:
        with self._lock:
            depth = len(self._pending)
            return {**self._counts, "queue_depth": depth, "max_depth": max(self._max_depth, depth)}

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event put so far is committed (or counted as shed)."""
        with self._lock:
            target = self._counts["put"]
        if self._started and not self._thread.is_alive():
            self._write_all()  # the writer died (the watchdog restarts it): write from here
        self._wake.set()
        with self._done_changed:
            return self._done_changed.wait_for(lambda: self._done >= target, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Flush, end the writer, and write whatever was queued meanwhile; then close."""
        if self._started:
            self.flush(timeout)
            self._stopping = True
            self._wake.set()
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._write_all()
        if not self._thread.is_alive():
            self._close_session()
        self._checkpointer.stop(timeout)
        self._conn.close()

    def _close_session(self) -> None:
        """Closed only when every event put is settled; otherwise the next writer counts it."""
        with self._lock:
            accepted, settled = self._counts["put"], self._settled
        try:
            if accepted == settled:
                close_session(self._conn, self._session, accepted, settled)
        except _WRITE_ERRORS as exc:
            self._error(exc)

    # --- the writer thread ------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self.last_loop = began = time.monotonic()  # the watchdog's sign of life
            wrote = self._write_batch()
            if self._stopping and not self._pending:
                return
            if self._checkpointer.top_up:
                self._top_up()
            pruned = self._prune_step()  # at most one chunk between two batches
            if not self._pending and not pruned:
                self._sleep()
            elif wrote and PACE_FROM <= len(self._pending) < self.batch:
                self._pace(began)

    def _pace(self, began: float) -> None:
        """Under load: the next commit no sooner than COMMIT_EVERY after the last one began,
        so the events arriving meanwhile share it; `flush()` and `stop()` end the wait."""
        left = began + COMMIT_EVERY - time.monotonic()
        if left > 0 and not self._stopping:
            self._wake.wait(left)
            self._wake.clear()

    def _sleep(self) -> None:
        self._idle = True
        if not self._pending and not self._stopping:
            self._wake.wait(IDLE_WAKE)
        self._wake.clear()
        self._idle = False
        if self._pending and self.linger and not self._stopping:
            time.sleep(self.linger)

    def _write_all(self) -> None:
        for _ in range(len(self._pending) // max(self.batch, 1) + 2):  # bounded
            self._write_batch()

    def _write_batch(self) -> int:
        """One transaction of what is queued (up to `batch`); how many events it took."""
        with self._write_lock:
            with self._lock:
                pending = self._pending
                n = min(self.batch, len(pending))
                self._max_depth = max(self._max_depth, len(pending))
                if n == len(pending):  # all of it (the usual case): the queue starts over
                    events, self._pending = list(pending), deque()
                else:
                    events = [pending.popleft() for _ in range(n)]
                shed, self._shed = self._shed, {}
                lost, self._lost = self._lost, 0
                accepted = self._counts["put"]
            if not events and not shed:
                return 0
            settled = self._settled + n + lost  # if this transaction commits

            def counts(conn: sqlite3.Connection) -> None:
                record(conn, self._session, accepted, settled)

            try:
                write_events(self._conn, events, shed, counts)
            except Exception as exc:  # noqa: BLE001 - the writer must outlive any one batch
                self._lost_batch(events, shed, lost, exc)
            else:
                self._stalled = False
                with self._lock:
                    self._settled = settled
                    self._counts["written"] += n
                    self._counts["batches"] += 1
                self._checkpointer.committed()
            finally:
                with self._done_changed:
                    self._done += n
                    self._done_changed.notify_all()
            return n

    def _lost_batch(
        self, events: list[Event], shed: dict[str, int], lost: int, exc: Exception
    ) -> None:
        """The batch is lost: count it as shed (written with the next batch) and say why."""
        with self._lock:
            for e in events:
                self._shed[e.layer] = self._shed.get(e.layer, 0) + 1
            for layer, n in shed.items():
                self._shed[layer] = self._shed.get(layer, 0) + n
            self._counts["shed"] += len(events)
            self._lost += lost + len(events)
        self._error(exc)

    def _error(self, exc: Exception) -> None:
        with self._lock:
            self._counts["errors"] += 1
        if self.on_error:
            self.on_error(exc)
        if not isinstance(exc, _WRITE_ERRORS):
            return
        time.sleep(0.1)  # a locked or full database: do not spin

    def _top_up(self) -> None:
        """Copy the WAL frames since the background checkpoint, so the WAL can start over."""
        self._checkpointer.top_up = False
        try:
            with self._write_lock:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except _WRITE_ERRORS as exc:
            self._error(exc)

    def _prune_step(self) -> bool:
        """One chunk of retention pruning when it is due; True when one ran. The chunk grows
        or shrinks so that one transaction takes about PRUNE_TARGET."""
        now = time.monotonic()
        if now < self._next_prune:
            return False
        size = self._prune_size
        start = time.perf_counter()
        try:
            with self._write_lock:
                gone = prune(self._conn, self.retention, limit=size)
        except _WRITE_ERRORS as exc:
            self._next_prune = now + 5.0
            self._error(exc)
            return False
        took = time.perf_counter() - start
        if took < PRUNE_TARGET / 2:
            self._prune_size = min(size * 2, PRUNE_CHUNK)
        elif took > PRUNE_TARGET * 2:
            self._prune_size = max(size // 2, PRUNE_MIN)
        if gone < size:  # the backlog is gone: the next round in a minute
            self._next_prune = now + PRUNE_EVERY
        else:  # paced: the WAL checkpoints keep up, and events keep the writer's time
            self._next_prune = now + max(took * PRUNE_PAUSE, gone / PRUNE_RATE)
        return True


def store_service(ctx: Any) -> EventStore:
    """Factory for `run.services.SERVICES`: the store subscribes to the context's event bus."""
    store = EventStore(db_path(), retention=ctx.policy.monitor.retention)
    ctx.add_sink(store.put)
    return store
