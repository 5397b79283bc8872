"""Retrying with capped exponential backoff: the pure delay rule and a blocking loop.

Services retry what must not be given up on (a storage write, an alert publish, an email)
until it succeeds or the service stops; only the errors named as retriable are retried,
anything else propagates.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
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


def retry_until(
    action: Callable[[], object],
    errors: type[Exception] | tuple[type[Exception], ...],
    *,
    backoff: Backoff,
    on_error: Callable[[Exception, int], None],
    stop: threading.Event | None = None,
) -> int | None:
    """Run ``action`` until it returns; after each failure with one of ``errors``, call
    ``on_error(exc, failures)`` and wait ``backoff``. Returns how many attempts failed, or
    None when ``stop`` was set first (an error raised while stopping ends it too)."""
    failures = 0
    while True:
        try:
            action()
        except errors as exc:
            if stop is not None and stop.is_set():
                return None
            failures += 1
            on_error(exc, failures)
        else:
            return failures
        delay = backoff.delay(failures, random.random())
        if stop is None:
            time.sleep(delay)
        elif stop.wait(delay):
            return None


def retry(
    what: str,
    action: Callable[[], object],
    errors: type[Exception] | tuple[type[Exception], ...],
    *,
    backoff: Backoff,
    log: logging.Logger,
    stop: threading.Event | None = None,
    on_failure: Callable[[Exception], None] | None = None,
) -> bool:
    """The one retry loop of a service: ``action`` until it returns, waiting ``backoff``
    after each failure with one of ``errors``. The first failure is logged (``cannot
    {what}: ...; retrying``), as is the recovery; each failure is passed to
    ``on_failure`` (a metric). False if ``stop`` was set first."""

    def on_error(exc: Exception, failures: int) -> None:
        if on_failure is not None:
            on_failure(exc)
        if failures == 1:
            log.warning("cannot %s: %s; retrying (backoff up to %gs)", what, exc, backoff.cap_s)

    failures = retry_until(action, errors, backoff=backoff, on_error=on_error, stop=stop)
    if failures:
        log.info("managed to %s after %d failed attempt(s)", what, failures)
    return failures is not None
