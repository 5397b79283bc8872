"""The outbox: every reading the agent takes, kept in SQLite until ingest confirms it stored.

A reading is committed here before it is published and deleted only when ingest confirms it
is stored (``{root}/ack/{device}``), not on the broker's PUBACK: a broker killed before it
persisted the message, or one with no consumer session yet, would otherwise lose it. So
neither a lost connection, nor a crash of the agent or the broker, loses it (at-least-once:
a reading stored but not yet confirmed is published again, with the same id, and storage
absorbs the repeat by point identity).

Durability: the database runs in WAL mode with ``synchronous=FULL``: a commit is fsynced
before ``commit`` returns, so it survives the agent process being killed (SIGKILL, crash,
OOM) and a power cut too. A round of readings is one transaction, so that is one fsync per
round, not per reading. ``NORMAL`` would be cheaper but a power cut could then roll back the
id sequence after its readings were published and acknowledged, and the next readings would
reuse those ids: the ingest service would drop them as duplicates.

Reading ids come from a persisted sequence. When an outbox is created the sequence starts at
the wall clock in microseconds, then goes +1 per reading: a re-flashed device with a fresh
outbox starts above every id it used before (unless it takes more than one reading per
microsecond on average, or its clock went back), and ids stay below 2**53 until the year
2255. The ids of one outbox are consecutive from :attr:`Outbox.first_id`.

Not thread-safe: one thread at a time (the agent's loop) uses it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from edge_agent.samples import Sample
from vigil.messages import MAX_ID, Kind, Reading, id_ranges, id_ranges_of
from vigil.sqlite import transaction

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS readings (
        id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, kind TEXT NOT NULL, metric TEXT NOT NULL,
        value REAL NOT NULL, unit TEXT NOT NULL, tags TEXT NOT NULL)""",
)


#: id ranges of dropped readings the outbox remembers (the latest; the count is kept in all)
KEEP_DROPPED_RANGES = 50
#: bytes a reading row costs beyond its text columns (ids, numbers, SQLite's overhead)
ROW_OVERHEAD = 40


@dataclass(frozen=True, slots=True)
class Dropped:
    """Readings the outbox dropped unsent in one trim."""

    reason: str  # "age" or "bytes"
    ids: list[int]

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return id_ranges(self.ids)


#: the outbox's sqlite page cache, KiB
CACHE_KIB = 256


class OutboxError(Exception):
    """An outbox that cannot be used: another device's, or out of ids."""


