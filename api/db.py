"""The API's own state in SQLite: users and their API tokens (SHA-256 digests only), rules,
devices and the rule-set version.

Users have a role, ``admin`` or ``user``. The user ``admin`` always exists: it is who holds
the admin token of ``api.admin_token_sha256_file`` (that digest is never stored here). A
token belongs to one user, has an id (what revoking names) and a label, and is stored as
its digest only. A database from before users existed is migrated on open
(:data:`SCHEMA_VERSION`): each token it held becomes a user of that name, role ``user``
(least privilege: such a token could never manage devices).

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
import secrets
import sqlite3
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from flask import Flask, current_app, g

from api.slo import InvalidSlo, Slo, parse_slo
from vigil.jsonin import JsonInputError, loads
from vigil.messages import InvalidMessage, Rule, Silence, Webhook, check_webhook, now_ms
from vigil.names import ADMIN_USER
from vigil.sqlite import transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS rules (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    owner TEXT NOT NULL DEFAULT 'admin'
);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('admin', 'user')),
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS user_tokens (
    id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    user TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    label TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS user_tokens_by_user ON user_tokens (user);
-- Where a user's alerts are emailed (in the rule-set snapshot the notifier follows).
CREATE TABLE IF NOT EXISTS recipients (
    user TEXT NOT NULL,
    email TEXT NOT NULL,
    PRIMARY KEY (user, email)
);
-- Silences (the admin's mute everyone's alerts). The rule-set snapshot carries the ones
-- not yet expired to the notifier. Expiring one sets ends_at to now: it stays listed.
CREATE TABLE IF NOT EXISTS silences (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    body TEXT NOT NULL,
    ends_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS silences_by_owner ON silences (owner);
-- Where a user's notifications are POSTed, with the signing secret (the notifier needs it
-- to sign, so it cannot be hashed). In the channel snapshot, which only the notifier reads.
CREATE TABLE IF NOT EXISTS webhooks (
    user TEXT NOT NULL,
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user, name)
);
-- The Telegram chat a user's notifications go to (in the channel snapshot).
CREATE TABLE IF NOT EXISTS telegram_chats (
    user TEXT PRIMARY KEY,
    chat_id TEXT NOT NULL
);
-- A user's own email templates, JSON {"subject"?, "text"?, "html"?} (in the channel
-- snapshot).
CREATE TABLE IF NOT EXISTS user_templates (
    user TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
-- The first answer to each mutation sent with an Idempotency-Key, per user (api/idempotency.py):
-- status NULL while it is being handled.
CREATE TABLE IF NOT EXISTS idempotency (
    user TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status INTEGER,
    content_type TEXT,
    location TEXT,
    body BLOB,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user, key)
);
-- Service level objectives (api/slo.py), with how often each was violated.
CREATE TABLE IF NOT EXISTS slos (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    violations INTEGER NOT NULL DEFAULT 0,
    last_violation_at INTEGER,
    created_at INTEGER NOT NULL
);
-- The share symbols each user follows (api/symbols.py), and each symbol followed by
-- anyone once: since when it is (followed = 1) or nobody follows it any more (0).
CREATE TABLE IF NOT EXISTS subscriptions (
    user TEXT NOT NULL,
    symbol TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user, symbol)
);
CREATE TABLE IF NOT EXISTS symbols (
    symbol TEXT PRIMARY KEY,
    followed INTEGER NOT NULL,
    since INTEGER NOT NULL
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
    config_version INTEGER NOT NULL DEFAULT 0,
    owner TEXT NOT NULL DEFAULT 'admin'
);
"""
_DEVICE_SELECT = (
    "SELECT id, description, added, disabled, created_at, config, config_version, owner "
    "FROM devices"
)
DEVICE_QUERIES = {
    "all": _DEVICE_SELECT + " ORDER BY id",
    "one": _DEVICE_SELECT + " WHERE id = ?",
    "added": _DEVICE_SELECT + " WHERE added = 1 ORDER BY id",
}
#: ``PRAGMA user_version`` of the current schema (0: before users, tokens had only a name;
#: 1: rules without an owner, the admin's since).
SCHEMA_VERSION = 2
#: The user behind the admin token file (vigil.names.ADMIN_USER); it cannot be deleted or
#: demoted.
ROLES = ("admin", "user")
#: Most users, and most tokens one user holds.
MAX_USERS = 10_000
MAX_TOKENS_PER_USER = 20
USER_SELECT = (
    "SELECT u.name, u.role, u.created_at, "
    "(SELECT count(*) FROM user_tokens t WHERE t.user = u.name) FROM users u"
)
VERSION_KEY = "rules_version"
CHANGED_AT_KEY = "rules_changed_at"
#: Most rules kept: with every field at its longest the snapshot stays under the 4 MiB the
#: alert engine accepts (vigil.messages.MAX_RULESET_BYTES).
MAX_RULES = 1000
#: Most SLOs kept.
MAX_SLOS_STORED = 100
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


