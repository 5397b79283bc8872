"""The API's own state in SQLite: rules, API tokens (SHA-256 digests only) and the rule-set
version.

The rule-set version names one rule set: every change commits the new rule set and the next
version in one transaction. Versions are seeded from the clock (``max(previous + 1, now in
ms)``), so they keep increasing across restarts and even if the database file is recreated.

A stored rule is validated again whenever it is read: a row an older version accepted and
this one refuses (an id ``"r\n"``, an unknown field, a body that is not JSON) is returned as
an :class:`InvalidStoredRule` beside the valid rules, never raised, so one bad row cannot
stop every reader of the rule set. It stays until it is deleted.

Flask views use :func:`get_store` (one connection per request, closed at teardown, as in the
Flask tutorial); other threads open their own :class:`Store`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, current_app, g

from vigil.jsonin import JsonInputError, loads
from vigil.messages import InvalidMessage, Rule, now_ms

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
-- Devices added through the API (added = 1), and the state the API keeps for configured
-- ones (added = 0): disabled, and the live configuration (JSON of DeviceSettings).
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    added INTEGER NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    config TEXT,
    config_version INTEGER NOT NULL DEFAULT 0
);
"""
_DEVICE_SELECT = (
    "SELECT id, description, added, disabled, created_at, config, config_version FROM devices"
)
DEVICE_QUERIES = {
    "all": _DEVICE_SELECT + " ORDER BY id",
    "one": _DEVICE_SELECT + " WHERE id = ?",
    "added": _DEVICE_SELECT + " WHERE added = 1 ORDER BY id",
}
VERSION_KEY = "rules_version"
CHANGED_AT_KEY = "rules_changed_at"
#: Most rules kept: with every field at its longest the snapshot stays under the 4 MiB the
#: alert engine accepts (vigil.messages.MAX_RULESET_BYTES).
MAX_RULES = 1000
#: Most devices added through the API.
MAX_DEVICES = 10_000
#: Largest stored rule body read back (a valid one is under 3 KiB).
MAX_STORED_RULE_BYTES = 64 * 1024


class DuplicateRule(Exception):
    def __init__(self, rule_id: str) -> None:
        super().__init__(f"rule {rule_id!r} already exists")
        self.rule_id = rule_id


class TooManyRules(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"there are already {limit} rules, the most the API keeps")
        self.limit = limit


class DuplicateToken(Exception):
    pass


class DuplicateDevice(Exception):
    def __init__(self, device: str) -> None:
        super().__init__(f"device {device!r} already exists")
        self.device = device


class TooManyDevices(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"there are already {limit} devices added through the API, the most")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """What the API keeps about a device. ``added``: through the API (else configured in
    vigil.yaml); ``config``: the live configuration's JSON, or None."""

    id: str
    description: str
    added: bool
    disabled: bool
    created_at: int
    config: str | None
    config_version: int


@dataclass(frozen=True, slots=True)
class InvalidStoredRule:
    """A stored row that is not a valid rule (saved by an older version): ``id`` is the row's
    key exactly as stored, ``reason`` says what is wrong."""

    id: str
    reason: str


@dataclass(frozen=True, slots=True)
class StoredRules:
    """The rules table read whole: the valid rules and the rows that are not, both by id."""

    rules: list[Rule]
    invalid: list[InvalidStoredRule]


@dataclass(frozen=True, slots=True)
class RuleSnapshot:
    """A consistent read of the rule set: its version, when it changed (epoch ms), the valid
    rules and the stored rows that are not valid rules."""

    version: int
    changed_at: int
    rules: list[Rule]
    invalid: list[InvalidStoredRule]


def decode_stored_rule(row_id: object, body: object) -> Rule | InvalidStoredRule:
    """The rule stored under ``row_id`` with ``body``, validated as a new one would be;
    every failure is an InvalidStoredRule, nothing raises."""
    key = row_id.decode("utf-8", "replace") if isinstance(row_id, bytes) else str(row_id)
    if not isinstance(body, str | bytes):
        return InvalidStoredRule(key, f"the stored body is {type(body).__name__}, not JSON text")
    try:
        obj = loads(body, max_bytes=MAX_STORED_RULE_BYTES)
        rule = Rule.from_dict(obj)
    except JsonInputError as exc:
        return InvalidStoredRule(key, f"the stored body is not valid JSON: {exc.reason}")
    except InvalidMessage as exc:
        return InvalidStoredRule(key, exc.reason)
    if rule.id != row_id:
        return InvalidStoredRule(key, f"stored under id {key!r} but its body names {rule.id!r}")
    return rule


#: SQLite result codes (primary, the low byte) that mean the database is busy or cannot be
#: reached for now, not that the statement is wrong: the API answers 503 for these.
UNAVAILABLE_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
    }
)
DEFAULT_TIMEOUT_S = 10.0


def is_unavailable(exc: sqlite3.Error) -> bool:
    """True if ``exc`` says the database is busy, locked, full or unreachable."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in UNAVAILABLE_CODES


def _text(data: bytes) -> str:
    """TEXT values as str even when a row holds bytes that are not UTF-8 (sqlite3's default
    raises on them, for the whole query): those bytes become lone surrogates, which every
    check of a name or a JSON string refuses."""
    return data.decode("utf-8", "surrogateescape")


def connect(path: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> sqlite3.Connection:
    """Open (creating the file and its folder) the API database in autocommit mode; every
    multi-statement change runs in an explicit transaction. A lock held elsewhere is waited
    for up to ``timeout_s``, then SQLITE_BUSY (see :func:`is_unavailable`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=timeout_s, isolation_level=None)
    conn.text_factory = _text
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


