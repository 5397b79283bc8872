"""The storage cluster against real InfluxDB servers: placement, idempotent writes, and
recovery from a server that lost its database."""

from __future__ import annotations

import pytest

from storage_nodes import FatalStorageError, StorageCluster
from vigil.messages import Reading

TS = 1_763_800_000_000


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
def test_a_server_that_lost_the_database_gets_it_back_and_the_write_goes_through(storage_settings):
    cluster = StorageCluster(storage_settings)
    cluster.ensure_database()
    primary = cluster.replicas("dev-1", "temperature")[0]
    primary.query(f"DROP DATABASE {cluster.database}", None, method="POST")
    cluster.write([reading(1)])  # not a dead letter: the database is created again
    assert cluster.count_on(primary.name, "temperature", "dev-1") == 1


@pytest.mark.integration
def test_content_the_server_rejects_is_fatal(storage_settings):
    cluster = StorageCluster(storage_settings)
    cluster.ensure_database()
    node = cluster.replicas("dev-1", "temperature")[0]
    node.write(cluster.database, [f'temperature,device=dev-1,kind=sensor value="text" {TS}'])
    with pytest.raises(FatalStorageError, match="field type conflict"):
        node.write(cluster.database, ["temperature,device=dev-1,kind=sensor value=1.5 1"])
