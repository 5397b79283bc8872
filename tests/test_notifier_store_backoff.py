"""The notifier's sent-alert log, and the retry rule the services share (``vigil.retry``:
the backoff delays and the ``retry_until`` loop); no servers."""

from __future__ import annotations

import threading
import time

import pytest

from notifier.store import SentStore, now_ms
from vigil.retry import Backoff, retry_until


def test_a_sent_alert_is_remembered_per_state_across_restarts(tmp_path):
    path = tmp_path / "notifier" / "state.sqlite3"
    store = SentStore(path)
    assert not store.seen("a1", "firing")
    store.record("a1", "firing")
    store.record("a1", "firing")  # recording twice is harmless
    assert store.seen("a1", "firing") and not store.seen("a1", "resolved")
    store.close()
    reopened = SentStore(path)
    assert reopened.seen("a1", "firing") and reopened.count() == 1


def test_old_entries_are_pruned_at_start(tmp_path):
    store = SentStore(tmp_path / "s.sqlite3")
    store.record("old", "firing", sent_at=now_ms() - 100 * 86_400_000)
    store.record("new", "firing")
    store.close()
    reopened = SentStore(tmp_path / "s.sqlite3", keep_days=90)
    assert reopened.pruned == 1
    assert not reopened.seen("old", "firing") and reopened.seen("new", "firing")


def test_backoff_doubles_up_to_its_cap_and_jitters_within_bounds():
    b = Backoff(initial_s=0.5, cap_s=4.0, jitter=0.2)
    assert [b.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.delay(1, rand=0.0) == 0.4
    assert abs(b.delay(2, rand=0.999) - 1.2) < 0.01
    for n in range(1, 40):
        base = min(4.0, 0.5 * 2 ** (n - 1))
        for r in (0.0, 0.25, 0.5, 0.75, 0.999):
            assert base * (1 - 0.2) <= b.delay(n, r) <= min(4.0, base * (1 + 0.2)), (n, r)


# -- retry_until -------------------------------------------------------------------------
FAST = Backoff(initial_s=0.001, cap_s=0.002)


class Flaky:
    """An action failing with ``error`` its first ``failures`` calls, then succeeding."""

    def __init__(self, failures: int, error: type[Exception] = OSError) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"failure {self.calls}")


def test_retry_until_returns_how_many_attempts_failed_and_reports_each():
    reported: list[tuple[str, int]] = []
    action = Flaky(3)
    failures = retry_until(
        action,
        (ValueError, OSError),
        backoff=FAST,
        on_error=lambda e, n: reported.append((str(e), n)),
    )
    assert failures == 3 and action.calls == 4
    assert reported == [("failure 1", 1), ("failure 2", 2), ("failure 3", 3)]

    reported.clear()
    assert (
        retry_until(
            Flaky(0),
            OSError,
            backoff=FAST,
            on_error=lambda e, n: reported.append((str(e), n)),
            stop=threading.Event(),
        )
        == 0
    )
    assert reported == []


def test_retry_until_returns_none_when_stopped_during_the_wait():
    # Stopped right after the first failure: the wait ends it, the action is not run again.
    stop = threading.Event()
    action = Flaky(10)
    assert (
        retry_until(action, OSError, backoff=FAST, on_error=lambda e, n: stop.set(), stop=stop)
        is None
    )
    assert action.calls == 1

    # A long wait is cut short when stop is set from another thread.
    stop = threading.Event()
    action = Flaky(10)
    timer = threading.Timer(0.05, stop.set)
    started = time.monotonic()
    timer.start()
    try:
        result = retry_until(
            action,
            OSError,
            backoff=Backoff(initial_s=30, cap_s=30),
            on_error=lambda e, n: None,
            stop=stop,
        )
    finally:
        timer.cancel()
    assert result is None and action.calls == 1
    assert time.monotonic() - started < 5


def test_retry_until_lets_other_errors_through():
    reported: list[int] = []
    action = Flaky(1, error=KeyError)
    with pytest.raises(KeyError, match="failure 1"):
        retry_until(action, OSError, backoff=FAST, on_error=lambda e, n: reported.append(n))
    assert action.calls == 1 and reported == []


def test_an_error_raised_while_stopping_returns_none():
    stop = threading.Event()
    stop.set()
    reported: list[int] = []
    action = Flaky(1)
    assert (
        retry_until(
            action, OSError, backoff=FAST, on_error=lambda e, n: reported.append(n), stop=stop
        )
        is None
    )
    assert action.calls == 1 and reported == []
