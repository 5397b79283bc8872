"""The API's SQLite store: rules, hashed tokens and the persistent rule-set version."""

from __future__ import annotations

import json
import sqlite3

import pytest

from api.db import (
    MAX_RULES,
    MAX_TOKENS_PER_USER,
    SCHEMA_VERSION,
    Caller,
    DuplicateRule,
    DuplicateUser,
    InvalidStoredRule,
    Store,
    TooMany,
    TooManyRules,
    UserRow,
    is_unavailable,
)
from vigil.messages import MAX_RULESET_BYTES, Rule, decode_rules, encode_rules
from vigil.names import is_name

RULE = Rule("hot", "temperature", "above", 30.0, "dev-1", "critical", "Hot")


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "nested" / "api.sqlite3")
    s.init_schema()
    yield s
    s.close()


def test_the_database_and_its_folder_are_created(tmp_path, store):
    assert (tmp_path / "nested" / "api.sqlite3").exists()


def test_rules_round_trip_and_every_change_bumps_the_version(store):
    v0 = store.rules_version()
    v1 = store.add_rule(RULE)
    other = Rule("cold", "temperature", "below", 2.0, name="cold")
    v2 = store.add_rule(other)
    assert v0 < v1 < v2
    assert store.get_rule("hot") == RULE
    assert store.list_rules().rules == [other, RULE]  # sorted by id
    snap = store.snapshot()
    assert snap.version == v2 and snap.rules == [other, RULE] and snap.invalid == []
    v3 = store.delete_rule("hot")
    assert v3 is not None and v3 > v2
    assert store.get_rule("hot") is None


def test_a_duplicate_id_changes_nothing(store):
    v1 = store.add_rule(RULE)
    with pytest.raises(DuplicateRule):
        store.add_rule(Rule("hot", "humidity", "below", 1.0))
    assert store.rules_version() == v1
    assert store.get_rule("hot") == RULE


def test_deleting_a_missing_rule_changes_nothing(store):
    v = store.rules_version()
    assert store.delete_rule("nope") is None
    assert store.rules_version() == v


def test_the_version_survives_reopening(tmp_path, store):
    v = store.add_rule(RULE)
    store.close()
    again = Store.open(tmp_path / "nested" / "api.sqlite3")
    again.init_schema()
    assert again.rules_version() == v
    assert again.add_rule(Rule("x", "m", "above", 1.0)) > v
    again.close()


def test_tokens_belong_to_users_and_are_kept_by_digest_only(tmp_path, store):
    store.add_user("ci", "user")
    with pytest.raises(DuplicateUser):
        store.add_user("ci", "admin")
    row = store.add_token("ci", "ab" * 32, "laptop")
    assert is_name(row.id) and row.user == "ci" and row.label == "laptop"
    assert store.token_caller("ab" * 32) == Caller("ci", "user")
    assert store.token_caller("cd" * 32) is None
    with pytest.raises(KeyError):
        store.add_token("nobody", "ef" * 32)
    with pytest.raises(sqlite3.IntegrityError):  # one digest, one token
        store.add_token("admin", "ab" * 32)
    rows = (
        sqlite3.connect(tmp_path / "nested" / "api.sqlite3")
        .execute("SELECT id, sha256, user, label FROM user_tokens")
        .fetchall()
    )
    assert rows == [(row.id, "ab" * 32, "ci", "laptop")]
    assert store.user("ci") == UserRow("ci", "user", store.user("ci").created_at, 1)
    assert not store.revoke_token("admin", row.id)  # another user's token id
    assert store.revoke_token("ci", row.id) and store.token_caller("ab" * 32) is None


def test_a_user_holds_a_bounded_number_of_tokens_and_leaves_with_them(store):
    store.add_user("ci", "user")
    for n in range(MAX_TOKENS_PER_USER):
        store.add_token("ci", f"{n:064x}")
    with pytest.raises(TooMany, match="revoke one first"):
        store.add_token("ci", "f" * 64)
    assert store.set_role("ci", "admin") and store.token_caller(f"{0:064x}").is_admin
    assert store.delete_user("ci") == (True, None) and store.user("ci") is None
    assert store.token_caller(f"{0:064x}") is None and store.tokens("ci") == []
    assert store.delete_user("ci") == (False, None)


def test_the_admin_user_always_exists(store):
    assert [(u.name, u.role) for u in store.users()] == [("admin", "admin")]


