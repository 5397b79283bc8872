"""The notifier's sent-alert log and its retry backoff (no servers)."""

from __future__ import annotations

from notifier.store import SentStore, now_ms
from vigil.retry import Backoff


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
    assert all(b.delay(n, r) <= 4.0 for n in range(1, 40) for r in (0.0, 0.5, 0.999))
