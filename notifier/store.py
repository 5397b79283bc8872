"""The notifier's state, in one SQLite file (WAL, ``synchronous=FULL``): what survives a
restart, so a received alert is notified once whatever crashes.

- ``sent``: every alert transition received, (alert id, state), with its outcome: ``pending``
  until a notification carried it, then ``sent``, ``failed`` (refused for good, with the
  reason), ``skipped`` (its owner has nowhere to be notified) or ``suppressed`` (a silence or
  an offline device muted it). A redelivered transition is recognised here. Entries older than
  ``KEEP_DAYS`` are pruned at start: redeliveries come within minutes, not months.
- ``groups`` and ``members``: the alert groups (:mod:`notifier.grouping`) and their alerts.
- ``notifications``: every notification made, per channel: the outbox (``pending`` ones are
  delivered, in order, also after a restart) and the history, with its delivery state,
  attempts and times. ``published`` is the delivery state last published to the broker.

A received transition is written together with its group in one transaction before the MQTT
message is acknowledged; a notification is written together with the group's new state.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from notifier.grouping import Group, Member
from vigil.messages import Alert, now_ms
from vigil.sqlite import transaction

KEEP_DAYS = 90

SCHEMA = """
CREATE TABLE IF NOT EXISTS sent (
    alert_id TEXT NOT NULL,
    state TEXT NOT NULL,
    sent_at INTEGER NOT NULL,
    outcome TEXT NOT NULL DEFAULT 'sent',
    attempts INTEGER NOT NULL DEFAULT 1,
    reason TEXT,
    PRIMARY KEY (alert_id, state)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sent_by_time ON sent (sent_at);
CREATE TABLE IF NOT EXISTS groups (
    owner TEXT NOT NULL,
    group_key TEXT NOT NULL,
    pending_since INTEGER,
    last_sent INTEGER,
    PRIMARY KEY (owner, group_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members (
    alert_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    group_key TEXT NOT NULL,
    alert BLOB NOT NULL,
    notified TEXT,
    suppressed TEXT
);
CREATE TABLE IF NOT EXISTS notifications (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT NOT NULL,
    group_key TEXT NOT NULL,
    channel TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    repeat INTEGER NOT NULL DEFAULT 0,
    alerts BLOB NOT NULL,
    firing BLOB NOT NULL,
    published TEXT
);
CREATE INDEX IF NOT EXISTS notifications_by_state ON notifications (state, channel, target);
"""

#: columns later versions added
ADDED_COLUMNS = (
    ("outcome", "TEXT NOT NULL DEFAULT 'sent'"),
    ("attempts", "INTEGER NOT NULL DEFAULT 1"),
    ("reason", "TEXT"),
)


@dataclass(frozen=True, slots=True)
class StoredNotification:
    """A notification as stored: the transitions it carries (``alerts``), the group's other
    alerts still firing (``firing``), and where it goes."""

    seq: int
    owner: str
    group_key: str
    channel: str
    target: str
    state: str
    attempts: int
    reason: str | None
    created_at: int
    updated_at: int
    repeat: bool
    alerts: tuple[Alert, ...]
    firing: tuple[Alert, ...]
    published: str | None

    @property
    def id(self) -> str:
        return notification_id(self.seq, self.created_at)


def notification_id(seq: int, created_at: int) -> str:
    """A notification's id on MQTT and in the API: unique even if the state file is
    started afresh (its time is part of it)."""
    return f"n-{created_at}-{seq}"


def _alerts(blob: bytes) -> tuple[Alert, ...]:
    return tuple(Alert.decode(json.dumps(a).encode()) for a in json.loads(blob))


def _blob(alerts: Iterable[Alert]) -> bytes:
    return json.dumps([a.to_dict() for a in alerts], separators=(",", ":")).encode()


class SentStore:
    def __init__(self, path: Path, keep_days: int = KEEP_DAYS) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a commit survives a power cut
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(sent)")}
        for column, kind in ADDED_COLUMNS:  # a log from before these were kept
            if column not in columns:
                self._db.execute(f"ALTER TABLE sent ADD COLUMN {column} {kind}")
        self.keep_ms = keep_days * 86_400_000
        cutoff = now_ms() - self.keep_ms
        self.pruned = self._db.execute("DELETE FROM sent WHERE sent_at < ?", (cutoff,)).rowcount

    def transaction(self) -> AbstractContextManager[None]:
        return transaction(self._db)

    # -- transitions ----------------------------------------------------------------------
    def seen(self, alert_id: str, state: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM sent WHERE alert_id = ? AND state = ?", (alert_id, state)
        ).fetchone()
        return row is not None

    def record(
        self,
        alert_id: str,
        state: str,
        sent_at: int | None = None,
        *,
        outcome: str = "sent",
        attempts: int = 1,
        reason: str | None = None,
    ) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO sent (alert_id, state, sent_at, outcome, attempts, reason) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (alert_id, state, now_ms() if sent_at is None else sent_at, outcome, attempts, reason),
        )

    def settle(
        self,
        transitions: Iterable[tuple[str, str]],
        outcome: str,
        attempts: int = 1,
        reason: str | None = None,
    ) -> None:
        """The outcome of transitions still pending (one already settled keeps its own)."""
        self._db.executemany(
            "UPDATE sent SET outcome = ?, attempts = ?, reason = ? "
            "WHERE alert_id = ? AND state = ? AND outcome = 'pending'",
            [(outcome, attempts, reason, a, s) for a, s in transitions],
        )

    def outcome(self, alert_id: str, state: str) -> tuple[str, int, str | None] | None:
        """``(outcome, attempts, reason)`` of a received transition, or None."""
        row = self._db.execute(
            "SELECT outcome, attempts, reason FROM sent WHERE alert_id = ? AND state = ?",
            (alert_id, state),
        ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]), row[2])

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM sent").fetchone()[0])

    # -- groups ---------------------------------------------------------------------------
    def groups(self) -> list[Group]:
        groups: dict[tuple[str, str], Group] = {}
        for owner, key, pending, last in self._db.execute(
            "SELECT owner, group_key, pending_since, last_sent FROM groups"
        ):
            groups[owner, key] = Group(owner, key, {}, pending, last)
        for alert_id, owner, key, blob, notified, suppressed in self._db.execute(
            "SELECT alert_id, owner, group_key, alert, notified, suppressed FROM members "
            "ORDER BY rowid"
        ):
            group = groups.setdefault((owner, key), Group(owner, key))
            group.members[alert_id] = Member(Alert.decode(blob), notified, suppressed)
        return list(groups.values())

    def save_group(self, group: Group) -> None:
        """Store ``group`` as it is now (an empty one is removed)."""
        where = (group.owner, group.key)
        self._db.execute("DELETE FROM members WHERE owner = ? AND group_key = ?", where)
        if not group.members:
            self._db.execute("DELETE FROM groups WHERE owner = ? AND group_key = ?", where)
            return
        self._db.execute(
            "INSERT OR REPLACE INTO groups (owner, group_key, pending_since, last_sent) "
            "VALUES (?, ?, ?, ?)",
            (*where, group.pending_since, group.last_sent),
        )
        self._db.executemany(
            "INSERT OR REPLACE INTO members "
            "(alert_id, owner, group_key, alert, notified, suppressed) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (a, *where, m.alert.encode(), m.notified, m.suppressed)
                for a, m in group.members.items()
            ],
        )

    # -- notifications --------------------------------------------------------------------
    def add_notification(
        self,
        *,
        owner: str,
        group_key: str,
        channel: str,
        target: str,
        alerts: Iterable[Alert],
        firing: Iterable[Alert] = (),
        repeat: bool = False,
        state: str = "pending",
        reason: str | None = None,
        at: int | None = None,
    ) -> int:
        t = now_ms() if at is None else at
        cur = self._db.execute(
            "INSERT INTO notifications (owner, group_key, channel, target, state, reason, "
            "created_at, updated_at, repeat, alerts, firing) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                owner,
                group_key,
                channel,
                target,
                state,
                reason,
                t,
                t,
                int(repeat),
                _blob(alerts),
                _blob(firing),
            ),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def finish(self, seq: int, state: str, attempts: int, reason: str | None = None) -> None:
        self._db.execute(
            "UPDATE notifications SET state = ?, attempts = ?, reason = ?, updated_at = ? "
            "WHERE seq = ?",
            (state, attempts, reason, now_ms(), seq),
        )

    def attempted(self, seq: int, attempts: int, reason: str) -> None:
        """A failed attempt of a notification still pending (kept for the history)."""
        self._db.execute(
            "UPDATE notifications SET attempts = ?, reason = ?, updated_at = ? WHERE seq = ?",
            (attempts, reason, now_ms(), seq),
        )

    def mark_published(self, seq: int, state: str) -> None:
        self._db.execute("UPDATE notifications SET published = ? WHERE seq = ?", (state, seq))

    def _rows(
        self, where: str, args: tuple[Any, ...] = (), limit: int | None = None
    ) -> list[StoredNotification]:
        rows = self._db.execute(
            # where: one of this module's literals
            "SELECT seq, owner, group_key, channel, target, state, attempts, reason, "  # noqa: S608
            "created_at, updated_at, repeat, alerts, firing, published FROM notifications "
            f"WHERE {where} ORDER BY seq" + ("" if limit is None else f" LIMIT {int(limit)}"),
            args,
        ).fetchall()
        return [
            StoredNotification(
                seq=r[0],
                owner=r[1],
                group_key=r[2],
                channel=r[3],
                target=r[4],
                state=r[5],
                attempts=r[6],
                reason=r[7],
                created_at=r[8],
                updated_at=r[9],
                repeat=bool(r[10]),
                alerts=_alerts(r[11]),
                firing=_alerts(r[12]),
                published=r[13],
            )
            for r in rows
        ]

    def prunable(self, keep_per_owner: int, now: int) -> list[tuple[int, str, str]]:
        """``(seq, owner, id)`` of the delivered notifications past each owner's newest
        ``keep_per_owner`` or older than the log keeps: the history to forget."""
        rows = self._db.execute(
            "SELECT seq, owner, created_at FROM (SELECT seq, owner, created_at, state, "
            "ROW_NUMBER() OVER (PARTITION BY owner ORDER BY seq DESC) AS rn "
            "FROM notifications) WHERE state != 'pending' AND (rn > ? OR created_at < ?)",
            (keep_per_owner, now - self.keep_ms),
        ).fetchall()
        return [(int(seq), str(owner), notification_id(seq, at)) for seq, owner, at in rows]

    def forget(self, seq: int) -> None:
        self._db.execute("DELETE FROM notifications WHERE seq = ?", (seq,))

    def pending(self) -> list[StoredNotification]:
        """The notifications still to deliver, oldest first."""
        return self._rows("state = 'pending'")

    def unpublished(self, limit: int = 100) -> list[StoredNotification]:
        """The oldest notifications whose state the broker does not have yet."""
        return self._rows("published IS NULL OR published != state", limit=limit)

    def pending_lanes(self) -> list[tuple[str, str]]:
        """Each (channel, target) with notifications to deliver."""
        rows = self._db.execute(
            "SELECT DISTINCT channel, target FROM notifications WHERE state = 'pending'"
        )
        return [(str(c), str(t)) for c, t in rows]

    def next_pending(self, channel: str, target: str) -> StoredNotification | None:
        """The oldest notification of a lane still to deliver."""
        rows = self._rows(
            "state = 'pending' AND channel = ? AND target = ?", (channel, target), limit=1
        )
        return rows[0] if rows else None

    def pending_count(self) -> int:
        row = self._db.execute("SELECT count(*) FROM notifications WHERE state = 'pending'")
        return int(row.fetchone()[0])

    def notifications(self, owner: str | None = None) -> list[StoredNotification]:
        if owner is None:
            return self._rows("1")
        return self._rows("owner = ?", (owner,))

    def close(self) -> None:
        self._db.close()
