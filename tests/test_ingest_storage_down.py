"""Ingest starts and runs while a storage server is down: it does not wait for every server
at start (it used to give up after 30 s and crash-loop), and readings whose replicas answer
are stored meanwhile."""

from __future__ import annotations

import pytest
from support import publish_all, wait_subscribed, wait_until

from stack.process import free_port
from storage_nodes import HashRing, StorageCluster
from vigil.messages import Reading, encode_readings

pytestmark = pytest.mark.integration

TS = 1_763_800_000_000


def test_ingest_starts_with_a_server_down_and_stores_what_it_can(cloud_config, broker, run_service):
    storage = cloud_config.config.storage
    dead = storage.nodes[2].name
    ingest = run_service(
        "ingest_service",
        "--config",
        str(cloud_config.path),
        env={"VIGIL__STORAGE__NODES__2__URL": f"http://127.0.0.1:{free_port()}"},
    )
    wait_subscribed(ingest, "vigil/data/+/#", timeout=20)
    wait_until(
        lambda: f"storage server {dead} is not ready" in ingest.log_tail(100),
        10,
        what="the start-up check to name the server that is down",
    )

    ring = HashRing([n.name for n in storage.nodes], storage.vnodes, storage.replication_factor)
    metric = next(
        m for m in (f"m{i}" for i in range(100)) if dead not in ring.replicas(f"dev-1/{m}")
    )
    reading = Reading(1, "dev-1", TS, "sensor", metric, 4.5)
    message = ("vigil/data/dev-1", encode_readings("dev-1", [reading]))
    publish_all(broker.settings, broker.ident("dev-1"), [message])
    cluster = StorageCluster(storage)
    wait_until(lambda: cluster.points("dev-1", metric), 15, what="the reading on live replicas")
    assert ingest.alive()
