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
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho

from api.db import DeviceRow
from vigil.messages import DeviceStatus, InvalidMessage
from vigil.settings import DeviceEntry
from vigil.topics import STATUS, Topics

log = logging.getLogger(__name__)


class StatusBoard:
    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self._lock = threading.Lock()
        self._latest: dict[str, DeviceStatus] = {}
        #: called with the device after each status stored (on paho's thread: keep short)
        self.listeners: list[Callable[[str], None]] = []

    def update(self, device: str, status: DeviceStatus | None) -> None:
        with self._lock:
            if status is None:
                self._latest.pop(device, None)
            else:
                self._latest[device] = status
        for listener in self.listeners:
            listener(device)

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
    out: dict[str, Any] = {"state": status.state, "ts": status.ts, "reason": status.reason}
    if status.dropped:
        out["dropped"] = status.dropped
        out["dropped_ids"] = [list(r) for r in status.dropped_ids]
    out["config_version"] = status.config_version
    if status.config_error:
        out["config_error"] = status.config_error
    return out


def device_view(
    device: str,
    configured: dict[str, DeviceEntry],
    status: DeviceStatus | None,
    row: DeviceRow | None = None,
) -> dict[str, Any]:
    entry = configured.get(device)
    added = row is not None and row.added
    owner: str | None
    if entry is not None:
        description, owner = entry.description, entry.owner
    else:
        description = row.description if added and row is not None else ""
        owner = row.owner if added and row is not None else None
    return {
        "id": device,
        "description": description,
        "owner": owner,
        "configured": entry is not None,
        "added": added,
        "disabled": row is not None and row.disabled,
        "config_version": row.config_version if row and row.config is not None else None,
        "status": status_dict(status),
    }


def list_devices(
    configured: list[DeviceEntry],
    statuses: dict[str, DeviceStatus],
    rows: dict[str, DeviceRow] | None = None,
) -> list[dict[str, Any]]:
    """Configured devices, devices added through the API and every device seen on the
    status topics, sorted by id."""
    rows = rows or {}
    by_id = {d.id: d for d in configured}
    added = {d for d, row in rows.items() if row.added}
    return [
        device_view(d, by_id, statuses.get(d), rows.get(d))
        for d in sorted(set(by_id) | set(statuses) | added)
    ]
