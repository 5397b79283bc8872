"""Acceptance: the ingest service killed with SIGKILL in the middle of a stream and restarted
loses no reading and stores none twice."""

from __future__ import annotations

import threading
from collections import defaultdict

import pytest
from support import publish_all, wait_subscribed, wait_until

from storage_nodes import StorageCluster
from vigil.messages import Reading, encode_readings

DEVICES = [f"dev-{i}" for i in range(5)]
METRICS = ["temperature", "humidity"]
PER_DEVICE = 1200
BASE_TS = 1_763_900_000_000


def stream(device_index: int) -> list[Reading]:
    device = DEVICES[device_index]
    return [
        Reading(
            id=10_000_000 * (device_index + 1) + i,
            device=device,
            ts=BASE_TS + i,
            kind="sensor",
            metric=METRICS[i % 2],
            value=float(i),
            unit="u",
        )
        for i in range(PER_DEVICE)
    ]


@pytest.mark.integration
def test_sigkill_mid_stream_loses_nothing_and_stores_nothing_twice(
    cloud_config, broker, run_service
):
    cluster = StorageCluster(cloud_config.config.storage)
    cluster.ensure_database()
    args = ("ingest_service", "--config", str(cloud_config.path))
    ingest = run_service(*args, name="ingest-1")
    wait_subscribed(ingest, "vigil/data/+/#")

    readings = {d: stream(i) for i, d in enumerate(DEVICES)}
    total = len(DEVICES) * PER_DEVICE

    def stored() -> int:
        return sum(cluster.count_on(n, m) for n in cluster.nodes for m in METRICS) // 2

    def publish(device: str) -> None:
        msgs = [(f"vigil/data/{device}", encode_readings(device, [r])) for r in readings[device]]
        for start in range(0, len(msgs), 100):  # a steady stream, not one burst
            publish_all(broker.settings, broker.ident(device), msgs[start : start + 100])

    publishers = [threading.Thread(target=publish, args=(d,)) for d in DEVICES]
    for t in publishers:
        t.start()
    wait_until(
        lambda: stored() >= total // 5,
        timeout=60,
        interval=0.01,
        what="a fifth of the stream stored",
    )
    ingest.kill()
    at_kill = stored()
    assert 0 < at_kill < total, "the kill must land in the middle of the stream"

    restarted = run_service(*args, name="ingest-2")
    for t in publishers:
        t.join(60)
    wait_until(lambda: stored() >= total, timeout=90, what="every reading stored")
    assert "session present: True" in restarted.log_tail(400)

    expected: dict[tuple[str, str], set[int]] = defaultdict(set)
    for rs in readings.values():
        for r in rs:
            expected[(r.device, r.metric)].add(r.id)
    for (device, metric), ids in expected.items():
        replicas = {n.name for n in cluster.replicas(device, metric)}
        for node in cluster.nodes:
            series = cluster.nodes[node].query(
                f'SELECT id FROM "{metric}" WHERE device = $d', cluster.database, {"d": device}
            )
            got = [int(row[1]) for s in series for row in s["values"]]
            if node in replicas:
                assert len(got) == len(ids), f"{device}/{metric} on {node}: count"
                assert set(got) == ids, f"{device}/{metric} on {node}: ids"
            else:
                assert got == []
    assert stored() == total
