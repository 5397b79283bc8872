"""The shared MQTT helper against a real broker: publish_wait across an outage, refusals,
and concurrent publishers on one client."""

from __future__ import annotations

import threading

import pytest
from support import connected, wait_until

from vigil.fastmqtt import FastMqttClient
from vigil.mqtt import MqttClient, PublishError


@pytest.mark.integration
@pytest.mark.parametrize("client_class", [MqttClient, FastMqttClient])
def test_publish_wait_while_the_broker_is_away_delivers_once_when_it_is_back(broker, client_class):
    # A persistent session, so the watcher misses nothing across the broker's restart.
    got: list[bytes] = []
    watch = connected(
        broker.settings, broker.ident("vigil-viewer", "held-watcher"), persistent_session=True
    )
    watch.subscribe("vigil/alerts/#", lambda m: got.append(bytes(m.payload)))
    assert watch.subscribed.wait(10)
    client = client_class(broker.settings, broker.ident("vigil-alert-engine"))
    client.start()
    try:
        assert client.wait_connected(10)
        broker.stop()
        wait_until(lambda: not client.connected, what="the client to notice the outage")
        with pytest.raises(PublishError, match="still queued"):
            client.publish_wait("vigil/alerts/dev-1/r", b"held", timeout=0.5)
        broker.start()
        # waiting again must not queue a second copy of "held"
        client.publish_wait("vigil/alerts/dev-1/r", b"second", timeout=30)
        wait_until(
            lambda: sorted(got) == [b"held", b"second"],
            timeout=30,
            what=f"held and second, once each (got {got})",
        )
        client.publish_wait("vigil/alerts/dev-1/r", b"last", timeout=30)
        wait_until(lambda: b"last" in got, what="the last message")
        assert got.count(b"held") == 1 and got.count(b"second") == 1
        assert client.connection == 2
    finally:
        client.stop()
        watch.stop()


@pytest.mark.integration
def test_concurrent_publish_wait_with_refusals_does_not_deadlock(broker):
    client = MqttClient(broker.settings, broker.ident("vigil-alert-engine"))
    client.start()
    assert client.wait_connected(10)
    counts = {"ok": 0, "refused": 0}
    errors: list[BaseException] = []
    stop = threading.Event()

    def loop(topic: str) -> None:
        while not stop.is_set():
            try:
                client.publish_wait(topic, b"x", timeout=5)
                counts["ok"] += 1
            except PublishError as exc:
                if "refused" not in exc.reason:
                    errors.append(exc)
                    return
                counts["refused"] += 1

    threads = [
        threading.Thread(target=loop, args=(t,), daemon=True)
        for t in ("vigil/alerts/dev-1/r", "vigil/data/dev-1", "vigil/alerts/dev-2/r")
    ]
    for t in threads:
        t.start()
    try:
        wait_until(
            lambda: counts["ok"] >= 2000 and counts["refused"] >= 500,
            timeout=30,
            what=f"progress on every thread (deadlock?) {counts}",
        )
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        client.stop()
    assert errors == []
    assert not any(t.is_alive() for t in threads), "a publisher is stuck"


def test_an_ack_from_an_earlier_connection_is_skipped(broker):
    client = MqttClient(broker.settings, broker.ident("vigil-ingest"), manual_ack=True)
    sent: list[int] = []
    client.paho.ack = lambda mid, qos: sent.append(mid)  # what would go on the wire
    client.connection = 2
    assert client.ack(7, 1, connection=1) is False
    assert client.ack(8, 1, connection=2) is True
    assert client.ack(9, 0, connection=1) is True  # QoS 0 has nothing to acknowledge
    assert sent == [8]
