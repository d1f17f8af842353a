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
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

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
        self.window, self.emit, self.clock = window, emit, clock
        self._open: OrderedDict[tuple[str, str], _Open] = OrderedDict()  # least recent first
        self._lock = threading.Lock()
        self.folded = 0  # refusals counted into an open attempt instead of a new event

    def refused(self, event: Event) -> bool:
        """Fold a refusal in; True when it is a new attempt (the caller emits `event`)."""
        now = self.clock()
        key = (event.dst_name or "", event.verdict)
        qtype = str(event.detail.get("qtype", ""))
        closed: list[Event] = []
        with self._lock:
            current = self._open.get(key)
            if current is not None and now - current.last <= self.window:
                current.queries += 1
                current.last = now
                if qtype not in current.qtypes:
                    current.qtypes.append(qtype)
                self._open.move_to_end(key)
                self.folded += 1
                return False
            if current is not None:
                closed.append(self._close(self._open.pop(key)))
            self._open[key] = _Open(event, 1, now, [qtype])
            while len(self._open) > MAX_OPEN:
                closed.append(self._close(self._open.popitem(last=False)[1]))
        for update in closed:
            if update is not None:
                self.emit(update)
        return True

    def flush(self, everything: bool = False) -> int:
        """Close attempts quiet for longer than the window; emits their updates."""
        now = self.clock()
        closed: list[Event] = []
        with self._lock:
            while self._open:
                key, current = next(iter(self._open.items()))
                if not everything and now - current.last <= self.window:
                    break
                del self._open[key]
                update = self._close(current)
                if update is not None:
                    closed.append(update)
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