class Outbox:
    """The readings of one device not yet confirmed stored, oldest first."""

    def __init__(self, path: Path | str, device: str, *, now_us: int) -> None:
        """Open (or create) the outbox at ``path`` for ``device``; a new outbox seeds its id
        sequence with ``now_us`` (the wall clock in microseconds)."""
        self.path = path = Path(path)
        self.device = device
        path.parent.mkdir(parents=True, exist_ok=True)
        # One thread at a time (the agent's loop); it need not be the one that opened it.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        # sqlite's page cache grows to 2 MiB by default, most of an agent's memory budget
        # (docs/agent.md); the outbox is read at its head and written at its tail, so a small
        # cache costs nothing measurable (60k readings added, read and deleted: same time)
        self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        with self._tx():
            for stmt in SCHEMA:
                self._db.execute(stmt)
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                if not 1 <= now_us < MAX_ID:
                    raise OutboxError(f"{path}: cannot seed reading ids from {now_us}")
                meta = {"device": device, "first_id": str(now_us), "next_id": str(now_us)}
                self._db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        if meta["device"] != device:
            self._db.close()
            raise OutboxError(f"{path} holds readings of device {meta['device']!r}, not {device!r}")
        self.first_id = int(meta["first_id"])
        self._depth = int(self._db.execute("SELECT COUNT(*) FROM readings").fetchone()[0])

    def _tx(self) -> AbstractContextManager[None]:
        return transaction(self._db)

    @property
    def depth(self) -> int:
        """How many readings wait for their storage confirmation."""
        return self._depth

    def lowest_id(self) -> int:
        """The lowest id still in the outbox; its next id when it is empty. Every id below
        it has left: confirmed stored, or dropped."""
        row = self._db.execute("SELECT min(id) FROM readings").fetchone()
        return int(row[0]) if row and row[0] is not None else self.next_id

    @property
    def next_id(self) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key='next_id'").fetchone()[0])

    def add(self, ts_ms: int, samples: Sequence[Sample]) -> list[Reading]:
        """Give ``samples`` the next ids and time ``ts_ms``, commit them, return the readings."""
        if not samples:
            return []
        with self._tx():
            first = self.next_id
            if first + len(samples) - 1 > MAX_ID:
                raise OutboxError(f"{self.path}: reading ids exhausted (next {first})")
            readings = [
                Reading(
                    first + i, self.device, ts_ms, s.kind, s.metric, s.value, s.unit, dict(s.tags)
                )
                for i, s in enumerate(samples)
            ]
            self._db.executemany(
                "INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (r.id, r.ts, r.kind, r.metric, r.value, r.unit, json.dumps(r.tags))
                    for r in readings
                ],
            )
            self._db.execute(
                "UPDATE meta SET value=? WHERE key='next_id'", (str(first + len(samples)),)
            )
        self._depth += len(readings)
        return readings

    def pending(self, after_id: int = 0, limit: int = 1000) -> list[Reading]:
        """Up to ``limit`` readings with an id above ``after_id``, oldest first."""
        rows = self._db.execute(
            "SELECT id, ts, kind, metric, value, unit, tags FROM readings"
            " WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        ).fetchall()
        return self._readings(rows)

    def get(self, ids: Sequence[int]) -> list[Reading]:
        """The readings among ``ids`` still here, oldest first."""
        rows = self._db.execute(
            "SELECT id, ts, kind, metric, value, unit, tags FROM readings"
            " WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id",
            (json.dumps([int(i) for i in ids]),),
        ).fetchall()
        return self._readings(rows)

    def _readings(self, rows: Iterable[tuple[Any, ...]]) -> list[Reading]:
        return [
            Reading(rid, self.device, ts, cast(Kind, kind), metric, value, unit, json.loads(tags))
            for rid, ts, kind, metric, value, unit, tags in rows
        ]

    def delete(self, ids: Iterable[int]) -> int:
        """Forget the readings ``ids``; returns how many were still here."""
        return self.delete_ranges(id_ranges(ids))

    def delete_ranges(self, ranges: Iterable[tuple[int, int]]) -> int:
        """Forget the readings in the inclusive id ``ranges``; returns how many were here."""
        with self._tx():
            before = self._db.total_changes
            self._db.executemany("DELETE FROM readings WHERE id BETWEEN ? AND ?", list(ranges))
            deleted = self._db.total_changes - before
        self._depth -= deleted
        return deleted

    def size_bytes(self) -> int:
        """What the readings take, estimated from their columns (the file itself only
        grows: SQLite reuses freed pages)."""
        (size,) = self._db.execute(
            "SELECT COALESCE(SUM(? + LENGTH(kind) + LENGTH(metric) + LENGTH(unit)"
            " + LENGTH(tags)), 0) FROM readings",
            (ROW_OVERHEAD,),
        ).fetchone()
        return int(size)

    def trim(self, *, now_ms: int, max_age_ms: int, max_bytes: int) -> list[Dropped]:
        """Drop what is past the bounds, oldest first: readings taken more than
        ``max_age_ms`` ago, then the oldest until the rest fits in 90 % of ``max_bytes``
        (so a full outbox is not trimmed every round). Dropped readings are counted, and the
        latest id ranges kept, in the outbox itself."""
        out = []
        old = [
            i
            for (i,) in self._db.execute(
                "SELECT id FROM readings WHERE ts < ? ORDER BY id", (now_ms - max_age_ms,)
            )
        ]
        if old:
            out.append(Dropped("age", old))
            self._drop(old)
        size = self.size_bytes()
        if size > max_bytes and self._depth:
            per_row = size / self._depth
            n = min(self._depth, int((size - 0.9 * max_bytes) / per_row) + 1)
            oldest = [
                i for (i,) in self._db.execute("SELECT id FROM readings ORDER BY id LIMIT ?", (n,))
            ]
            out.append(Dropped("bytes", oldest))
            self._drop(oldest)
        return out

    def _drop(self, ids: list[int]) -> None:
        count, ranges = self.dropped
        ranges = id_ranges_of([*ranges, *id_ranges(ids)])[-KEEP_DROPPED_RANGES:]
        with self._tx():
            self._db.executemany("DELETE FROM readings WHERE id = ?", [(i,) for i in ids])
            self._db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [("dropped", str(count + len(ids))), ("dropped_ranges", json.dumps(ranges))],
            )
        self._depth -= len(ids)

    @property
    def dropped(self) -> tuple[int, list[tuple[int, int]]]:
        """How many readings this outbox dropped unsent in all, and the latest id ranges."""
        meta = dict(
            self._db.execute(
                "SELECT key, value FROM meta WHERE key IN ('dropped', 'dropped_ranges')"
            ).fetchall()
        )
        ranges = [(int(a), int(b)) for a, b in json.loads(meta.get("dropped_ranges", "[]"))]
        return int(meta.get("dropped", "0")), ranges

    def close(self) -> None:
        self._db.close()
