"""A token bucket for background work (hint replay, repair, rebalance), so it never
crowds out live ingest. Pure apart from the injected clock and sleep."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class RateLimiter:
    """At most ``per_s`` units a second on average, after a burst of ``burst`` (one second's
    worth unless given). A request larger than the bucket waits for the difference, so a
    chunk bigger than the burst still goes, at the rate. One limiter serves one thread."""

    def __init__(
        self,
        per_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        *,
        burst: float | None = None,
    ) -> None:
        if not (math.isfinite(per_s) and per_s > 0):
            raise ValueError(f"the rate must be a positive number, got {per_s!r}")
        burst = float(per_s) if burst is None else float(burst)
        if not (math.isfinite(burst) and burst > 0):
            raise ValueError(f"burst must be a positive number, got {burst!r}")
        self.per_s = float(per_s)
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = burst
        self._last = clock()
        self.waited_s = 0.0  # in all

    def delay(self, n: float) -> float:
        """Seconds to wait before ``n`` units may go (0 if now); takes the units."""
        if n <= 0:
            return 0.0
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._last) * self.per_s)
        self._last = now
        self._tokens -= n  # a debt, if negative, that the wait pays
        return 0.0 if self._tokens >= 0 else -self._tokens / self.per_s

    def acquire(self, n: float) -> float:
        """Wait until ``n`` units may go; the seconds slept."""
        wait = self.delay(n)
        if wait > 0:
            self._sleep(wait)
            self.waited_s += wait
        return wait
