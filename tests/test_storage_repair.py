"""Anti-entropy repair: the pure digest, diff and rate parts, then repair against the real
InfluxDB servers of ``influx_cluster`` (points lost on one replica, points that reached
only one, retention, a replica that is down, series on a server that does not own them)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import unique

from stack.process import free_port
from storage_nodes import InfluxNode, StorageCluster
from storage_nodes import repair as rp
from storage_nodes.lineproto import point_time_ns, reading_to_line, row_to_line
from storage_nodes.repair import (
    HOUR_NS,
    BucketDigest,
    RateLimiter,
    RepairProgress,
    bucket_digests,
    copy_plan,
    differing_buckets,
    identities,
    list_series,
    missing_points,
    query_ns,
    repair_all,
    repair_series,
)
from vigil.messages import Reading

T0 = 1_763_802_000_000  # epoch ms, on the hour
HOUR_MS = 3_600_000
MS = 1_000_000  # ns


# -- pure ---------------------------------------------------------------------------------
def test_a_digest_is_the_count_and_the_sum_of_ids_modulo_2_64():
    assert BucketDigest.of([]) == BucketDigest(0, 0) == rp.EMPTY
    assert BucketDigest.of([2**63, 2**63, 5]) == BucketDigest(3, 5)
    assert BucketDigest.of([1, 2]) == BucketDigest.of([2, 1])
    with pytest.raises(ValueError):
        BucketDigest(-1, 0)
    with pytest.raises(ValueError):
        BucketDigest(1, 2**64)
    assert rp.bucket_start(T0 * MS + 5, HOUR_NS) == T0 * MS


def test_differing_buckets():
    a, b = BucketDigest(2, 10), BucketDigest(2, 11)
    assert differing_buckets({}) == []
    assert differing_buckets({"x": {0: a, 7: b}}) == []  # one replica: nothing to compare
    assert differing_buckets({"x": {0: a, 7: b}, "y": {0: a, 7: b}}) == []
    assert differing_buckets({"x": {0: a, 7: a}, "y": {0: b, 7: a}}) == [0]  # same count
    assert differing_buckets({"x": {9: a, 3: a}, "y": {}}) == [3, 9]  # missing = empty
    assert differing_buckets({"x": {3: rp.EMPTY}, "y": {}}) == []
    assert differing_buckets({"x": {1: a}, "y": {1: a}, "z": {1: b}}) == [1]


def test_missing_points():
    x, y, z = {(1, 1), (2, 2)}, {(2, 2), (3, 3)}, set[tuple[int, int]]()
    assert missing_points({"x": x, "y": y, "z": z}) == {
        "x": {(3, 3)},
        "y": {(1, 1)},
        "z": {(1, 1), (2, 2), (3, 3)},
    }
    assert missing_points({"x": x}) == {"x": set()}
    assert missing_points({}) == {}


identity_sets = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]),
    st.sets(st.tuples(st.integers(0, 6), st.integers(0, 3)), max_size=12),
    max_size=4,
)


@given(identity_sets)
def test_missing_points_matches_a_brute_force_model(per_node):
    expected = {
        name: {
            ident
            for other, theirs in per_node.items()
            if other != name
            for ident in theirs
            if ident not in held
        }
        for name, held in per_node.items()
    }
    assert missing_points(per_node) == expected


@given(identity_sets)
def test_the_copy_plan_gives_each_node_what_it_lacks_from_the_first_holder(per_node):
    plan = copy_plan(per_node)
    after = {name: set(held) for name, held in per_node.items()}
    for source, targets in plan.items():
        for target, ids in targets.items():
            assert ids <= per_node[source] and not ids & per_node[target]
            for ident in ids:
                assert source == next(n for n, h in per_node.items() if ident in h)
            after[target] |= ids
    union = set().union(*per_node.values())
    assert all(held == union for held in after.values())


@given(st.dictionaries(st.sampled_from("abc"), st.sets(st.integers(0, 5), max_size=4)))
def test_differing_buckets_matches_a_model(buckets_of):
    """Each node holds one point per bucket it has: buckets differ where not all have it."""
    per_node = {n: {b: BucketDigest.of([b]) for b in bs} for n, bs in buckets_of.items()}
    every = set().union(*buckets_of.values())
    expected = sorted(b for b in every if not all(b in bs for bs in buckets_of.values()))
    assert differing_buckets(per_node) == expected


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def test_the_rate_limiter_lets_a_burst_through_then_paces():
    clock = FakeClock()
    limiter = RateLimiter(1000, clock, clock.sleep)
    assert limiter.acquire(600) == 0 and limiter.acquire(400) == 0  # one second's worth
    assert limiter.acquire(500) == pytest.approx(0.5)
    clock.now += 10  # idle: the bucket fills up to the burst, no more
    assert limiter.acquire(1000) == 0
    assert limiter.acquire(5000) == pytest.approx(5.0)  # a chunk past the burst still goes
    assert limiter.acquire(0) == 0
    assert clock.slept == pytest.approx([0.5, 5.0])
    assert limiter.waited_s == pytest.approx(5.5)
    # over a long run the rate holds: 20,000 points at 1000/s take 19 s after the burst
    clock, total = FakeClock(), 0
    limiter = RateLimiter(1000, clock, clock.sleep)
    for _ in range(40):
        limiter.acquire(500)
        total += 500
    assert clock.now - 100 == pytest.approx(total / 1000 - 1)


def test_the_rate_limiter_takes_only_positive_rates():
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            RateLimiter(bad)
    with pytest.raises(ValueError):
        RateLimiter(10, burst=0)


# -- against the real servers ---------------------------------------------------------------
@pytest.fixture
def storage(storage_settings) -> Iterator[StorageCluster]:
    c = StorageCluster(storage_settings)
    c.ensure_database()
    yield c
    c.close()


def readings(
    device: str, metric: str, n: int, *, start_ms: int = T0, step_ms: int = 60_000, seed: int = 0
) -> list[Reading]:
    """``n`` readings of one series, ``step_ms`` apart, with ids like the edge agent's
    (a sequence seeded from the clock in microseconds), so ``id % 10**6`` varies."""
    first = 1_763_800_000_000_000 + seed * 10**9
    return [
        Reading(
            first + 7_919 * i,
            device,
            start_ms + i * step_ms,
            "sensor",
            metric,
            i + 0.5,
            "C",
            {"room": "a b,c=d"} if i % 2 else {},
        )
        for i in range(n)
    ]


def ident(r: Reading) -> tuple[int, int]:
    return (point_time_ns(r), r.id)


def held(node: InfluxNode, db: str, metric: str, device: str) -> set[tuple[int, int]]:
    return identities(node, db, metric, device)


def write_all(storage: StorageCluster, rs: list[Reading]) -> None:
    assert storage.write(rs) == []
    metric, device = rs[0].metric, rs[0].device
    for node in storage.replicas(device, metric):  # the baseline: every replica has them all
        assert held(node, storage.database, metric, device) == {ident(r) for r in rs}


def delete(admin: InfluxNode, db: str, metric: str, device: str, *, lo_ns: int, hi_ns: int) -> None:
    """Lose the points of a series with ``lo_ns <= time <= hi_ns`` on one server."""
    admin.query(
        f'DELETE FROM "{metric}" WHERE "device" = \'{device}\' '
        f"AND time >= {lo_ns} AND time <= {hi_ns}",
        db,
        method="POST",
    )


def assert_replicas_agree(storage: StorageCluster, metric: str, device: str, expected) -> None:
    for node in storage.replicas(device, metric):
        assert held(node, storage.database, metric, device) == expected, node.name
        assert storage.count_on(node.name, metric, device) == len(expected), node.name


@pytest.mark.integration
def test_the_servers_sum_of_ids_wraps_like_the_local_digest(storage):
    """InfluxDB 1.6 sums an integer field in int64 that wraps, also over several shards."""
    node, db = storage.nodes["influx-1"], storage.database
    rnd = random.Random(7)
    rs = [
        Reading(rnd.randrange(2**62, 2**63), "dev-1", T0 + i * 1000, "sensor", "big", 1.0)
        for i in range(2000)
    ]
    # and one point a week apart for ten weeks: ten shards
    rs += [
        Reading(
            rnd.randrange(2**62, 2**63), "dev-1", T0 + w * 7 * 24 * HOUR_MS, "sensor", "big", 1.0
        )
        for w in range(1, 11)
    ]
    node.write(db, [reading_to_line(r) for r in rs])
    expected: dict[int, list[int]] = {}
    for r in rs:
        expected.setdefault(rp.bucket_start(point_time_ns(r), HOUR_NS), []).append(r.id)
    digests = bucket_digests(node, db, "big", "dev-1")
    assert digests == {b: BucketDigest.of(ids) for b, ids in expected.items()}
    total = sum(r.id for r in rs)
    assert total > 2**64
    series = query_ns(node, "SELECT count(id), sum(id) FROM big", db)
    assert series[0]["values"][0][1:] == [len(rs), (total + 2**63) % 2**64 - 2**63]


@pytest.mark.integration
def test_rows_read_back_from_a_server_rebuild_the_lines_written(storage):
    node, db = storage.nodes["influx-2"], storage.database
    values = [1.0, -0.0, 0.0, 1e20, 1e21, 1.2345678901234567e-300, -17.25, 2.0**53, 1 / 3]
    rs = [
        Reading(
            10**15 + i,
            "dev-1" if i % 3 else "dev 2,=x",
            T0 + i,
            "quote" if i % 2 else "sensor",
            "rows",
            v,
            "" if i % 4 == 0 else "°C μ=1, x",
            ({"room": "a b,c=d", "sym": "€"} if i % 3 == 0 else {"floor": str(i)})
            | ({"symbol": "AAPL", "source": "simulated"} if i % 2 else {}),
        )
        for i, v in enumerate(values)
    ]
    lines = [reading_to_line(r) for r in rs]
    node.write(db, lines)
    series = query_ns(node, 'SELECT * FROM "rows"', db)
    columns = series[0]["columns"]
    rebuilt = [row_to_line("rows", columns, row) for row in series[0]["values"]]
    assert sorted(rebuilt) == sorted(lines)  # type: ignore[type-var]


@pytest.mark.integration
def test_repair_restores_what_one_replica_lost_and_then_finds_nothing(storage, influx_admin):
    db = storage.database
    rs = readings("dev-1", "temperature", 180)  # three hours, one a minute
    write_all(storage, rs)
    first, second = storage.replicas("dev-1", "temperature")
    # lose 40 minutes across the first hour boundary on the second replica
    lo, hi = (T0 + 40 * 60_000) * MS, (T0 + 80 * 60_000) * MS - 1
    delete(influx_admin(second.name), db, "temperature", "dev-1", lo_ns=lo, hi_ns=hi)
    lost = {ident(r) for r in rs if lo <= point_time_ns(r) <= hi}
    assert len(lost) == 40
    assert held(second, db, "temperature", "dev-1") == {ident(r) for r in rs} - lost

    result = repair_series([first, second], db, "temperature", "dev-1")
    assert result.errors == []
    assert (result.buckets_compared, result.buckets_differing) == (3, 2)
    assert result.copied == {first.name: 0, second.name: 40}
    assert_replicas_agree(storage, "temperature", "dev-1", {ident(r) for r in rs})
    got = storage.points("dev-1", "temperature", limit=180, newest_first=False)
    assert [p.value for p in got] == [r.value for r in rs]  # the copies are the readings

    again = repair_series([first, second], db, "temperature", "dev-1")
    assert (again.buckets_compared, again.buckets_differing, again.points_copied) == (3, 0, 0)


@pytest.mark.integration
def test_points_that_reached_only_one_replica_are_copied_both_ways(storage):
    db = storage.database
    base = readings("dev-3", "humidity", 30, step_ms=1000)
    write_all(storage, base)
    first, second = storage.replicas("dev-3", "humidity")
    only_first = readings("dev-3", "humidity", 7, start_ms=T0 + 500, step_ms=1000, seed=1)
    only_second = readings("dev-3", "humidity", 5, start_ms=T0 + 700, step_ms=1000, seed=2)
    first.write(db, [reading_to_line(r) for r in only_first])
    second.write(db, [reading_to_line(r) for r in only_second])

    result = repair_series([first, second], db, "humidity", "dev-3")
    assert result.copied == {first.name: 5, second.name: 7}
    assert result.buckets_differing == 1
    union = {ident(r) for r in base + only_first + only_second}
    assert len(union) == 42
    assert_replicas_agree(storage, "humidity", "dev-3", union)
    assert repair_series([first, second], db, "humidity", "dev-3").points_copied == 0


@pytest.mark.integration
def test_points_stamped_in_the_future_are_compared_and_copied(storage):
    """A GROUP BY time query without an upper bound stops at now(): repair bounds its own."""
    db = storage.database
    first, second = storage.replicas("dev-3", "wind")
    now_and_later = [
        *readings("dev-3", "wind", 3),
        *readings("dev-3", "wind", 2, start_ms=4_000_000_000_000, seed=1),  # in 2096
    ]
    write_all(storage, now_and_later)
    late = readings("dev-3", "wind", 4, start_ms=4_100_000_000_000, seed=2)  # in 2099
    second.write(db, [reading_to_line(r) for r in late])
    result = repair_series([first, second], db, "wind", "dev-3")
    assert (result.buckets_compared, result.buckets_differing) == (3, 1)
    assert result.copied == {first.name: 4, second.name: 0}
    assert_replicas_agree(storage, "wind", "dev-3", {ident(r) for r in now_and_later + late})


@pytest.mark.integration
def test_points_older_than_since_are_neither_compared_nor_copied(storage, influx_admin):
    db = storage.database
    rs = readings("dev-4", "temperature", 240)  # four hours
    write_all(storage, rs)
    first, second = storage.replicas("dev-4", "temperature")
    influx_admin(second.name).query(
        'DROP SERIES FROM "temperature" WHERE "device" = \'dev-4\'', db, method="POST"
    )
    assert held(second, db, "temperature", "dev-4") == set()
    since_ns = point_time_ns(rs[150])  # inside the third hour; that point itself is kept
    result = repair_series([first, second], db, "temperature", "dev-4", since_ns=since_ns)
    assert result.copied[second.name] == 90
    assert result.buckets_compared == 2  # the third hour (from since_ns) and the fourth
    assert held(second, db, "temperature", "dev-4") == {ident(r) for r in rs[150:]}
    again = repair_series([first, second], db, "temperature", "dev-4", since_ns=since_ns)
    assert (again.buckets_differing, again.points_copied) == (0, 0)
    # and until_ns bounds the other end
    upto = repair_series([first, second], db, "temperature", "dev-4", until_ns=point_time_ns(rs[9]))
    assert upto.copied[second.name] == 10
    assert storage.count_on(second.name, "temperature", "dev-4") == 100


@pytest.mark.integration
def test_a_replica_that_fails_is_named_and_the_others_are_repaired(storage, influx_admin):
    db = storage.database
    rs = readings("dev-5", "temperature", 20)
    write_all(storage, rs)
    first, second = storage.replicas("dev-5", "temperature")
    five_minutes = (T0 + 5 * 60_000) * MS - 1
    delete(influx_admin(first.name), db, "temperature", "dev-5", lo_ns=T0 * MS, hi_ns=five_minutes)
    ghost = InfluxNode("ghost", f"http://127.0.0.1:{free_port()}", timeout_s=2)
    result = repair_series([ghost, first, second], db, "temperature", "dev-5")
    assert result.copied == {"ghost": 0, first.name: 5, second.name: 0}
    assert len(result.errors) == 1 and "ghost" in result.errors[0]
    assert_replicas_agree(storage, "temperature", "dev-5", {ident(r) for r in rs})
    # a replica without the database is an error too, never an exception
    missing_db = InfluxNode(first.name, first.url, username=first.username, password="x")
    lone = repair_series([missing_db, second], db, "temperature", "dev-5")
    assert lone.points_copied == 0 and "HTTP 401" in lone.errors[0]


class Recorder:
    """A limiter that lets everything through and records the chunk sizes."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def acquire(self, n: int) -> None:
        self.sizes.append(n)