class Store:
    """Rules, tokens and the rule-set version on one SQLite connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    @classmethod
    def open(cls, path: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> Store:
        return cls(connect(path, timeout_s))

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

    def list_rules(self) -> StoredRules:
        """Every stored row, sorted by id: the valid rules and the invalid rows apart."""
        rules: list[Rule] = []
        invalid: list[InvalidStoredRule] = []
        for row_id, body in self.conn.execute("SELECT id, body FROM rules ORDER BY id"):
            decoded = decode_stored_rule(row_id, body)
            if isinstance(decoded, Rule):
                rules.append(decoded)
            else:
                invalid.append(decoded)
        return StoredRules(rules, invalid)

    def get_rule(self, rule_id: str) -> Rule | InvalidStoredRule | None:
        """The rule stored under exactly ``rule_id``, an InvalidStoredRule if that row is not
        a valid rule, or None if there is no such row."""
        row = self.conn.execute("SELECT id, body FROM rules WHERE id = ?", (rule_id,)).fetchone()
        return decode_stored_rule(row[0], row[1]) if row else None

    def snapshot(self) -> RuleSnapshot:
        """The version, its time and the rules, read in one transaction: a consistent set."""
        self.conn.execute("BEGIN")
        try:
            stored = self.list_rules()
            return RuleSnapshot(
                self._meta(VERSION_KEY), self._meta(CHANGED_AT_KEY), stored.rules, stored.invalid
            )
        finally:
            self.conn.execute("COMMIT")

    def add_rule(self, rule: Rule) -> int:
        """Store a new rule; returns the new rule-set version. Raises DuplicateRule, or
        TooManyRules when MAX_RULES rows are stored already (invalid ones count: they take
        room until deleted)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            (count,) = self.conn.execute("SELECT count(*) FROM rules").fetchone()
            if count >= MAX_RULES:
                raise TooManyRules(MAX_RULES)
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

    # -- devices --------------------------------------------------------------------------
    def _device_rows(self, which: str, args: tuple[object, ...] = ()) -> list[DeviceRow]:
        rows = self.conn.execute(DEVICE_QUERIES[which], args)
        return [
            DeviceRow(str(i), str(d), bool(a), bool(x), int(c), None if j is None else str(j), v)
            for i, d, a, x, c, j, v in rows
        ]

    def devices(self) -> list[DeviceRow]:
        return self._device_rows("all")

    def device(self, device: str) -> DeviceRow | None:
        rows = self._device_rows("one", (device,))
        return rows[0] if rows else None

    def added_devices(self) -> list[str]:
        return [row.id for row in self._device_rows("added")]

    def add_device(self, device: str, description: str) -> None:
        """Register a device added through the API. Raises DuplicateDevice (a row exists:
        added, or state of a configured one) or TooManyDevices."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            (count,) = self.conn.execute("SELECT count(*) FROM devices WHERE added = 1").fetchone()
            if count >= MAX_DEVICES:
                raise TooManyDevices(MAX_DEVICES)
            self.conn.execute(
                "INSERT INTO devices (id, description, added, created_at) VALUES (?, ?, 1, ?)",
                (device, description, now_ms()),
            )
        except sqlite3.IntegrityError:
            self.conn.execute("ROLLBACK")
            raise DuplicateDevice(device) from None
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def _ensure_row(self, device: str) -> None:
        """A row for a configured device's state (no-op if there is one)."""
        self.conn.execute(
            "INSERT OR IGNORE INTO devices (id, added, created_at) VALUES (?, 0, ?)",
            (device, now_ms()),
        )

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def set_disabled(self, device: str, disabled: bool) -> None:
        with self._transaction():
            self._ensure_row(device)
            self.conn.execute(
                "UPDATE devices SET disabled = ? WHERE id = ?", (int(disabled), device)
            )

    def set_device_config(self, device: str, config: str | None) -> int:
        """Store ``device``'s live configuration (None: remove it); returns its new version,
        which only grows (seeded from the clock, like the rule-set version)."""
        with self._transaction():
            self._ensure_row(device)
            (old,) = self.conn.execute(
                "SELECT config_version FROM devices WHERE id = ?", (device,)
            ).fetchone()
            version = max(int(old) + 1, now_ms())
            self.conn.execute(
                "UPDATE devices SET config = ?, config_version = ? WHERE id = ?",
                (config, version, device),
            )
        return version

    def delete_device(self, device: str) -> bool:
        """Forget a device added through the API; False if there was none."""
        cur = self.conn.execute("DELETE FROM devices WHERE id = ? AND added = 1", (device,))
        return cur.rowcount > 0


# -- Flask binding (tutorial style) -------------------------------------------------------
def get_store() -> Store:
    """This request's store, opened on first use."""
    if "store" not in g:
        config = current_app.config
        g.store = Store.open(
            Path(config["DATABASE"]), config.get("DATABASE_TIMEOUT_S", DEFAULT_TIMEOUT_S)
        )
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