def test_a_database_from_before_users_is_migrated_once(tmp_path):
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE tokens (sha256 TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
        " created_at INTEGER NOT NULL);"
        f"INSERT INTO tokens VALUES ('{'ab' * 32}', 'ci', 5), ('{'cd' * 32}', 'admin', 6);"
    )
    old.commit()
    old.close()
    for _ in range(2):  # a second open changes nothing
        store = Store.open(path)
        store.init_schema()
        assert store.token_caller("ab" * 32) == Caller("ci", "user")  # least privilege
        assert store.token_caller("cd" * 32) == Caller("admin-token", "user")
        assert sorted(u.name for u in store.users()) == ["admin", "admin-token", "ci"]
        assert store.conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        store.close()


def insert_row(store, rule_id, body):
    """A row as an older version (or a hand edit) may have left it."""
    store.conn.execute("INSERT INTO rules (id, body, created_at) VALUES (?, ?, 0)", (rule_id, body))


@pytest.mark.parametrize(
    ("rule_id", "body", "reason"),
    [
        ("r\n", '{"id": "r\\n", "metric": "t", "op": "above", "threshold": 1}', "rule id"),
        (
            "big",
            '{"id": "big", "metric": "t", "op": "above", "threshold": 1' + "0" * 400 + "}",
            "digits",
        ),
        (
            "odd",
            '{"id": "odd", "metric": "t", "op": "above", "threshold": 1, "colour": 1}',
            "colour",
        ),
        ("text", "not json", "not valid JSON"),
        ("deep", "[" * 100 + "]" * 100, "nested"),
        ("list", "[1, 2]", "JSON object"),
        ("blob", b"\xff\xfe", "not valid JSON"),
        ("num", 42, "JSON object"),  # the TEXT column keeps it as "42"
        ("moved", '{"id": "other", "metric": "t", "op": "above", "threshold": 1}', "'other'"),
    ],
)
def test_an_invalid_stored_row_is_reported_not_raised(store, rule_id, body, reason):
    store.add_rule(RULE)
    insert_row(store, rule_id, body)
    stored = store.list_rules()
    assert stored.rules == [RULE]
    assert [bad.id for bad in stored.invalid] == [rule_id]
    assert reason in stored.invalid[0].reason, stored.invalid[0].reason
    snap = store.snapshot()
    assert snap.rules == [RULE] and snap.invalid == stored.invalid
    got = store.get_rule(rule_id)
    assert isinstance(got, InvalidStoredRule) and got.id == rule_id
    assert store.get_rule("hot") == RULE
    assert store.delete_rule(rule_id) is not None
    assert store.list_rules().invalid == []


def test_a_row_that_is_not_utf8_is_reported_not_raised(store):
    """sqlite3 raises on TEXT that is not UTF-8, for the whole query; the store reads it."""
    store.add_rule(RULE)
    store.conn.execute(
        "INSERT INTO rules (id, body, created_at) VALUES (CAST(x'ff41' AS TEXT), "
        "CAST(x'7b226964223a2022ff227d' AS TEXT), 0)"  # {"id": "<byte ff>"}
    )
    stored = store.list_rules()
    assert stored.rules == [RULE] and len(stored.invalid) == 1
    assert stored.invalid[0].id == "\udcffA" and "surrogate" in stored.invalid[0].reason


def test_a_busy_database_is_told_apart_from_a_wrong_statement(tmp_path, store):
    holder = sqlite3.connect(tmp_path / "nested" / "api.sqlite3", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        impatient = Store.open(tmp_path / "nested" / "api.sqlite3", timeout_s=0.05)
        with pytest.raises(sqlite3.OperationalError) as busy:
            impatient.add_rule(RULE)
        assert is_unavailable(busy.value)
        impatient.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with pytest.raises(sqlite3.OperationalError) as wrong:
        store.conn.execute("SELECT nope FROM rules")
    assert not is_unavailable(wrong.value)


def test_the_number_of_rules_is_bounded(store):
    store.conn.execute("BEGIN")
    for i in range(MAX_RULES):
        insert_row(store, f"r{i}", json.dumps(Rule(f"r{i}", "t", "above", 1.0).to_dict()))
    store.conn.execute("COMMIT")
    v = store.rules_version()
    with pytest.raises(TooManyRules, match=f"{MAX_RULES} rules"):
        store.add_rule(RULE)
    assert store.rules_version() == v and store.get_rule("hot") is None
    store.delete_rule("r0")
    store.add_rule(RULE)


def test_the_largest_rule_set_fits_what_the_alert_engine_accepts():
    longest = "\U0001f525" * 200  # each a 12-byte \\ud83d\\udd25 escape in the snapshot
    rules = [
        Rule(
            f"r{i:04d}".ljust(64, "x"),
            "m" * 64,
            "above",
            -1.7976931348623157e308,
            "d" * 64,
            "critical",
            longest,
        )
        for i in range(MAX_RULES)
    ]
    payload = encode_rules(rules, 2**53, 2**53)
    assert len(payload) < MAX_RULESET_BYTES
    assert decode_rules(payload)[1] == rules
