"""The alerts firing now, fed by the retained messages the alert engine keeps on
``{root}/firing/{device}/{rule_id}`` (an empty one: resolved).

:class:`AlertBoard` is the thread-safe table (written on the MQTT client's thread, read by
request threads).
"""

from __future__ import annotations

import logging
import threading

import paho.mqtt.client as paho

from vigil.messages import Alert, InvalidMessage
from vigil.topics import FIRING, Topics

log = logging.getLogger(__name__)


class AlertBoard:
    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self._lock = threading.Lock()
        self._firing: dict[tuple[str, str], Alert] = {}

    def firing(self) -> list[Alert]:
        """Every alert firing now, the newest first."""
        with self._lock:
            alerts = list(self._firing.values())
        return sorted(alerts, key=lambda a: (-a.started_at, a.alert_id))

    def on_message(self, msg: paho.MQTTMessage) -> None:
        """One retained state (on the client's thread): a firing alert, or empty once
        resolved. A payload that does not match its topic is ignored."""
        key = self._key(msg.topic)
        if key is None:
            log.warning("ignoring %s: not a firing/{device}/{rule_id} topic", msg.topic)
            return
        if not msg.payload:
            with self._lock:
                self._firing.pop(key, None)
            return
        try:
            alert = Alert.decode(bytes(msg.payload))
        except InvalidMessage as exc:
            log.warning("ignoring the alert state on %s: %s", msg.topic, exc.reason)
            return
        if (alert.device, alert.rule_id) != key or alert.state != "firing":
            log.warning("ignoring the alert state on %s: it names another alert", msg.topic)
            return
        with self._lock:
            self._firing[key] = alert

    def _key(self, topic: str) -> tuple[str, str] | None:
        return self.topics.pair_under(topic, FIRING)
