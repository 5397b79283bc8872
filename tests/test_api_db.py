"""The API's SQLite store: rules, hashed tokens and the persistent rule-set version."""

from __future__ import annotations

import sqlite3

import pytest

from api.db import DuplicateRule, DuplicateToken, Store
from vigil.messages import Rule

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
    assert store.list_rules() == [other, RULE]  # sorted by id
    assert store.snapshot()[0] == v2 and store.snapshot()[2] == [other, RULE]
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


def test_tokens_are_kept_by_digest_only(tmp_path, store):
    store.add_token("ci", "ab" * 32)
    assert store.token_name("ab" * 32) == "ci"
    assert store.token_name("cd" * 32) is None
    with pytest.raises(DuplicateToken):
        store.add_token("ci", "ef" * 32)
    rows = (
        sqlite3.connect(tmp_path / "nested" / "api.sqlite3")
        .execute("SELECT * FROM tokens")
        .fetchall()
    )
    assert [r[:2] for r in rows] == [("ab" * 32, "ci")]