@pytest.mark.integration
def test_many_missing_points_are_read_in_pages_and_written_in_chunks(storage):
    db = storage.database
    first, second = storage.replicas("dev-6", "pressure")
    rs = readings("dev-6", "pressure", 12_000, step_ms=250)  # 50 minutes
    first.write(db, [reading_to_line(r) for r in rs])  # the second replica got none
    limiter = Recorder()
    result = repair_series([first, second], db, "pressure", "dev-6", limiter=limiter)
    assert limiter.sizes == [5000, 5000, 2000]
    assert result.copied[second.name] == 12_000
    assert_replicas_agree(storage, "pressure", "dev-6", {ident(r) for r in rs})


@pytest.mark.integration
def test_a_big_differing_bucket_is_cut_so_only_its_differing_part_is_read(
    storage, influx_admin, monkeypatch
):
    db = storage.database
    rs = readings("dev-7", "pressure", 3000, step_ms=1000)
    write_all(storage, rs)
    first, second = storage.replicas("dev-7", "pressure")
    lost = rs[2000:2003]
    delete(
        influx_admin(first.name),
        db,
        "pressure",
        "dev-7",
        lo_ns=point_time_ns(lost[0]),
        hi_ns=point_time_ns(lost[-1]),
    )
    monkeypatch.setattr(rp, "MAX_IDS_PER_FETCH", 100)
    windows: list[tuple[int, int]] = []
    real = rp.identities

    def spy(node, database, measurement, device, *, since_ns=None, until_ns=None):
        windows.append((since_ns, until_ns))
        return real(node, database, measurement, device, since_ns=since_ns, until_ns=until_ns)

    monkeypatch.setattr(rp, "identities", spy)
    result = repair_series([first, second], db, "pressure", "dev-7")
    assert result.copied == {first.name: 3, second.name: 0}
    assert windows and all(hi - lo < 600 * 10**9 for lo, hi in windows)  # not the whole hour
    monkeypatch.undo()
    assert_replicas_agree(storage, "pressure", "dev-7", {ident(r) for r in rs})


