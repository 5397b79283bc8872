"""storage_nodes.hints: durable per-server hint queues survive reopen, torn tails, corruption
and SIGKILL, keep append order across segments, and bound themselves by bytes and age."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage_nodes.hints import CURSOR_FILE, HEADER, HintQueue, HintStore, encode_record
from vigil.names import InvalidName

ROOT = Path(__file__).resolve().parent.parent
BIG = 10**12  # a bound never reached


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def lines_of(n: int, width: int = 1) -> list[str]:
    """Record n: ``width`` distinct lines, all of one length."""
    return [f"m,rec={n:04d} v={j}i {n * 100 + j:08d}" for j in range(width)]


def open_queue(path: Path, **kw) -> HintQueue:
    kw.setdefault("max_bytes", BIG)
    kw.setdefault("max_age_s", 1e9)
    return HintQueue(path, **kw)


def drain(q: HintQueue, max_points: int = 1_000_000) -> list[str]:
    out: list[str] = []
    while (batch := q.read(max_points)) is not None:
        out += batch.lines
        q.commit(batch)
    return out


def segments(path: Path) -> list[str]:
    return sorted(p.name for p in path.glob("*.seg"))


# -- order, reopen, replay --------------------------------------------------------------
def test_append_read_commit_keep_order_across_segment_rotations(tmp_path):
    q = open_queue(tmp_path / "q", segment_bytes=120)
    expected: list[str] = []
    for n in range(40):
        q.append(lines_of(n, 1 + n % 3))
        expected += lines_of(n, 1 + n % 3)
    assert len(segments(tmp_path / "q")) > 10
    got: list[str] = []
    while (batch := q.read(4)) is not None:
        assert batch.points == len(batch.lines)
        assert batch.points <= 4
        got += batch.lines
        q.commit(batch)
    assert got == expected
    assert len(segments(tmp_path / "q")) <= 1  # consumed segments are deleted
    s = q.stats()
    assert (s.points, s.bytes, s.oldest_age_s) == (0, 0, 0.0)
    q.append(["after"])
    assert q.read(10).lines == ["after"]
    q.close()


def test_read_takes_whole_records_and_at_least_one(tmp_path):
    q = open_queue(tmp_path / "q")
    q.append(lines_of(0, 5))
    q.append(lines_of(1, 2))
    q.append(lines_of(2, 2))
    first = q.read(3)  # one record of 5 > 3: still returned, alone
    assert first.lines == lines_of(0, 5)
    q.commit(first)
    both = q.read(4)
    assert both.lines == lines_of(1, 2) + lines_of(2, 2)
    assert q.read(3).lines == lines_of(1, 2)  # stops before the record that would exceed 3
    with pytest.raises(ValueError):
        q.read(0)
    q.close()


def test_read_without_commit_returns_the_same_batch(tmp_path):
    clock = Clock()
    q = open_queue(tmp_path / "q", clock=clock)
    q.append(lines_of(0))
    clock.t += 5
    q.append(lines_of(1))
    a, b = q.read(10), q.read(10)
    assert a == b
    assert a.oldest_ms == int((clock.t - 5) * 1000)
    q.close()


def test_reopen_keeps_exactly_the_uncommitted_hints(tmp_path):
    path = tmp_path / "q"
    q = open_queue(path, segment_bytes=100)
    for n in range(20):
        q.append(lines_of(n, 2))
    for _ in range(3):
        q.commit(q.read(5))  # records of 2 points: two per batch
    q.close()
    q = open_queue(path, segment_bytes=100)
    assert q.stats().points == (20 - 6) * 2
    assert drain(q) == [line for n in range(6, 20) for line in lines_of(n, 2)]
    q.close()


def test_reopen_after_an_uncommitted_read_replays_the_batch(tmp_path):
    path = tmp_path / "q"
    q = open_queue(path, segment_bytes=64)
    for n in range(6):
        q.append(lines_of(n))
    q.commit(q.read(2))
    pending = q.read(3)
    q.close()  # "crash" before the commit
    q = open_queue(path, segment_bytes=64)
    again = q.read(3)
    assert again.lines == pending.lines == [line for n in (2, 3, 4) for line in lines_of(n)]
    q.commit(pending)  # the old batch still names the same place on disk
    assert q.read(10).lines == lines_of(5)
    q.close()


def test_empty_append_is_a_noop_and_bad_lines_are_refused(tmp_path):
    q = open_queue(tmp_path / "q")
    q.append([])
    assert q.read(10) is None
    assert segments(tmp_path / "q") == []
    with pytest.raises(ValueError, match="newline"):
        q.append(["a 1", "b\nc 2"])
    with pytest.raises(TypeError):
        q.append("one line")
    assert q.read(10) is None
    q.close()
    with pytest.raises(ValueError, match="closed"):
        q.append(["x"])


def test_folder_is_private_and_opened_by_one_queue_at_a_time(tmp_path):
    path = tmp_path / "hints" / "node-1"
    q = open_queue(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    q.append(["x 1"])
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in path.glob("*.seg"))
    with pytest.raises(OSError, match="open elsewhere"):
        open_queue(path)
    q.close()
    open_queue(path).close()


def test_an_unreadable_cursor_replays_from_the_start(tmp_path, caplog):
    path = tmp_path / "q"
    q = open_queue(path)
    for n in range(3):
        q.append(lines_of(n))
    q.commit(q.read(1))
    q.close()
    (path / CURSOR_FILE).write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="storage_nodes.hints"):
        q = open_queue(path)
    assert "unreadable" in caplog.text
    assert drain(q) == [line for n in range(3) for line in lines_of(n)]  # at least once
    q.close()


# -- torn tails and corruption ----------------------------------------------------------
def _write_records(path: Path, count: int, **kw) -> list[int]:
    """Append ``count`` one-line records; the byte offset where each one starts."""
    q = open_queue(path, **kw)
    offsets = []
    for n in range(count):
        offsets.append(q.stats().bytes)
        q.append(lines_of(n))
    q.close()
    return offsets


def test_a_torn_tail_at_any_byte_loses_only_the_torn_record(tmp_path, caplog):
    pristine = tmp_path / "pristine"
    starts = _write_records(pristine, 4)
    [seg] = segments(pristine)
    data = (pristine / seg).read_bytes()
    last = starts[-1]
    assert len(data) - last == HEADER.size + len(lines_of(3)[0])
    for cut in range(last, len(data)):
        path = tmp_path / f"cut{cut}"
        path.mkdir()
        (path / seg).write_bytes(data[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="storage_nodes.hints"):
            q = open_queue(path)
        warnings = [r.getMessage() for r in caplog.records]
        if cut == last:
            assert warnings == []
        else:
            assert len(warnings) == 1
            assert f"{cut - last} byte(s)" in warnings[0]
        assert (path / seg).stat().st_size == last  # cut back to the whole records
        q.append(["new 1"])
        expected = [line for n in range(3) for line in lines_of(n)] + ["new 1"]
        assert drain(q) == expected, cut
        q.close()


@pytest.mark.parametrize(
    "garbage",
    [b"\x00", b"garbage\n", b"VHNT", b"VHNT" + b"\xff" * 40, encode_record(["x 1"], 5)[:-1]],
)
def test_garbage_after_the_last_record_is_cut_off(tmp_path, garbage):
    path = tmp_path / "q"
    _write_records(path, 3)
    [seg] = segments(path)
    with (path / seg).open("ab") as f:
        f.write(garbage)
    q = open_queue(path)
    assert q.stats().points == 3
    q.append(lines_of(9))
    assert drain(q) == [line for n in (0, 1, 2, 9) for line in lines_of(n)]
    q.close()
    q = open_queue(path)  # and the file is whole again
    assert q.stats().dropped_points == 0
    q.close()


def test_a_flipped_payload_byte_drops_that_record_only(tmp_path, caplog):
    path = tmp_path / "q"
    starts = _write_records(path, 3)
    [seg] = segments(path)
    raw = bytearray((path / seg).read_bytes())
    raw[starts[-1] + HEADER.size + 2] ^= 0x01
    (path / seg).write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="storage_nodes.hints"):
        q = open_queue(path)
    assert "corrupt tail" in caplog.text
    assert q.stats().dropped_points == 1
    assert drain(q) == lines_of(0) + lines_of(1)
    q.close()


def test_a_corrupt_record_in_an_older_segment_ends_that_segment(tmp_path, caplog):
    path = tmp_path / "q"
    size = len(encode_record(lines_of(0), 0))
    q = open_queue(path, segment_bytes=3 * size)
    for n in range(9):
        q.append(lines_of(n))  # three records per segment
    q.close()
    first = path / segments(path)[0]
    assert first.stat().st_size == 3 * size
    raw = bytearray(first.read_bytes())
    raw[size + HEADER.size] ^= 0xFF  # record 1's payload
    first.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="storage_nodes.hints"):
        q = open_queue(path, segment_bytes=3 * size)
    assert len([r for r in caplog.records if "skipped the rest" in r.getMessage()]) == 1
    assert q.stats().dropped_points == 2  # record 1 and the intact record 2 after it
    assert drain(q) == [line for n in (0, 3, 4, 5, 6, 7, 8) for line in lines_of(n)]
    q.close()


def test_damage_found_while_reading_is_dropped_not_delivered(tmp_path, caplog):
    path = tmp_path / "q"
    q = open_queue(path, segment_bytes=3 * len(encode_record(lines_of(0), 0)))
    starts = []
    for n in range(6):
        starts.append(q.stats().bytes)
        q.append(lines_of(n))
    first = path / segments(path)[0]
    with first.open("r+b") as f:  # bit rot after open
        f.seek(starts[1] + HEADER.size + 1)
        f.write(b"#")
    with caplog.at_level(logging.WARNING, logger="storage_nodes.hints"):
        got = drain(q)
    assert got == [line for n in (0, 3, 4, 5) for line in lines_of(n)]
    assert q.stats().dropped_points == 2
    q.close()


# -- bounds -----------------------------------------------------------------------------
def test_max_bytes_drops_the_oldest_whole_segments(tmp_path, caplog):
    record = len(encode_record(lines_of(0), 0))
    q = open_queue(tmp_path / "q", max_bytes=5 * record, segment_bytes=2 * record)
    with caplog.at_level(logging.WARNING, logger="storage_nodes.hints"):
        for n in range(10):
            q.append(lines_of(n))
            assert q.stats().bytes <= 5 * record
    s = q.stats()
    assert s.points + s.dropped_points == 10
    assert s.dropped_points == 6  # segments of two records: 0-1, 2-3, 4-5 went
    assert "max_bytes" in caplog.text
    assert all("segment(s)" in r.getMessage() for r in caplog.records)
    assert drain(q) == [line for n in range(6, 10) for line in lines_of(n)]
    q.close()


def test_max_age_drops_expired_segments_and_the_active_one_too(tmp_path, caplog):
    clock = Clock()
    q = open_queue(tmp_path / "q", max_age_s=60, segment_bytes=1, clock=clock)
    for n in range(3):  # one record per segment, 20 s apart
        q.append(lines_of(n))
        clock.t += 20
    assert q.enforce_bounds() == 0  # newest of segment 0 is 60 s old: not yet older
    clock.t += 1
    with caplog.at_level(logging.WARNING, logger="storage_nodes.hints"):
        assert q.enforce_bounds() == 1
    assert "max_age_s=60" in caplog.text
    assert q.read(10).lines == lines_of(1) + lines_of(2)
    clock.t += 1_000
    assert q.enforce_bounds() == 2  # the segment appended to goes as well
    assert segments(tmp_path / "q") == []
    assert q.stats() == q.stats().__class__(0, 0, 0.0, 3)
    q.append(lines_of(7))  # into a fresh segment
    assert q.read(10).lines == lines_of(7)
    q.close()
    q = open_queue(tmp_path / "q", max_age_s=60, clock=clock)
    assert drain(q) == lines_of(7)
    q.close()


def test_committing_a_batch_dropped_meanwhile_is_harmless(tmp_path):
    clock = Clock()
    path = tmp_path / "q"
    q = open_queue(path, max_age_s=10, segment_bytes=1, clock=clock)
    for n in range(3):
        q.append(lines_of(n))
    stale = q.read(2)  # records 0 and 1, in two segments
    clock.t += 11
    q.append(lines_of(3))  # append enforces the bounds: 0, 1, 2 go
    assert q.stats().dropped_points == 3
    q.commit(stale)
    assert q.read(10).lines == lines_of(3)
    q.close()
    q = open_queue(path, max_age_s=10, segment_bytes=1, clock=clock)
    assert drain(q) == lines_of(3)  # the cursor did not move backwards
    q.close()


def test_commit_of_a_batch_partly_dropped_consumes_only_its_own_records(tmp_path):
    clock = Clock()
    record = len(encode_record(lines_of(0), 0))
    q = open_queue(tmp_path / "q", max_bytes=BIG, segment_bytes=2 * record, clock=clock)
    for n in range(6):
        q.append(lines_of(n))
    batch = q.read(3)  # records 0, 1 (segment 1) and 2 (segment 2)
    q.max_bytes = 4 * record
    assert q.enforce_bounds() == 2  # segment 1 goes
    q.commit(batch)
    assert q.stats().points == 3
    assert drain(q) == [line for n in (3, 4, 5) for line in lines_of(n)]
    q.close()


def test_stats(tmp_path):
    clock = Clock()
    q = open_queue(tmp_path / "q", clock=clock)
    assert q.stats() == q.stats().__class__(0, 0, 0.0, 0)
    q.append(lines_of(0, 3))
    clock.t += 2.5
    q.append(lines_of(1, 2))
    s = q.stats()
    assert s.points == 5
    assert s.bytes == len(encode_record(lines_of(0, 3), 0)) + len(encode_record(lines_of(1, 2), 0))
    assert s.oldest_age_s == pytest.approx(2.5)
    q.commit(q.read(3))
    clock.t += 1
    s = q.stats()
    assert (s.points, s.bytes) == (2, len(encode_record(lines_of(1, 2), 0)))
    assert s.oldest_age_s == pytest.approx(1.0)
    q.close()
    assert q.stats().points == 2  # still answers after close


# -- threads ----------------------------------------------------------------------------
def test_one_thread_appends_while_another_consumes(tmp_path):
    q = open_queue(tmp_path / "q", segment_bytes=256)
    total = 300
    done = threading.Event()

    def produce() -> None:
        for n in range(total):
            q.append(lines_of(n))
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    got: list[str] = []
    deadline = time.monotonic() + 30
    while len(got) < total and time.monotonic() < deadline:
        batch = q.read(7)
        if batch is None:
            done.wait(0.001)
            continue
        got += batch.lines
        q.commit(batch)
    producer.join()
    assert got == [lines_of(n)[0] for n in range(total)]
    assert q.stats().points == 0
    q.close()


# -- the store --------------------------------------------------------------------------
def test_store_keeps_one_queue_per_target_and_reopens_them(tmp_path):
    root = tmp_path / "hints"
    store = HintStore(root, max_bytes=BIG, max_age_s=1e9)
    assert store.targets() == []
    store.queue("node-2").append(["b 1"])
    store.queue("node-1").append(["a 1", "a 2"])
    assert store.queue("node-1") is store.queue("node-1")
    assert store.targets() == ["node-1", "node-2"]
    assert {n: s.points for n, s in store.stats().items()} == {"node-1": 2, "node-2": 1}
    for bad in ["", "../x", "a/b", ".hidden", "x" * 65]:
        with pytest.raises(InvalidName):
            store.queue(bad)
    store.close()
    (root / "not a name").mkdir()
    store = HintStore(root, max_bytes=BIG, max_age_s=1e9)
    assert store.targets() == ["node-1", "node-2"]
    assert store.queue("node-1").read(10).lines == ["a 1", "a 2"]
    assert set(store.stats()) == {"node-1", "node-2"}  # opened at init
    store.close()
    with pytest.raises(ValueError, match="closed"):
        store.queue("node-1")


# -- against a model --------------------------------------------------------------------
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 4)),
        st.tuples(st.just("read"), st.integers(1, 6)),
        st.tuples(st.just("commit"), st.just(0)),
        st.tuples(st.just("reopen"), st.just(0)),
    ),
    max_size=40,
)
_examples = itertools.count()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_ops, segment_bytes=st.sampled_from([1, 60, 200, 10_000]))
def test_queue_matches_a_model(tmp_path, ops, segment_bytes):
    path = tmp_path / f"ex{next(_examples)}"
    q = open_queue(path, segment_bytes=segment_bytes)
    model: list[list[str]] = []  # queued records, oldest first
    pending = None  # (batch, records it holds)
    serial = itertools.count()
    try:
        for op, arg in ops:
            if op == "append":
                record = [f"m,n={next(serial)} v=1i" for _ in range(arg)]
                q.append(record)
                if record:
                    model.append(record)
            elif op == "read":
                batch = q.read(arg)
                if not model:
                    assert batch is None
                    continue
                take, points = 0, 0
                while take < len(model) and (take == 0 or points + len(model[take]) <= arg):
                    points += len(model[take])
                    take += 1
                assert batch.lines == [line for r in model[:take] for line in r]
                pending = (batch, take)
            elif op == "commit" and pending is not None:
                q.commit(pending[0])
                del model[: pending[1]]
                pending = None
            elif op == "reopen":
                q.close()
                q = open_queue(path, segment_bytes=segment_bytes)
            s = q.stats()
            assert s.points == sum(len(r) for r in model)
            assert (s.bytes == 0) == (not model)
        assert drain(q, 3) == [line for r in model for line in r]
    finally:
        q.close()


# -- a real crash -----------------------------------------------------------------------
CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from storage_nodes.hints import HintQueue

    q = HintQueue(Path(sys.argv[1]), max_bytes=10**12, max_age_s=1e9, segment_bytes=256)
    n = 0
    while True:
        q.append([f"m,n={n} v={j}i" for j in range(1 + n % 4)])
        print(n, flush=True)
        n += 1
    """
)


def test_sigkill_while_appending_loses_nothing_acknowledged(tmp_path):
    path = tmp_path / "q"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.stdout is not None
    reported: list[bytes] = []
    try:
        reported.append(child.stdout.readline())  # it is appending
        killed_at = time.monotonic() + 0.3
        while time.monotonic() < killed_at:
            line = child.stdout.readline()
            if not line:
                break
            reported.append(line)
        child.send_signal(signal.SIGKILL)
        reported += child.stdout.readlines()
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    acked = [int(x) for x in reported if x.endswith(b"\n")]
    assert acked == list(range(len(acked)))
    assert acked, "the child appended nothing before it was killed"
    q = open_queue(path, segment_bytes=256)
    got = drain(q, 5)
    q.close()
    count = len(acked)
    if len(got) > sum(1 + n % 4 for n in range(count)):
        count += 1  # the record being appended when it died was written whole
    assert got == [f"m,n={n} v={j}i" for n in range(count) for j in range(1 + n % 4)]
