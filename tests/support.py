"""Helpers shared by the tests: waiting on conditions, watching MQTT topics."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho

from vigil.mqtt import MqttClient
from vigil.settings import BrokerSettings, MqttClientSettings


def wait_until(
    cond: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Poll ``cond`` until it returns something truthy; fail with ``what`` after timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


def wait_subscribed(proc: Any, topic_filter: str, timeout: float = 30.0) -> None:
    """Wait until a service process logged that the broker granted its subscription (a
    persistent session queues messages only from then on)."""
    wait_until(
        lambda: f"subscribed to {topic_filter}" in proc.log_tail(400),
        timeout,
        what=f"{proc.name} to subscribe to {topic_filter}",
    )


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@dataclass
class MqttProbe:
    """A watching client (the viewer credential): records every message on its filters."""

    client: MqttClient
    messages: list[paho.MQTTMessage] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(cls, broker: BrokerSettings, ident: MqttClientSettings, *filters: str) -> MqttProbe:
        probe = cls(MqttClient(broker, ident))
        for f in filters:
            probe.client.subscribe(f, probe._record)
        probe.client.start()
        assert probe.client.wait_connected(10), "probe could not connect"
        assert probe.client.subscribed.wait(10), "probe could not subscribe"
        return probe

    def _record(self, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(msg)

    def on(self, prefix: str) -> list[paho.MQTTMessage]:
        with self._lock:
            return [m for m in self.messages if m.topic.startswith(prefix)]

    def stop(self) -> None:
        self.client.stop()


def publish_all(
    broker: BrokerSettings,
    ident: MqttClientSettings,
    messages: list[tuple[str, bytes]],
    timeout: float = 60.0,
) -> None:
    """Publish ``(topic, payload)`` pairs at QoS 1 in order, as ``ident``; return when the
    broker acknowledged them all."""
    client = MqttClient(broker, ident)
    client.start()
    try:
        assert client.wait_connected(10), f"{ident.username} could not connect"
        infos = [client.publish(t, p, qos=1) for t, p in messages]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            assert info.is_published(), "broker did not acknowledge a publish"
    finally:
        client.stop()
