"""Confirmed publishing across a broker outage: one copy, confirmed once the broker is back."""

from __future__ import annotations

import threading

import pytest
from support import unique, wait_until

from alert_engine.publisher import ConfirmedPublisher
from vigil.mqtt import MqttClient

pytestmark = pytest.mark.integration


def test_an_alert_published_while_the_broker_is_down_arrives_once_when_it_is_back(broker):
    # A persistent watcher, so that what is published after the restart is queued for it.
    got: list[bytes] = []
    watcher = MqttClient(
        broker.settings, broker.ident("vigil-viewer", unique("watch-")), persistent_session=True
    )
    watcher.subscribe("vigil/alerts/#", lambda m: got.append(m.payload))
    engine = MqttClient(
        broker.settings, broker.ident("vigil-alert-engine"), persistent_session=True
    )
    publisher = ConfirmedPublisher(engine)
    stop = threading.Event()
    try:
        for c in (watcher, engine):
            c.start()
            assert c.wait_connected(10)
        assert watcher.subscribed.wait(10), "the watcher could not subscribe"
        assert publisher.publish_all([("vigil/alerts/dev-1/r", b"before")], stop)
        wait_until(lambda: got == [b"before"], 10, what="the watcher to get the first alert")

        broker.stop()
        wait_until(lambda: not engine.connected, 10, what="the engine to notice")
        result: list[bool] = []
        worker = threading.Thread(
            target=lambda: result.append(
                publisher.publish_all(
                    [("vigil/alerts/dev-1/r", b"during-1"), ("vigil/alerts/dev-2/r", b"during-2")],
                    stop,
                )
            )
        )
        worker.start()
        worker.join(1.5)
        assert worker.is_alive(), "publish_all returned while the broker was down"

        broker.start()
        worker.join(20)
        assert result == [True]
        wait_until(lambda: len(got) >= 3, 15, what="the alerts published during the outage")
        assert sorted(got) == [b"before", b"during-1", b"during-2"]
    finally:
        stop.set()
        engine.stop()
        watcher.stop()


def test_publish_all_gives_up_only_when_told_to_stop(broker):
    engine = MqttClient(broker.settings, broker.ident("vigil-alert-engine"))
    publisher = ConfirmedPublisher(engine)
    broker.stop()
    engine.start()
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    try:
        assert publisher.publish_all([("vigil/alerts/dev-1/r", b"x")], stop) is False
    finally:
        engine.stop()
