"""The storage cluster against real InfluxDB servers: placement, idempotent writes, and
recovery from a server that lost its database."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support import wait_until

from storage_nodes import (
    DatabaseNotFound,
    FatalStorageError,
    InfluxNode,
    StorageCluster,
    StorageError,
)
from storage_nodes.provision import grant_database
from vigil.messages import Reading

TS = 1_763_800_000_000
CREATE_ADMIN = "CREATE USER \"x\" WITH PASSWORD 'p' WITH ALL PRIVILEGES"


def reading(i: int, **kw) -> Reading:
    base = dict(
        id=i,
        device="dev-1",
        ts=TS,
        kind="sensor",
        metric="temperature",
        value=float(i),
        unit="C",
        tags={"room": "a b,c=d"},
    )
    base.update(kw)
    return Reading(**base)


@pytest.mark.integration
def test_rewrites_are_idempotent_and_same_millisecond_readings_distinct(storage_settings):
    cluster = StorageCluster(storage_settings)
    cluster.ensure_database()
    batch = [reading(i) for i in range(1, 51)]  # fifty readings, one millisecond
    cluster.write(batch)
    cluster.write(batch[:20])  # a redelivery
    replicas = [n.name for n in cluster.replicas("dev-1", "temperature")]
    for name in cluster.nodes:
        expected = 50 if name in replicas else 0
        assert cluster.count_on(name, "temperature", "dev-1") == expected
    assert [p.value for p in cluster.points("dev-1", "temperature", limit=3)] == [50.0, 49.0, 48.0]


@pytest.mark.integration
def test_a_server_that_lost_the_database_holds_writes_until_it_is_provisioned_again(
    storage_settings, influx_admin
):
    """The services' user may not create databases: a server that lost its database refuses
    the write as retriable (ingest holds the batch) until the admin provisions it again."""
    cluster = StorageCluster(storage_settings)
    cluster.ensure_database()
    primary = cluster.replicas("dev-1", "temperature")[0]
    admin = influx_admin(primary.name)
    admin.query(f"DROP DATABASE {cluster.database}", None, method="POST")
    with pytest.raises(DatabaseNotFound, match="may not create it"):
        cluster.write([reading(1)])
    assert not cluster.health.available(primary.name)  # marked down: no write waits on it
    grant_database(admin, cluster.database, storage_settings.username)
    wait_until(lambda: cluster.health.available(primary.name), 10)  # the probe saw it again
    assert cluster.write([reading(1)]) == []
    assert cluster.count_on(primary.name, "temperature", "dev-1") == 1


@pytest.mark.integration
def test_every_server_refuses_anonymous_access_and_users_get_only_their_grants(
    storage_settings, influx_cluster, influx_credentials
):
    cluster = StorageCluster(storage_settings)
    db = cluster.database
    cluster.write([reading(1)])
    creds = influx_credentials
    for server in influx_cluster:
        anonymous = InfluxNode(server.name, server.url)
        viewer = InfluxNode(
            server.name, server.url, username=creds.viewer.username, password=creds.viewer.password
        )
        service = cluster.nodes[server.name]
        assert anonymous.ping()  # /ping stays open: health checks need no secret
        forged = [f"forged,device=dev-1 value=1 {TS * 10**6}"]
        attempts = [
            (anonymous, "query", ("SHOW DATABASES", None)),
            (anonymous, "write", (db, forged)),
            (anonymous, "query", (CREATE_ADMIN, None, {}, "POST")),
            (viewer, "write", (db, forged)),
            (service, "query", ("CREATE DATABASE other", None, {}, "POST")),
            (service, "query", (f"DROP DATABASE {db}", None, {}, "POST")),
            (service, "query", (CREATE_ADMIN, None, {}, "POST")),
        ]
        for node, method, args in attempts:
            with pytest.raises(StorageError, match=r"HTTP 40[13]|authoriz"):
                getattr(node, method)(*args)
        viewer.query('SELECT count(value) FROM "temperature"', db)  # reading is allowed
        anonymous.close()
        viewer.close()


@pytest.mark.integration
def test_content_the_server_rejects_is_fatal(storage_settings):
    cluster = StorageCluster(storage_settings)
    cluster.ensure_database()
    node = cluster.replicas("dev-1", "temperature")[0]
    node.write(cluster.database, [f'temperature,device=dev-1,kind=sensor value="text" {TS}'])
    with pytest.raises(FatalStorageError, match="field type conflict"):
        node.write(cluster.database, ["temperature,device=dev-1,kind=sensor value=1.5 1"])


@pytest.mark.integration
def test_reads_fail_over_when_a_replica_lacks_the_database(storage_settings, influx_admin):
    cluster = StorageCluster(storage_settings)
    cluster.ensure_database()
    assert cluster.write([reading(i) for i in range(1, 6)]) == []
    primary, _secondary = cluster.replicas("dev-1", "temperature")
    influx_admin(primary.name).query(f"DROP DATABASE {cluster.database}", None, method="POST")
    # InfluxDB answers 200 with "database not found" inside: the next replica answers.
    assert [p.id for p in cluster.points("dev-1", "temperature", limit=10)] == [5, 4, 3, 2, 1]
    assert cluster.latest("dev-1", "temperature").id == 5


@pytest.mark.integration
def test_no_replica_with_the_database_reads_as_no_data(storage_settings):
    cluster = StorageCluster(storage_settings)  # the database was never created
    assert cluster.points("dev-1", "temperature") == []


@pytest.mark.integration
def test_a_partial_write_stores_the_rest_and_names_the_refused_points(storage_settings):
    """InfluxDB's "partial write": some points were stored, some refused. The refused ones
    come back one by one with InfluxDB's reason; the others are on all their replicas."""
    cluster = StorageCluster(storage_settings)
    cluster.ensure_database()
    node = cluster.replicas("dev-1", "humidity")[0]
    # Someone made "humidity"'s value a string on one replica: floats now conflict there.
    node.write(cluster.database, [f'humidity,device=dev-0,kind=sensor value="wet" {TS * 10**6}'])
    good = [reading(i) for i in range(1, 40)]
    bad = [reading(100, metric="humidity"), reading(101, metric="humidity", ts=TS + 1)]
    rejected = cluster.write([*good[:20], bad[0], *good[20:], bad[1]])
    assert [(r.reading.id, r.node) for r in rejected] == [(100, node.name), (101, node.name)]
    assert all("field type conflict" in r.reason for r in rejected)
    for name in cluster.nodes:
        in_replicas = name in [n.name for n in cluster.replicas("dev-1", "temperature")]
        assert cluster.count_on(name, "temperature", "dev-1") == (39 if in_replicas else 0)


