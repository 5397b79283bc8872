"""Which alert transitions were already handled: (alert id, state) in a small SQLite file,
with the outcome: ``sent``, or ``failed`` with the reason when the SMTP server refused it
for good (a 5xx answer: retrying cannot help, and must not hold up the alerts after it).

Recorded once the SMTP server accepted (or refused for good) the email and before the MQTT
message is acknowledged, so a redelivered alert is recognised and not emailed twice. Entries older
than ``KEEP_DAYS`` are pruned at start: redeliveries come within minutes, not months.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from vigil.messages import now_ms

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
"""


#: columns later versions added
ADDED_COLUMNS = (
    ("outcome", "TEXT NOT NULL DEFAULT 'sent'"),
    ("attempts", "INTEGER NOT NULL DEFAULT 1"),
    ("reason", "TEXT"),
)


class SentStore:
    def __init__(self, path: Path, keep_days: int = KEEP_DAYS) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(sent)")}
        for column, kind in ADDED_COLUMNS:  # a log from before these were kept
            if column not in columns:
                self._db.execute(f"ALTER TABLE sent ADD COLUMN {column} {kind}")
        self.pruned = self._db.execute(
            "DELETE FROM sent WHERE sent_at < ?", (now_ms() - keep_days * 86_400_000,)
        ).rowcount

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

    def outcome(self, alert_id: str, state: str) -> tuple[str, int, str | None] | None:
        """``(outcome, attempts, reason)`` of a handled transition, or None."""
        row = self._db.execute(
            "SELECT outcome, attempts, reason FROM sent WHERE alert_id = ? AND state = ?",
            (alert_id, state),
        ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]), row[2])

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM sent").fetchone()[0])

    def close(self) -> None:
        self._db.close()
