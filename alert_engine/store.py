"""The alert engine's durable state: the rule set in force and each series' state (SQLite).

Saved after the transitions of a batch of readings were published and before the readings
are acknowledged; a restart resumes from here, so a rule that was firing does not fire again.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from alert_engine.evaluator import Episode, SeriesKey, SeriesState, StateChanges
from vigil.messages import Rule, decode_rules, encode_rules
from vigil.sqlite import transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS rule_set (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS series (
    rule_id TEXT NOT NULL,
    device TEXT NOT NULL,
    last_ts INTEGER NOT NULL,
    last_id INTEGER NOT NULL,
    alert_id TEXT,
    started_at INTEGER,
    start_reading_id INTEGER,
    last_value REAL,
    pending_since INTEGER,
    window TEXT,
    seen_at INTEGER,
    PRIMARY KEY (rule_id, device)
) WITHOUT ROWID;
"""


#: columns later versions added, in order
ADDED_COLUMNS = (
    ("last_value", "REAL"),
    ("pending_since", "INTEGER"),
    ("window", "TEXT"),
    ("seen_at", "INTEGER"),
)


def _window(text: str | None) -> tuple[tuple[int, float], ...]:
    if not text:
        return ()
    return tuple((int(ts), float(v)) for ts, v in json.loads(text))


class StateStore:
    """One SQLite file (created with its parent folders)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a state saved before the readings are acknowledged must survive a power cut,
        # or a resolved alert could fire again (or a firing one be forgotten) after it.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(series)")}
        # a state file from before these were kept
        for column, kind in ADDED_COLUMNS:
            if column not in columns:
                self._db.execute(f"ALTER TABLE series ADD COLUMN {column} {kind}")

    def load(self) -> tuple[int, list[Rule], dict[SeriesKey, SeriesState]]:
        """The saved rule set (version 0 and no rules if none) and series states."""
        row = self._db.execute("SELECT payload FROM rule_set WHERE id = 1").fetchone()
        version, rules = decode_rules(row[0]) if row else (0, [])
        states: dict[SeriesKey, SeriesState] = {}
        for row in self._db.execute(
            "SELECT rule_id, device, last_ts, last_id, alert_id, started_at, start_reading_id, "
            "last_value, pending_since, window, seen_at FROM series"
        ):
            rule_id, device, last_ts, last_id, alert_id, started_at, start_id, value = row[:8]
            pending, window, seen_at = row[8:]
            firing = Episode(alert_id, started_at, start_id) if alert_id is not None else None
            states[(rule_id, device)] = SeriesState(
                last_ts,
                last_id,
                firing,
                0.0 if value is None else float(value),
                pending,
                _window(window),
                seen_at or 0,
            )
        return version, rules, states

    def save(self, changes: StateChanges, rule_set: tuple[int, list[Rule]] | None = None) -> None:
        """Write changed series (and the new rule set, if any) in one transaction."""
        if not changes and rule_set is None:
            return
        with transaction(self._db):
            if rule_set is not None:
                version, rules = rule_set
                self._db.execute(
                    "INSERT INTO rule_set (id, version, payload) VALUES (1, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET version = excluded.version, "
                    "payload = excluded.payload",
                    (version, encode_rules(rules, version, 0)),
                )
            self._db.executemany(
                "DELETE FROM series WHERE rule_id = ? AND device = ?", sorted(changes.removed)
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO series (rule_id, device, last_ts, last_id, alert_id, "
                "started_at, start_reading_id, last_value, pending_since, window, seen_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        rule_id,
                        device,
                        s.last_ts,
                        s.last_id,
                        s.firing.alert_id if s.firing else None,
                        s.firing.started_at if s.firing else None,
                        s.firing.reading_id if s.firing else None,
                        s.last_value,
                        s.pending_since,
                        json.dumps(s.window, separators=(",", ":")) if s.window else None,
                        s.seen_at,
                    )
                    for (rule_id, device), s in changes.upserts.items()
                ],
            )

    def close(self) -> None:
        self._db.close()
