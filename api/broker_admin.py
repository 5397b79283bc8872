"""The API's side of Mosquitto's dynamic-security plugin: device credentials created,
disabled, enabled and deleted while the broker runs, and the live owners file that reserves
each added device's client id (Vigil's client-id plugin reads it on the next CONNECT).

Commands go to ``$CONTROL/dynamic-security/v1`` on the API's own MQTT connection (its ACL
grants that topic and the response topic, nothing else under ``$CONTROL``); each carries a
correlation id, and :meth:`BrokerAdmin.run` waits for the answers on the response topic.
A command the broker does not answer in time is a :class:`BrokerUnavailable` (the caller
answers 503); a refused one a :class:`BrokerRefused` naming the plugin's reason.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from vigil import dynsec
from vigil.atomic import write_atomic
from vigil.mqtt import MqttClient

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0


class BrokerUnavailable(Exception):
    """The broker did not answer (not connected, or no response in time)."""


class BrokerRefused(Exception):
    def __init__(self, command: str, error: str) -> None:
        super().__init__(f"the broker refused {command}: {error}")
        self.command = command
        self.error = error


class BrokerAdmin:
    def __init__(
        self,
        mqtt: MqttClient,
        owners_file: Path | None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.mqtt = mqtt
        self.owners_file = owners_file
        self.timeout_s = timeout_s
        self._cond = threading.Condition()
        self._answers: dict[str, dynsec.Response] = {}
        self._waiting: set[str] = set()
        self._bad_logged = False
        mqtt.subscribe(dynsec.RESPONSE_TOPIC, self._on_response)

    @property
    def enabled(self) -> bool:
        """Whether devices can be managed live (the owners file is configured)."""
        return self.owners_file is not None

    # -- commands ---------------------------------------------------------------------------
    def create(self, device: str, password: str) -> None:
        """A device credential bound to client id ``device``. One left from an interrupted
        earlier attempt gets the new password and is enabled."""
        try:
            self.run(
                [("createClient", {"username": device, "password": password, "clientid": device})]
            )
        except BrokerRefused as exc:
            if "already exists" not in exc.error:
                raise
            self.run(
                [
                    ("setClientPassword", {"username": device, "password": password}),
                    ("setClientId", {"username": device, "clientid": device}),
                    ("enableClient", {"username": device}),
                ]
            )

    def set_disabled(self, device: str, disabled: bool) -> None:
        """Disable (the broker disconnects every connection of the device at once and
        refuses new ones) or enable a device."""
        self.run([("disableClient" if disabled else "enableClient", {"username": device})])

    def delete(self, device: str) -> None:
        """Delete a device's credential (its connections are closed); gone already is fine."""
        try:
            self.run([("deleteClient", {"username": device})])
        except BrokerRefused as exc:
            if "not found" not in exc.error.lower():
                raise

    def run(self, commands: Iterable[tuple[str, Mapping[str, Any]]]) -> list[dynsec.Response]:
        """Send ``commands`` in one request and wait for every answer."""
        if not self.mqtt.connected or not self.mqtt.subscribed.wait(self.timeout_s):
            raise BrokerUnavailable("the API is not connected to the broker")
        batch = [(uuid.uuid4().hex, name, params) for name, params in commands]
        ids = [c for c, _, _ in batch]
        with self._cond:
            self._waiting.update(ids)
        try:
            self.mqtt.publish(
                dynsec.CONTROL_TOPIC,
                dynsec.request(dynsec.command(name, c, **params) for c, name, params in batch),
                qos=1,
            )
            with self._cond:
                done = self._cond.wait_for(
                    lambda: all(c in self._answers for c in ids), self.timeout_s
                )
                answers = [self._answers.pop(c) for c in ids if c in self._answers]
        finally:
            with self._cond:
                self._waiting.difference_update(ids)
                for c in ids:
                    self._answers.pop(c, None)
        if not done:
            raise BrokerUnavailable(
                f"the broker did not answer {', '.join(n for _, n, _ in batch)} within "
                f"{self.timeout_s:g}s"
            )
        for answer in answers:
            if answer.error is not None:
                raise BrokerRefused(answer.command, answer.error)
        return answers

    def _on_response(self, msg: paho.MQTTMessage) -> None:  # paho's thread: never block
        try:
            responses = dynsec.parse_responses(bytes(msg.payload))
        except dynsec.DynsecError as exc:
            if not self._bad_logged:
                self._bad_logged = True
                log.warning("ignoring a message on %s: %s", msg.topic, exc)
            return
        with self._cond:
            for r in responses:
                if r.correlation in self._waiting:
                    self._answers[r.correlation] = r
            self._cond.notify_all()

    # -- the live owners file ---------------------------------------------------------------
    def write_owners(self, devices: Iterable[str]) -> None:
        """Reserve each device's client id for it (atomically: the broker never reads half
        a file)."""
        if self.owners_file is None:
            raise BrokerUnavailable("api.broker_owners_file is not configured")
        write_atomic(self.owners_file, dynsec.render_owners(devices), mode=0o644)
