"""The outbox keeps readings until acknowledged, with stable, consecutive, clock-seeded ids,
and what it committed survives the process being killed."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

import pytest

from edge_agent.outbox import CACHE_KIB, Outbox, OutboxError
from edge_agent.samples import Sample
from vigil.messages import MAX_ID, DeviceStatus

T0_US = 1_700_000_000_000_000  # 2023-11-14 in microseconds
TS_MS = 1_700_000_000_000


def samples(n: int) -> list[Sample]:
    return [Sample("sensor", f"m{i}", float(i), "C", {"room": "lab"}) for i in range(n)]


def test_ids_start_at_the_clock_and_are_consecutive_across_reopening(tmp_path):
    path = tmp_path / "sub" / "outbox.sqlite3"
    box = Outbox(path, "dev-1", now_us=T0_US)
    first = box.add(TS_MS, samples(3))
    box.close()
    box = Outbox(path, "dev-1", now_us=T0_US + 10**9)  # the seed is used only once
    second = box.add(TS_MS + 1000, samples(2))
    assert [r.id for r in first + second] == list(range(T0_US, T0_US + 5))
    assert box.first_id == T0_US and box.next_id == T0_US + 5
    assert all(r.id < 2**53 for r in first + second)


def test_a_fresh_outbox_on_a_reflashed_device_starts_above_the_old_ids(tmp_path):
    old = Outbox(tmp_path / "a.sqlite3", "dev-1", now_us=T0_US)
    old_ids = [r.id for r in old.add(TS_MS, samples(50))]
    new = Outbox(tmp_path / "b.sqlite3", "dev-1", now_us=T0_US + 60_000_000)  # a minute later
    assert new.add(TS_MS, samples(1))[0].id > max(old_ids)


def test_pending_returns_oldest_first_and_delete_forgets_only_acknowledged(tmp_path):
    box = Outbox(tmp_path / "o.sqlite3", "dev-1", now_us=T0_US)
    readings = box.add(TS_MS, samples(5))
    assert box.pending() == readings
    assert box.pending(after_id=readings[1].id, limit=2) == readings[2:4]
    assert box.delete([readings[0].id, readings[2].id, 12345]) == 2
    assert box.depth == 3
    assert [r.id for r in box.pending()] == [readings[i].id for i in (1, 3, 4)]
    got = box.pending()[0]
    assert (got.device, got.ts, got.kind, got.metric, got.unit, dict(got.tags)) == (
        "dev-1",
        TS_MS,
        "sensor",
        "m1",
        "C",
        {"room": "lab"},
    )


def test_committed_readings_are_visible_to_another_connection_in_wal_mode(tmp_path):
    path = tmp_path / "o.sqlite3"
    box = Outbox(path, "dev-1", now_us=T0_US)
    box.add(TS_MS, samples(2))
    with sqlite3.connect(path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 2


def test_the_page_cache_is_bounded_to_fit_the_agents_memory(tmp_path):
    box = Outbox(tmp_path / "o.sqlite3", "dev-1", now_us=T0_US)
    assert box._db.execute("PRAGMA cache_size").fetchone()[0] == -CACHE_KIB
    assert CACHE_KIB <= 512  # sqlite's default is 2 MiB, a twentieth of the agent's budget


def test_readings_survive_the_process_being_killed(tmp_path):
    path = tmp_path / "o.sqlite3"
    script = textwrap.dedent(f"""
        import os, signal
        from edge_agent.outbox import Outbox
        from edge_agent.samples import Sample
        box = Outbox({str(path)!r}, "dev-1", now_us={T0_US})
        for i in range(20):
            box.add({TS_MS} + i, [Sample("sensor", "t", float(i))])
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], timeout=30)
    assert proc.returncode == -9
    box = Outbox(path, "dev-1", now_us=T0_US + 10**9)
    assert [r.value for r in box.pending()] == [float(i) for i in range(20)]
    assert box.next_id == T0_US + 20


def test_an_outbox_belongs_to_one_device(tmp_path):
    Outbox(tmp_path / "o.sqlite3", "dev-1", now_us=T0_US).close()
    with pytest.raises(OutboxError, match="holds readings of device 'dev-1', not 'dev-2'"):
        Outbox(tmp_path / "o.sqlite3", "dev-2", now_us=T0_US)


def test_ids_never_reach_2_pow_53(tmp_path):
    with pytest.raises(OutboxError, match="cannot seed"):
        Outbox(tmp_path / "a.sqlite3", "dev-1", now_us=MAX_ID + 1)
    box = Outbox(tmp_path / "b.sqlite3", "dev-1", now_us=MAX_ID - 2)
    assert [r.id for r in box.add(TS_MS, samples(3))] == [MAX_ID - 2, MAX_ID - 1, MAX_ID]
    with pytest.raises(OutboxError, match="exhausted"):
        box.add(TS_MS, samples(1))
    assert box.depth == 3


def test_a_full_outbox_drops_its_oldest_and_remembers_what(tmp_path):
    box = Outbox(tmp_path / "o.sqlite3", "dev-1", now_us=1_000)
    box.add(1_000, [Sample("sensor", "t", float(i)) for i in range(100)])  # ids 1000..1099
    box.add(9_000, [Sample("sensor", "t", float(i)) for i in range(100)])  # ids 1100..1199
    size = box.size_bytes()
    # too old: the first round (taken at 1,000 ms) is past 5 s at 9,500 ms
    drops = box.trim(now_ms=9_500, max_age_ms=5_000, max_bytes=10 * size)
    assert [(d.reason, d.ranges) for d in drops] == [("age", [(1000, 1099)])]
    assert box.depth == 100 and box.dropped == (100, [(1000, 1099)])
    # full: the oldest go until 90 % of the bound is left
    drops = box.trim(now_ms=9_500, max_age_ms=10**9, max_bytes=size // 4)
    assert [d.reason for d in drops] == ["bytes"] and drops[0].ranges[0][0] == 1100
    assert box.size_bytes() <= 0.9 * (size // 4) and box.depth > 0
    kept = [r.id for r in box.pending(limit=1000)]
    assert kept == list(range(drops[0].ranges[-1][1] + 1, 1200))  # the newest are kept
    count, ranges = box.dropped
    assert count == 200 - box.depth and ranges == [(1000, drops[0].ranges[-1][1])]
    box.close()
    reopened = Outbox(tmp_path / "o.sqlite3", "dev-1", now_us=5)
    assert reopened.dropped == (count, ranges)  # it survives a restart
    reopened.close()


def test_a_status_shows_what_was_dropped():
    s = DeviceStatus("dev-1", "online", 5, "", 300, ((1, 100), (150, 349)))
    assert DeviceStatus.decode(s.encode()) == s
    assert "dropped" not in DeviceStatus("dev-1", "online", 5).encode().decode()
