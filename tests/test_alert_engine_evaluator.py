"""The pure rule evaluator: transitions, idempotence, rule-set replacement."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from support import ALERT_T0 as T0
from support import reading

from alert_engine.evaluator import Evaluator, SeriesState, alert_id_for
from vigil.messages import Alert, Reading, Rule

HIGH = Rule(
    id="high-temp",
    metric="temperature",
    op="above",
    threshold=30.0,
    severity="critical",
    name="High temperature",
)


def evaluator(*rules: Rule) -> Evaluator:
    """An evaluator with rule set version 1: ``rules``, or just HIGH."""
    ev = Evaluator()
    ev.replace_rules(list(rules) or [HIGH], 1)
    return ev


def run(ev: Evaluator, readings: list[Reading]) -> list:
    return [a for r in readings for a in ev.evaluate(r)]


def test_fires_once_when_crossing_and_resolves_once_with_the_same_id():
    ev = evaluator()
    alerts = run(
        ev,
        [
            reading(25, 0),
            reading(31.2, 1),
            reading(33, 2),
            reading(30.5, 3),
            reading(29, 4),
            reading(28, 5),
        ],
    )
    assert [a.state for a in alerts] == ["firing", "resolved"]
    firing, resolved = alerts
    assert firing.alert_id == resolved.alert_id == alert_id_for("high-temp", "dev-1", 1001)
    assert (firing.rule_id, firing.rule, firing.device, firing.metric) == (
        "high-temp",
        "High temperature",
        "dev-1",
        "temperature",
    )
    assert (firing.value, firing.threshold, firing.op, firing.severity) == (
        31.2,
        30.0,
        "above",
        "critical",
    )
    assert (firing.started_at, firing.ts, firing.resolved_at, firing.reading_id) == (
        T0 + 1_000,
        T0 + 1_000,
        None,
        1001,
    )
    assert (
        resolved.value,
        resolved.started_at,
        resolved.ts,
        resolved.resolved_at,
        resolved.reading_id,
    ) == (29, T0 + 1_000, T0 + 4_000, T0 + 4_000, 1004)
    assert ev.firing_count() == 0


def test_the_threshold_itself_is_inside():
    ev = evaluator(HIGH, Rule(id="low", metric="temperature", op="below", threshold=30.0))
    assert run(ev, [reading(30, 0)]) == []
    assert [(a.rule_id, a.state) for a in run(ev, [reading(29.9, 1)])] == [("low", "firing")]


def test_a_redelivered_or_older_reading_changes_nothing():
    ev = evaluator()
    first = reading(31, 1)
    assert [a.state for a in ev.evaluate(first)] == ["firing"]
    assert ev.evaluate(first) == []  # redelivery
    assert ev.evaluate(reading(35, 2)) == []  # still above
    assert ev.evaluate(reading(10, 0)) == []  # a late resend from before: ignored
    assert ev.state("high-temp", "dev-1").firing is not None
    assert [a.state for a in ev.evaluate(reading(10, 3))] == ["resolved"]
    assert ev.evaluate(reading(31, 1)) == []  # a late resend of the first one


def test_a_rule_for_all_devices_keeps_one_state_per_device_and_a_device_rule_only_its_own():
    only_2 = Rule(id="dev2-hot", metric="temperature", op="above", threshold=20, device="dev-2")
    ev = evaluator(HIGH, only_2)
    alerts = run(
        ev,
        [
            reading(31, 1, "dev-1"),
            reading(25, 1, "dev-2"),
            reading(32, 2, "dev-2"),
            reading(31, 2, "dev-1"),
            reading(5, 3, "dev-1", metric="humidity"),
        ],
    )
    assert [(a.rule_id, a.device, a.state) for a in alerts] == [
        ("high-temp", "dev-1", "firing"),
        ("dev2-hot", "dev-2", "firing"),
        ("high-temp", "dev-2", "firing"),
    ]
    assert len({a.alert_id for a in alerts}) == 3
    assert ev.firing_count() == 3


def test_replacing_rules_drops_removed_rules_and_keeps_state_of_a_changed_threshold():
    other = Rule(id="low-batt", metric="battery", op="below", threshold=10)
    ev = evaluator(HIGH, other)
    firing = run(ev, [reading(31, 1), reading(5, 1, metric="battery")])
    assert len(firing) == 2
    ev.take_changes()

    change = ev.replace_rules(
        [
            Rule(
                id="high-temp",
                metric="temperature",
                op="above",
                threshold=32.0,
                severity="critical",
            )
        ],
        2,
    )
    assert (change.version, change.added, change.removed, change.changed) == (
        2,
        (),
        ("low-batt",),
        ("high-temp",),
    )
    assert [k for k, _ in change.dropped_firing] == [("low-batt", "dev-1")]
    assert ev.state("low-batt", "dev-1") is None
    assert ev.take_changes().removed == {("low-batt", "dev-1")}
    # Still firing under the new threshold: 31.5 is no longer above 32, so it resolves,
    # with the episode's id; nothing fires again.
    assert ev.evaluate(reading(33, 2)) == []
    resolved = ev.evaluate(reading(31.5, 3))
    assert [(a.state, a.alert_id, a.threshold) for a in resolved] == [
        ("resolved", firing[0].alert_id, 32.0)
    ]
    # A rule re-added later starts from scratch.
    ev.replace_rules([HIGH, other], 3)
    assert [a.state for a in ev.evaluate(reading(5, 4, metric="battery"))] == ["firing"]


def test_narrowing_a_rule_to_one_device_drops_the_other_devices_state():
    ev = evaluator()
    run(ev, [reading(31, 1, "dev-1"), reading(31, 1, "dev-2")])
    change = ev.replace_rules(
        [Rule(id="high-temp", metric="temperature", op="above", threshold=30, device="dev-2")], 2
    )
    assert [k for k, _ in change.dropped_firing] == [("high-temp", "dev-1")]
    assert ev.state("high-temp", "dev-2").firing is not None
    [gone] = change.resolved
    assert (gone.device, gone.state) == ("dev-1", "resolved")
    assert gone.reason == "rule changed: it no longer covers dev-1 temperature"


def test_deleting_a_firing_rule_resolves_its_alert():
    """Issue 9: deleting a firing rule left its alert open forever."""
    ev = evaluator()
    [fired] = run(ev, [reading(31, 1)])
    run(ev, [reading(35, 2)])
    change = ev.replace_rules([Rule(id="other", metric="x", op="above", threshold=1)], 2, T0 + 9)
    [gone] = change.resolved
    assert (gone.alert_id, gone.state, gone.rule_id) == (fired.alert_id, "resolved", "high-temp")
    assert gone.reason == "rule deleted" and gone.value == 35 and gone.reading_id is None
    assert gone.resolved_at == gone.ts >= T0 + 9 and gone.started_at == fired.started_at
    assert Alert.decode(gone.encode()) == gone  # what the notifier gets back
    # A disabled rule is kept out of evaluation, and its firing alert resolves.
    run(ev, [reading(36, 3)])
    ev.replace_rules([HIGH], 5, T0 + 12)
    run(ev, [reading(37, 4)])
    [off] = ev.replace_rules([replace(HIGH, enabled=False)], 6, T0 + 13).resolved
    assert off.reason == "rule disabled" and ev.rules == []
    assert run(ev, [reading(38, 5)]) == []
    # A series that was not firing resolves nothing; the rule set coming again neither.
    assert ev.replace_rules([HIGH], 3, T0 + 10).resolved == ()
    assert ev.replace_rules([HIGH], 4, T0 + 11).resolved == ()


def test_take_changes_lists_written_series_once():
    ev = evaluator()
    run(ev, [reading(1, 1), reading(2, 2, "dev-2")])
    changes = ev.take_changes()
    assert set(changes.upserts) == {("high-temp", "dev-1"), ("high-temp", "dev-2")}
    assert changes.upserts[("high-temp", "dev-1")] == SeriesState(T0 + 1_000, 1001, None, 1)
    assert not ev.take_changes()


def test_restore_ignores_state_of_rules_it_does_not_have():
    ev = Evaluator.restore(
        [HIGH],
        4,
        {("high-temp", "dev-1"): SeriesState(T0, 1), ("gone", "dev-1"): SeriesState(T0, 1)},
    )
    assert ev.version == 4
    assert set(ev.states) == {("high-temp", "dev-1")}


# -- properties --------------------------------------------------------------------------
values = st.lists(
    st.sampled_from([10.0, 29.9, 30.0, 30.1, 50.0]) | st.floats(-100, 100), max_size=60
)


def edges(vals: list[float], threshold: float = 30.0) -> int:
    """How many times the series goes from inside to above."""
    count, firing = 0, False
    for v in vals:
        if v > threshold and not firing:
            count, firing = count + 1, True
        elif v <= threshold:
            firing = False
    return count


@settings(max_examples=300, deadline=None)
@given(values)
def test_transitions_alternate_and_each_pair_shares_an_id(vals):
    ev = evaluator()
    alerts = run(ev, [reading(v, i) for i, v in enumerate(vals)])
    assert [a.state for a in alerts] == ["firing", "resolved"] * (len(alerts) // 2) + (
        ["firing"] if len(alerts) % 2 else []
    )
    for firing, resolved in zip(alerts[::2], alerts[1::2], strict=False):
        assert firing.alert_id == resolved.alert_id
        assert resolved.started_at == firing.started_at < resolved.resolved_at
    assert len({a.alert_id for a in alerts[::2]}) == len(alerts[::2]) == edges(vals)
    assert ev.firing_count() == len(alerts) % 2


@settings(max_examples=200, deadline=None)
@given(values, st.data())
def test_redeliveries_and_late_resends_never_change_the_transitions(vals, data):
    readings = [reading(v, i) for i, v in enumerate(vals)]
    clean = evaluator()
    expected = run(clean, readings)

    # Deliver in order, but after each reading re-send any number of earlier ones.
    delivered = []
    for i, r in enumerate(readings):
        delivered.append(r)
        delivered.extend(data.draw(st.lists(st.sampled_from(readings[: i + 1]), max_size=3)))
    noisy = evaluator()
    assert run(noisy, delivered) == expected


@settings(max_examples=200, deadline=None)
@given(values, st.data())
def test_resuming_from_saved_state_gives_the_same_alerts(vals, data):
    readings = [reading(v, i) for i, v in enumerate(vals)]
    whole = evaluator()
    expected = run(whole, readings)

    split = data.draw(st.integers(0, len(readings)))
    first = evaluator()
    before = run(first, readings[:split])
    resumed = Evaluator.restore(first.rules, first.version, first.states)
    # A crash before the last batch was acknowledged: some readings come again.
    again = readings[max(0, split - 2) : split]
    assert before + run(resumed, again + readings[split:]) == expected
