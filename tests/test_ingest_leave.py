"""An ingest process that leaves the group for good (issue 8, point 3): ``--leave`` handles
what its broker session still holds, replays every hint it queued, ends its session and
deletes its hint folder. Real Mosquitto, real ingest processes, real InfluxDB servers; the
leaving member's hints are for a server it could not reach while it ran."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import yaml
from conftest import ROOT
from support import publish_all, wait_ready, wait_until

from stack.process import free_port
from storage_nodes import StorageCluster
from vigil.messages import Reading, encode_readings
from vigil.mqtt import MqttClient
from vigil.settings import load_config

DEVICES = [f"dev-{i}" for i in range(4)]
BASE_TS = 1_763_950_000_000
INGEST = [sys.executable, "-m", "ingest_service"]
pytestmark = pytest.mark.integration


def readings(n: int, start: int, count: int) -> list[Reading]:
    device = DEVICES[n]
    return [
        Reading(start + i, device, BASE_TS + start + i, "sensor", "temperature", float(i))
        for i in range(count)
    ]


def test_a_member_that_leaves_replays_its_hints_and_ends_its_session(
    cloud_config, broker, run_service, tmp_path
):
    data = yaml.safe_load(cloud_config.path.read_text())
    # no metrics: member N would listen on a port 100 x (N - 1) above the base
    data["ingest"].update(members=2, hints_dir=str(tmp_path / "hints"), metrics_port=0)
    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump(data))
    data["ingest"]["members"] = 1
    one = tmp_path / "one.yaml"
    one.write_text(yaml.safe_dump(data))
    config = load_config(two)
    cluster = StorageCluster(config.storage, background=False)
    cluster.ensure_database()
    dead = config.storage.nodes[2].name
    hints = config.ingest.member(2).hints_dir
    assert hints is not None

    wait_ready(run_service("ingest_service", "--config", str(two), "--member", "1"), 30)
    # Member 2 cannot reach the third server: what it stores there becomes hints.
    second = run_service(
        "ingest_service",
        "--config",
        str(two),
        "--member",
        "2",
        name="ingest-2",
        env={"VIGIL__STORAGE__NODES__2__URL": f"http://127.0.0.1:{free_port()}"},
    )
    wait_ready(second, 30)
    sent: dict[str, set[int]] = {d: set() for d in DEVICES}

    def publish(start: int, count: int) -> None:
        def one_device(n: int) -> None:
            device = DEVICES[n]
            rs = readings(n, start, count)
            sent[device].update(r.id for r in rs)
            msgs = [(f"vigil/data/{device}", encode_readings(device, [r])) for r in rs]
            for i in range(0, len(msgs), 100):
                publish_all(broker.settings, broker.ident(device), msgs[i : i + 100])

        threads = [threading.Thread(target=one_device, args=(n,)) for n in range(len(DEVICES))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)

    def ids_on(node: str, device: str) -> list[int]:
        series = cluster.nodes[node].query(
            'SELECT id FROM "temperature" WHERE device = $d', cluster.database, {"d": device}
        )
        return [int(row[1]) for s in series for row in s["values"]]

    def stored_somewhere() -> int:
        return sum(len({i for n in cluster.nodes for i in ids_on(n, d)}) for d in DEVICES)

    publish(1, 300)
    wait_until(lambda: stored_somewhere() >= 1200, 60, what="every reading stored once")
    summary = hints / "summary.json"
    wait_until(
        lambda: any(p.name.endswith(".seg") for p in hints.rglob("*")), 10, what="hints written"
    )
    second.stop()  # leaves its session behind, with the shared subscription
    publish(1001, 100)  # the group goes on without it (every message acknowledged)
    wait_until(lambda: stored_somewhere() > 1200, 60, what="member 1 storing its share")
    # Mosquitto goes on routing a share of the stream to the offline member's session:
    # those messages wait there, and only its own session can hand them out again.
    assert stored_somewhere() < 1600

    done = subprocess.run(
        [*INGEST, "--config", str(one), "--member", "2", "--leave", "--leave-timeout", "60"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "left: session ended, no hint left, hint folder removed" in done.stderr
    assert not hints.exists() and not summary.exists()
    # Every reading on each of its replicas once, the third server's share included.
    for device in DEVICES:
        replicas = {n.name for n in cluster.replicas(device, "temperature")}
        for node in cluster.nodes:
            got = ids_on(node, device)
            if node in replicas:
                assert sorted(got) == sorted(sent[device]), f"{device} on {node} ({dead} down)"
            else:
                assert got == []
    # The session is gone: connecting with it asks for one that no longer exists.
    present: list[bool] = []
    client = MqttClient(broker.settings, broker.ident("vigil-ingest-2"), persistent_session=True)
    client.on_connected.append(present.append)
    client.start()
    try:
        wait_until(lambda: present, 10, what="the CONNACK")
    finally:
        client.stop(end_session=True)
    assert present == [False]
    cluster.close()


def test_leaving_refuses_a_member_still_configured(cloud_config, tmp_path):
    data = yaml.safe_load(cloud_config.path.read_text())
    data["ingest"]["members"] = 2
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(data))
    for extra in (["--member", "2"], []):
        path_arg = str(path if extra else cloud_config.path)
        done = subprocess.run(
            [*INGEST, "--config", path_arg, *extra, "--leave"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert done.returncode == 2
        assert "is still configured" in done.stderr and "lower ingest.members" in done.stderr
