"""WAL checkpoints off the writer's path.

SQLite's automatic checkpoint runs inside the COMMIT that crosses its threshold: the writer
then copies the WAL into the database and syncs both, and every event queued meanwhile waits.
The writer's connection keeps only a far threshold (a safety net); this thread runs a PASSIVE
checkpoint on its own connection about once a second while batches are being committed.
PASSIVE never blocks the writer or readers; it copies what no reader still needs.

The WAL only starts over from its beginning when the writer begins a transaction with every
frame already copied, which a busy writer never sees after a checkpoint on another connection
(it has committed more meanwhile). So after a long WAL was copied, the writer runs one more
PASSIVE checkpoint itself, between two batches (`top_up`): only the few frames since are left.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

EVERY = 1.0  # s between checkpoints while there are commits
SOON = 0.1  # s: the next one, when the last found a long WAL
LONG = 4096  # pages of WAL that make a checkpoint come SOON
TOP_UP = 8192  # pages of WAL (32 MB) after which the writer finishes the job (see above)
SAFETY_PAGES = 16384  # the writer's own automatic checkpoint (64 MB of WAL at 4 KB pages)


class Checkpointer:
    def __init__(self, path: Path, on_error: Callable[[Exception], None] | None = None) -> None:
        self._conn = sqlite3.connect(
            path, timeout=10, isolation_level=None, check_same_thread=False
        )
        self.on_error = on_error
        self._committed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="event-store-wal", daemon=True)
        self.checkpoints = 0
        self.top_up = False  # a long WAL is backfilled: the writer should finish the job

    def start(self) -> None:
        self._thread.start()

    def committed(self) -> None:
        """The writer committed a batch: a checkpoint is due within EVERY."""
        if not self._committed.is_set():
            self._committed.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._committed.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self._conn.close()

    def _run(self) -> None:
        pause = EVERY
        while not self._stop.is_set():
            self._committed.wait()
            if self._stop.wait(pause):
                return
            self._committed.clear()
            try:
                _, log, _ = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                self.checkpoints += 1
            except sqlite3.Error as exc:  # the next commit tries again; the safety net holds
                log = 0
                if self.on_error:
                    self.on_error(exc)
            pause = SOON if log >= LONG else EVERY
            if log >= TOP_UP:
                self.top_up = True
