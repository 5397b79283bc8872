"""Acceptance: one hostile device cannot stop, poison or forge anything.

Every payload here once stopped all ingest for good (the writer raised, the crash-only
service exited, the broker redelivered the same message to the restarted one) or stored a
point nobody sent. Now each lands on the dead-letter topic with its reason, the services
keep their process, and another device's readings keep being stored. This is the regression
corpus of issue 6; tests/test_mqtt_fuzz.py generates more of the same kind.
"""

from __future__ import annotations

import json

import pytest
from support import ALERT_T0, connected, publish_all, unique, wait_subscribed, wait_until

from storage_nodes import StorageCluster
from vigil.messages import Reading, Rule, encode_readings, encode_rules

pytestmark = pytest.mark.integration

TS = 1_763_800_000_000


def body(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": 7,
        "device": "dev-0",
        "ts": TS,
        "kind": "sensor",
        "metric": "temperature",
        "value": 1.0,
        "unit": "C",
    }
    base.update(over)
    return base


def raw(obj: object) -> bytes:
    return json.dumps(obj).encode()


#: (payload, words the dead letter's reason must contain)
CORPUS: list[tuple[bytes, str]] = [
    (
        b'{"id": 7, "device": "dev-0", "ts": %d, "kind": "sensor", "metric": "t", "value": %s}'
        % (TS, b"9" * 400),
        "digits",
    ),
    (
        b'{"id": 7, "device": "dev-0", "ts": %d, "kind": "sensor", "metric": "t", "value": %s}'
        % (TS, b"9" * 5001),
        "digits",
    ),
    (b"[" * 50_000 + b"]" * 50_000, "nested"),
    (b'{"device": "dev-0", "readings": ' + b"[" * 40 + b"1" + b"]" * 40 + b"}", "nested"),
    (raw(body(tags={"z\n": "x"})), "tags key"),
    (raw(body(tags={"room": "a\nb"})), "control characters"),
    (raw(body(metric="temperature\n")), "not a valid name"),
    (raw(body(unit="C\r\nforged,device=dev-1 value=1")), "control characters"),
    (raw(body(unit="@")).replace(b'"@"', b'"\\ud800"'), "surrogate"),
    (raw(body(value=1.7976931348623157e308)), ""),  # the largest float: stored, not refused
    (b'{"id": 1e400}', "out of range"),
    (raw(body(id=2**53)), "outside"),
    (raw(body(ts=10**19)), "outside"),
    (b"\x00" * 10, "not JSON"),
    (raw(body(v=True)), "version"),
]


def good(i: int) -> Reading:
    return Reading(500 + i, "dev-1", TS + i, "sensor", "humidity", float(i), "%")


def ingesting(cloud_config, run_service, probe):
    """A probe on the dead-letter topics, ingest running and subscribed, its cluster."""
    dead = probe("vigil/deadletter/#")
    ingest = run_service("ingest_service", "--config", str(cloud_config.path))
    cluster = StorageCluster(cloud_config.config.storage)
    cluster.ensure_database()
    wait_subscribed(ingest, "vigil/data/+/#")
    return dead, ingest, cluster


@pytest.mark.integration
def test_hostile_payloads_are_dead_lettered_and_ingest_goes_on(
    cloud_config, broker, run_service, probe
):
    dead, ingest, cluster = ingesting(cloud_config, run_service, probe)
    pid = ingest.pid

    # The hostile device and an honest one, interleaved.
    for i, (payload, _) in enumerate(CORPUS):
        publish_all(broker.settings, broker.ident("dev-0"), [("vigil/data/dev-0", payload)])
        publish_all(
            broker.settings,
            broker.ident("dev-1"),
            [("vigil/data/dev-1", encode_readings("dev-1", [good(i)]))],
        )
    hostile = [c for c in CORPUS if c[1]]
    wait_until(
        lambda: (
            len(dead.messages) >= len(hostile)
            and cluster.points("dev-1", "humidity", limit=100)
            and len(cluster.points("dev-1", "humidity", limit=100)) == len(CORPUS)
        ),
        timeout=30,
        what="every dead letter and every honest reading",
    )
    assert ingest.alive() and ingest.pid == pid  # never crashed, never restarted
    letters = [json.loads(m.payload) for m in dead.messages]
    assert len(letters) == len(hostile)
    for (payload, words), letter in zip(hostile, letters, strict=True):
        assert words in letter["reason"], (words, letter["reason"])
        assert letter["topic"] == "vigil/data/dev-0" and letter["service"] == "ingest"
        if letter["encoding"] == "utf-8":
            assert letter["payload"].encode() == payload

    # No point appears that was not sent: only the two series the accepted readings name.
    for name, node in cluster.nodes.items():
        found = {tuple(r) for s in node.query("SHOW SERIES", cluster.database) for r in s["values"]}
        for (key,) in found:
            assert key.startswith(("humidity,device=dev-1,", "temperature,device=dev-0,")), (
                name,
                key,
            )
    assert cluster.latest("dev-0", "temperature").value == 1.7976931348623157e308


