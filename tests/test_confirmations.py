"""Storage confirmations to the edge (pure parts): the message, its ranges, and what ingest
confirms for a batch."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest_service.dedupe import RecentIds
from ingest_service.prepare import confirmations, prepare
from vigil.consumer import Received
from vigil.messages import (
    MAX_ID,
    Confirmation,
    InvalidMessage,
    Reading,
    encode_readings,
    id_ranges,
)
from vigil.topicfilter import TopicFilter
from vigil.topics import Topics

ids = st.lists(st.integers(1, MAX_ID), max_size=60)


@given(st.lists(st.integers(1, 200), max_size=60))
def test_ranges_cover_exactly_the_ids(values):
    ranges = id_ranges(values)
    assert {i for lo, hi in ranges for i in range(lo, hi + 1)} == set(values)
    assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(ranges))  # sorted, merged
    c = Confirmation.of("dev-1", values)
    assert all(v in c for v in values) and not any(v in c for v in range(1, 201) if v not in values)


@given(ids)
def test_a_confirmation_round_trips(values):
    c = Confirmation.of("dev-1", values)
    assert Confirmation.decode(c.encode()) == c


def test_consecutive_ids_are_one_range():
    assert Confirmation.of("d", [5, 3, 4, 9]).ranges == ((3, 5), (9, 9))
    assert 4 in Confirmation.of("d", [3, 4]) and 6 not in Confirmation.of("d", [3, 4])


@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_decoding_is_total(data):
    try:
        Confirmation.decode(data)
    except InvalidMessage as exc:
        assert exc.reason


@pytest.mark.parametrize(
    "obj",
    [
        {"v": 2, "device": "d", "ids": []},
        {"v": 1, "device": "a b", "ids": []},
        {"v": 1, "device": "d", "ids": [[3, 2]]},
        {"v": 1, "device": "d", "ids": [[0, 2]]},
        {"v": 1, "device": "d", "ids": [[1, True]]},
        {"v": 1, "device": "d", "ids": [[1]]},
        {"v": 1, "device": "d", "ids": "1-2"},
    ],
)
def test_bad_confirmations_say_why(obj):
    with pytest.raises(InvalidMessage):
        Confirmation.decode(json.dumps(obj).encode())


def msg(mid: int, device: str, readings: list[Reading]) -> Received:
    return Received(
        f"vigil/data/{device}",
        encode_readings(device, readings),
        1,
        mid,
        0,
        0,
        TopicFilter.parse("vigil/data/+/#"),
    )


def reading(i: int, device: str = "dev-1") -> Reading:
    return Reading(i, device, 1_763_800_000_000 + i, "sensor", "t", 1.0)


def test_ingest_confirms_what_it_stored_and_what_was_stored_before():
    topics = Topics()
    recent = RecentIds(10)
    recent.add(("dev-1", 1))  # stored by an earlier batch: a re-send is confirmed again
    batch = [
        msg(1, "dev-1", [reading(1), reading(2)]),
        msg(2, "dev-2", [reading(7, "dev-2")]),
        msg(3, "dev-1", [reading(2)]),  # a repeat within the batch
        Received("vigil/data/dev-3", b"not json", 1, 4, 0, 0, TopicFilter.parse("vigil/#")),
    ]
    work = prepare(batch, topics, recent)
    got = confirmations(work, topics)
    assert {d: sorted(v) for d, v in got.items()} == {"dev-1": [1, 2], "dev-2": [7]}
