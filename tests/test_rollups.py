"""Downsampled long-term series: names and windows (pure), the most complete replica's
aggregates winning, and against three real InfluxDB servers: the rollups computed once,
stored on each replica alike, computed again when a late reading arrives, kept after the raw
readings' retention deleted them, and deleted with their series."""

from __future__ import annotations

import time

import pytest
from test_api_users import bearer, make_user

from storage_nodes import StorageCluster
from storage_nodes.downsample import Downsampler
from storage_nodes.ops import StorageOps
from storage_nodes.repair import query_ns
from vigil.messages import InvalidMessage, Reading, parse_readings
from vigil.rollups import Bucket, bucket_label, buckets, is_rollup_metric, rollup_metric, window

H = 3_600_000


@pytest.mark.parametrize(("s", "label"), [(60, "1m"), (300, "5m"), (3600, "1h"), (86400, "1d")])
def test_a_rollup_is_named_by_its_bucket(s, label):
    assert bucket_label(s) == label
    assert rollup_metric("temperature", s) == f"temperature.{label}"
    assert is_rollup_metric(f"temperature.{label}") and not is_rollup_metric("temperature")
    assert not is_rollup_metric("v1.2h3") and is_rollup_metric("a.b.12h")
    assert rollup_metric("x" * 62, s) is None  # past 64 characters: no rollup


def test_no_device_may_send_a_metric_named_like_a_rollup():
    payload = (
        b'{"device": "dev-1", "id": 1, "ts": 1765000000000, "kind": "sensor",'
        b' "metric": "temperature.1h", "value": 1}'
    )
    with pytest.raises(InvalidMessage, match="ends like a downsampled series"):
        parse_readings(payload, "dev-1")
    with pytest.raises(InvalidMessage, match="kind must be one of sensor, quote"):
        parse_readings(payload.replace(b'"sensor"', b'"rollup"'), "dev-1")


def test_the_window_is_the_whole_buckets_that_have_settled():
    # now 10:30 with 2 min to settle: buckets 00:00..10:00 with a 10 h lookback
    assert window(10 * H + 30 * 60_000, H, 10 * H, 120_000) == (0, 10 * H)
    assert window(10 * H + 60_000, H, 2 * H, 120_000) == (7 * H, 9 * H)  # 10:00 not settled


def test_per_bucket_the_replica_with_the_most_points_wins():
    complete = [[0, 4, 2.5, 1.0, 4.0], [H, 2, 5.5, 5.0, 6.0]]
    behind = [[0, 3, 2.0, 1.0, 3.0], [H, 2, 5.5, 5.0, 6.0], [2 * H, 1, 9.0, 9.0, 9.0]]
    garbage = [[3 * H, None, None, None, None], ["x", 1, 1, 1, 1], [4 * H, 1, True, 1, 1]]
    assert buckets([behind, complete, garbage]) == [
        Bucket(0, 4, 2.5, 1.0, 4.0),
        Bucket(H, 2, 5.5, 5.0, 6.0),
        Bucket(2 * H, 1, 9.0, 9.0, 9.0),
    ]


