"""The topic tree (pure)."""

from __future__ import annotations

import pytest
from paho.mqtt.client import topic_matches_sub

from vigil.names import InvalidName
from vigil.topics import TopicError, Topics


def test_tree_places_the_device_at_the_third_level():
    t = Topics()
    assert t.data("dev-1") == "vigil/data/dev-1"
    assert t.status("dev-1") == "vigil/status/dev-1"
    assert t.alert("dev-1", "hot") == "vigil/alerts/dev-1/hot"
    assert t.deadletter("dev-1") == "vigil/deadletter/dev-1"
    assert t.deadletter(None) == "vigil/deadletter/_unknown"
    assert t.device_of("vigil/data/dev-1") == "dev-1"
    assert t.device_of("vigil/data/dev-1/more") == "dev-1"
    assert t.device_of("vigil/status/dev-1") is None
    assert t.device_of("other/data/dev-1") is None


@pytest.mark.parametrize(
    "bad", ["", "a/b", "+", "#", "x" * 65, "-lead", "sp ace", "dev-1\n", "dev\n-1", "é"]
)
def test_bad_device_ids_are_refused(bad):
    with pytest.raises(InvalidName):
        Topics().data(bad)


T = Topics()


@pytest.mark.parametrize(
    ("flt", "topic", "expected"),
    [
        (T.data_filter, T.data("dev-1"), True),  # "#" also matches the parent level
        (T.data_filter, T.data("dev-1") + "/more", True),
        (T.data_filter, T.status("dev-1"), False),
        (T.status_filter, T.status("dev-1"), True),
        (T.status_filter, T.alert("dev-1", "hot"), False),
        (T.alerts_filter, T.alert("dev-1", "hot"), True),
        (T.alerts_filter, T.rules, False),
        (T.deadletter_filter, T.deadletter(None), True),
        (T.deadletter_filter, T.data("dev-1"), False),
    ],
)
def test_each_subscription_filter_routes_its_own_subtree_only(flt, topic, expected):
    # with paho's matcher, the one MqttClient routes messages with
    assert topic_matches_sub(flt, topic) is expected


@pytest.mark.parametrize("root", ["", "a/+", "#", "$SYS", "vigil\n", "a//b", "a/ b"])
def test_bad_topic_roots_are_refused(root):
    with pytest.raises(TopicError):
        Topics(root)
