"""The alert engine's SQLite state: what is saved is what a restart resumes from."""

from __future__ import annotations

from support import reading

from alert_engine.evaluator import Evaluator
from alert_engine.store import StateStore
from vigil.messages import Rule

RULES = [
    Rule(id="high-temp", metric="temperature", op="above", threshold=30.0, name="Hot"),
    Rule(
        id="low-batt",
        metric="battery",
        op="below",
        threshold=10.0,
        device="dev-2",
        severity="critical",
        name="low-batt",
    ),
]


def test_an_empty_store_has_no_rules_and_creates_its_folder(tmp_path):
    store = StateStore(tmp_path / "deep" / "state.sqlite3")
    assert store.load() == (0, [], {})
    assert (tmp_path / "deep" / "state.sqlite3").exists()


def test_state_and_rules_survive_a_reopen(tmp_path):
    path = tmp_path / "state.sqlite3"
    ev = Evaluator()
    ev.replace_rules(RULES, 7)
    fired = [
        a
        for x in (reading(31, 1), reading(20, 2, "dev-3"), reading(5, 3, "dev-2", "battery"))
        for a in ev.evaluate(x)
    ]
    store = StateStore(path)
    store.save(ev.take_changes(), (ev.version, ev.rules))
    store.close()

    version, rules, states = StateStore(path).load()
    assert (version, rules) == (7, RULES)
    assert states == ev.states
    resumed = Evaluator.restore(rules, version, states)
    assert resumed.firing_count() == 2
    assert resumed.evaluate(reading(40, 4)) == []  # still firing: no second alert
    resolved = resumed.evaluate(reading(10, 5))
    assert [(a.state, a.alert_id) for a in resolved] == [("resolved", fired[0].alert_id)]


def test_removed_series_are_deleted(tmp_path):
    store = StateStore(tmp_path / "s.sqlite3")
    ev = Evaluator()
    ev.replace_rules(RULES, 1)
    ev.evaluate(reading(31, 1))
    ev.evaluate(reading(5, 2, "dev-2", "battery"))
    store.save(ev.take_changes(), (1, ev.rules))
    ev.replace_rules(RULES[1:], 2)
    store.save(ev.take_changes(), (2, ev.rules))
    version, rules, states = store.load()
    assert (version, [x.id for x in rules], list(states)) == (
        2,
        ["low-batt"],
        [("low-batt", "dev-2")],
    )


def test_a_state_file_from_before_last_values_opens_and_resolves(tmp_path):
    import sqlite3

    path = tmp_path / "state.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE series (rule_id TEXT NOT NULL, device TEXT NOT NULL,"
            " last_ts INTEGER NOT NULL, last_id INTEGER NOT NULL, alert_id TEXT,"
            " started_at INTEGER, start_reading_id INTEGER, PRIMARY KEY (rule_id, device))"
            " WITHOUT ROWID;"
            "INSERT INTO series VALUES ('high-temp', 'dev-1', 5, 1, 'high-temp:dev-1:1', 5, 1);"
        )
    db.close()
    store = StateStore(path)
    _, _, states = store.load()
    assert states[("high-temp", "dev-1")].last_value == 0.0
    assert store._db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    ev = Evaluator.restore(RULES, 1, states)
    [gone] = ev.replace_rules([], 2, 10).resolved
    assert (gone.alert_id, gone.reason) == ("high-temp:dev-1:1", "rule deleted")
    store.save(ev.take_changes(), (2, []))
    assert store.load() == (2, [], {})
    store.close()
