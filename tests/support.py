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


def wait_until(cond: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05,
               what: str = "condition") -> Any:
    """Poll ``cond`` until it returns something truthy; fail with ``what`` after timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@dataclass
class MqttProbe:
    """A watching client (the viewer credential): records every message on its filters."""

    client: MqttClient
    messages: list[paho.MQTTMessage] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(cls, broker: BrokerSettings, ident: MqttClientSettings,
              *filters: str) -> MqttProbe:
        probe = cls(MqttClient(broker, ident))
        for f in filters:
            probe.client.subscribe(f, probe._record)
        subscribed = threading.Event()
        probe.client.paho.on_subscribe = lambda *a: subscribed.set()
        probe.client.start()
        assert probe.client.wait_connected(10), "probe could not connect"
        assert subscribed.wait(10), "probe could not subscribe"
        return probe

    def _record(self, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(msg)

    def on(self, prefix: str) -> list[paho.MQTTMessage]:
        with self._lock:
            return [m for m in self.messages if m.topic.startswith(prefix)]

    def stop(self) -> None:
        self.client.stop()
