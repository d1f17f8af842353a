"""The PRD's circuit breaker, one per sink, with an injectable clock.

Opens after 5 consecutive failures or an error rate above 10% over the last minute (counted
once the minute holds at least `min_calls` calls, so one early failure of one call does not
trip it); after 30 s open it lets probes through (half-open); 3 successes in a row close it,
any failure re-opens it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(frozen=True)
class BreakerSettings:
    consecutive_failures: int = 5
    error_rate: float = 0.10  # strictly above this opens
    window: float = 60.0
    min_calls: int = 10
    open_for: float = 30.0
    close_after: int = 3


class CircuitBreaker:
    def __init__(
        self,
        settings: BreakerSettings | None = None,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[str, str], None] | None = None,
    ) -> None:
        self.settings = settings or BreakerSettings()  # the PRD's numbers
        self.clock = clock
        self.on_change = on_change
        self._lock = threading.Lock()
        self._state = CLOSED
        self._opened_at = 0.0
        self._consecutive = 0
        self._half_open_ok = 0
        self._calls: deque[tuple[float, bool]] = deque()  # (time, ok) within the window
        self.opened_count = 0

    @property
    def state(self) -> str:
        with self._lock:
            return self._refresh()

    def allow(self) -> bool:
        """May a request go out now? (open: no; closed and half-open: yes)"""
        return self.state != OPEN

    def retry_in(self) -> float:
        """Seconds until an open breaker half-opens (0 when not open)."""
        with self._lock:
            if self._refresh() != OPEN:
                return 0.0
            return max(0.0, self._opened_at + self.settings.open_for - self.clock())

    def record_success(self) -> None:
        with self._lock:
            state = self._refresh()
            self._remember(True)
            self._consecutive = 0
            if state == HALF_OPEN:
                self._half_open_ok += 1
                if self._half_open_ok >= self.settings.close_after:
                    self._calls.clear()  # a fresh start: old failures no longer count
                    self._set(CLOSED)

    def record_failure(self) -> None:
        with self._lock:
            state = self._refresh()
            self._remember(False)
            self._consecutive += 1
            if state == HALF_OPEN or (state == CLOSED and self._should_open()):
                self._open()

    # --- internals (lock held) -------------------------------------------------------------
    def _refresh(self) -> str:
        if self._state == OPEN and self.clock() - self._opened_at >= self.settings.open_for:
            self._half_open_ok = 0
            self._set(HALF_OPEN)
        return self._state

    def _remember(self, ok: bool) -> None:
        now = self.clock()
        self._calls.append((now, ok))
        while self._calls and now - self._calls[0][0] > self.settings.window:
            self._calls.popleft()

    def _should_open(self) -> bool:
        s = self.settings
        if self._consecutive >= s.consecutive_failures:
            return True
        if len(self._calls) < s.min_calls:
            return False
        failures = sum(1 for _, ok in self._calls if not ok)
        return failures / len(self._calls) > s.error_rate

    def _open(self) -> None:
        self._opened_at = self.clock()
        self.opened_count += 1
        self._set(OPEN)

    def _set(self, new: str) -> None:
        old, self._state = self._state, new
        if old != new and self.on_change:
            self.on_change(old, new)