class DuplicateUser(Exception):
    def __init__(self, user: str) -> None:
        super().__init__(f"user {user!r} already exists")
        self.user = user


class TooMany(Exception):
    """A limit reached; the message says which."""


@dataclass(frozen=True, slots=True)
class UserRow:
    name: str
    role: str
    created_at: int
    tokens: int


@dataclass(frozen=True, slots=True)
class TokenRow:
    """A token as the API keeps it: never the token, only what names and describes it."""

    id: str
    user: str
    label: str
    created_at: int


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request comes from: a user and their role."""

    user: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


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
    #: the user it belongs to (of a device added through the API; a configured one's is in
    #: vigil.yaml)
    owner: str = ADMIN_USER


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
    #: every row's owner, by id
    owners: dict[str, str]

    def of(self, owner: str | None) -> StoredRules:
        """The rows ``owner`` owns (None: all)."""
        if owner is None:
            return self
        mine = {k for k, v in self.owners.items() if v == owner}
        return StoredRules(
            [r for r in self.rules if r.id in mine],
            [r for r in self.invalid if r.id in mine],
            {k: owner for k in mine},
        )


@dataclass(frozen=True, slots=True)
class RuleSnapshot:
    """A consistent read of the rule set: its version, when it changed (epoch ms), the valid
    rules and the stored rows that are not valid rules."""

    version: int
    changed_at: int
    rules: list[Rule]
    invalid: list[InvalidStoredRule]
    #: every row's owner, by id
    owners: dict[str, str] = field(default_factory=dict)
    #: every user's email recipients (users without any have an empty tuple)
    recipients: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: the silences not yet expired
    silences: list[Silence] = field(default_factory=list)
    #: every user's webhooks (only users with some)
    webhooks: dict[str, tuple[Webhook, ...]] = field(default_factory=dict)
    #: every user's Telegram chat (only users with one)
    telegram: dict[str, str] = field(default_factory=dict)
    #: every user's own email templates (only users with some)
    templates: dict[str, dict[str, str]] = field(default_factory=dict)
    #: every device's owner (configured ones given to :meth:`Store.snapshot`)
    device_owners: dict[str, str] = field(default_factory=dict)
    #: the users whose role is admin (their rules watch every device)
    admins: frozenset[str] = frozenset({ADMIN_USER})


def new_token_id() -> str:
    """A token's id: ``t`` and 12 hex digits, a valid name (what revoking names)."""
    return "t" + secrets.token_hex(6)


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
        """Create the schema, or migrate an older one to it, in one transaction."""
        t = now_ms()
        with self._transaction():
            (version,) = self.conn.execute("PRAGMA user_version").fetchone()
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self.conn.execute(statement)
            self.conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?), (?, ?)",
                (VERSION_KEY, t, CHANGED_AT_KEY, t),
            )
            self.conn.execute(
                "INSERT OR IGNORE INTO users (name, role, created_at) VALUES (?, 'admin', ?)",
                (ADMIN_USER, t),
            )
            if version < 1:
                self._migrate_tokens(t)
            columns = {row[1] for row in self.conn.execute("PRAGMA table_info(rules)")}
            if "owner" not in columns:  # schema 1: every rule was the admin's
                self.conn.execute(
                    "ALTER TABLE rules ADD COLUMN owner TEXT NOT NULL DEFAULT 'admin'"
                )
            columns = {row[1] for row in self.conn.execute("PRAGMA table_info(devices)")}
            if "owner" not in columns:  # before device owners: every device was the admin's
                self.conn.execute(
                    "ALTER TABLE devices ADD COLUMN owner TEXT NOT NULL DEFAULT 'admin'"
                )
            self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _migrate_tokens(self, t: int) -> None:
        """Schema 0 kept ``tokens (sha256, name)``: each becomes a user's token."""
        exists = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tokens'"
        ).fetchone()
        if not exists:
            return
        for sha256, name, created in self.conn.execute(
            "SELECT sha256, name, created_at FROM tokens"
        ).fetchall():
            user = name if name != ADMIN_USER else "admin-token"
            self.conn.execute(
                "INSERT OR IGNORE INTO users (name, role, created_at) VALUES (?, 'user', ?)",
                (user, created),
            )
            self.conn.execute(
                "INSERT OR IGNORE INTO user_tokens (id, sha256, user, label, created_at) "
                "VALUES (?, ?, ?, 'migrated', ?)",
                (new_token_id(), sha256, user, created),
            )
        self.conn.execute("DROP TABLE tokens")

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
        owners: dict[str, str] = {}
        for row_id, body, owner in self.conn.execute(
            "SELECT id, body, owner FROM rules ORDER BY id"
        ):
            decoded = decode_stored_rule(row_id, body)
            if isinstance(decoded, Rule):
                rules.append(decoded)
            else:
                invalid.append(decoded)
            owners[decoded.id] = str(owner)
        return StoredRules(rules, invalid, owners)

    def get_rule(self, rule_id: str, owner: str | None = None) -> Rule | InvalidStoredRule | None:
        """The rule stored under exactly ``rule_id`` (and owned by ``owner``, if given), an
        InvalidStoredRule if that row is not a valid rule, or None if there is no such row."""
        row = self.conn.execute(
            "SELECT id, body FROM rules WHERE id = ? AND (? IS NULL OR owner = ?)",
            (rule_id, owner, owner),
        ).fetchone()
        return decode_stored_rule(row[0], row[1]) if row else None

    def rule_owner(self, rule_id: str) -> str | None:
        row = self.conn.execute("SELECT owner FROM rules WHERE id = ?", (rule_id,)).fetchone()
        return str(row[0]) if row else None

    def snapshot(self, configured_owners: Mapping[str, str] | None = None) -> RuleSnapshot:
        """The version, its time and the rules, read in one transaction: a consistent set.
        ``configured_owners``: the owners of the devices in vigil.yaml."""
        self.conn.execute("BEGIN")
        try:
            stored = self.list_rules()
            return RuleSnapshot(
                self._meta(VERSION_KEY),
                self._meta(CHANGED_AT_KEY),
                stored.rules,
                stored.invalid,
                stored.owners,
                self._all_recipients(),
                self.silences(live_at=now_ms()),
                self._all_webhooks(),
                self._all_telegram(),
                self._all_templates(),
                {**(configured_owners or {}), **self.device_owners()},
                frozenset(
                    n for (n,) in self.conn.execute("SELECT name FROM users WHERE role = 'admin'")
                )
                | {ADMIN_USER},
            )
        finally:
            self.conn.execute("COMMIT")

    def add_rule(self, rule: Rule, owner: str = ADMIN_USER) -> int:
        """Store a new rule of ``owner``; returns the new rule-set version. Raises DuplicateRule, or
        TooManyRules when MAX_RULES rows are stored already (invalid ones count: they take
        room until deleted)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            (count,) = self.conn.execute("SELECT count(*) FROM rules").fetchone()
            if count >= MAX_RULES:
                raise TooManyRules(MAX_RULES)
            self.conn.execute(
                "INSERT INTO rules (id, body, created_at, owner) VALUES (?, ?, ?, ?)",
                (rule.id, json.dumps(rule.to_dict()), now_ms(), owner),
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

    def replace_rule(self, rule: Rule, owner: str | None = None) -> int | None:
        """Replace the stored rule with ``rule``'s id (of ``owner``, if given); returns the
        new rule-set version, or None if there is no such rule."""
        with self._transaction():
            cur = self.conn.execute(
                "UPDATE rules SET body = ? WHERE id = ? AND (? IS NULL OR owner = ?)",
                (json.dumps(rule.to_dict()), rule.id, owner, owner),
            )
            return self._bump_version() if cur.rowcount else None

    def delete_rule(self, rule_id: str, owner: str | None = None) -> int | None:
        """Delete a rule (of ``owner``, if given); returns the new rule-set version, or None
        if there was no such rule (nothing changes then)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            cur = self.conn.execute(
                "DELETE FROM rules WHERE id = ? AND (? IS NULL OR owner = ?)",
                (rule_id, owner, owner),
            )
            version = self._bump_version() if cur.rowcount else None
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return version

    # -- users and tokens -----------------------------------------------------------------
    def add_user(self, name: str, role: str) -> None:
        """Raises DuplicateUser, or TooMany past MAX_USERS."""
        with self._transaction():
            (count,) = self.conn.execute("SELECT count(*) FROM users").fetchone()
            if count >= MAX_USERS:
                raise TooMany(f"there are already {MAX_USERS} users, the most the API keeps")
            try:
                self.conn.execute(
                    "INSERT INTO users (name, role, created_at) VALUES (?, ?, ?)",
                    (name, role, now_ms()),
                )
            except sqlite3.IntegrityError:
                raise DuplicateUser(name) from None

    def users(self) -> list[UserRow]:
        return [
            UserRow(str(n), str(r), int(c), int(k))
            for n, r, c, k in self.conn.execute(USER_SELECT + " ORDER BY u.name")
        ]

    def user(self, name: str) -> UserRow | None:
        row = self.conn.execute(USER_SELECT + " WHERE u.name = ?", (name,)).fetchone()
        return UserRow(str(row[0]), str(row[1]), int(row[2]), int(row[3])) if row else None

    def set_role(self, name: str, role: str) -> int | None:
        """Change a user's role; the new rule-set version when it changed (an admin's
        rules watch every device, a user's only theirs), else None."""
        with self._transaction():
            cur = self.conn.execute(
                "UPDATE users SET role = ? WHERE name = ? AND role != ?", (role, name, role)
            )
            return self._bump_version() if cur.rowcount else None

    def delete_user(self, name: str) -> tuple[bool, int | None]:
        """Forget a user, their tokens and their rules, in one transaction: (whether there
        was such a user, the new rule-set version if rules went with them)."""
        with self._transaction():
            self.conn.execute("DELETE FROM user_tokens WHERE user = ?", (name,))
            rules = self.conn.execute("DELETE FROM rules WHERE owner = ?", (name,)).rowcount
            rules += self.conn.execute("DELETE FROM recipients WHERE user = ?", (name,)).rowcount
            rules += self.conn.execute("DELETE FROM silences WHERE owner = ?", (name,)).rowcount
            rules += self.conn.execute("DELETE FROM webhooks WHERE user = ?", (name,)).rowcount
            rules += self.conn.execute(
                "DELETE FROM telegram_chats WHERE user = ?", (name,)
            ).rowcount
            rules += self.conn.execute(
                "DELETE FROM user_templates WHERE user = ?", (name,)
            ).rowcount
            self.conn.execute("DELETE FROM subscriptions WHERE user = ?", (name,))
            version = self._bump_version() if rules else None
            cur = self.conn.execute("DELETE FROM users WHERE name = ?", (name,))
        return cur.rowcount > 0, version

    def _all_recipients(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, list[str]] = {u.name: [] for u in self.users()}
        for user, email in self.conn.execute(
            "SELECT user, email FROM recipients ORDER BY user, email"
        ):
            out.setdefault(user, []).append(email)
        return {u: tuple(e) for u, e in out.items()}

    # -- silences -------------------------------------------------------------------------
    def silences(self, owner: str | None = None, live_at: int | None = None) -> list[Silence]:
        """The silences (of ``owner``; not expired at ``live_at``), newest first. A stored
        row that is no longer valid is left out."""
        rows = self.conn.execute(
            "SELECT body FROM silences WHERE (? IS NULL OR owner = ?) "
            "AND (? IS NULL OR ends_at > ?) ORDER BY created_at DESC, id",
            (owner, owner, live_at, live_at),
        )
        out = []
        for (body,) in rows:
            try:
                out.append(Silence.from_dict(json.loads(body)))
            except (InvalidMessage, ValueError):
                continue
        return out

    def get_silence(self, silence_id: str, owner: str | None = None) -> Silence | None:
        row = self.conn.execute(
            "SELECT body FROM silences WHERE id = ? AND (? IS NULL OR owner = ?)",
            (silence_id, owner, owner),
        ).fetchone()
        return None if row is None else Silence.from_dict(json.loads(row[0]))

    def count_silences(self, live_at: int) -> int:
        row = self.conn.execute("SELECT count(*) FROM silences WHERE ends_at > ?", (live_at,))
        return int(row.fetchone()[0])

    def put_silence(self, silence: Silence) -> int:
        """Store (or replace) ``silence``; returns the new rule-set version."""
        with self._transaction():
            self.conn.execute(
                "INSERT OR REPLACE INTO silences (id, owner, body, ends_at, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    silence.id,
                    silence.owner,
                    json.dumps(silence.to_dict(), separators=(",", ":")),
                    silence.ends_at,
                    silence.created_at,
                ),
            )
            return self._bump_version()

    # -- followed symbols -----------------------------------------------------------------
    def subscriptions(self, user: str) -> list[str]:
        """The symbols ``user`` follows, sorted."""
        return [
            s
            for (s,) in self.conn.execute(
                "SELECT symbol FROM subscriptions WHERE user = ? ORDER BY symbol", (user,)
            )
        ]

    def set_subscriptions(self, user: str, symbols: list[str]) -> None:
        """Make ``symbols`` the ones ``user`` follows."""
        t = now_ms()
        with self._transaction():
            self.conn.execute("DELETE FROM subscriptions WHERE user = ?", (user,))
            self.conn.executemany(
                "INSERT INTO subscriptions (user, symbol, created_at) VALUES (?, ?, ?)",
                [(user, s, t) for s in symbols],
            )

    def followed(self) -> dict[str, list[str]]:
        """Every symbol anyone follows, with its followers."""
        out: dict[str, list[str]] = {}
        for user, symbol in self.conn.execute(
            "SELECT user, symbol FROM subscriptions ORDER BY symbol, user"
        ):
            out.setdefault(symbol, []).append(user)
        return out

    def note_followed(self, followed: set[str], now: int) -> dict[str, int]:
        """Record which symbols are followed now; returns every symbol nobody follows any
        more, with since when (epoch ms)."""
        with self._transaction():
            known = {
                s: (bool(f), int(t))
                for s, f, t in self.conn.execute("SELECT symbol, followed, since FROM symbols")
            }
            for symbol in followed:
                if not known.get(symbol, (False, 0))[0]:
                    self.conn.execute(
                        "INSERT OR REPLACE INTO symbols (symbol, followed, since) VALUES (?, 1, ?)",
                        (symbol, now),
                    )
            dropped: dict[str, int] = {}
            for symbol, (was, since) in known.items():
                if symbol in followed:
                    continue
                if was:
                    self.conn.execute(
                        "UPDATE symbols SET followed = 0, since = ? WHERE symbol = ?",
                        (now, symbol),
                    )
                dropped[symbol] = now if was else since
        return dropped

    def forget_symbol(self, symbol: str) -> None:
        """Stop tracking a symbol nobody follows (its data was removed)."""
        self.conn.execute("DELETE FROM symbols WHERE symbol = ? AND followed = 0", (symbol,))

    # -- SLOs -----------------------------------------------------------------------------
    def slos(self) -> list[tuple[Slo, int, int | None]]:
        """Every SLO with its violation count and the time of the last (a stored row that
        no longer parses is left out)."""
        out = []
        for body, count, last in self.conn.execute(
            "SELECT body, violations, last_violation_at FROM slos ORDER BY id"
        ):
            try:
                out.append((parse_slo(json.loads(body)), int(count), last))
            except (InvalidSlo, ValueError):
                continue
        return out

    def get_slo(self, slo_id: str) -> tuple[Slo, int, int | None] | None:
        return next((row for row in self.slos() if row[0].id == slo_id), None)

    def put_slo(self, slo: Slo) -> bool:
        """Store a new SLO; False if one has that id."""
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO slos (id, body, created_at) VALUES (?, ?, ?)",
            (slo.id, json.dumps(slo.to_dict()), now_ms()),
        )
        return cur.rowcount > 0

    def delete_slo(self, slo_id: str) -> bool:
        return self.conn.execute("DELETE FROM slos WHERE id = ?", (slo_id,)).rowcount > 0

    def count_slo_violation(self, slo_id: str, at: int) -> None:
        self.conn.execute(
            "UPDATE slos SET violations = violations + 1, last_violation_at = ? WHERE id = ?",
            (at, slo_id),
        )

    # -- idempotency ----------------------------------------------------------------------
    def claim_idempotency(
        self, user: str, key: str, fingerprint: str, keep_ms: int
    ) -> tuple[str, int | None, str | None, str | None, bytes | None] | None:
        """Claim ``key`` of ``user`` for a request (None: claimed, go on), or the row a
        request with that key left: ``(fingerprint, status, content type, location,
        body)``, status None while that request is still being handled. Rows older than
        ``keep_ms`` are forgotten first."""
        t = now_ms()
        with self._transaction():
            self.conn.execute("DELETE FROM idempotency WHERE created_at < ?", (t - keep_ms,))
            row = self.conn.execute(
                "SELECT fingerprint, status, content_type, location, body FROM idempotency "
                "WHERE user = ? AND key = ?",
                (user, key),
            ).fetchone()
            if row is not None:
                return (str(row[0]), row[1], row[2], row[3], row[4])
            self.conn.execute(
                "INSERT INTO idempotency (user, key, fingerprint, created_at) VALUES (?, ?, ?, ?)",
                (user, key, fingerprint, t),
            )
        return None

    def settle_idempotency(
        self,
        user: str,
        key: str,
        *,
        status: int,
        content_type: str | None,
        location: str | None,
        body: bytes,
    ) -> None:
        self.conn.execute(
            "UPDATE idempotency SET status = ?, content_type = ?, location = ?, body = ? "
            "WHERE user = ? AND key = ?",
            (status, content_type, location, body, user, key),
        )

    def release_idempotency(self, user: str, key: str) -> None:
        """Forget a claim whose request failed (a retry may try again)."""
        self.conn.execute(
            "DELETE FROM idempotency WHERE user = ? AND key = ? AND status IS NULL", (user, key)
        )

    # -- webhooks -------------------------------------------------------------------------
    def _all_webhooks(self) -> dict[str, tuple[Webhook, ...]]:
        out: dict[str, list[Webhook]] = {}
        for user, name, url, secret in self.conn.execute(
            "SELECT user, name, url, secret FROM webhooks ORDER BY user, name"
        ):
            try:
                hook = check_webhook({"name": name, "url": url, "secret": secret})
            except InvalidMessage:
                continue  # stored by an older version and no longer valid: left out
            out.setdefault(user, []).append(hook)
        return {u: tuple(h) for u, h in out.items()}

    def webhooks(self, user: str) -> list[tuple[Webhook, int]]:
        """``user``'s webhooks, each with when it was created."""
        rows = self.conn.execute(
            "SELECT name, url, secret, created_at FROM webhooks WHERE user = ? ORDER BY name",
            (user,),
        )
        return [(Webhook(n, u, s), int(t)) for n, u, s, t in rows]

    def set_webhooks(self, user: str, hooks: list[Webhook]) -> int:
        """Replace ``user``'s webhooks; returns the new version (the channel snapshot
        carries them to the notifier)."""
        t = now_ms()
        with self._transaction():
            created = dict(
                self.conn.execute(
                    "SELECT name, created_at FROM webhooks WHERE user = ?", (user,)
                ).fetchall()
            )
            self.conn.execute("DELETE FROM webhooks WHERE user = ?", (user,))
            self.conn.executemany(
                "INSERT INTO webhooks (user, name, url, secret, created_at) VALUES (?, ?, ?, ?, ?)",
                [(user, h.name, h.url, h.secret, created.get(h.name, t)) for h in hooks],
            )
            return self._bump_version()

    def _all_templates(self) -> dict[str, dict[str, str]]:
        out = {}
        for user, body in self.conn.execute("SELECT user, body FROM user_templates ORDER BY user"):
            try:
                parts = json.loads(body)
            except ValueError:
                continue
            if isinstance(parts, dict):
                out[str(user)] = {str(k): str(v) for k, v in parts.items()}
        return out

    def templates(self, user: str) -> dict[str, str]:
        return self._all_templates_of(user)

    def _all_templates_of(self, user: str) -> dict[str, str]:
        row = self.conn.execute(
            "SELECT body FROM user_templates WHERE user = ?", (user,)
        ).fetchone()
        if row is None:
            return {}
        parts = json.loads(row[0])
        return {str(k): str(v) for k, v in parts.items()} if isinstance(parts, dict) else {}

    def set_templates(self, user: str, templates: dict[str, str]) -> int:
        """Replace ``user``'s templates ({}: the defaults again); returns the new version."""
        with self._transaction():
            self.conn.execute("DELETE FROM user_templates WHERE user = ?", (user,))
            if templates:
                self.conn.execute(
                    "INSERT INTO user_templates (user, body) VALUES (?, ?)",
                    (user, json.dumps(templates)),
                )
            return self._bump_version()

    def _all_telegram(self) -> dict[str, str]:
        rows = self.conn.execute("SELECT user, chat_id FROM telegram_chats ORDER BY user")
        return {str(u): str(c) for u, c in rows}

    def telegram_chat(self, user: str) -> str | None:
        row = self.conn.execute(
            "SELECT chat_id FROM telegram_chats WHERE user = ?", (user,)
        ).fetchone()
        return None if row is None else str(row[0])

    def set_telegram_chat(self, user: str, chat_id: str | None) -> int:
        """Set (None: remove) ``user``'s Telegram chat; returns the new version."""
        with self._transaction():
            self.conn.execute("DELETE FROM telegram_chats WHERE user = ?", (user,))
            if chat_id is not None:
                self.conn.execute(
                    "INSERT INTO telegram_chats (user, chat_id) VALUES (?, ?)", (user, chat_id)
                )
            return self._bump_version()

    def recipients(self, user: str) -> list[str]:
        rows = self.conn.execute(
            "SELECT email FROM recipients WHERE user = ? ORDER BY email", (user,)
        )
        return [r[0] for r in rows]

    def set_recipients(self, user: str, emails: list[str]) -> int:
        """Replace ``user``'s recipients; returns the new rule-set version (the snapshot
        carries them to the notifier)."""
        with self._transaction():
            self.conn.execute("DELETE FROM recipients WHERE user = ?", (user,))
            self.conn.executemany(
                "INSERT OR IGNORE INTO recipients (user, email) VALUES (?, ?)",
                [(user, e) for e in emails],
            )
            return self._bump_version()

    def add_token(self, user: str, sha256_hex: str, label: str = "") -> TokenRow:
        """Remember a token of ``user`` by its SHA-256 digest (the token itself is never
        stored). Raises TooMany past MAX_TOKENS_PER_USER, KeyError if there is no such
        user."""
        row = TokenRow(new_token_id(), user, label, now_ms())
        with self._transaction():
            if self.user(user) is None:
                raise KeyError(user)
            (count,) = self.conn.execute(
                "SELECT count(*) FROM user_tokens WHERE user = ?", (user,)
            ).fetchone()
            if count >= MAX_TOKENS_PER_USER:
                raise TooMany(
                    f"user {user!r} holds {MAX_TOKENS_PER_USER} tokens already, the most; "
                    "revoke one first"
                )
            self.conn.execute(
                "INSERT INTO user_tokens (id, sha256, user, label, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (row.id, sha256_hex, user, label, row.created_at),
            )
        return row

    def tokens(self, user: str) -> list[TokenRow]:
        rows = self.conn.execute(
            "SELECT id, user, label, created_at FROM user_tokens WHERE user = ? "
            "ORDER BY created_at, id",
            (user,),
        )
        return [TokenRow(str(i), str(u), str(lb), int(c)) for i, u, lb, c in rows]

    def revoke_token(self, user: str, token_id: str) -> bool:
        cur = self.conn.execute(
            "DELETE FROM user_tokens WHERE user = ? AND id = ?", (user, token_id)
        )
        return cur.rowcount > 0

    def token_caller(self, sha256_hex: str) -> Caller | None:
        """The user holding the token with this digest, or None."""
        row = self.conn.execute(
            "SELECT u.name, u.role FROM user_tokens t JOIN users u ON u.name = t.user "
            "WHERE t.sha256 = ?",
            (sha256_hex,),
        ).fetchone()
        return Caller(str(row[0]), str(row[1])) if row else None

    # -- devices --------------------------------------------------------------------------
    def _device_rows(self, which: str, args: tuple[object, ...] = ()) -> list[DeviceRow]:
        rows = self.conn.execute(DEVICE_QUERIES[which], args)
        return [
            DeviceRow(
                str(i), str(d), bool(a), bool(x), int(c), None if j is None else str(j), v, str(o)
            )
            for i, d, a, x, c, j, v, o in rows
        ]

    def devices(self) -> list[DeviceRow]:
        return self._device_rows("all")

    def device(self, device: str) -> DeviceRow | None:
        rows = self._device_rows("one", (device,))
        return rows[0] if rows else None

    def added_devices(self) -> list[str]:
        return [row.id for row in self._device_rows("added")]

    def add_device(self, device: str, description: str, owner: str = ADMIN_USER) -> int:
        """Register a device added through the API, of ``owner``; returns the new rule-set
        version (the owner's rules now watch it). Raises DuplicateDevice (a row exists:
        added, or state of a configured one) or TooManyDevices."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            (count,) = self.conn.execute("SELECT count(*) FROM devices WHERE added = 1").fetchone()
            if count >= MAX_DEVICES:
                raise TooManyDevices(MAX_DEVICES)
            self.conn.execute(
                "INSERT INTO devices (id, description, added, created_at, owner) "
                "VALUES (?, ?, 1, ?, ?)",
                (device, description, now_ms(), owner),
            )
            version = self._bump_version()
        except sqlite3.IntegrityError:
            self.conn.execute("ROLLBACK")
            raise DuplicateDevice(device) from None
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return version

    def device_owners(self) -> dict[str, str]:
        """The owner of every device added through the API."""
        return dict(self.conn.execute("SELECT id, owner FROM devices WHERE added = 1"))

    def note_config_owners(self, digest: str) -> int | None:
        """Record what the configured devices' owners are (a digest); a new rule-set
        version if that changed since the last start (the engine must scope again)."""
        with self._transaction():
            row = self.conn.execute("SELECT value FROM meta WHERE key = 'config_owners'").fetchone()
            value = int(digest[:12], 16)
            if row is not None and int(row[0]) == value:
                return None
            self.conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('config_owners', ?)", (value,)
            )
            return self._bump_version()

    def _ensure_row(self, device: str) -> None:
        """A row for a configured device's state (no-op if there is one)."""
        self.conn.execute(
            "INSERT OR IGNORE INTO devices (id, added, created_at) VALUES (?, 0, ?)",
            (device, now_ms()),
        )

    def _transaction(self) -> AbstractContextManager[None]:
        return transaction(self.conn)

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
        """Forget a device added through the API (a new rule-set version: its owner's rules
        no longer watch it); False if there was none."""
        with self._transaction():
            cur = self.conn.execute("DELETE FROM devices WHERE id = ? AND added = 1", (device,))
            if cur.rowcount:
                self._bump_version()
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