def test_a_reading_line_protocol_cannot_carry_is_refused_not_split():
    from storage_nodes.lineproto import LineProtocolError, reading_to_line

    for bad in (
        reading(1, tags={"z\n": "v"}),
        reading(1, tags={"room": "a\nb"}),
        reading(1, unit="C\r"),
        reading(1, metric="t\n"),
        reading(1, value=float("inf")),
    ):
        with pytest.raises(LineProtocolError):
            reading_to_line(bad)
    assert "\n" not in reading_to_line(reading(1, tags={"room": "a b,c=d"}))


@pytest.mark.integration
def test_the_provision_command_is_idempotent_and_keeps_the_password_files(
    tmp_path, influx_cluster, influx_credentials
):
    """``python -m storage_nodes provision`` (what compose's setup runs) on servers that are
    already provisioned: same passwords, the new database granted, twice in a row."""
    import yaml

    from storage_nodes.__main__ import main
    from vigil.settings import load_config

    base = yaml.safe_load((Path(__file__).parent.parent / "config" / "vigil.yaml").read_text())
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for cred in (influx_credentials.admin, influx_credentials.viewer):
        user = cred.username
        (secrets / f"influxdb-{user}.password").write_text(cred.password + "\n")
    base["storage"]["database"] = "provisioned"
    base["storage"]["nodes"] = [{"name": s.name, "url": s.url} for s in influx_cluster]
    base["storage"]["password_file"] = str(influx_credentials.service_password_file)
    base["storage"]["layout_path"] = str(tmp_path / "layout.json")  # not a running stack's
    path = tmp_path / "vigil.yaml"
    path.write_text(yaml.safe_dump(base))
    assert main(["provision", "--config", str(path), "--secrets", str(secrets)]) == 0
    assert main(["provision", "--config", str(path), "--secrets", str(secrets)]) == 0
    cluster = StorageCluster(load_config(path, environ={}).storage)
    # a reading of now: the shipped config keeps 14 days, and TS is older than that
    assert cluster.write([reading(1, ts=int(time.time() * 1000))]) == []
    for cred in (influx_credentials.admin, influx_credentials.viewer):
        kept = (secrets / f"influxdb-{cred.username}.password").read_text().strip()
        assert kept == cred.password  # set again from the files, never regenerated
    viewer = InfluxNode(
        "influx-1", influx_cluster[0].url, username="vigil-viewer", password=cred.password
    )
    assert viewer.query("SHOW MEASUREMENTS", "provisioned") is not None


