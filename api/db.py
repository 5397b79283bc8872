"""The API's own state in SQLite: rules, API tokens (SHA-256 digests only) and the rule-set
version.

The rule-set version names one rule set: every change commits the new rule set and the next
version in one transaction. Versions are seeded from the clock (``max(previous + 1, now in
ms)``), so they keep increasing across restarts and even if the database file is recreated.

Flask views use :func:`get_store` (one connection per request, closed at teardown, as in the
Flask tutorial); other threads open their own :class:`Store`.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from flask import Flask, current_app, g

from vigil.messages import Rule

SCHEMA = """
CREATE TABLE IF NOT EXISTS rules (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
VERSION_KEY = "rules_version"
CHANGED_AT_KEY = "rules_changed_at"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class DuplicateRule(Exception):
    def __init__(self, rule_id: str) -> None:
        super().__init__(f"rule {rule_id!r} already exists")
        self.rule_id = rule_id


class DuplicateToken(Exception):
    pass


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating the file and its folder) the API database in autocommit mode; every
    multi-statement change runs in an explicit transaction."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


class Store:
    """Rules, tokens and the rule-set version on one SQLite connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    @classmethod
    def open(cls, path: Path) -> Store:
        return cls(connect(path))

    def close(self) -> None:
        self.conn.close()

    def init_schema(self) -> None:
        t = now_ms()
        self.conn.executescript(SCHEMA)
        self.conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?), (?, ?)",
            (VERSION_KEY, t, CHANGED_AT_KEY, t),
        )

    # -- rules ----------------------------------------------------------------------------
    def _meta(self, key: str) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _bump_version(self) -> int:
        t = now_ms()
        version = max(self._meta(VERSION_KEY) + 1, t)
        self.conn.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [(VERSION_KEY, version), (CHANGED_AT_KEY, t)],
        )
        return version

    def rules_version(self) -> int:
        return self._meta(VERSION_KEY)

    def list_rules(self) -> list[Rule]:
        rows = self.conn.execute("SELECT body FROM rules ORDER BY id").fetchall()
        return [Rule.from_dict(json.loads(body)) for (body,) in rows]

    def get_rule(self, rule_id: str) -> Rule | None:
        row = self.conn.execute("SELECT body FROM rules WHERE id = ?", (rule_id,)).fetchone()
        return Rule.from_dict(json.loads(row[0])) if row else None

    def snapshot(self) -> tuple[int, int, list[Rule]]:
        """(version, changed_at ms, rules) read in one transaction: a consistent rule set."""
        self.conn.execute("BEGIN")
        try:
            return (self._meta(VERSION_KEY), self._meta(CHANGED_AT_KEY), self.list_rules())
        finally:
            self.conn.execute("COMMIT")

    def add_rule(self, rule: Rule) -> int:
        """Store a new rule; returns the new rule-set version. Raises DuplicateRule."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute(
                "INSERT INTO rules (id, body, created_at) VALUES (?, ?, ?)",
                (rule.id, json.dumps(rule.to_dict()), now_ms()),
            )
            version = self._bump_version()
        except sqlite3.IntegrityError:
            self.conn.execute("ROLLBACK")
            raise DuplicateRule(rule.id) from None
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return version

    def delete_rule(self, rule_id: str) -> int | None:
        """Delete a rule; returns the new rule-set version, or None if there was no such
        rule (nothing changes then)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            cur = self.conn.execute("DELETE FROM rules WHERE id = ?", (rule_id,))
            version = self._bump_version() if cur.rowcount else None
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return version

    # -- tokens ---------------------------------------------------------------------------
    def add_token(self, name: str, sha256_hex: str) -> None:
        """Remember a token by its SHA-256 digest (the token itself is never stored)."""
        try:
            self.conn.execute(
                "INSERT INTO tokens (sha256, name, created_at) VALUES (?, ?, ?)",
                (sha256_hex, name, now_ms()),
            )
        except sqlite3.IntegrityError:
            raise DuplicateToken(f"a token named {name!r} already exists") from None

    def token_name(self, sha256_hex: str) -> str | None:
        row = self.conn.execute(
            "SELECT name FROM tokens WHERE sha256 = ?", (sha256_hex,)
        ).fetchone()
        return str(row[0]) if row else None


# -- Flask binding (tutorial style) -------------------------------------------------------
def get_store() -> Store:
    """This request's store, opened on first use."""
    if "store" not in g:
        g.store = Store.open(Path(current_app.config["DATABASE"]))
    store: Store = g.store
    return store


def close_store(_exc: BaseException | None = None) -> None:
    store = g.pop("store", None)
    if store is not None:
        store.close()


def init_app(app: Flask) -> None:
    """Create the schema now and close each request's connection at teardown."""
    store = Store.open(Path(app.config["DATABASE"]))
    try:
        store.init_schema()
    finally:
        store.close()
    app.teardown_appcontext(close_store)
