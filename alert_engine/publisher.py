"""Publishing alerts so that each is confirmed by the broker, however long it is away.

Each message is handed to paho once, at QoS 1. paho keeps it until the broker's PUBACK and
re-sends it (with DUP) after every reconnect, so waiting is all a retry needs: publishing
again would only put a second copy on the wire. Confirmations arrive through
``MqttClient.on_published``, keyed by message id.

This is what ``MqttClient.publish_wait(..., timeout=None, stop=...)`` is meant to do, one
message at a time; it is kept until ``publish_wait`` can wait on a message published while
disconnected (it raises paho's RuntimeError "not currently connected" instead).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from paho.mqtt.enums import MQTTErrorCode

from vigil.mqtt import MqttClient

log = logging.getLogger(__name__)

#: How long to wait before saying that the broker is slow to confirm.
WARN_AFTER_S = 5.0
POLL_S = 0.2
REQUEUE_DELAY_S = 0.5


class ConfirmedPublisher:
    def __init__(self, client: MqttClient) -> None:
        self._client = client
        self._acked: set[int] = set()
        self._cond = threading.Condition()
        client.on_published.append(self._on_published)

    def _on_published(self, mid: int) -> None:  # paho's thread
        with self._cond:
            self._acked.add(mid)
            self._cond.notify_all()

    def _hand_over(self, topic: str, payload: bytes) -> int | None:
        """Queue one QoS 1 publish in paho; its message id, or None if paho refused it."""
        info = self._client.publish(topic, payload, qos=1)
        if info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            return int(info.mid)
        log.warning(
            "paho did not queue the alert for %s (%s); trying again",
            topic,
            info.rc.name if isinstance(info.rc, MQTTErrorCode) else info.rc,
        )
        return None

    def publish_all(self, messages: Sequence[tuple[str, bytes]], stop: threading.Event) -> bool:
        """Publish ``messages`` (topic, payload) in order and wait until the broker confirmed
        every one. Returns False only if ``stop`` was set first."""
        if not messages:
            return True
        started = time.monotonic()
        warned = False
        unqueued = list(messages)
        pending: set[int] = set()
        while True:
            still: list[tuple[str, bytes]] = []
            for topic, payload in unqueued:
                mid = self._hand_over(topic, payload)
                if mid is None:
                    still.append((topic, payload))
                else:
                    pending.add(mid)
            unqueued = still
            deadline = time.monotonic() + (REQUEUE_DELAY_S if unqueued else POLL_S)
            with self._cond:
                while True:
                    done = pending & self._acked
                    self._acked -= done
                    pending -= done
                    if not pending and not unqueued:
                        if warned:
                            log.info(
                                "broker confirmed %d alert(s) after %.1fs",
                                len(messages),
                                time.monotonic() - started,
                            )
                        return True
                    remaining = deadline - time.monotonic()
                    if stop.is_set() or remaining <= 0:
                        break
                    self._cond.wait(min(remaining, POLL_S))
            if stop.is_set():
                log.warning(
                    "stopping with %d alert(s) not confirmed by the broker; their "
                    "readings stay unacknowledged and will be evaluated again",
                    len(pending) + len(unqueued),
                )
                return False
            if not warned and time.monotonic() - started > WARN_AFTER_S:
                warned = True
                log.warning(
                    "broker has not confirmed %d alert(s) after %.0fs (connected: %s); "
                    "still waiting",
                    len(pending) + len(unqueued),
                    WARN_AFTER_S,
                    self._client.connected,
                )
