"""A token bucket per sink (Slack about 1/s, PagerDuty about 120/min per routing key)."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.time) -> None:
        self.rate = rate  # tokens per second; <= 0 means unlimited
        self.burst = max(1.0, burst)
        self.clock = clock
        self._tokens = self.burst
        self._at = clock()

    def wait_time(self) -> float:
        """Seconds until one token is available (0 = now)."""
        if self.rate <= 0:
            return 0.0
        self._fill()
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate

    def take(self) -> None:
        if self.rate > 0:
            self._fill()
            self._tokens -= 1

    def _fill(self) -> None:
        now = self.clock()
        # a clock that goes backwards (tests, NTP) must not mint tokens
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._at) * self.rate)
        self._at = now
