"""Acceptance: readings from five devices, with resends and malformed messages, through a real
Mosquitto and the ingest service (a real process) into three real InfluxDB servers."""

from __future__ import annotations

import base64
import json
import random
from collections import defaultdict

import pytest
from support import publish_all, scrape, wait_subscribed, wait_until

from storage_nodes import StorageCluster
from vigil.messages import Reading, encode_readings, parse_readings

DEVICES = [f"dev-{i}" for i in range(5)]
METRICS = ["temperature", "humidity", "pressure", "co2"]
BASE_TS = 1_763_800_000_000


def make_readings(per_device: int = 200) -> dict[str, list[Reading]]:
    rng = random.Random(7)
    out: dict[str, list[Reading]] = {}
    for d, device in enumerate(DEVICES):
        rs = []
        for i in range(per_device):
            # Ten readings share each millisecond, and the metric cycles: many distinct
            # readings of one series land in the same millisecond.
            rs.append(
                Reading(
                    id=1_000_000 * (d + 1) + i,
                    device=device,
                    ts=BASE_TS + i // 10,
                    kind="sensor",
                    metric=METRICS[i % len(METRICS)],
                    value=round(rng.uniform(-50, 50), 3),
                    unit="u",
                    tags={"site": "lab"} if i % 3 else {},
                )
            )
        out[device] = rs
    return out


def as_messages(device: str, readings: list[Reading]) -> list[tuple[str, bytes]]:
    """Alternate single readings and batches of 1-7 readings."""
    msgs, i, rng = [], 0, random.Random(device)
    while i < len(readings):
        n = 1 if i % 2 == 0 else rng.randint(1, 7)
        msgs.append((f"vigil/data/{device}", encode_readings(device, readings[i : i + n])))
        i += n
    return msgs


def reading(**over):
    body = {
        "id": 5,
        "device": "dev-0",
        "ts": BASE_TS,
        "kind": "sensor",
        "metric": "temperature",
        "value": 1.0,
        "unit": "C",
        "tags": {},
    }
    body.update(over)
    return json.dumps(body).encode()


MALFORMED: list[tuple[str, bytes, str]] = [
    ("vigil/data/dev-0", b"not json", "not JSON"),
    ("vigil/data/dev-0", b"", "not JSON"),
    ("vigil/data/dev-0", b"\xff\xfe\x00", "not UTF-8"),
    ("vigil/data/dev-0", b"[1, 2]", "JSON object"),
    ("vigil/data/dev-0", reading(device="dev-1"), "does not match"),
    ("vigil/data/dev-0", reading(value="hot"), "value must be a number"),
    ("vigil/data/dev-0", reading(value=True), "value must be a number"),
    ("vigil/data/dev-0", reading(ts=1_763_800_000), "outside"),
    ("vigil/data/dev-0", reading(kind="gauge"), "kind must be one of"),
    ("vigil/data/dev-0", reading(metric="bad metric"), "not a valid name"),
    ("vigil/data/dev-0", reading(id=-3), "outside"),
    ("vigil/data/dev-0", reading(id="abc"), "must be an integer"),
    ("vigil/data/dev-0", reading(tags={"device": "x"}), "reserved"),
    ("vigil/data/dev-0", reading(tags={"k": 3}), "must be a string"),
    ("vigil/data/dev-0", reading(extra=1), "unknown field"),
    (
        "vigil/data/dev-0",
        json.dumps({"device": "dev-0", "readings": []}).encode(),
        "non-empty array",
    ),
    (
        "vigil/data/dev-0",
        json.dumps(
            {"device": "dev-0", "readings": [json.loads(reading()), json.loads(reading())]}
        ).encode(),
        "repeats a reading id",
    ),
    (
        "vigil/data/dev-0",
        json.dumps({"id": 9, "device": "dev-0"}).encode(),
        "missing required field",
    ),
    (
        "vigil/data/dev-0/extra",
        reading(value=float("inf")).replace(b"Infinity", b"1e999"),
        "out of range",
    ),
    ("vigil/data/dev-0", reading(unit="x" * 40), "longer than"),
]


