"""Scale-out ingest (issue 8, point 3): two ingest processes on one MQTT 5 shared
subscription, each with its own broker user and hint folder; one is SIGKILLed mid-stream and
restarted. Every reading ends up stored, once per replica."""

from __future__ import annotations

import threading
from collections import defaultdict

import pytest
import yaml
from support import publish_all, scrape, wait_ready, wait_until

from stack.process import free_port
from storage_nodes import StorageCluster
from vigil.messages import Reading, encode_readings
from vigil.settings import MEMBER_PORT_STEP, load_config

DEVICES = [f"dev-{i}" for i in range(4)]
PER_DEVICE = 1000
BASE_TS = 1_763_900_000_000
pytestmark = pytest.mark.integration


def stream(n: int) -> list[Reading]:
    device = DEVICES[n]
    return [
        Reading(10_000_000 * (n + 1) + i, device, BASE_TS + i, "sensor", "temperature", float(i))
        for i in range(PER_DEVICE)
    ]


def test_two_members_share_the_stream_and_one_killed_loses_nothing(
    cloud_config, broker, run_service, tmp_path
):
    data = yaml.safe_load(cloud_config.path.read_text())
    data["ingest"].update(members=2, hints_dir=str(tmp_path / "hints"), metrics_port=0)
    path = tmp_path / "scaled.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    assert config.ingest.member(2).mqtt.username == "vigil-ingest-2"
    cluster = StorageCluster(config.storage, background=False)
    cluster.ensure_database()

    ports: dict[int, int] = {}

    def member(n: int, name: str):
        # Each member's metrics port is picked just before it starts: member N listens on
        # the base + 100 x (N - 1), and a port fixed at the start of the test would be
        # free of the kernel's ephemeral connections only for a moment.
        ports[n] = free_port()
        base = ports[n] - MEMBER_PORT_STEP * (n - 1)
        proc = run_service(
            "ingest_service",
            "--config",
            str(path),
            "--member",
            str(n),
            name=name,
            env={"VIGIL__INGEST__METRICS_PORT": str(base)},
        )
        wait_ready(proc, 30)
        return proc

    first = member(1, "ingest-1")
    second = member(2, "ingest-2")
    assert "$share/ingest/vigil/data/+/#" in first.log_tail(50)
    assert "as vigil-ingest-1" in first.log_tail(50) and "as vigil-ingest-2" in second.log_tail(50)

    readings = {d: stream(i) for i, d in enumerate(DEVICES)}
    total = len(DEVICES) * PER_DEVICE

    def stored() -> int:
        return sum(cluster.count_on(n, "temperature") for n in cluster.nodes) // 2

    def publish(device: str) -> None:
        msgs = [(f"vigil/data/{device}", encode_readings(device, [r])) for r in readings[device]]
        for start in range(0, len(msgs), 100):
            publish_all(broker.settings, broker.ident(device), msgs[start : start + 100])

    publishers = [threading.Thread(target=publish, args=(d,)) for d in DEVICES]
    for t in publishers:
        t.start()
    wait_until(lambda: stored() >= total // 5, 60, interval=0.01, what="a fifth stored")
    # the broker spreads the stream over the group: the first member has taken a share
    wait_until(lambda: (scrape(ports[1], "vigil_messages_in_total") or 0) > 0, 10, what="member 1")
    first.kill()
    assert stored() < total, "the kill must land in the middle of the stream"
    restarted = member(1, "ingest-1b")  # its session: what it held unacknowledged comes back
    for t in publishers:
        t.join(60)
    wait_until(lambda: stored() >= total, 90, what="every reading stored")
    assert "session present: True" in restarted.log_tail(400)
    # both took their share: the broker spread the stream over the group
    taken = [scrape(ports[n], "vigil_messages_in_total") for n in (1, 2)]
    assert all(t and t > 0 for t in taken), taken

    by_series: dict[str, set[int]] = defaultdict(set)
    for rs in readings.values():
        for r in rs:
            by_series[r.device].add(r.id)
    for device, ids in by_series.items():
        replicas = {n.name for n in cluster.replicas(device, "temperature")}
        for node in cluster.nodes:
            series = cluster.nodes[node].query(
                'SELECT id FROM "temperature" WHERE device = $d', cluster.database, {"d": device}
            )
            got = [int(row[1]) for s in series for row in s["values"]]
            if node in replicas:
                assert len(got) == len(ids) and set(got) == ids, f"{device} on {node}"
            else:
                assert got == []
    cluster.close()
