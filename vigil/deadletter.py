"""Publishing dead letters: the one way every consumer puts a message it cannot process on
``{root}/deadletter/{device}`` with the reason, and knows the broker has it before it
acknowledges the original."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from vigil.messages import encode_dead_letter
from vigil.metrics import ServiceMetrics
from vigil.mqtt import ClientBase, PublishError
from vigil.topics import Topics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str  # where the original arrived
    payload: bytes  # the original, whole
    received_at: int  # epoch ms
    reason: str
    reading_id: int | None = None  # set when only one reading of the message was refused


class DeadLetters:
    """Publishes a consumer's dead letters and counts them (``vigil_dead_letters_total``)."""

    def __init__(
        self,
        mqtt: ClientBase,
        topics: Topics,
        service: str,
        metrics: ServiceMetrics,
        stop: threading.Event,
    ) -> None:
        self.mqtt, self.topics, self.service, self.stop = mqtt, topics, service, stop
        self._metrics = metrics
        self._count = metrics.counter(
            "vigil_dead_letters", "Messages (or readings) sent to the dead-letter topic"
        )

    def publish(self, dead: Sequence[DeadLetter]) -> bool:
        """Publish each once and wait until the broker has them all, however long it is
        away (paho re-sends across reconnects; publishing again would duplicate them).
        False if the service is stopping first: the originals stay unacknowledged."""
        if not dead:
            return True
        for d in dead:
            payload = encode_dead_letter(
                reason=d.reason,
                topic=d.topic,
                payload=d.payload,
                received_at=d.received_at,
                service=self.service,
                reading_id=d.reading_id,
            )
            topic = self.topics.deadletter(self.topics.device_of(d.topic))
            try:
                self.mqtt.publish_wait(topic, payload, qos=1, timeout=None, stop=self.stop)
            except PublishError:
                if self.stop.is_set():
                    log.info(
                        "stopping before the broker took %d dead letter(s): their messages "
                        "stay unacknowledged and come back after the restart",
                        len(dead),
                    )
                    return False
                raise
        self._metrics.error("invalid_message", len(dead))
        self._count.inc(len(dead))
        log.info(
            "sent %d message(s) to the dead-letter topic (first: %s: %s)",
            len(dead),
            dead[0].topic,
            dead[0].reason,
        )
        return True