def stored_ids(cluster: StorageCluster, node: str, device: str, metric: str) -> list[int]:
    series = cluster.nodes[node].query(
        f'SELECT id, value FROM "{metric}" WHERE device = $d', cluster.database, {"d": device}
    )
    return [int(row[1]) for s in series for row in s["values"]]


@pytest.mark.integration
def test_readings_resends_and_malformed_messages(cloud_config, broker, run_service, probe):
    assert len(MALFORMED) == 20
    dead = probe("vigil/deadletter/#")
    ingest = run_service("ingest_service", "--config", str(cloud_config.path))
    cluster = StorageCluster(cloud_config.config.storage)
    cluster.ensure_database()
    wait_subscribed(ingest, "vigil/data/+/#")

    readings = make_readings()
    per_device = {d: as_messages(d, rs) for d, rs in readings.items()}
    rng = random.Random(3)
    resends = []
    while len(resends) < 100:  # copies of earlier messages: same payloads, same ids
        device = rng.choice(DEVICES)
        resends.append((device, rng.choice(per_device[device])))

    for device, msgs in per_device.items():
        publish_all(broker.settings, broker.ident(device), msgs)
    for device, msg in resends:
        publish_all(broker.settings, broker.ident(device), [msg])
    for topic, payload, _ in MALFORMED:
        publish_all(broker.settings, broker.ident("dev-0"), [(topic, payload)])

    expected: dict[tuple[str, str], set[int]] = defaultdict(set)
    for rs in readings.values():
        for r in rs:
            expected[(r.device, r.metric)].add(r.id)
    assert sum(len(v) for v in expected.values()) == 1000

    def total_stored() -> int:
        return sum(cluster.count_on(n, m) for n in cluster.nodes for m in METRICS)

    wait_until(
        lambda: total_stored() >= 2000 and len(dead.messages) >= 20,
        timeout=60,
        what="2,000 stored points and 20 dead letters",
    )
    assert ingest.alive()
    # Storage rewrites are idempotent, so the counts below cannot show a redelivery that got
    # through: the ingest service's own count of dropped duplicates does.
    resent = sum(len(parse_readings(payload, device)) for device, (_, payload) in resends)
    assert (
        scrape(cloud_config.config.ingest.metrics_port, "vigil_ingest_duplicates_dropped_total")
        == resent
    )

    for (device, metric), ids in expected.items():
        replicas = {n.name for n in cluster.replicas(device, metric)}
        assert len(replicas) == 2
        for node in cluster.nodes:
            got = stored_ids(cluster, node, device, metric)
            if node in replicas:
                assert sorted(got) == sorted(ids), f"{device}/{metric} on {node}"
            else:
                assert got == [], f"{device}/{metric} must not be on {node}"
    assert total_stored() == 2000

    # Values arrive intact, including readings of one series within one millisecond.
    sample = readings["dev-3"][:40]
    for r in sample:
        node = cluster.replicas(r.device, r.metric)[0]
        series = node.query(
            f'SELECT value FROM "{r.metric}" WHERE device = $d AND id = $i',
            cluster.database,
            {"d": r.device, "i": r.id},
        )
        assert series[0]["values"][0][1] == pytest.approx(r.value)

    letters = [json.loads(m.payload) for m in dead.messages]
    assert len(letters) == 20
    for (topic, payload, reason), letter in zip(MALFORMED, letters, strict=True):
        assert reason in letter["reason"], (reason, letter)
        assert letter["topic"] == topic
        assert letter["service"] == "ingest"
        if letter["encoding"] == "utf-8":
            assert letter["payload"].encode() == payload
        else:
            assert letter["encoding"] == "base64"
            assert base64.b64decode(letter["payload"]) == payload
    assert {m.topic for m in dead.messages} == {"vigil/deadletter/dev-0"}
