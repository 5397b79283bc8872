"""Grouping, group wait and interval, repeat and muting, as pure functions of time."""

from __future__ import annotations

from dataclasses import replace

from support import alert

from notifier.grouping import Group, Timing, apply, due, group_key

T = Timing(("rule_id",), group_wait_ms=10_000, group_interval_ms=60_000, repeat_interval_ms=0)


def fire(alert_id: str, device: str = "dev-1", **fields):
    return alert(alert_id=alert_id, device=device, **fields)


def resolve(alert_id: str, device: str = "dev-1", **fields):
    return alert("resolved", alert_id=alert_id, device=device, **fields)


def ids(alerts) -> list[tuple[str, str]]:
    return [(a.alert_id, a.state) for a in alerts]


def step(group: Group, timing: Timing, now: int, muted=None):
    """``due`` then ``apply`` (as the service does); the flush, or None."""
    flush = due(group, timing, now) if muted is None else due(group, timing, now, muted)
    if flush is not None:
        apply(group, flush, now)
    return flush


def test_keys_are_the_group_by_labels_and_an_empty_list_makes_one_group():
    a = fire("e1", severity="warning")
    assert group_key(a, ("rule_id",)) == "rule_id=high-temp"
    assert group_key(a, ("rule_id", "device", "severity")) == (
        "rule_id=high-temp,device=dev-1,severity=warning"
    )
    assert group_key(a, ()) == ""
    assert group_key(a, ("symbol",)) == "symbol="


def test_a_new_group_waits_group_wait_then_sends_everything_that_joined():
    g = Group("alice", "rule_id=high-temp")
    assert g.add(fire("e1"), 0)
    assert due(g, T, 9_999) is None
    assert g.add(fire("e2", "dev-2"), 5_000)
    flush = step(g, T, 10_000)
    assert flush is not None and ids(flush.alerts) == [("e1", "firing"), ("e2", "firing")]
    assert flush.firing == () and not flush.repeat
    assert due(g, T, 10_001) is None  # nothing changed since


def test_later_changes_wait_for_the_group_interval_and_carry_each_transition_once():
    g = Group("alice", "k")
    g.add(fire("e1"), 0)
    step(g, T, 10_000)
    g.add(fire("e2", "dev-2"), 20_000)
    g.add(resolve("e1"), 30_000)
    assert due(g, T, 69_999) is None
    flush = step(g, T, 70_000)
    assert flush is not None
    assert ids(flush.alerts) == [("e1", "resolved"), ("e2", "firing")]
    assert "e1" not in g.members  # its resolution went out: it leaves the group
    g.add(fire("e3", "dev-3"), 80_000)
    flush = step(g, T, 130_000)
    assert flush is not None and ids(flush.alerts) == [("e3", "firing")]
    assert ids(flush.firing) == [("e2", "firing")]  # context only: not a transition again


def test_an_alert_that_fired_and_resolved_before_its_group_went_out_is_sent_resolved():
    g = Group("alice", "k")
    g.add(fire("e1"), 0)
    g.add(resolve("e1"), 2_000)
    flush = due(g, T, 10_000)
    assert flush is not None and ids(flush.alerts) == [("e1", "resolved")]
    assert apply(g, flush, 10_000)  # empty: the group is dropped


def test_redeliveries_and_stale_transitions_change_nothing():
    g = Group("alice", "k")
    assert g.add(fire("e1"), 0)
    assert not g.add(fire("e1"), 1)
    assert g.add(resolve("e1"), 2)
    assert not g.add(fire("e1"), 3)  # a late firing of a resolved episode
    assert g.members["e1"].alert.state == "resolved"


def test_a_group_still_firing_repeats_every_repeat_interval_listing_what_fires():
    timing = replace(T, repeat_interval_ms=3_600_000)
    g = Group("alice", "k")
    g.add(fire("e1"), 0)
    g.add(fire("e2", "dev-2"), 0)
    step(g, timing, 10_000)
    g.add(resolve("e2", "dev-2"), 20_000)
    step(g, timing, 70_000)
    assert due(g, timing, 70_000 + 3_599_999) is None
    flush = step(g, timing, 70_000 + 3_600_000)
    assert flush is not None and flush.repeat and ids(flush.alerts) == [("e1", "firing")]
    assert due(g, replace(T, repeat_interval_ms=0), 10**9) is None  # 0: never


def test_zero_waits_send_each_transition_at_once():
    timing = Timing((), 0, 0, 0)
    g = Group("alice", "")
    g.add(fire("e1"), 5)
    assert ids(step(g, timing, 5).alerts) == [("e1", "firing")]
    g.add(fire("e2"), 6)
    assert ids(step(g, timing, 6).alerts) == [("e2", "firing")]


def muted_on(*devices: str):
    return lambda a, _now: f"device {a.device} is offline" if a.device in devices else None


def test_muted_alerts_are_suppressed_once_per_transition_and_sent_when_unmuted():
    g = Group("alice", "k")
    g.add(fire("e1"), 0)
    g.add(fire("e2", "dev-2"), 0)
    flush = step(g, T, 10_000, muted_on("dev-2"))
    assert ids(flush.alerts) == [("e1", "firing")]
    assert [(a.alert_id, why) for a, why in flush.suppressed] == [("e2", "device dev-2 is offline")]
    assert due(g, T, 20_000, muted_on("dev-2")) is None  # suppressed once, not each turn
    # unmuted while it still fires: a change, sent with the group's next notification
    flush = step(g, T, 70_000)
    assert flush is not None and ids(flush.alerts) == [("e2", "firing")]


def test_a_muted_alert_resolving_unseen_is_dropped_but_a_notified_one_is_told_resolved():
    g = Group("alice", "k")
    g.add(fire("e1"), 0)
    step(g, T, 10_000)  # e1 notified firing
    g.add(fire("e2", "dev-2"), 11_000)
    g.add(resolve("e1"), 12_000)
    g.add(resolve("e2", "dev-2"), 13_000)
    everything = muted_on("dev-1", "dev-2")
    flush = step(g, T, 70_000, everything)
    assert ids(flush.alerts) == [("e1", "resolved")]  # the owner was told it fired
    assert ids(a for a, _ in flush.suppressed) == [("e2", "resolved")]
    assert not g.members


def test_suppression_alone_does_not_start_the_group_interval():
    g = Group("alice", "k")
    g.add(fire("e1"), 0)
    flush = step(g, T, 1_000, muted_on("dev-1"))
    assert flush.alerts == () and len(flush.suppressed) == 1
    assert g.last_sent is None
    flush = step(g, T, 10_000)  # unmuted after group_wait: sent at once
    assert ids(flush.alerts) == [("e1", "firing")]
