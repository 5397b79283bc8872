"""The consumer runtime's pure parts: $share-aware topic filters, the ready file, the
launcher's restart rule."""

from __future__ import annotations

import json

import paho.mqtt.client as paho
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stack.run import HEALTHY_RUN_S, RESTART_BACKOFF_S, restart_delay, restarts_after
from vigil.readiness import Readiness, ReadyState, is_ready, read_ready
from vigil.topicfilter import InvalidFilter, TopicFilter

levels = st.sampled_from(["a", "b", "+", "#", "", "$x", "vigil", "data"])
topic_levels = st.sampled_from(["a", "b", "", "$x", "vigil", "data", "dev-1"])


def valid_filter(parts: list[str]) -> bool:
    return all(p != "#" for p in parts[:-1])


filters = st.lists(levels, min_size=1, max_size=5).filter(lambda p: valid_filter(p) and p != [""])
topics = st.lists(topic_levels, min_size=1, max_size=5)


@given(filters, topics)
def test_a_plain_filter_matches_as_paho_does(filter_parts, topic_parts):
    text, topic = "/".join(filter_parts), "/".join(topic_parts)
    assert TopicFilter.parse(text).matches(topic) == paho.topic_matches_sub(text, topic)


@given(filters, topics)
def test_a_shared_filter_matches_what_its_filter_matches(filter_parts, topic_parts):
    """paho's topic_matches_sub matches nothing for $share/... (paho #472); ours strips it."""
    text, topic = "/".join(filter_parts), "/".join(topic_parts)
    shared = TopicFilter.parse(f"$share/ingest/{text}")
    assert shared.shared and shared.group == "ingest" and shared.filter == text
    assert shared.matches(topic) == paho.topic_matches_sub(text, topic)


def test_the_data_filter_shared_routes_device_topics():
    f = TopicFilter.parse("$share/ingest/vigil/data/+/#")
    assert f.matches("vigil/data/dev-1") and f.matches("vigil/data/dev-1/batch")
    assert not f.matches("vigil/status/dev-1")
    assert not paho.topic_matches_sub(f.raw, "vigil/data/dev-1")  # why this module exists


@pytest.mark.parametrize(
    "bad",
    ["", "a/#/b", "a+/b", "a/b#", "$share/", "$share/g", "$share//a", "$share/g+/a", "a\x00b"],
)
def test_invalid_filters_are_refused(bad):
    with pytest.raises(InvalidFilter):
        TopicFilter.parse(bad)


def test_wildcards_do_not_match_dollar_topics():
    assert not TopicFilter.parse("#").matches("$SYS/broker/uptime")
    assert not TopicFilter.parse("+/broker/uptime").matches("$SYS/broker/uptime")
    assert TopicFilter.parse("$SYS/#").matches("$SYS/broker/uptime")


def test_the_ready_file_is_written_whole_and_names_its_writer(tmp_path):
    path = tmp_path / "run" / "ingest.ready.json"
    r = Readiness("ingest", path)
    assert read_ready(path) is None and not is_ready(path)
    r.set(True, "subscribed")
    state = read_ready(path)
    assert state is not None and state.ready and state.service == "ingest"
    assert is_ready(path) and is_ready(path, state.pid) and not is_ready(path, state.pid + 1)
    r.set(False, "disconnected")
    assert not is_ready(path)
    assert [p.name for p in path.parent.iterdir()] == ["ingest.ready.json"]  # no temp left


@given(st.text(max_size=200))
def test_reading_a_ready_file_is_total(text):
    state = ReadyState.parse(text)
    assert state is None or isinstance(state.ready, bool)


def test_a_ready_file_of_the_wrong_shape_is_not_ready():
    for data in ([], {"service": "x"}, {"service": "x", "pid": True, "ready": True, "since_ms": 1}):
        assert ReadyState.parse(json.dumps(data)) is None


def test_restart_backoff_grows_to_a_cap():
    delays = [restart_delay(n) for n in range(10)]
    assert delays[0] == RESTART_BACKOFF_S and delays == sorted(delays)
    assert max(delays) == RESTART_BACKOFF_S * 6
    assert max(delays) < HEALTHY_RUN_S


def test_a_healthy_run_resets_the_backoff():
    assert restarts_after(5, HEALTHY_RUN_S) == 0  # ran a minute: a new series
    assert restarts_after(5, HEALTHY_RUN_S - 1) == 5  # crash-looping: the backoff keeps growing
    assert restart_delay(restarts_after(5, 3600)) == RESTART_BACKOFF_S
