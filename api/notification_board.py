"""The delivery records the notifier retains on ``{root}/notifications/{owner}/{id}`` (an
empty one: forgotten), as a thread-safe table (written on the MQTT client's thread, read by
request threads). The history is the notifier's; this is its read side."""

from __future__ import annotations

import logging
import threading

import paho.mqtt.client as paho

from vigil.messages import InvalidMessage, Notification
from vigil.topics import NOTIFICATIONS, Topics

log = logging.getLogger(__name__)


class NotificationBoard:
    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self._lock = threading.Lock()
        self._records: dict[str, Notification] = {}
        self._ignored = 0

    def all(self) -> list[Notification]:
        """Every record, the newest first."""
        with self._lock:
            records = list(self._records.values())
        return sorted(records, key=lambda n: (-n.created_at, n.id))

    def get(self, notification_id: str) -> Notification | None:
        with self._lock:
            return self._records.get(notification_id)

    def on_message(self, msg: paho.MQTTMessage) -> None:
        """One retained record (on the client's thread). A payload that does not match its
        topic is ignored (one warning per ten, not one per message)."""
        key = self._key(msg.topic)
        if key is None:
            self._ignore(msg.topic, "not a notifications/{owner}/{id} topic")
            return
        _owner, nid = key
        if not msg.payload:
            with self._lock:
                self._records.pop(nid, None)
            return
        try:
            record = Notification.decode(bytes(msg.payload))
        except InvalidMessage as exc:
            self._ignore(msg.topic, exc.reason)
            return
        if (record.owner, record.id) != key:
            self._ignore(msg.topic, "it names another notification")
            return
        with self._lock:
            self._records[nid] = record

    def _ignore(self, topic: str, why: str) -> None:
        self._ignored += 1
        if self._ignored % 10 == 1:
            log.warning("ignoring the delivery record on %s: %s", topic, why)

    def _key(self, topic: str) -> tuple[str, str] | None:
        return self.topics.pair_under(topic, NOTIFICATIONS)
