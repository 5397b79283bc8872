"""The shared MQTT helper against a real broker: publish_wait across an outage, refusals,
and concurrent publishers on one client."""

from __future__ import annotations

import threading
import time

import pytest
from support import wait_until

from vigil.mqtt import MqttClient, PublishError


@pytest.mark.integration
def test_publish_wait_while_the_broker_is_away_delivers_once_when_it_is_back(broker, probe):
    watch = probe("vigil/alerts/#")
    client = MqttClient(broker.settings, broker.ident("vigil-alert-engine"))
    client.start()
    assert client.wait_connected(10)
    broker.stop()
    wait_until(lambda: not client.connected, what="the client to notice the outage")
    with pytest.raises(PublishError, match="still queued"):
        client.publish_wait("vigil/alerts/dev-1/r", b"held", timeout=0.5)
    broker.start()
    wait_until(
        lambda: watch.client.connected and watch.client.subscribed.is_set(),
        what="the probe to resubscribe",
    )
    # publish_wait after the timeout above must not have queued a second copy
    client.publish_wait("vigil/alerts/dev-1/r", b"second", timeout=30)
    client.stop()
    wait_until(lambda: len(watch.messages) >= 1, what="the held message")
    time.sleep(0.5)
    payloads = [m.payload for m in watch.messages]
    assert payloads.count(b"second") == 1 and payloads.count(b"held") <= 1


@pytest.mark.integration
def test_concurrent_publish_wait_with_refusals_does_not_deadlock(broker):
    client = MqttClient(broker.settings, broker.ident("vigil-alert-engine"))
    client.start()
    assert client.wait_connected(10)
    counts = {"ok": 0, "refused": 0}
    stop = threading.Event()

    def loop(topic: str) -> None:
        while not stop.is_set():
            try:
                client.publish_wait(topic, b"x", timeout=5)
                counts["ok"] += 1
            except PublishError as exc:
                assert "refused" in exc.reason
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


def test_an_ack_from_an_earlier_connection_is_skipped(broker):
    client = MqttClient(broker.settings, broker.ident("vigil-ingest"), manual_ack=True)
    sent: list[int] = []
    client.paho.ack = lambda mid, qos: sent.append(mid)  # what would go on the wire
    client.connection = 2
    assert client.ack(7, 1, connection=1) is False
    assert client.ack(8, 1, connection=2) is True
    assert client.ack(9, 0, connection=1) is True  # QoS 0 has nothing to acknowledge
    assert sent == [8]
