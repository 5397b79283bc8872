"""Capped exponential backoff with jitter, pure: the delay before retry number ``attempt``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    initial_s: float = 0.5
    cap_s: float = 15.0
    factor: float = 2.0
    #: Each delay is spread over ``±jitter`` of itself so that retries do not align.
    jitter: float = 0.2

    def delay(self, attempt: int, rand: float = 0.5) -> float:
        """Seconds to wait after the ``attempt``-th failure (1-based); ``rand`` in [0, 1)
        picks the jitter (0.5: none)."""
        base = min(self.cap_s, self.initial_s * self.factor ** max(0, attempt - 1))
        return min(self.cap_s, base * (1 + self.jitter * (2 * rand - 1)))
