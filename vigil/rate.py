"""A token bucket: background work (hint replay, repair, rebalance) that must not crowd out
live ingest, and an agent's replay of its outbox that must not flood the broker's queue.
Pure apart from the injected clock and sleep."""

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

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._last) * self.per_s)
        self._last = now

    def delay(self, n: float) -> float:
        """Seconds to wait before ``n`` units may go (0 if now); takes the units."""
        if n <= 0:
            return 0.0
        self._refill()
        self._tokens -= n  # a debt, if negative, that the wait pays
        return 0.0 if self._tokens >= 0 else -self._tokens / self.per_s

    def acquire(self, n: float) -> float:
        """Wait until ``n`` units may go; the seconds slept."""
        wait = self.delay(n)
        if wait > 0:
            self._sleep(wait)
            self.waited_s += wait
        return wait

    def try_acquire(self, n: float) -> bool:
        """Take ``n`` units if they may go now (a request above the burst, once the bucket
        is full), without waiting; False takes nothing. For a loop that must not sleep."""
        if n <= 0:
            return True
        self._refill()
        if self._tokens >= min(n, self.burst):
            self._tokens -= n  # above the burst: a debt the next requests wait out
            return True
        return False

    def wait_s(self, n: float) -> float:
        """Seconds until :meth:`try_acquire` (``n``) would succeed (0 if now)."""
        self._refill()
        need = min(n, self.burst) - self._tokens
        return max(0.0, need / self.per_s)
