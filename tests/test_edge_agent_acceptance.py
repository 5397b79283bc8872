"""Nothing the agent takes is lost: not when the broker goes away for a while, and not when
the agent is SIGKILLed while the broker is down and both are restarted.

A durable reader (MQTT 5 persistent session: fixed client id, clean_start False, session
expiry, QoS 1) records every reading id that reaches the broker; Mosquitto keeps its queue
across its own graceful restart (persistence on, saved on SIGTERM)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from support import outbox_ids, sequence, unique, wait_until, write_agent_config

from edge_agent.agent import Agent
from vigil.agent_settings import load_agent_config
from vigil.messages import parse_readings
from vigil.mqtt import MqttClient


class DurableReader:
    """A viewer with a persistent session recording every reading id on the data topics."""

    def __init__(self, broker) -> None:
        self.client = MqttClient(
            broker.settings,
            broker.ident("vigil-viewer", unique("durable-")),
            persistent_session=True,
        )
        self.client.paho.reconnect_delay_set(min_delay=1, max_delay=2)
        self.ids: set[int] = set()
        self.sessions: list[bool] = []  # session present, per connection
        self._lock = threading.Lock()
        self.client.on_connected.append(self.sessions.append)
        self.client.subscribe(broker.topics.data_filter, self._record, qos=1)
        self.client.start()
        assert self.client.subscribed.wait(10), "reader not subscribed"

    def _record(self, msg) -> None:
        device = msg.topic.rsplit("/", 1)[-1]
        with self._lock:
            self.ids.update(r.id for r in parse_readings(msg.payload, device))

    def received(self) -> set[int]:
        with self._lock:
            return set(self.ids)


@pytest.fixture
def reader(broker) -> Iterator[DurableReader]:
    r = DurableReader(broker)
    yield r
    r.client.stop()


def test_readings_taken_while_the_broker_is_down_arrive_when_it_is_back(
    broker, reader, confirmer, tmp_path
):
    config = load_agent_config(
        write_agent_config(tmp_path, broker, "dev-6", confirm_timeout_s=2), environ={}
    )
    agent = Agent(config)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(reader.received()) >= 6, timeout=10, what="first readings")
        broker.stop()
        seen, at_stop = reader.received(), len(outbox_ids(config.outbox_path))
        wait_until(
            lambda: len(outbox_ids(config.outbox_path)) >= at_stop + 8,
            timeout=10,
            what="the outbox growing while the broker is down",
        )
        held = set(outbox_ids(config.outbox_path))
        assert len(held - seen) >= 8
        broker.start()
        first, _ = sequence(config.outbox_path)
        wait_until(
            lambda: set(range(first, max(held) + 1)) <= reader.received(),
            timeout=20,
            what="every reading up to the last one held during the outage",
        )
        wait_until(
            lambda: not set(outbox_ids(config.outbox_path)) & held,
            timeout=10,
            what="the held readings deleted once confirmed",
        )
        assert reader.sessions[-1] is True  # the reader's queue outlived the broker restart
    finally:
        agent.stop()
        thread.join(10)


def test_agent_killed_while_broker_down_then_both_restarted_loses_no_reading(
    broker, reader, confirmer, tmp_path, run_service
):
    """The acceptance test: SIGKILL the agent while the broker is down, restart both, and
    every reading the agent had taken arrives."""
    path = write_agent_config(tmp_path, broker, "dev-7", confirm_timeout_s=2)
    outbox = tmp_path / "dev-7-outbox.sqlite3"
    agent = run_service("edge_agent", "--config", str(path), name="agent-1")
    wait_until(lambda: len(reader.received()) >= 6, timeout=15, what="readings before outage")

    broker.stop()  # graceful: Mosquitto saves the reader's session and its queue
    seen, at_stop = reader.received(), len(outbox_ids(outbox))
    wait_until(
        lambda: len(outbox_ids(outbox)) >= at_stop + 8,
        timeout=10,
        what="the outbox growing while the broker is down",
    )
    agent.kill()  # SIGKILL: no clean-up; paho's in-memory queue is gone
    first, next_id = sequence(outbox)
    taken = set(range(first, next_id))  # ids are consecutive: every reading it ever took
    held = set(outbox_ids(outbox))
    assert held <= taken and max(held) == next_id - 1 and len(held - seen) >= 8

    run_service("edge_agent", "--config", str(path), name="agent-2")
    wait_until(
        lambda: sequence(outbox)[1] > next_id,
        timeout=15,
        what="the restarted agent taking readings with the broker still down",
    )
    broker.start()
    wait_until(
        lambda: taken <= reader.received(),
        timeout=25,
        what=f"every reading taken before the kill ({len(taken)} from {first})",
    )
    assert reader.sessions[-1] is True  # the reader's queue outlived the broker restart
    # the restarted agent continued the same sequence and deleted what it delivered
    wait_until(
        lambda: any(i >= next_id for i in reader.received()),
        timeout=10,
        what="new readings from the restarted agent",
    )
    wait_until(
        lambda: not set(outbox_ids(outbox)) & taken,
        timeout=10,
        what="the held readings deleted once confirmed",
    )
