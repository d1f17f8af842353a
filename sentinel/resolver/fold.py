"""Attempts, not packets, for DNS: refusals of one name within the fold window are one attempt.

One `getaddrinfo("api.openai.com")` sends an A and an AAAA query, and glibc retries each: four
refusals, one thing the app did. The first refusal is emitted at once (alerts stay immediate);
later refusals of the same name (and verdict) within `window` seconds of the previous one only
raise its count. When the name goes quiet and it had more than one query, an update with the same
event id follows: `packets` and `detail.queries` hold the query count, `detail.qtypes` the types
asked, `last_ts` the last query. The store replaces the row by id; the report and the metrics
count the attempt once (the metrics skip updates). Like the NFLOG monitor's folded retransmits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from sentinel.folding import OpenItems
from sentinel.store.events import Event

MAX_OPEN = 100_000  # distinct names folding at once; the oldest is closed beyond this


@dataclass
class _Open:
    event: Event
    queries: int
    last: float
    qtypes: list[str] = field(default_factory=list)


class RefusalFolder:
    def __init__(
        self,
        window: float,
        emit: Callable[[Event], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.emit, self.clock = emit, clock
        self._open: OpenItems[_Open] = OpenItems(window, MAX_OPEN)  # keyed by (name, verdict)
        self._lock = threading.Lock()
        self.folded = 0  # refusals counted into an open attempt instead of a new event

    @property
    def window(self) -> float:
        return self._open.window

    @window.setter
    def window(self, seconds: float) -> None:  # a reload may change it
        self._open.window = seconds

    def refused(self, event: Event) -> bool:
        """Fold a refusal in; True when it is a new attempt (the caller emits `event`)."""
        now = self.clock()
        key = (event.dst_name or "", event.verdict)
        qtype = str(event.detail.get("qtype", ""))
        with self._lock:
            current = self._open.fold(key, now)
            if current is not None:
                current.queries += 1
                if qtype not in current.qtypes:
                    current.qtypes.append(qtype)
                self.folded += 1
                return False
            closed = self._open.open(key, _Open(event, 1, now, [qtype]))
        for update in map(self._close, closed):
            if update is not None:
                self.emit(update)
        return True

    def flush(self, everything: bool = False) -> int:
        """Close attempts quiet for longer than the window; emits their updates."""
        now = self.clock()
        with self._lock:
            closed = [u for u in map(self._close, self._open.expire(now, everything)) if u]
        for update in closed:
            self.emit(update)
        return len(closed)

    def __len__(self) -> int:
        return len(self._open)

    @staticmethod
    def _close(current: _Open) -> Event | None:
        if current.queries == 1:
            return None
        detail = {**current.event.detail, "queries": current.queries, "qtypes": current.qtypes}
        return replace(current.event, packets=current.queries, last_ts=current.last, detail=detail)
