"""The latest status of every device, fed by the retained messages on
``{root}/status/+``.

:class:`StatusBoard` is the thread-safe table (written on paho's thread, read by request
threads); :meth:`StatusBoard.on_message` is the MQTT handler. The topic names the device
(the broker confines each device to its own status topic), so a payload naming another
device is ignored; an empty retained payload clears the status.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import paho.mqtt.client as paho

from vigil.messages import DeviceStatus, InvalidMessage
from vigil.settings import DeviceEntry
from vigil.topics import STATUS, Topics

log = logging.getLogger(__name__)


class StatusBoard:
    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self._lock = threading.Lock()
        self._latest: dict[str, DeviceStatus] = {}

    def update(self, device: str, status: DeviceStatus | None) -> None:
        with self._lock:
            if status is None:
                self._latest.pop(device, None)
            else:
                self._latest[device] = status

    def get(self, device: str) -> DeviceStatus | None:
        with self._lock:
            return self._latest.get(device)

    def all(self) -> dict[str, DeviceStatus]:
        with self._lock:
            return dict(self._latest)

    def on_message(self, msg: paho.MQTTMessage) -> None:
        """Handle one message on the status topics (runs on paho's thread)."""
        device = self.topics.device_of(msg.topic, STATUS)
        if device is None:
            log.warning("ignoring a status message on %s: the topic names no device", msg.topic)
            return
        if not msg.payload:
            self.update(device, None)
            return
        try:
            status = DeviceStatus.decode(bytes(msg.payload))
        except InvalidMessage as exc:
            log.warning("ignoring the status message on %s: %s", msg.topic, exc.reason)
            return
        if status.device != device:
            log.warning(
                "ignoring the status message on %s: it names device %r", msg.topic, status.device
            )
            return
        self.update(device, status)


def status_dict(status: DeviceStatus | None) -> dict[str, Any] | None:
    if status is None:
        return None
    return {"state": status.state, "ts": status.ts, "reason": status.reason}


def device_view(
    device: str, configured: dict[str, DeviceEntry], status: DeviceStatus | None
) -> dict[str, Any]:
    entry = configured.get(device)
    return {
        "id": device,
        "description": entry.description if entry else "",
        "configured": entry is not None,
        "status": status_dict(status),
    }


def list_devices(
    configured: list[DeviceEntry], statuses: dict[str, DeviceStatus]
) -> list[dict[str, Any]]:
    """Configured devices and every device seen on the status topics, sorted by id."""
    by_id = {d.id: d for d in configured}
    return [device_view(d, by_id, statuses.get(d)) for d in sorted(set(by_id) | set(statuses))]
