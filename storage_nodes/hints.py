"""Hinted handoff: durable queues of line-protocol writes, one per InfluxDB server, on disk.

When a replica cannot take a write, the lines meant for it are appended to that server's
queue and replayed once it answers again (InfluxDB Enterprise's ``[hinted-handoff]``). One
queue per server, so one slow server never holds up the others' replay. Each queue is bounded
by bytes and by age; what a bound drops is counted and logged.

Layout of one queue (the target's own folder, mode 0700)::

    0000000000000001.seg   segments: records appended in order, never rewritten
    0000000000000002.seg   (the last one is the one appended to)
    cursor.json            {"segment": seq, "offset": n}: the next record not yet delivered
    lock                   flock()ed while a HintQueue has the folder open

A record is a fixed header, ``struct.pack("<4sIIqI", b"VHNT", payload_len, crc32(payload),
created_ms, point_count)`` (24 bytes, little-endian), then the payload,
``"\\n".join(lines).encode("utf-8")``. A line-protocol line never holds a newline, so
``point_count`` is always the payload's newline count + 1; a record whose count disagrees is
corrupt like one whose CRC does. ``created_ms`` is the queue's clock at append (epoch ms).
Segments are named ``f"{seq:016d}.seg"``; a new one is started once the last reaches
``segment_bytes``, so a segment can exceed it by one record.

Crash safety (a SIGKILL at any moment loses no hint whose ``append()`` returned and never
makes the queue unreadable; a power cut loses nothing that was fsynced):

- ``append`` writes the whole record at the end of the valid data and fsyncs the file before
  it returns; a new segment's folder entry is fsynced before the first record goes in. A
  record cut short by a crash is a torn tail: on open, the last segment is scanned and cut
  back to its last whole, intact record (logged once, with the byte count).
- A corrupt record inside an older segment (a disk fault, not a crash) ends that segment: the
  rest of it is skipped, logged once, and the points found in it counted as dropped.
- ``commit`` replaces the cursor atomically (:func:`vigil.atomic.write_atomic`) before it
  deletes the segments it consumed; segments left behind the cursor by a crash are deleted
  on the next open. Delivery is at least once: a batch read but not committed is read again,
  after a restart too (InfluxDB stores a point written twice once).

Bounds drop whole segments, never part of one: while the unconsumed bytes exceed
``max_bytes`` the oldest segment goes, and any segment whose newest record is older than
``max_age_s`` goes. The segment being appended to goes too if it alone breaks a bound; the
next append starts a fresh one.

Threads: one thread appends while another reads, commits, enforces bounds and takes stats.
One lock per queue guards its state and is held across that queue's own writes and fsyncs
(so a ``read`` waits at most for one append's fsync), never across another queue's. Counts,
bytes and ages are kept per segment in memory: ``stats`` and the bounds cost O(segments).
One process at a time may open a folder (the ``lock`` file); a second open raises OSError.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import struct
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

from vigil.atomic import write_atomic
from vigil.names import check_name, is_name

log = logging.getLogger(__name__)

MAGIC = b"VHNT"
HEADER = struct.Struct("<4sIIqI")  # magic, payload_len, crc32(payload), created_ms, point_count
MAX_PAYLOAD = 2**32 - 1
CURSOR_FILE = "cursor.json"
LOCK_FILE = "lock"
DEFAULT_SEGMENT_BYTES = 8 * 1024 * 1024
_SEGMENT_NAME = re.compile(r"(\d{16})\.seg")


@dataclass(frozen=True, slots=True)
class HintBatch:
    """Whole records from a queue's cursor, in append order. Hand it back to
    :meth:`HintQueue.commit` once the target has stored ``lines``."""

    lines: list[str]  # line-protocol lines, in append order
    points: int  # == len(lines)
    oldest_ms: int  # created_ms of the first record in the batch
    _end: tuple[int, int]  # (segment seq, offset) just past the batch's last record


@dataclass(frozen=True, slots=True)
class HintStats:
    points: int  # points queued (not yet committed)
    bytes: int  # bytes of unconsumed records on disk (0 when empty)
    oldest_age_s: float  # age of the next hint to deliver, 0.0 if empty
    dropped_points: int  # points dropped (bounds, corruption) since this queue was opened


@dataclass(slots=True)
class _Segment:
    """What a queue knows of one segment file without reading it."""

    seq: int
    start: int  # offset of the first unconsumed record (0 except in the oldest segment)
    end: int  # offset just past the last valid record: reads stop and appends write here
    points: int  # points in [start, end)
    oldest_ms: int  # created_ms of the record at ``start`` (unused when start == end)
    newest_ms: int  # the largest created_ms of the records in [start, end)

    @property
    def unconsumed(self) -> int:
        return self.end - self.start


class _Record(NamedTuple):
    created_ms: int
    points: int
    payload: bytes
    size: int  # header and payload


class _ReadMemo(NamedTuple):
    """The last batch ``read`` returned: lets ``commit`` skip counting its points again."""

    start: tuple[int, int]  # the queue's position when it was read
    end: tuple[int, int]
    last_points: int  # points of the batch in segment ``end[0]``


def encode_record(lines: Sequence[str], created_ms: int) -> bytes:
    """One record: header and payload (see the module docstring)."""
    payload = "\n".join(lines).encode("utf-8")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"a hint record holds at most {MAX_PAYLOAD} bytes, not {len(payload)}")
    header = HEADER.pack(MAGIC, len(payload), zlib.crc32(payload), created_ms, len(lines))
    return header + payload


def _read_record(f: BinaryIO, offset: int, limit: int) -> _Record | None:
    """The record at ``offset`` (where ``f`` is positioned) if it is whole, ends by ``limit``
    and is intact; None otherwise (the position of ``f`` is then undefined)."""
    header = f.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    magic, length, crc, created_ms, points = HEADER.unpack(header)
    size = HEADER.size + length
    if magic != MAGIC or offset + size > limit:
        return None
    payload = f.read(length)
    if len(payload) < length or zlib.crc32(payload) != crc or payload.count(b"\n") + 1 != points:
        return None
    return _Record(created_ms, points, payload, size)


def _points_from(f: BinaryIO, offset: int, size: int) -> int:
    """Points that can still be told apart from ``offset`` on, where the record is bad: the
    bad record's own count if its header is whole and it fits in the file, then the intact
    records after it. A torn record (one that does not fit) counts 0."""
    f.seek(offset)
    header = f.read(HEADER.size)
    if len(header) < HEADER.size:
        return 0
    magic, length, _, _, points = HEADER.unpack(header)
    offset += HEADER.size + length
    if magic != MAGIC or offset > size:
        return 0
    total = int(points)
    f.seek(offset)
    while (record := _read_record(f, offset, size)) is not None:
        total += record.points
        offset += record.size
    return total


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.EIO, "pwrite wrote nothing")
        view, offset = view[n:], offset + n


class HintQueue:
    """The hints for one target server, in ``directory`` (created with mode 0700)."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        max_age_s: float,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open (or create) the queue: find its segments, read the cursor and scan what is
        after it, cutting a torn tail off the last segment. OSError if the folder cannot be
        used or another HintQueue has it open."""
        if max_bytes < 1 or segment_bytes < 1 or not max_age_s > 0:
            raise ValueError(
                f"max_bytes ({max_bytes}), segment_bytes ({segment_bytes}) and max_age_s "
                f"({max_age_s}) must be positive"
            )
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.segment_bytes = segment_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []  # by seq; the last is the one appended to
        self._fd: int | None = None  # write descriptor of self._segments[-1], opened lazily
        self._roll = False  # the next append starts a new segment
        self._dropped = 0
        self._closed = False
        self._memo: _ReadMemo | None = None
        self._lock_fd = self._take_folder()
        try:
            self._load()
        except BaseException:
            os.close(self._lock_fd)
            raise

    # -- opening ----------------------------------------------------------------------
    def _take_folder(self) -> int:
        if not self.directory.is_dir():
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            _fsync_dir(self.directory.parent)
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            os.close(fd)
            raise OSError(
                errno.EBUSY, f"hint queue {self.directory} is open elsewhere", str(self.directory)
            ) from e
        return fd

    def _load(self) -> None:
        for stale in self.directory.glob(f".{CURSOR_FILE}.*.tmp"):  # write_atomic, killed
            with contextlib.suppress(OSError):
                stale.unlink()
        cursor = self._load_cursor()
        seqs = sorted(
            int(m[1]) for p in self.directory.iterdir() if (m := _SEGMENT_NAME.fullmatch(p.name))
        )
        # Past the cursor's segment too: a segment is never reused while a cursor names it.
        self._next_seq = max([cursor[0] + 1, *(s + 1 for s in seqs)])
        for seq in seqs:
            last = seq == seqs[-1]
            if seq < cursor[0]:  # consumed; a crash came between the cursor and the delete
                self._unlink(seq)
                continue
            segment = self._scan(seq, cursor[1] if seq == cursor[0] else 0, last=last)
            if segment.unconsumed == 0 and not last:
                self._unlink(seq)
                continue
            self._segments.append(segment)

    def _load_cursor(self) -> tuple[int, int]:
        path = self.directory / CURSOR_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return (0, 0)
        try:
            data = json.loads(raw)
            seq, offset = data["segment"], data["offset"]
            if not all(type(v) is int and v >= 0 for v in (seq, offset)):
                raise ValueError("not two counts")
        except (ValueError, KeyError, TypeError) as e:
            log.warning("%s is unreadable (%s): replaying every segment from its start", path, e)
            return (0, 0)
        return (seq, offset)

    def _scan(self, seq: int, cursor_offset: int, *, last: bool) -> _Segment:
        """The segment's metadata from ``cursor_offset`` on; a bad record ends it (and is cut
        off the file if this is the last segment)."""
        path = self._path(seq)
        with path.open("r+b" if last else "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start = self._boundary(f, path, cursor_offset, size) if cursor_offset else 0
            segment = _Segment(seq, start, start, 0, 0, 0)
            offset = start
            f.seek(offset)
            while (record := _read_record(f, offset, size)) is not None:
                if not segment.points:
                    segment.oldest_ms = record.created_ms
                segment.points += record.points
                segment.newest_ms = max(segment.newest_ms, record.created_ms)
                offset += record.size
            segment.end = offset
            if offset < size:
                lost = _points_from(f, offset, size)
                self._dropped += lost
                if last:
                    f.truncate(offset)
                    f.flush()
                    os.fsync(f.fileno())
                    log.warning(
                        "%s: cut off a torn or corrupt tail of %d byte(s) at offset %d "
                        "(%d whole point(s) in it)",
                        path,
                        size - offset,
                        offset,
                        lost,
                    )
                else:
                    log.warning(
                        "%s: corrupt record at offset %d; skipped the rest of the segment "
                        "(%d byte(s), %d point(s) dropped)",
                        path,
                        offset,
                        size - offset,
                        lost,
                    )
        return segment

    @staticmethod
    def _boundary(f: BinaryIO, path: Path, cursor_offset: int, size: int) -> int:
        """Where reading resumes for a cursor at ``cursor_offset``: the cursor itself when a
        walk over the record headers lands on it, the last record start before it when the
        cursor points inside a record (replayed), the end of the data when the file is
        shorter than the cursor."""
        offset = 0
        while offset < cursor_offset:
            f.seek(offset)
            header = f.read(HEADER.size)
            if len(header) < HEADER.size:
                return offset  # the data ends before the cursor
            magic, length, *_ = HEADER.unpack(header)
            if magic != MAGIC:
                return min(cursor_offset, size)  # a damaged consumed record: trust the cursor
            following = offset + HEADER.size + length
            if following > cursor_offset:
                if following <= size:
                    log.warning(
                        "%s: cursor offset %d is inside a record; replaying from offset %d",
                        path,
                        cursor_offset,
                        offset,
                    )
                return offset
            offset = following
        return offset

    # -- the queue --------------------------------------------------------------------
    def append(self, lines: Sequence[str]) -> None:
        """Queue ``lines`` as one record, on disk (fsynced) when this returns. Empty
        ``lines`` is a no-op; a line holding a newline is a ValueError; OSError if the disk
        fails (nothing is queued then)."""
        if isinstance(lines, str):
            raise TypeError("append() takes a sequence of lines, not one str")
        if not lines:
            return
        if any("\n" in line for line in lines):
            raise ValueError("a line-protocol line holds no newline")
        with self._lock:
            self._check_open()
            created_ms = int(self._clock() * 1000)
            record = encode_record(lines, created_ms)
            segment, fd = self._writable()
            try:
                _pwrite_all(fd, record, segment.end)
                os.fsync(fd)
            except OSError:
                # Cut what may have been written and take no more appends into this file:
                # after a failed fsync the kernel may have dropped the pages unwritten.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, segment.end)
                self._close_fd()
                self._roll = True
                raise
            if not segment.unconsumed:
                segment.oldest_ms = created_ms
            segment.end += len(record)
            segment.points += len(lines)
            segment.newest_ms = max(segment.newest_ms, created_ms)
            self._enforce_bounds()

    def read(self, max_points: int) -> HintBatch | None:
        """The next whole records, up to ``max_points`` points (but at least one record),
        without consuming them; None when the queue is empty."""
        if max_points < 1:
            raise ValueError(f"max_points must be at least 1, not {max_points}")
        with self._lock:
            self._check_open()
            start = self._position()
            lines: list[str] = []
            oldest_ms = 0
            end = start
            last_points = 0
            for segment in list(self._segments):
                if not segment.unconsumed:
                    continue
                first = not lines
                points, offset, full = self._read_into(segment, lines, max_points)
                if points:
                    if first:
                        oldest_ms = segment.oldest_ms
                    end, last_points = (segment.seq, offset), points
                if full:
                    break
            if not lines:
                return None
            self._memo = _ReadMemo(start, end, last_points)
            return HintBatch(lines, len(lines), oldest_ms, end)

    def _read_into(
        self, segment: _Segment, lines: list[str], max_points: int
    ) -> tuple[int, int, bool]:
        """Add the segment's records to ``lines`` while they fit in ``max_points``: the
        points taken, the offset just past the last record taken, and whether a record was
        left for lack of room."""
        offset = segment.start
        taken = 0
        try:
            f = self._path(segment.seq).open("rb")
        except FileNotFoundError:
            self._cut(segment, segment.start, 0, "is missing")
            return 0, offset, False
        with f:
            f.seek(offset)
            while offset < segment.end:
                record = _read_record(f, offset, segment.end)
                text = None
                if record is not None:
                    with contextlib.suppress(UnicodeDecodeError):
                        text = record.payload.decode("utf-8")
                if record is None or text is None:
                    self._cut(segment, offset, taken, f"has a corrupt record at offset {offset}")
                    break
                if lines and len(lines) + record.points > max_points:
                    return taken, offset, True
                lines.extend(text.split("\n"))
                taken += record.points
                offset += record.size
        return taken, offset, False

    def _cut(self, segment: _Segment, offset: int, points_kept: int, why: str) -> None:
        """A segment found damaged while reading: it ends at ``offset`` from now on."""
        lost = segment.points - points_kept
        log.warning(
            "%s %s; dropped the rest of the segment (%d point(s))",
            self._path(segment.seq),
            why,
            lost,
        )
        self._dropped += lost
        segment.end, segment.points = offset, points_kept
        if segment is self._segments[-1]:  # appends continue in a new file
            self._close_fd()
            self._roll = True

    def commit(self, batch: HintBatch) -> None:
        """Consume ``batch``: move the cursor past it and delete the segments now consumed.
        A batch already consumed, or dropped by a bound meanwhile, is a no-op."""
        end = batch._end
        with self._lock:
            self._check_open()
            if end <= self._position():
                return
            before = [s for s in self._segments if s.seq < end[0]]
            target = next((s for s in self._segments if s.seq == end[0]), None)
            consumed = next_oldest = 0
            if target is not None:
                if end[1] > target.end:
                    raise ValueError(f"batch ends at {end}, past the end of that segment")
                consumed = self._points_until(target, end[1])
                next_oldest = self._created_ms_at(target, end[1])
            write_atomic(
                self.directory / CURSOR_FILE,
                json.dumps({"segment": end[0], "offset": end[1]}) + "\n",
            )
            for segment in before:
                segment.start, segment.points = segment.end, 0
            if target is not None:
                target.start = end[1]
                target.points -= consumed
                target.oldest_ms = next_oldest
            self._memo = None
            self._delete_consumed()

    def _points_until(self, segment: _Segment, offset: int) -> int:
        """Points in ``segment`` from its start to ``offset``."""
        memo = self._memo
        if (
            memo is not None
            and memo.end == (segment.seq, offset)
            and memo.start == (self._position())
        ):
            return memo.last_points
        points, at = 0, segment.start
        with self._path(segment.seq).open("rb") as f:
            while at < offset:
                f.seek(at)
                header = f.read(HEADER.size)
                if len(header) < HEADER.size:
                    break
                magic, length, _, _, count = HEADER.unpack(header)
                if magic != MAGIC:
                    break
                points, at = points + count, at + HEADER.size + length
        if at != offset:
            raise ValueError(f"batch does not end on a record of {self._path(segment.seq)}")
        return points

    def _created_ms_at(self, segment: _Segment, offset: int) -> int:
        if offset >= segment.end:
            return 0
        with self._path(segment.seq).open("rb") as f:
            f.seek(offset)
            header = f.read(HEADER.size)
        if len(header) == HEADER.size:
            magic, _, _, created_ms, _ = HEADER.unpack(header)
            if magic == MAGIC:
                return int(created_ms)
        return segment.newest_ms  # read() will find the damage

    def enforce_bounds(self) -> int:
        """Drop whole segments that break a bound; the points dropped."""
        with self._lock:
            self._check_open()
            return self._enforce_bounds()

    def _enforce_bounds(self) -> int:
        cutoff_ms = (self._clock() - self.max_age_s) * 1000
        total = sum(s.unconsumed for s in self._segments)
        points = segments = 0
        bounds: list[str] = []
        for segment in list(self._segments):
            expired = segment.points > 0 and segment.newest_ms < cutoff_ms
            over = total > self.max_bytes  # segments go oldest first
            if not (expired or over):
                continue
            bound = f"max_bytes={self.max_bytes}" if over else f"max_age_s={self.max_age_s:g}"
            if bound not in bounds:
                bounds.append(bound)
            total -= segment.unconsumed
            points += segment.points
            segments += 1
            self._drop(segment)
        if points:
            log.warning(
                "hints for %s: dropped %d point(s) in %d segment(s) (%s)",
                self.directory,
                points,
                segments,
                ", ".join(bounds),
            )
        self._dropped += points
        return points

    def stats(self) -> HintStats:
        """Counts of what is queued (also after close)."""
        with self._lock:
            head = next((s for s in self._segments if s.points), None)
            age = 0.0 if head is None else max(0.0, self._clock() - head.oldest_ms / 1000)
            return HintStats(
                points=sum(s.points for s in self._segments),
                bytes=sum(s.unconsumed for s in self._segments),
                oldest_age_s=age,
                dropped_points=self._dropped,
            )

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_fd()
            os.close(self._lock_fd)

    # -- segments ---------------------------------------------------------------------
    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:016d}.seg"

    def _position(self) -> tuple[int, int]:
        """Where the next unconsumed record is (or will be)."""
        if self._segments:
            return (self._segments[0].seq, self._segments[0].start)
        return (self._next_seq, 0)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"hint queue {self.directory} is closed")

    def _writable(self) -> tuple[_Segment, int]:
        """The segment to append to and its write descriptor, starting a new one if due."""
        last = self._segments[-1] if self._segments else None
        if last is None or self._roll or last.end >= self.segment_bytes:
            return self._new_segment()
        if self._fd is None:
            self._fd = os.open(self._path(last.seq), os.O_WRONLY | os.O_CLOEXEC)
        return last, self._fd

    def _new_segment(self) -> tuple[_Segment, int]:
        self._close_fd()
        seq = self._next_seq
        self._next_seq += 1  # even if this fails: the next try takes a fresh name
        path = self._path(seq)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        previous = self._segments[-1] if self._segments else None
        if previous is not None and not previous.unconsumed:
            self._segments.pop()
            self._unlink(previous.seq)
        segment = _Segment(seq, 0, 0, 0, 0, 0)
        self._segments.append(segment)
        self._fd, self._roll = fd, False
        return segment, fd

    def _delete_consumed(self) -> None:
        """Delete consumed segments; the last only if it is full (the next append would
        start a new one anyway)."""
        for segment in list(self._segments):
            last = segment is self._segments[-1]
            if segment.unconsumed or (last and segment.end < self.segment_bytes):
                continue
            if last:
                self._close_fd()
            self._segments.remove(segment)
            self._unlink(segment.seq)

    def _drop(self, segment: _Segment) -> None:
        if segment is self._segments[-1]:
            self._close_fd()
            self._roll = True
        self._segments.remove(segment)
        self._unlink(segment.seq)

    def _unlink(self, seq: int) -> None:
        try:
            self._path(seq).unlink(missing_ok=True)
        except OSError as e:
            log.warning("could not delete hint segment %s: %s", self._path(seq), e)

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


class HintStore:
    """One :class:`HintQueue` per target server name under ``root/<name>/``; the bounds
    apply to each queue. The queues already on disk are opened at once."""

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int,
        max_age_s: float,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.segment_bytes = segment_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._queues: dict[str, HintQueue] = {}
        self._closed = False
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            for name in self._on_disk():
                self._queues[name] = self._open(name)
        except BaseException:
            self.close()
            raise

    def _on_disk(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if is_name(p.name) and p.is_dir())

    def _open(self, name: str) -> HintQueue:
        return HintQueue(
            self.root / name,
            max_bytes=self.max_bytes,
            max_age_s=self.max_age_s,
            segment_bytes=self.segment_bytes,
            clock=self._clock,
        )

    def queue(self, target: str) -> HintQueue:
        """The queue of server ``target`` (a name), opened on first use."""
        check_name(target, "hint target")
        with self._lock:
            if self._closed:
                raise ValueError(f"hint store {self.root} is closed")
            queue = self._queues.get(target)
            if queue is None:
                queue = self._queues[target] = self._open(target)
            return queue

    def targets(self) -> list[str]:
        """The servers that have a queue, open or on disk."""
        with self._lock:
            names = set(self._queues)
        return sorted(names.union(self._on_disk()))

    def stats(self) -> dict[str, HintStats]:
        with self._lock:
            queues = list(self._queues.items())
        return {name: queue.stats() for name, queue in queues}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            queues = list(self._queues.values())
        for queue in queues:
            queue.close()
