"""The storage ring: every server with its share, and where a series lives (checked
against where StorageCluster.write really put the readings)."""

from __future__ import annotations

import pytest
from support import STORED_VALUES as VALUES


def test_replicas_are_the_two_servers_holding_the_series(client, stored, cluster):
    body = client.get("/devices/dev-1/metrics/temperature/replicas").get_json()
    names = [r["name"] for r in body["replicas"]]
    assert body["series"] == "dev-1/temperature"
    assert names == list(cluster.ring.replicas("dev-1/temperature")) and len(names) == 2
    assert {r["url"] for r in body["replicas"]} == {cluster.nodes[n].url for n in names}
    for name in cluster.nodes:
        held = cluster.count_on(name, "temperature", "dev-1")
        assert held == (len(VALUES) if name in names else 0), name


def test_ring_lists_every_server_with_its_share(client, cluster):
    body = client.get("/ring").get_json()
    assert body["replication_factor"] == 2 and body["vnodes"] == 256
    assert [n["name"] for n in body["nodes"]] == ["influx-1", "influx-2", "influx-3"]
    assert all(n["up"] for n in body["nodes"])
    assert sum(n["share"] for n in body["nodes"]) == pytest.approx(1.0, abs=1e-3)
    assert {n["url"] for n in body["nodes"]} == {n.url for n in cluster.nodes.values()}


def test_replicas_need_no_data_and_agree_with_the_ring_for_many_series(client, cluster):
    for i in range(20):
        device, metric = f"dev-{i % 10}", f"m{i}"
        body = client.get(f"/devices/{device}/metrics/{metric}/replicas").get_json()
        assert [r["name"] for r in body["replicas"]] == list(
            cluster.ring.replicas(f"{device}/{metric}")
        )