@pytest.mark.integration
def test_points_that_are_not_vigil_points_are_left_alone(storage):
    db = storage.database
    first, second = storage.replicas("dev-8", "notes")
    t = T0 * MS
    first.write(
        db,
        [
            f"notes,device=dev-8,kind=sensor value=1.5 {t}",  # no id: not counted, not copied
            # a backslash in a tag: InfluxDB stores it as is, no line could give it back
            f"notes,device=dev-8,kind=a\\b value=2.5,id=5i {t + 1}",
        ],
    )
    result = repair_series([first, second], db, "notes", "dev-8")
    assert result.points_copied == 0
    assert len(result.errors) == 1 and "1 point(s) are not Vigil points" in result.errors[0]
    assert held(second, db, "notes", "dev-8") == set()


@pytest.mark.integration
def test_repair_all_heals_every_series_and_reports_misplaced_ones(storage, influx_admin):
    db = storage.database
    every: dict[tuple[str, str], list[Reading]] = {}
    for i, device in enumerate(["dev-1", "dev-2", "dev-3", "dev-4"]):
        for metric in ("temperature", "humidity"):
            rs = readings(device, metric, 90, seed=i)
            write_all(storage, rs)
            every[(metric, device)] = rs
    # dev-1's temperature lost on its primary, dev-2's humidity partly on its secondary
    p1 = storage.replicas("dev-1", "temperature")[0]
    influx_admin(p1.name).query(
        'DROP SERIES FROM "temperature" WHERE "device" = \'dev-1\'', db, method="POST"
    )
    s2 = storage.replicas("dev-2", "humidity")[1]
    ten_minutes = (T0 + 10 * 60_000) * MS - 1
    delete(influx_admin(s2.name), db, "humidity", "dev-2", lo_ns=T0 * MS, hi_ns=ten_minutes)
    # dev-3's temperature also sits on the server that does not own it
    owners = {n.name for n in storage.replicas("dev-3", "temperature")}
    (stray,) = [n for name, n in storage.nodes.items() if name not in owners]
    stray.write(db, [reading_to_line(r) for r in every[("temperature", "dev-3")]])

    progress: list[RepairProgress] = []
    nodes = list(storage.nodes.values())
    report = repair_all(storage.replicas, nodes, db, on_progress=progress.append)
    assert report.errors == []
    assert report.series == 8
    assert report.copied[p1.name] >= 90 and report.points_copied == 90 + 10
    assert report.buckets_differing == 2 + 1
    assert report.misplaced == {stray.name: [("temperature", "dev-3")]}
    assert storage.count_on(stray.name, "temperature", "dev-3") == 90  # reported, not deleted
    assert [(p.series_done, p.series_total) for p in progress] == [(i, 8) for i in range(1, 9)]
    assert progress[-1].points_copied == 100
    for (metric, device), rs in every.items():
        assert_replicas_agree(storage, metric, device, {ident(r) for r in rs})
    json.dumps(report.to_json())

    again = repair_all(storage.replicas, nodes, db)
    assert (again.points_copied, again.buckets_differing) == (0, 0)
    assert again.misplaced == report.misplaced


@pytest.mark.integration
def test_list_series_and_a_server_that_cannot_be_listed(storage):
    db = storage.database
    write_all(storage, readings("dev-9", "temperature", 3))
    write_all(storage, readings("dev 9,x", "odd metric", 3))
    found = set()
    for node in storage.nodes.values():
        found |= list_series(node, db)
    assert found == {("temperature", "dev-9"), ("odd metric", "dev 9,x")}
    ghost = InfluxNode("ghost", f"http://127.0.0.1:{free_port()}", timeout_s=2)
    report = repair_all(storage.replicas, [*storage.nodes.values(), ghost], db)
    assert report.series == 2 and report.points_copied == 0
    assert len(report.errors) == 1 and report.errors[0].startswith("listing series: ghost")
    assert repair_all(storage.replicas, [], unique("db")).series == 0