def test_the_provision_command_names_a_bad_config(tmp_path, capsys):
    from storage_nodes.__main__ import main

    path = tmp_path / "vigil.yaml"
    path.write_text("storage: {nodes: []}\n")
    assert main(["provision", "--config", str(path), "--secrets", str(tmp_path)]) == 2
    assert str(path) in capsys.readouterr().err


def test_rows_that_are_not_vigil_readings_are_skipped_not_fatal():
    from storage_nodes.cluster import _rows

    series = [
        {
            "columns": ["time", "value", "id"],
            "values": [[1, 2.5, 3], [2, "text", 4], [3, None, 5], [4, 1, None], [True, 1.0, 1]],
        },
        {"columns": ["time", "other"], "values": [[1, 2]]},
    ]
    rows, skipped = _rows("m", series)
    assert [(r.time_ns, r.value, r.id) for r in rows] == [(1, 2.5, 3)]
    assert skipped == 4  # a text value, no value, no id, a time that is not a number


def _hinting_cluster(settings, tmp_path: Path, **overrides) -> StorageCluster:
    from storage_nodes.hints import HintStore

    settings = settings.model_copy(update={"probe_interval_s": 0.2, **overrides})
    return StorageCluster(
        settings, hints=HintStore(tmp_path / "hints", max_bytes=2**30, max_age_s=3600)
    )


@pytest.mark.integration
@pytest.mark.parametrize("level, stored", [("one", True), ("quorum", False), ("all", False)])
def test_a_server_marked_down_gets_hints_at_consistency_one_only(
    storage_settings, tmp_path, level, stored
):
    """With one replica down, ``one`` acknowledges (stored on the other + a fsynced hint);
    ``quorum`` of two and ``all`` refuse as retriable and queue nothing."""
    from storage_nodes import RetriableStorageError

    cluster = _hinting_cluster(storage_settings, tmp_path, consistency=level)
    try:
        primary, secondary = (n.name for n in cluster.replicas("dev-1", "temperature"))
        cluster._stop.set()  # no probe brings it back, no replay runs
        for thread in cluster._threads:
            thread.join()
        cluster.health.mark_down(primary, "test")
        batch = [reading(i) for i in range(1, 11)]
        if stored:
            assert cluster.write(batch) == []
            assert cluster.hints.queue(primary).stats().points == 10
            assert cluster.count_on(secondary, "temperature", "dev-1") == 10
            assert cluster.count_on(primary, "temperature", "dev-1") == 0  # none sent to it
        else:
            with pytest.raises(RetriableStorageError, match="consistency"):
                cluster.write(batch)
            assert primary not in cluster.hints.targets()
    finally:
        cluster.close()


@pytest.mark.integration
def test_hints_are_replayed_once_the_server_is_up_and_reads_merge_meanwhile(
    storage_settings, tmp_path
):
    cluster = _hinting_cluster(storage_settings, tmp_path)
    try:
        primary, secondary = (n.name for n in cluster.replicas("dev-1", "temperature"))
        cluster.health.set_failed(primary, True)  # a probe does not bring it back
        cluster.write([reading(i) for i in range(1, 101)])
        # Reads leave the down server out and still answer everything.
        assert len(cluster.points("dev-1", "temperature", limit=1000)) == 100
        cluster.health.set_failed(primary, False)
        wait_until(lambda: cluster.health.available(primary), 10, what="the probe")
        queue = cluster.hints.queue(primary)
        wait_until(lambda: queue.stats().points == 0, 10, what="replay")
        assert cluster.count_on(primary, "temperature", "dev-1") == 100
        assert cluster.counters.replayed[primary] == 100
        assert cluster.count_on(secondary, "temperature", "dev-1") == 100
    finally:
        cluster.close()


@pytest.mark.integration
def test_read_repair_writes_back_what_one_replica_lacks(storage_settings, influx_admin):
    cluster = StorageCluster(storage_settings)
    try:
        cluster.write([reading(i, ts=TS + i) for i in range(1, 21)])
        primary = cluster.replicas("dev-1", "temperature")[0].name
        admin = influx_admin(primary)
        admin.query(
            f'DELETE FROM "temperature" WHERE time >= {(TS + 15) * 10**6}',
            cluster.database,
            method="POST",
        )
        assert cluster.count_on(primary, "temperature", "dev-1") == 14
        newest = cluster.points("dev-1", "temperature", limit=10)
        assert [p.id for p in newest] == list(range(20, 10, -1))  # merged: nothing missing
        wait_until(lambda: cluster.counters.read_repaired[primary] == 6, 10, what="repair")
        assert cluster.count_on(primary, "temperature", "dev-1") == 20
    finally:
        cluster.close()