@pytest.mark.integration
def test_a_partial_write_dead_letters_the_refused_reading_and_stores_the_rest(
    cloud_config, broker, run_service, probe
):
    dead, ingest, cluster = ingesting(cloud_config, run_service, probe)
    node = cluster.replicas("dev-2", "co2")[0]
    node.write(cluster.database, [f'co2,device=dev-9,kind=sensor value="x" {TS * 10**6}'])
    batch = [
        Reading(1, "dev-2", TS, "sensor", "pressure", 1.0),
        Reading(2, "dev-2", TS, "sensor", "co2", 400.0),  # conflicts on one replica
        Reading(3, "dev-2", TS, "sensor", "pressure", 3.0),
    ]
    message = ("vigil/data/dev-2", encode_readings("dev-2", batch))
    publish_all(broker.settings, broker.ident("dev-2"), [message])
    wait_until(lambda: dead.messages, 20, what="the dead letter of the refused reading")
    letter = json.loads(dead.messages[0].payload)
    assert letter["reading_id"] == 2
    assert "field type conflict" in letter["reason"] and node.name in letter["reason"]
    wait_until(lambda: len(cluster.points("dev-2", "pressure")) == 2, 10, what="the rest stored")
    assert [p.id for p in cluster.points("dev-2", "pressure")] == [3, 1]
    assert ingest.alive()
    assert len(dead.messages) == 1


@pytest.mark.no_influx
def test_hostile_payloads_do_not_stop_the_alert_engine(cloud_config, broker, run_service, probe):
    alerts = probe("vigil/alerts/#")
    engine = run_service("alert_engine", "--config", str(cloud_config.path))
    api = connected(broker.settings, broker.ident("vigil-api", unique("api-")))
    rule = Rule("hot", "temperature", "above", 30.0, device="dev-1", severity="critical")
    api.publish_wait(broker.topics.rules, encode_rules([rule], 1, ALERT_T0), retain=True)
    api.stop()
    wait_until(lambda: "rule set version 1" in engine.log_tail(200), 20, what="the rule set")
    for payload, _ in CORPUS:
        publish_all(broker.settings, broker.ident("dev-0"), [("vigil/data/dev-0", payload)])
    hot = Reading(9, "dev-1", ALERT_T0, "sensor", "temperature", 35.0)
    message = ("vigil/data/dev-1", encode_readings("dev-1", [hot]))
    publish_all(broker.settings, broker.ident("dev-1"), [message])
    wait_until(lambda: alerts.messages, 20, what="the alert on the honest reading")
    assert json.loads(alerts.messages[0].payload)["state"] == "firing"
    assert engine.alive()


@pytest.mark.integration
def test_an_oversized_packet_is_refused_by_the_broker_and_ingest_goes_on(
    cloud_config, broker, run_service, probe
):
    """A device cannot make the broker, or ingest, hold a message larger than any Vigil
    message: the broker disconnects it (``max_packet_size``); nothing reaches ingest."""
    from broker.provision import MAX_PACKET_BYTES

    dead, ingest, cluster = ingesting(cloud_config, run_service, probe)
    hostile = connected(broker.settings, broker.ident("dev-0"))
    try:
        hostile.publish("vigil/data/dev-0", b"x" * (MAX_PACKET_BYTES + 1), qos=1)
        wait_until(lambda: not hostile.connected, 10, what="the broker to drop the sender")
    finally:
        hostile.stop()
    message = ("vigil/data/dev-1", encode_readings("dev-1", [good(1)]))
    publish_all(broker.settings, broker.ident("dev-1"), [message])
    wait_until(lambda: cluster.points("dev-1", "humidity"), 15, what="the honest reading")
    assert ingest.alive() and "disconnected" not in ingest.log_tail(200)
    assert dead.messages == []
