"""The pure cores of the storage layer, tested directly (no servers): write consistency,
merging replica answers for read repair, server health, the background rate limiter and the
versioned cluster layout. Brute-force models and hypothesis where inputs vary."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage_nodes import layout as layouts
from storage_nodes.consistency import Shortfall, required, shortfalls
from storage_nodes.health import Health, ServerHealth
from storage_nodes.layout import (
    STRATEGIES,
    Layout,
    LayoutError,
    Placement,
    Server,
    moved,
)
from storage_nodes.merge import Row, merge
from vigil.names import NAME_PATTERN
from vigil.rate import RateLimiter
from vigil.settings import StorageNode, StorageSettings

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LEVELS = ("one", "quorum", "all")
STATES = ("active", "failed", "leaving")
KEYS = [f"dev-{i}/temperature" for i in range(40)]


class Clock:
    """A clock the test moves; ``sleep`` moves it too and records what was asked."""

    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


def storage_settings(names: Sequence[str] = ("influx-1", "influx-2", "influx-3"), rf: int = 2):
    return StorageSettings(
        nodes=[
            StorageNode(name=n, url=f"http://127.0.0.1:{8086 + i}") for i, n in enumerate(names)
        ],
        replication_factor=rf,
    )


# -- consistency ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("level", "expected"),
    [("one", [1, 1, 1, 1, 1]), ("quorum", [1, 2, 2, 3, 3]), ("all", [1, 2, 3, 4, 5])],
)
def test_required_replicas_per_level(level, expected):
    assert [required(level, rf) for rf in range(1, 6)] == expected


@pytest.mark.parametrize("level", LEVELS)
def test_required_refuses_no_replicas(level):
    with pytest.raises(ValueError):
        required(level, 0)


SERVERS = ["a", "b", "c", "d", "e"]


@st.composite
def write_outcomes(draw):
    """Replica lists of a batch (some empty: refused readings) and what each server stored."""
    n = draw(st.integers(0, 12))
    replicas_of = [
        tuple(draw(st.permutations(SERVERS))[: draw(st.sampled_from([0, 1, 2, 3, 4, 5]))])
        for _ in range(n)
    ]
    stored_on = {
        s: draw(st.sets(st.integers(-2, n + 2))) for s in draw(st.sets(st.sampled_from(SERVERS)))
    }
    return replicas_of, stored_on


def needed_by_model(level: str, rf: int) -> int:
    """The smallest k of rf such that any two sets of k replicas meet (quorum), or 1 or rf."""
    if level == "one":
        return 1
    if level == "all":
        return rf
    return next(k for k in range(1, rf + 1) if 2 * k > rf)


@FAST
@given(write_outcomes(), st.sampled_from(LEVELS))
def test_shortfalls_match_a_brute_force_model(outcome, level):
    replicas_of, stored_on = outcome
    expected = []
    for i, replicas in enumerate(replicas_of):
        if not replicas:
            continue
        stored = [r for r in replicas if i in stored_on.get(r, set())]
        needed = needed_by_model(level, len(replicas))
        if len(stored) < needed:
            missing = tuple(r for r in replicas if r not in stored)
            expected.append(Shortfall(i, len(stored), needed, missing))
    assert shortfalls(level, replicas_of, stored_on) == expected


def test_quorum_sets_always_overlap():
    for rf in range(1, 6):
        k = required("quorum", rf)
        assert all(
            set(x) & set(y) for x in combinations(range(rf), k) for y in combinations(range(rf), k)
        )
        assert k == 1 or any(
            not set(x) & set(y)
            for x in combinations(range(rf), k - 1)
            for y in combinations(range(rf), k - 1)
        )


def test_shortfall_example():
    got = shortfalls("quorum", [("a", "b", "c"), (), ("a", "b")], {"a": {0, 2}, "c": {1}})
    assert got == [Shortfall(0, 1, 2, ("b", "c")), Shortfall(2, 1, 2, ("b",))]


# -- merge -------------------------------------------------------------------------------
IDENTITIES = [(t, i) for t in range(6) for i in range(3)]


def row(identity: tuple[int, int], node: str = "") -> Row:
    t, i = identity
    return Row(t, i, float(t * 10 + i), f"m value={t * 10 + i} {t}#{node}")


@st.composite
def replica_answers(draw):
    """What each replica stores, and its answer to ``ORDER BY ... LIMIT limit``."""
    limit = draw(st.integers(1, 8))
    newest_first = draw(st.booleans())
    names = draw(st.lists(st.sampled_from(SERVERS), min_size=1, max_size=4, unique=True))
    stored = {n: draw(st.sets(st.sampled_from(IDENTITIES))) for n in names}
    answers = {
        n: [row(x, n) for x in sorted(ids, reverse=newest_first)[:limit]]
        for n, ids in stored.items()
    }
    return stored, answers, limit, newest_first


def covers(answer: Sequence[Row], limit: int, newest_first: bool, identity) -> bool:
    """Whether ``identity`` lies in the part of the range ``answer`` speaks for."""
    if len(answer) < limit:
        return True
    last = answer[-1].identity  # the last row in query order
    return identity >= last if newest_first else identity <= last


@FAST
@given(replica_answers())
def test_merge_matches_a_brute_force_model(case):
    stored, answers, limit, newest_first = case
    got = merge(answers, limit, newest_first)
    union = {r.identity for rows in answers.values() for r in rows}
    want = sorted(union, reverse=newest_first)[:limit]
    assert [r.identity for r in got.rows] == want
    for r in got.rows:  # each merged row is one a replica answered with
        assert any(r in rows for rows in answers.values())
    expected_missing = {}
    for name, rows in answers.items():
        have = {r.identity for r in rows}
        lacking = [x for x in want if x not in have and covers(rows, limit, newest_first, x)]
        if lacking:
            expected_missing[name] = lacking
    assert {n: [r.identity for r in rs] for n, rs in got.missing.items()} == expected_missing
    # What is reported missing is truly absent from that replica (repair writes only gaps),
    # and every merged point a replica truly lacks within its cover is reported.
    for name, rs in got.missing.items():
        assert not {r.identity for r in rs} & stored[name]
    for name, rows in answers.items():
        truly_lacking = [
            x for x in want if x not in stored[name] and covers(rows, limit, newest_first, x)
        ]
        assert [r.identity for r in got.missing.get(name, [])] == truly_lacking


@pytest.mark.parametrize("newest_first", [False, True])
def test_a_point_beyond_a_replicas_cover_is_never_reported_missing(newest_first):
    # a answered a full page (limit 2): it speaks only up to its last row. b holds a point
    # past that, which a may well have but was not asked for.
    asc = [(1, 0), (2, 0), (3, 0)]
    a_rows = [(1, 0), (2, 0)] if not newest_first else [(3, 0), (2, 0)]
    beyond = (3, 0) if not newest_first else (1, 0)
    answers = {"a": [row(x) for x in a_rows], "b": [row(beyond)]}
    got = merge(answers, 2, newest_first)
    assert [r.identity for r in got.rows] == sorted(set(asc), reverse=newest_first)[:2]
    assert "a" not in got.missing
    assert [r.identity for r in got.missing["b"]] == a_rows
    # With a bigger limit the same point is within both covers, and a is told it lacks it.
    got = merge(answers, 3, newest_first)
    assert [r.identity for r in got.missing["a"]] == [beyond]


@FAST
@given(replica_answers(), st.sampled_from(IDENTITIES))
def test_a_point_beyond_a_cover_is_never_reported_for_random_answers(case, extra):
    _, answers, limit, newest_first = case
    answers = dict(answers)
    answers["x"] = [row(extra, "x")]  # one more replica, with a point anywhere
    got = merge(answers, limit, newest_first)
    for name, rows in answers.items():
        for r in got.missing.get(name, []):
            assert covers(rows, limit, newest_first, r.identity)


@FAST
@given(
    st.dictionaries(
        st.sampled_from(SERVERS), st.sets(st.sampled_from(IDENTITIES)), min_size=1, max_size=4
    ),
    st.integers(1, 8),
    st.booleans(),
    st.data(),
)
def test_every_merged_row_lies_within_every_cover(stored, limit, newest_first, data):
    """Whatever a replica answered (any rows, not only a prefix of what it holds): the cut
    to ``limit`` already keeps every merged row within each full page's cover, so a point
    beyond a cover can never reach ``missing``."""
    answers = {
        n: [row(x, n) for x in sorted(ids, reverse=newest_first)][
            : data.draw(st.integers(0, limit))
        ]
        for n, ids in stored.items()
    }
    got = merge(answers, limit, newest_first)
    for rows in answers.values():
        assert all(covers(rows, limit, newest_first, r.identity) for r in got.rows)


def test_merge_of_nothing():
    assert merge({}, 5, True).rows == []
    got = merge({"a": [], "b": [row((1, 1))]}, 5, True)
    assert [r.identity for r in got.rows] == [(1, 1)]
    assert [r.identity for r in got.missing["a"]] == [(1, 1)]
    assert "b" not in got.missing


# -- health ------------------------------------------------------------------------------
def test_health_up_down_up(caplog):
    clock = Clock()
    h = Health(["a", "b"], clock=clock)
    assert h.names() == ["a", "b"]
    assert h.get("a") == ServerHealth("up", clock.t, None, "")
    assert h.available("a") and h.transitions == 0

    clock.t += 5
    with caplog.at_level(logging.WARNING, "storage_nodes.health"):
        assert h.mark_down("a", "timeout") is True
        clock.t += 1
        assert h.mark_down("a", "refused") is False  # already down: counted once, logged once
    assert [r.getMessage() for r in caplog.records].count(
        "storage server a is down (timeout): its writes go to its hint queue, reads skip it"
    ) == 1
    assert len(caplog.records) == 1
    down = h.get("a")
    assert (down.state, down.since, down.reason, down.available) == (
        "down",
        clock.t - 1,
        "timeout",
        False,
    )
    assert not h.available("a") and h.available("b") and h.transitions == 1

    clock.t += 10
    h.seen("a")
    assert h.get("a") == ServerHealth("up", clock.t, clock.t, "")
    assert h.available("a") and h.transitions == 2

    clock.t += 1
    h.seen("a")  # an answer while up: only last_seen moves
    assert h.get("a") == ServerHealth("up", clock.t - 1, clock.t, "")
    assert h.transitions == 2
    assert h.mark_down("a", "unreachable") is True
    assert h.get("a").last_seen == clock.t  # what was last seen is kept while down
    assert h.transitions == 3


def test_health_failed_on_purpose():
    clock = Clock()
    h = Health(["a"], clock=clock)
    h.set_failed("a", True)
    assert h.get("a").state == "failed" and h.get("a").reason == "failed by the operator"
    assert h.transitions == 1 and not h.available("a")

    clock.t += 1
    h.seen("a")  # it answers, but it was drained on purpose
    assert h.get("a").state == "failed" and h.get("a").last_seen == clock.t
    assert h.mark_down("a", "timeout") is False
    h.set_failed("a", True)  # already failed: nothing changes
    assert h.get("a").state == "failed" and h.transitions == 1

    clock.t += 1
    h.set_failed("a", False)
    assert h.get("a") == ServerHealth("down", clock.t, clock.t - 1, "recovering")
    assert not h.available("a") and h.transitions == 2
    assert h.mark_down("a", "timeout") is False  # still down, awaiting a probe
    h.set_failed("a", False)  # not failed any more: nothing changes
    assert h.transitions == 2

    clock.t += 1
    h.seen("a")
    assert h.get("a").state == "up" and h.available("a") and h.transitions == 3


def test_health_fail_a_server_that_is_down():
    h = Health(["a"], clock=Clock())
    assert h.mark_down("a", "timeout")
    h.set_failed("a", True, reason="drained")
    assert (h.get("a").state, h.get("a").reason) == ("failed", "drained")
    assert h.transitions == 2


def test_health_set_names_keeps_known_state():
    clock = Clock()
    h = Health(["a", "b"], clock=clock)
    h.mark_down("a", "timeout")
    h.set_failed("b", True)
    before = h.snapshot()
    clock.t += 3
    h.set_names(["b", "a", "c"])
    assert h.names() == ["b", "a", "c"]
    assert h.get("a") == before["a"] and h.get("b") == before["b"]
    assert h.get("c") == ServerHealth("up", clock.t, None, "")
    h.set_names(["c"])
    assert h.names() == ["c"]
    assert not h.available("a")  # unknown servers are not available
    with pytest.raises(KeyError):
        h.get("a")
    h.seen("a")  # unknown: ignored
    assert h.mark_down("a", "timeout") is False
    h.set_failed("a", True)
    assert h.names() == ["c"] and h.transitions == 2


def test_health_snapshot_is_a_copy():
    h = Health(["a"], clock=Clock())
    snap = h.snapshot()
    h.mark_down("a", "timeout")
    assert snap["a"].state == "up" and h.snapshot()["a"].state == "down"
    snap.clear()
    assert h.names() == ["a"]


@FAST
@given(
    st.lists(
        st.tuples(st.sampled_from(["seen", "down", "fail", "recover"]), st.sampled_from("ab")),
        max_size=30,
    )
)
def test_health_follows_a_state_machine(ops):
    clock = Clock()
    h = Health(["a", "b"], clock=clock)
    model = {"a": "up", "b": "up"}
    transitions = 0
    table = {
        ("seen", "down"): "up",
        ("down", "up"): "down",
        ("fail", "up"): "failed",
        ("fail", "down"): "failed",
        ("recover", "failed"): "down",
    }
    for op, name in ops:
        clock.t += 1
        before = model[name]
        after = table.get((op, before), before)
        if op == "seen":
            h.seen(name)
        elif op == "down":
            assert h.mark_down(name, "x") is (after != before)
        else:
            h.set_failed(name, op == "fail")
        model[name] = after
        transitions += after != before
        assert h.get(name).state == after
        if after != before:
            assert h.get(name).since == clock.t
        assert h.available(name) is (after == "up")
    assert h.transitions == transitions


# -- rate --------------------------------------------------------------------------------
def test_rate_burst_of_one_second_then_the_sustained_rate():
    clock = Clock()
    r = RateLimiter(10, clock=clock, sleep=clock.sleep)
    for _ in range(10):  # a full bucket: one second's worth goes at once
        r.acquire(1)
    assert clock.slept == []
    r.acquire(1)
    assert clock.slept == [pytest.approx(0.1)]
    start = clock.t
    for _ in range(100):
        r.acquire(1)
    assert clock.t - start == pytest.approx(10.0)  # 100 units at 10/s
    assert all(s == pytest.approx(0.1) for s in clock.slept)


def test_rate_idle_time_refills_only_one_burst():
    clock = Clock()
    r = RateLimiter(50, clock=clock, sleep=clock.sleep)
    r.acquire(50)
    clock.t += 3600  # an hour idle saves up no more than one second's worth
    assert r.delay(50) == 0
    assert r.delay(50) == pytest.approx(1.0)


def test_rate_a_request_larger_than_a_burst_waits_its_share():
    clock = Clock()
    r = RateLimiter(100, clock=clock, sleep=clock.sleep)
    r.acquire(300)  # one burst is there, two seconds' worth must wait
    assert clock.slept == [pytest.approx(2.0)]
    r.acquire(100)  # and the next request pays for its own second
    assert clock.slept == [pytest.approx(2.0), pytest.approx(1.0)]
    clock.t += 0.5
    assert r.delay(25) == pytest.approx(0.0)
    assert r.delay(50) == pytest.approx(0.25)


def test_rate_must_be_positive():
    for bad in (0, -1):
        with pytest.raises(ValueError):
            RateLimiter(bad)


@FAST
@given(
    st.floats(0.5, 1000),
    st.lists(st.tuples(st.floats(0, 3), st.floats(0, 3)), min_size=1, max_size=30),
)
def test_rate_never_exceeds_a_burst_plus_the_rate(per_s, requests):
    """Over any run of requests i..j, the units granted are at most one burst plus what
    accrued from i's arrival to j's grant; a request waits only while the bucket is short."""
    clock = Clock(0.0)
    r = RateLimiter(per_s, clock=clock, sleep=clock.sleep)
    arrivals, grants, sizes = [], [], []
    for gap, share in requests:
        clock.t += gap
        n = share * per_s
        arrivals.append(clock.t)
        r.acquire(n)
        grants.append(clock.t)
        sizes.append(n)
    for i in range(len(sizes)):
        for j in range(i, len(sizes)):
            budget = per_s + per_s * (grants[j] - arrivals[i])
            assert sum(sizes[i : j + 1]) <= budget * (1 + 1e-9) + 1e-6
    # no needless waits: whoever waited had used up the first burst, so all the waiting
    # together is at most what the units beyond that burst take at the rate
    total_wait = sum(clock.slept)
    assert total_wait <= max(0.0, sum(sizes) / per_s - 1) + 1e-6


# -- layout: generated layouts -----------------------------------------------------------
names_st = st.one_of(
    st.sampled_from(["influx-1", "influx-2", "influx-3", "n4", "n.5", "N_6"]),
    st.from_regex(NAME_PATTERN, fullmatch=True),
)
url_tail = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@st.composite
def valid_layouts(draw, moving: bool | None = None) -> Layout:
    names = draw(st.lists(names_st, min_size=1, max_size=5, unique=True))
    states = [draw(st.sampled_from(STATES)) for _ in names]
    if all(s == "leaving" for s in states):
        states[draw(st.integers(0, len(names) - 1))] = draw(st.sampled_from(["active", "failed"]))
    servers = tuple(
        Server(n, draw(st.sampled_from(["http://", "https://"])) + draw(url_tail), s)
        for n, s in zip(names, states, strict=True)
    )
    placed = sum(s != "leaving" for s in states)
    vnodes = draw(st.integers(1, 16))
    previous = None
    if moving if moving is not None else draw(st.booleans()):
        pservers = tuple(draw(st.lists(st.sampled_from(names), min_size=1, unique=True)))
        pstrategy = draw(st.sampled_from(STRATEGIES))
        hi = len(pservers) if pstrategy == "consistent" else 64
        previous = Placement(pservers, pstrategy, draw(st.integers(1, hi)), vnodes)
    return Layout(
        draw(st.integers(1, 2**53)),
        servers,
        draw(st.sampled_from(STRATEGIES)),
        draw(st.integers(1, placed)),
        vnodes,
        previous,
    )


def encode(doc: Any) -> bytes:
    return json.dumps(doc).encode()


@FAST
@given(valid_layouts())
def test_parse_round_trips_a_valid_layout(layout):
    back = layouts.parse(encode(layout.to_json()))
    assert back == layout
    assert back.placement == layout.placement
    for key in KEYS[:5]:
        assert back.owners(key) == layout.owners(key)


def test_round_trip_example_with_every_state_and_a_move():
    layout = Layout(
        7,
        (
            Server("influx-1", "http://127.0.0.1:8086"),
            Server("influx-2", "https://h2:8086", "failed"),
            Server("influx-3", "http://h3", "leaving"),
        ),
        "consistent",
        2,
        64,
        Placement(("influx-1", "influx-2", "influx-3"), "consistent", 2, 64),
    )
    assert layouts.parse(encode(layout.to_json())) == layout
    assert layouts.parse(json.dumps(layout.to_json(), indent=2).encode()) == layout


# -- layout: parse is total -------------------------------------------------------------
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["active", "failed", "leaving", "consistent", "full", "http://x"]),
    lambda kids: (
        st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids, max_size=5)
    ),
    max_leaves=20,
)
LAYOUT_KEYS = ["version", "strategy", "replication_factor", "vnodes", "servers", "previous"]


def parses_or_refuses(raw: bytes) -> Layout | None:
    try:
        got = layouts.parse(raw)
    except LayoutError as exc:
        assert str(exc)
        return None
    assert isinstance(got, Layout)
    return got


@FAST
@given(st.binary(max_size=300))
def test_parse_is_total_on_arbitrary_bytes(raw):
    parses_or_refuses(raw)


@FAST
@given(json_values)
def test_parse_is_total_on_arbitrary_json(doc):
    parses_or_refuses(encode(doc))


@FAST
@given(st.dictionaries(st.sampled_from(LAYOUT_KEYS), json_values, max_size=6))
def test_parse_is_total_on_objects_with_the_layout_keys(doc):
    parses_or_refuses(encode(doc))


def _paths(doc: Any, at: tuple = ()) -> list[tuple]:
    out = [at]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*at, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*at, i))
    return out


@FAST
@given(valid_layouts(), st.data())
def test_parse_is_total_on_a_valid_layout_with_one_part_changed(layout, data):
    doc = layout.to_json()
    path = data.draw(st.sampled_from(_paths(doc)[1:]))
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(json_values)
    parses_or_refuses(encode(doc))


GOOD = {
    "version": 3,
    "strategy": "consistent",
    "replication_factor": 2,
    "vnodes": 16,
    "servers": [
        {"name": "a", "url": "http://a:8086"},
        {"name": "b", "url": "http://b:8086", "state": "failed"},
        {"name": "c", "url": "http://c:8086", "state": "leaving"},
    ],
    "previous": {"servers": ["a", "b", "c"], "strategy": "consistent", "replication_factor": 2},
}


def test_the_example_document_parses():
    got = layouts.parse(encode(GOOD))
    assert got.version == 3 and got.names() == ["a", "b", "c"]
    assert got.server("a").state == "active"  # the default state
    assert got.placement.servers == ("a", "b")
    assert got.previous == Placement(("a", "b", "c"), "consistent", 2, 16)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"version": -1}, "version"),
        ({"version": True}, "version"),
        ({"replication_factor": 65}, "replication_factor"),
        ({"version": 1.0}, "version"),
        ({"version": 2**53 + 1}, "version"),
        ({"strategy": "ring"}, "strategy"),
        ({"vnodes": 0}, "vnodes"),
        ({"vnodes": 4097}, "vnodes"),
        ({"servers": []}, "servers"),
        (
            {"servers": [{"name": "a", "url": "http://a"}, {"name": "a", "url": "http://b"}]},
            "servers",
        ),
        ({"servers": [{"name": "a", "url": "http://a", "state": "leaving"}]}, "servers"),
        ({"servers": [{"name": "-a", "url": "http://a"}]}, "servers[0].name"),
        ({"servers": [{"name": "a", "url": "ftp://a"}]}, "servers[0].url"),
        ({"servers": [{"name": "a", "url": "http://" + "x" * 600}]}, "servers[0].url"),
        ({"servers": [{"name": "a", "url": "http://a", "state": "gone"}]}, "servers[0].state"),
        ({"servers": ["a"]}, "servers[0]"),
        ({"previous": []}, "previous"),
        ({"previous": {**GOOD["previous"], "servers": ["a", "z"]}}, "previous.servers"),
        ({"previous": {**GOOD["previous"], "servers": ["a", "a"]}}, "previous.servers"),
        ({"previous": {**GOOD["previous"], "strategy": None}}, "previous.strategy"),
    ],
)
def test_parse_names_the_key_that_is_wrong(change, where):
    doc = {**GOOD, **change}
    with pytest.raises(LayoutError, match="^" + re.escape(where) + ": "):
        layouts.parse(encode(doc))


@pytest.mark.parametrize(
    "raw", [b"", b"\xff", b"[]", b"null", b"{", b'{"version": NaN}', b"[" * 100 + b"]" * 100]
)
def test_parse_refuses_what_is_not_a_layout_object(raw):
    with pytest.raises(LayoutError):
        layouts.parse(raw)


def test_parse_refuses_a_file_over_the_bound():
    with pytest.raises(LayoutError, match="not JSON"):
        layouts.parse(encode({**GOOD, "pad": "x" * layouts.MAX_LAYOUT_BYTES}))


# -- layout: seed, moves, owners -------------------------------------------------------
def test_seed_is_version_0_with_the_configured_servers():
    s = storage_settings(rf=2)
    seed = layouts.seed(s)
    assert seed.version == 0 and not seed.moving and seed.previous is None
    assert seed.servers == tuple(Server(n.name, n.url, "active") for n in s.nodes)
    assert (seed.strategy, seed.replication_factor, seed.vnodes) == ("consistent", 2, s.vnodes)
    for key in KEYS:
        assert seed.owners(key) == seed.replicas_now(key)
        assert len(seed.owners(key)) == 2


def test_a_move_keeps_the_current_placement_as_previous_and_refuses_a_second():
    base = layouts.seed(storage_settings(rf=2))
    servers = [*base.servers, Server("influx-4", "http://127.0.0.1:9000")]
    target = moved(base, servers, "consistent")
    assert target.version == base.version + 1 and target.moving
    assert target.previous == base.placement
    assert target.names() == [*base.names(), "influx-4"]
    assert target.replication_factor == 2
    with pytest.raises(LayoutError, match="already in progress"):
        moved(target, servers, "full")
    with pytest.raises(LayoutError, match="at least one server"):
        moved(base, [Server(s.name, s.url, "leaving") for s in base.servers], "consistent")
    assert layouts.parse(encode(target.to_json())) == target


def test_a_move_to_fewer_servers_places_on_those_there_are_and_keeps_the_wanted_factor():
    base = layouts.seed(storage_settings(("a", "b"), rf=2))
    target = moved(
        base, [base.servers[0], Server("b", base.servers[1].url, "leaving")], "consistent"
    )
    assert target.replication_factor == 2
    assert target.placement.servers == ("a",)
    for key in KEYS:
        assert target.replicas_now(key) == ("a",)
        assert set(target.owners(key)) == {"a", "b"}


def test_settled_drops_previous_and_leaving_servers_and_bumps_the_version():
    base = layouts.seed(storage_settings(rf=2))
    servers = [
        Server(s.name, s.url, "leaving") if s.name == "influx-2" else s for s in base.servers
    ]
    target = moved(base, servers, "consistent")
    done = layouts.settled(target)
    assert done.version == target.version + 1
    assert done.previous is None and not done.moving
    assert done.names() == ["influx-1", "influx-3"]
    assert done.placement == target.placement
    for key in KEYS:
        assert done.owners(key) == target.replicas_now(key)
        assert "influx-2" not in target.replicas_now(key)
    assert layouts.parse(encode(done.to_json())) == done


@FAST
@given(valid_layouts(moving=True), st.lists(st.text(max_size=20), min_size=1, max_size=10))
def test_owners_during_a_move_are_the_new_replicas_then_the_old(layout, keys):
    assert layout.previous is not None
    for key in keys:
        now, before = layout.replicas_now(key), layout.previous.replicas(key)
        got = layout.owners(key)
        assert got == now + tuple(n for n in before if n not in now)
        assert len(set(got)) == len(got)
        assert set(got) == set(now) | set(before)


@FAST
@given(valid_layouts(moving=False), st.lists(st.text(max_size=20), min_size=1, max_size=10))
def test_owners_outside_a_move_are_the_replicas(layout, keys):
    placed = {s.name for s in layout.servers if s.state != "leaving"}
    for key in keys:
        got = layout.owners(key)
        assert got == layout.replicas_now(key) == layout.placement.replicas(key)
        assert set(got) <= placed and len(set(got)) == len(got)
        want = len(placed) if layout.strategy == "full" else layout.replication_factor
        assert len(got) == want


@FAST
@given(valid_layouts(), st.lists(st.text(max_size=20), min_size=1, max_size=10))
def test_full_strategy_puts_every_key_on_every_server_that_stays(layout, keys):
    full = Layout(layout.version, layout.servers, "full", layout.replication_factor, layout.vnodes)
    placed = {s.name for s in layout.servers if s.state != "leaving"}
    for key in keys:
        assert set(full.replicas_now(key)) == placed
        assert len(full.replicas_now(key)) == len(placed)


def test_a_switch_to_full_writes_everywhere_during_the_move():
    base = layouts.seed(storage_settings(rf=1))
    target = moved(base, list(base.servers), "full")
    for key in KEYS:
        assert set(target.replicas_now(key)) == set(base.names())
        assert target.owners(key) == target.replicas_now(key)


def test_with_state_bumps_the_version():
    base = layouts.seed(storage_settings())
    failed = base.with_state("influx-2", "failed")
    assert failed.version == 1 and failed.server("influx-2").state == "failed"
    assert failed.placement == base.placement  # a drained server still owns its series
    with pytest.raises(KeyError):
        base.with_state("nobody", "failed")


# -- layout: the file ------------------------------------------------------------------
def test_load_without_a_file_gives_the_seed(tmp_path: Path):
    s = storage_settings()
    assert layouts.load(None, s) == layouts.seed(s)
    assert layouts.load(tmp_path / "missing" / "layout.json", s) == layouts.seed(s)
    assert layouts.stamp(None) is None
    assert layouts.stamp(tmp_path / "layout.json") is None


def test_save_then_load_round_trips(tmp_path: Path):
    s = storage_settings()
    path = tmp_path / "state" / "layout.json"
    target = moved(layouts.seed(s), [*layouts.seed(s).servers, Server("n4", "http://n4")], "full")
    layouts.save(path, target)
    assert layouts.load(path, s) == target
    assert path.stat().st_mode & 0o777 == 0o644
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind


@FAST
@given(valid_layouts())
def test_save_then_load_round_trips_generated_layouts(tmp_path_factory, layout):
    path = tmp_path_factory.mktemp("layout") / "layout.json"
    layouts.save(path, layout)
    assert layouts.load(path, storage_settings()) == layout


def test_stamp_changes_when_the_file_is_replaced(tmp_path: Path):
    path = tmp_path / "layout.json"
    base = layouts.seed(storage_settings()).with_state("influx-1", "failed")
    layouts.save(path, base)
    first = layouts.stamp(path)
    assert first is not None and layouts.stamp(path) == first
    layouts.save(path, base.with_state("influx-1", "active"))  # the same size
    second = layouts.stamp(path)
    assert second is not None and second != first
    assert layouts.load(path, storage_settings()).version == base.version + 1


def test_load_of_a_bad_file_names_the_file(tmp_path: Path):
    path = tmp_path / "layout.json"
    path.write_bytes(b'{"version": 1}')
    with pytest.raises(LayoutError, match=r"layout\.json: strategy: "):
        layouts.load(path, storage_settings())
    with pytest.raises(LayoutError, match="cannot read"):
        layouts.load(tmp_path, storage_settings())  # a folder, not a file


# -- layout: what the builders make, the parser reads back ---------------------------------
def test_replacing_a_server_keeps_the_replication_factor():
    base = layouts.seed(storage_settings(("a", "b"), rf=2))
    a, b = base.servers
    removed = layouts.settled(moved(base, [a, Server(b.name, b.url, "leaving")], "consistent"))
    assert removed.replicas_now("k") == ("a",)  # one server left: one copy, unavoidably
    added = moved(removed, [a, Server("c", "http://127.0.0.1:9999")], "consistent")
    assert added.replication_factor == 2
    assert set(added.replicas_now("k")) == {"a", "c"}


def test_a_layout_save_accepts_loads_back_even_the_seed(tmp_path: Path):
    s = storage_settings()
    path = tmp_path / "layout.json"
    try:
        layouts.save(path, layouts.seed(s))
    except (LayoutError, ValueError):
        return  # refusing to write what cannot be read back is a fix too
    assert layouts.load(path, s) == layouts.seed(s)


def test_moved_refuses_or_makes_a_layout_that_loads_back():
    base = layouts.seed(storage_settings(("a", "b", "c"), rf=2))
    try:
        target = moved(base, list(base.servers[:2]), "consistent")
    except LayoutError:
        return
    assert layouts.parse(encode(target.to_json())) == target


def test_try_acquire_never_waits_and_keeps_the_rate():
    clock = Clock()
    r = RateLimiter(100, clock=clock, sleep=clock.sleep, burst=10)
    assert r.try_acquire(10) and not r.try_acquire(1)  # the burst, then nothing
    assert r.wait_s(5) == pytest.approx(0.05)
    clock.t += 0.06  # 6 tokens (float time: not exactly 5)
    assert r.try_acquire(5) and not r.try_acquire(5)
    clock.t += 1.0
    assert r.try_acquire(50)  # above the burst once full: a debt the next ones wait out
    assert not r.try_acquire(1) and r.wait_s(1) == pytest.approx(0.41)
    assert r.try_acquire(0)
