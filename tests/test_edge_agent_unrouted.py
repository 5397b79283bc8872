"""Readings published before any consumer session exists are not lost: the broker answers
"No matching subscribers" (MQTT 5), the agent keeps them and publishes them again once a
session is there to queue them."""

from __future__ import annotations

import threading

import pytest
from support import wait_until

from edge_agent.agent import Agent
from vigil.agent_settings import AgentConfig, SensorSpec
from vigil.messages import parse_readings
from vigil.mqtt import MqttClient


@pytest.mark.integration
def test_readings_nobody_could_receive_stay_in_the_outbox_until_someone_can(broker, tmp_path):
    config = AgentConfig(
        device_id="dev-4",
        broker=broker.settings,
        mqtt=broker.ident("dev-4"),
        outbox_path=tmp_path / "outbox.sqlite3",
        interval_s=0.1,
        seed=4,
        metrics_port=0,
        sensors=[SensorSpec(metric="temperature", unit="C", base=20)],
    )
    agent = Agent(config)
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    try:
        # No subscriber on the data topic at all: every publish comes back unrouted.
        wait_until(lambda: agent.outbox.depth >= 5, what="readings kept in the outbox")
        taken_before = agent.outbox.next_id

        received: list[int] = []
        consumer = MqttClient(
            broker.settings, broker.ident("vigil-ingest", "late-ingest"), persistent_session=True
        )
        consumer.subscribe(
            "vigil/data/+/#",
            lambda m: received.extend(r.id for r in parse_readings(m.payload, "dev-4")),
        )
        consumer.start()
        try:
            assert consumer.subscribed.wait(10)
            wait_until(
                lambda: set(range(agent.outbox.first_id, taken_before)) <= set(received),
                timeout=90,
                what="every reading taken before the consumer existed",
            )
        finally:
            consumer.stop()
    finally:
        agent.stop()
        runner.join(10)
    assert not runner.is_alive()