def rollup_points(cluster: StorageCluster, metric: str = "temperature.1h") -> dict:
    """Per replica of dev-1's rollup: {(time_ms, stat): value}."""
    out = {}
    for node in cluster.replicas("dev-1", metric):
        series = query_ns(
            node, f'SELECT "stat", value FROM "{metric}" WHERE device = $d', cluster.database,
            {"d": "dev-1"},
        )  # fmt: skip
        out[node.name] = {
            (row[0] // 1_000_000, row[1]): row[2] for s in series for row in s["values"]
        }
    return out


@pytest.mark.integration
def test_rollups_are_computed_once_alike_on_each_replica_and_outlive_the_raw_data(
    cloud_config, cluster
):
    now = int(time.time() * 1000)
    start = (now - 6 * H) // H * H  # six whole hours ago
    raw = [  # 4 readings in each of three hours: 1..4, 11..14, 21..24
        Reading(100 * b + i + 1, "dev-1", start + b * H + i * 60_000, "sensor", "temperature",
                10.0 * b + i + 1, "C")
        for b in range(3)
        for i in range(4)
    ]  # fmt: skip
    assert cluster.write(raw) == []
    settings = cloud_config.config.storage.downsample.model_copy(
        update={"lookback_s": 8 * 3600.0, "settle_s": 0.0}
    )
    down = Downsampler(cluster, settings)
    report = down.run_once(now)
    assert report.errors == [] and report.buckets == 3 and report.points == 12
    held = rollup_points(cluster)
    assert len(held) == 2
    first, second = held.values()
    assert first == second  # each replica alike
    assert {k: v for k, v in first.items() if k[0] == start} == {
        (start, "mean"): 2.5, (start, "min"): 1.0, (start, "max"): 4.0, (start, "count"): 4.0,
    }  # fmt: skip
    assert first[(start + 2 * H, "mean")] == 22.5

    # Computed again: the same points, nothing doubled.
    assert down.run_once(now).points == 12
    assert rollup_points(cluster) == held
    # A late reading of the first hour changes that bucket's rollup.
    assert cluster.write([Reading(999, "dev-1", start + 59 * 60_000, "sensor", "temperature",
                                  30.0, "C")]) == []  # fmt: skip
    down.run_once(now)
    late = next(iter(rollup_points(cluster).values()))
    assert late[(start, "count")] == 5.0 and late[(start, "max")] == 30.0
    assert late[(start, "mean")] == pytest.approx((1 + 2 + 3 + 4 + 30) / 5)

    # The raw readings' retention (here: 2 h) deletes them, not the rollups.
    short = cloud_config.config.storage.model_copy(update={"retention_s": 2 * 3600.0})
    ops = StorageOps(short, cluster=StorageCluster(short, background=False))
    try:
        assert ops.apply_deletions() == []
        assert ops.cluster.points("dev-1", "temperature", limit=100) == []
        assert rollup_points(ops.cluster) == rollup_points(cluster) != {}
        # Deleting the series deletes its history too, on every replica.
        ops.delete_series("dev-1", "temperature")
        assert all(points == {} for points in rollup_points(cluster).values())
        assert {t.series for t in ops.layout().tombstones} >= {
            "dev-1/temperature",
            "dev-1/temperature.1h",
        }
    finally:
        ops.cluster.close()


@pytest.mark.integration
def test_an_admin_deletes_every_series_before_a_time_on_every_replica(client, cluster):
    now = int(time.time() * 1000)
    old = [Reading(i, f"dev-{i}", now - 3 * H, "sensor", "temperature", 1.0) for i in (1, 2)]
    new = [Reading(10 + i, f"dev-{i}", now - 60_000, "sensor", "temperature", 2.0)
           for i in (1, 2)]  # fmt: skip
    assert cluster.write(old + new) == []
    anon = client.application.test_client()
    assert anon.delete(f"/storage/data?before={now - H}").status_code == 401
    alice = make_user(client, "alice")
    for method, path in (("DELETE", f"/storage/data?before={now - H}"), ("GET", "/storage"),
                         ("POST", "/storage/servers/influx-1/fail")):  # fmt: skip
        resp = anon.open(path, method=method, headers=bearer(alice))
        assert resp.status_code == 403, (method, path)  # a user cannot touch storage
        assert "storage operations needs an admin token" in resp.get_json()["detail"]
    for bad in ("", "?before=soon", f"?before={now}&x=1", "?before=0"):
        resp = client.delete(f"/storage/data{bad}")
        assert resp.status_code == 400 and resp.mimetype == "application/problem+json", bad
    resp = client.delete(f"/storage/data?before={now - H}")
    assert resp.status_code == 200, resp.get_json()
    done = resp.get_json()
    assert done["series"] == "*" and done["pending"] == []  # confirmed on every server
    for name, node in cluster.nodes.items():
        rows = query_ns(node, "SELECT value FROM temperature", cluster.database)
        values = [row[1] for s in rows for row in s["values"]]
        assert 1.0 not in values, name  # the old points are gone from every server
    ops = StorageOps(cluster.settings, cluster=cluster)
    wait_layout = ops.layout()
    assert any(t.series == "*" for t in wait_layout.tombstones)
    # and a late redelivery of one of them is refused, not stored again
    fresh = StorageCluster(cluster.settings, background=False)
    try:
        refused = fresh.write(old[:1])
        assert refused and "was deleted" in refused[0].reason
        assert fresh.write(new[:1]) == []
    finally:
        fresh.close()
