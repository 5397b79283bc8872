"""Batching, dedupe and the prepare step of the ingest service (pure)."""

from __future__ import annotations

import pytest

from ingest_service.dedupe import RecentIds
from ingest_service.prepare import prepare
from vigil.batching import Batcher
from vigil.consumer import Received
from vigil.messages import Reading, encode_readings
from vigil.topicfilter import TopicFilter
from vigil.topics import Topics


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_batch_closes_on_size():
    b: Batcher[int] = Batcher(3, 10.0, Clock())
    for i in range(3):
        assert not b.full
        b.add(i)
    assert b.full and b.ready() and b.take() == [0, 1, 2] and len(b) == 0


def test_batch_closes_on_linger():
    clock = Clock()
    b: Batcher[int] = Batcher(100, 0.05, clock)
    assert b.time_left() is None
    b.add(1)
    assert not b.ready() and b.time_left() == pytest.approx(0.05)
    clock.t += 0.05
    assert b.ready()


def test_a_list_past_the_size_waits_for_the_next_batches_due_with_the_first():
    clock = Clock()
    b: Batcher[int] = Batcher(3, 10.0, clock)
    b.extend([])
    assert b.time_left() is None
    b.extend(list(range(7)))
    assert b.take() == [0, 1, 2] and b.ready()  # full again
    assert b.take() == [3, 4, 5]
    assert not b.full and b.time_left() == pytest.approx(10.0)
    assert b.take() == [6] and len(b) == 0


def test_recent_ids_forget_the_oldest():
    ids = RecentIds(2)
    ids.add(("d", 1))
    ids.add(("d", 2))
    assert ("d", 1) in ids  # touching keeps it
    ids.add(("d", 3))
    assert ("d", 2) not in ids and ("d", 1) in ids and len(ids) == 2


def msg(mid: int, topic: str, payload: bytes) -> Received:
    return Received(topic, payload, 1, mid, 0, 0, TopicFilter.parse("vigil/data/+"))


def reading(i: int) -> Reading:
    return Reading(i, "dev-1", 1_763_800_000_000, "sensor", "t", 1.0)


def test_prepare_sorts_good_bad_and_duplicate():
    recent = RecentIds(10)
    recent.add(("dev-1", 1))
    batch = [
        msg(1, "vigil/data/dev-1", encode_readings("dev-1", [reading(1), reading(2)])),
        msg(2, "vigil/data/dev-1", encode_readings("dev-1", [reading(2)])),
        msg(3, "vigil/data/dev-1", b"junk"),
        msg(4, "vigil/data/bad level", encode_readings("dev-1", [reading(3)])),
        msg(5, "vigil/data/dev-1", encode_readings("dev-1", [reading(3)])),
    ]
    out = prepare(batch, Topics(), recent)
    assert [(i, [r.id for r in rs]) for i, rs in out.readings] == [(0, [2]), (4, [3])]
    assert out.duplicates == 2
    assert [(d.payload, d.reason) for d in out.dead] == [
        (
            b"junk",
            "payload read as line protocol (it is not JSON): line 1: needs "
            "'measurement[,tags] fields timestamp' (the timestamp, in ns, is required)",
        ),
        (batch[3].payload, "topic 'vigil/data/bad level' names no valid device"),
    ]


def test_prepare_dead_letters_a_message_whose_parsing_raises_anything(monkeypatch):
    """The containment policy, not a list of exception types: whatever parsing raises
    becomes that message's dead letter, and the other messages go on."""
    import ingest_service.prepare as prepare_module

    real = prepare_module.parse_readings

    def parse(payload: bytes, device: str, quote_agents=None):
        if payload == b"boom":
            raise RecursionError("maximum recursion depth exceeded")
        return real(payload, device, quote_agents)

    monkeypatch.setattr(prepare_module, "parse_readings", parse)
    batch = [
        msg(1, "vigil/data/dev-1", b"boom"),
        msg(2, "vigil/data/dev-1", encode_readings("dev-1", [reading(7)])),
    ]
    out = prepare(batch, Topics(), RecentIds(10))
    assert [(i, [r.id for r in rs]) for i, rs in out.readings] == [(1, [7])]
    assert [(d.payload, d.reason) for d in out.dead] == [
        (
            b"boom",
            "validating the reading failed: RecursionError: maximum recursion depth exceeded",
        )
    ]
