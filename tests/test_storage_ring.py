"""Ring placement and line protocol (pure)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storage_nodes.lineproto import point_time_ns, reading_to_line
from storage_nodes.ring import HashRing
from vigil.messages import Reading

NODES = ["influx-1", "influx-2", "influx-3"]


@given(st.text(min_size=1, max_size=40))
def test_every_key_has_two_distinct_replicas(key):
    replicas = HashRing(NODES, 64, 2).replicas(key)
    assert len(replicas) == 2 and len(set(replicas)) == 2 and set(replicas) <= set(NODES)


def test_placement_is_stable_and_spread():
    ring = HashRing(NODES, 64, 2)
    keys = [f"dev-{i}/temperature" for i in range(3000)]
    assert [ring.replicas(k) for k in keys] == [HashRing(NODES, 64, 2).replicas(k) for k in keys]
    primaries = Counter(ring.replicas(k)[0] for k in keys)
    assert all(700 < primaries[n] < 1300 for n in NODES), primaries
    assert sum(ring.share().values()) == pytest.approx(1.0)


def test_adding_a_node_moves_only_its_share():
    before = HashRing(NODES, 64, 1)
    after = HashRing([*NODES, "influx-4"], 64, 1)
    keys = [f"k{i}" for i in range(4000)]
    moved = [k for k in keys if before.replicas(k) != after.replicas(k)]
    assert all(after.replicas(k) == ("influx-4",) for k in moved)
    assert 0.1 < len(moved) / len(keys) < 0.4


def test_ring_rejects_bad_parameters():
    with pytest.raises(ValueError):
        HashRing(NODES, 64, 4)
    with pytest.raises(ValueError):
        HashRing(["a", "a"], 64, 1)


def reading(i: int, **kw) -> Reading:
    base = dict(
        id=i,
        device="dev 1,x",
        ts=1_763_800_000_000,
        kind="sensor",
        metric="temp",
        value=1.0,
        unit="°C",
        tags={"room": "a=b"},
    )
    base.update(kw)
    return Reading(**base)


def test_line_protocol_escapes_and_keeps_value_a_float():
    line = reading_to_line(reading(7, value=3))
    assert line == (
        "temp,device=dev\\ 1\\,x,kind=sensor,room=a\\=b,unit=°C value=3.0,id=7i 1763800000000000007"
    )


def test_distinct_readings_in_one_millisecond_get_distinct_points():
    times = {point_time_ns(reading(i)) for i in range(1, 5001)}
    assert len(times) == 5000
    assert point_time_ns(reading(42)) == point_time_ns(reading(42))  # a resend: same point


def test_the_default_ring_shares_the_space_evenly():
    shares = HashRing(NODES).share()
    assert all(0.3 < s < 0.37 for s in shares.values()), shares
