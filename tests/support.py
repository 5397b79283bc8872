"""Helpers shared by the tests: waiting on conditions, watching MQTT topics."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage, Message
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from vigil.messages import Alert, Reading
from vigil.mqtt import SESSION_NEVER_EXPIRES, MqttClient
from vigil.readiness import read_ready
from vigil.settings import BrokerSettings, MqttClientSettings

#: when the alert tests' readings and alerts happen (epoch ms)
ALERT_T0 = 1_732_300_000_000


def reading(value: float, n: int, device: str = "dev-1", metric: str = "temperature") -> Reading:
    """The n-th reading of a series: ids and timestamps grow with n."""
    return Reading(
        id=1_000 + n,
        device=device,
        ts=ALERT_T0 + 1_000 * n,
        kind="sensor",
        metric=metric,
        value=value,
    )


def alert(state: str = "firing", **fields: Any) -> Alert:
    """Rule high-temp on dev-1: temperature 31.2 above 30 (critical), firing since ALERT_T0; a
    resolved one ended 125 s later. ``fields`` override any field."""
    resolved_at = None if state == "firing" else ALERT_T0 + 125_000
    base: dict[str, Any] = {
        "alert_id": "a1b2c3",
        "rule_id": "high-temp",
        "rule": "high-temp",
        "device": "dev-1",
        "metric": "temperature",
        "value": 31.2,
        "threshold": 30.0,
        "op": "above",
        "state": state,
        "severity": "critical",
        "started_at": ALERT_T0,
        "ts": resolved_at or ALERT_T0,
        "resolved_at": resolved_at,
        "reading_id": 42,
    }
    return Alert(**{**base, **fields})


def parsed(mail: Message) -> EmailMessage:
    """A received email as the default policy reads it (unfolded headers, typed parts)."""
    msg = message_from_bytes(mail.as_bytes(), policy=default_policy)
    assert isinstance(msg, EmailMessage)
    return msg


def subjects(messages: list[Message]) -> list[str]:
    return [str(parsed(m)["Subject"]).strip() for m in messages]


#: the series the ``stored`` fixture writes: dev-1's temperature, one reading a second
STORED_T0 = 1_700_000_000_000
STORED_VALUES = [1.5, 2.5, 3.5, 4.5, 10.0]


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


def scrape(port: int, name: str, **labels: str) -> float | None:
    """The value of the first sample of metric ``name`` whose labels include ``labels``, as
    a service serves it on ``http://127.0.0.1:<port>/metrics``; None if there is none."""
    import urllib.request

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    for line in body.decode().splitlines():
        m = re.match(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return None


def counted(port: int, n: int, name: str = "vigil_messages_in_total", **labels: str) -> None:
    """Wait until a service's counter reaches ``n``, then check it did not pass it. Services
    handle their messages in order: once one counted a sentinel sent last (one that must
    cause nothing), all it was going to publish or send for what came before is done."""
    wait_until(
        lambda: (scrape(port, name, **labels) or 0) >= n,
        15,
        what=f"{name} {labels or ''} to reach {n}",
    )
    assert scrape(port, name, **labels) == n


def connected(broker: BrokerSettings, ident: MqttClientSettings, **kw: Any) -> MqttClient:
    """A started MqttClient, connected (stop it when done)."""
    client = MqttClient(broker, ident, **kw)
    client.start()
    if not client.wait_connected(10):
        client.stop()
        raise AssertionError(f"{ident.username} could not connect")
    return client


#: the services built on the consumer runtime: ``run_service`` gives each a ready file
CONSUMERS = ("ingest_service", "alert_engine", "notifier")


def ready_path(log_path: Path) -> Path:
    """Where ``run_service`` has a consumer write its readiness: beside its log folder."""
    return log_path.parent.parent / "run" / f"{log_path.stem}.ready.json"


def wait_ready(proc: Any, timeout: float = 30.0, *, after_ms: int | None = None) -> None:
    """Wait until a consumer process started by ``run_service`` says it is ready (the
    broker granted its subscriptions: its persistent session queues messages from then on);
    ``after_ms``: ready again since then (after a reconnect)."""
    path = ready_path(proc.log_path)

    def ready() -> bool:
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited:\n{proc.log_tail()}")
        state = read_ready(path)
        return (
            state is not None
            and state.ready
            and state.pid == proc.pid
            and (after_ms is None or state.since_ms >= after_ms)
        )

    wait_until(ready, timeout, what=f"{proc.name} to be ready ({path})")


def wait_subscribed(proc: Any, topic_filter: str = "", timeout: float = 30.0) -> None:
    """:func:`wait_ready` (the filter is for the reader: a consumer is ready once all its
    subscriptions are granted)."""
    wait_ready(proc, timeout)


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
        if not (probe.client.wait_connected(10) and probe.client.subscribed.wait(10)):
            probe.client.stop()
            raise AssertionError("probe could not connect and subscribe")
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


# -- CONNACKs -----------------------------------------------------------------------------
#: MQTT 5 CONNACK "Not authorized"; paho reports MQTT 3.1.1's code 5 as the same reason
NOT_AUTHORIZED = 135


def connack(
    broker,
    user: str | None,
    client_id: str,
    *,
    mqtt5: bool = True,
    clean_start: bool = True,
    password: str | None = None,
) -> tuple[int, str | None]:
    """One CONNECT as ``user`` with ``client_id``: the CONNACK's reason code (0 = accepted)
    and, for MQTT 5, the client id the broker assigned. An accepted client disconnects at
    once (clean start false asks for a session that never expires, as Vigil's consumers do)."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5 if mqtt5 else MQTTProtocolVersion.MQTTv311,
        clean_session=None if mqtt5 else clean_start,
    )
    if user is not None:
        client.username_pw_set(user, password if password is not None else broker.password(user))
    got: list[tuple[int, str | None]] = []

    def on_connect(_c, _u, _flags, rc, props) -> None:
        assigned = getattr(props, "AssignedClientIdentifier", None) if props else None
        got.append((rc.value, assigned))

    client.on_connect = on_connect
    kw = {}
    if mqtt5:
        props = Properties(PacketTypes.CONNECT)
        if not clean_start:
            props.SessionExpiryInterval = SESSION_NEVER_EXPIRES
        kw = {"clean_start": clean_start, "properties": props}
    client.connect(broker.files.host, broker.files.port, keepalive=5, **kw)
    deadline = time.monotonic() + 5
    try:
        while not got and time.monotonic() < deadline:
            client.loop(0.05)
        assert got, f"no CONNACK for {user} as {client_id!r}"
        if got[0][0] == 0:
            client.disconnect()  # paho closes the socket once DISCONNECT is written
    finally:
        sock = client.socket()
        if sock is not None:
            sock.close()
    return got[0]


# -- edge agents ------------------------------------------------------------------------
def agent_broker(settings: BrokerSettings) -> dict[str, Any]:
    """The agent's ``broker`` section for a client-side view of the test broker."""
    data = settings.model_dump(mode="json", include={"host", "port", "topic_root", "keepalive_s"})
    if settings.ca_file is not None:
        data["ca_file"] = str(settings.ca_file)
    return data


def write_agent_config(
    folder: Path, broker: Any, device: str, *, tls: bool = False, **overrides: Any
) -> Path:
    """An agent YAML for ``device`` on the test broker (its TLS listener with ``tls``): two
    sensors, a simulated quote, a 0.1 s interval, metrics off."""
    data: dict[str, Any] = {
        "device_id": device,
        "broker": agent_broker(broker.tls_settings() if tls else broker.settings),
        "mqtt": {
            "client_id": device,
            "username": device,
            "password_file": str(broker.files.password_file(device)),
        },
        "outbox_path": str(folder / f"{device}-outbox.sqlite3"),
        "interval_s": 0.1,
        "seed": 7,
        "metrics_port": 0,
        "sensors": [
            {
                "metric": "temperature",
                "unit": "C",
                "base": 20,
                "amplitude": 4,
                "period_s": 60,
                "noise": 0.3,
            },
            {
                "metric": "humidity",
                "unit": "%",
                "base": 45,
                "amplitude": 10,
                "period_s": 120,
                "noise": 1,
            },
        ],
        "quotes": {
            "symbols": ["AAPL"],
            "interval_s": 3600,
            "source": "simulated",
            "market_hours": False,  # the tests run at any hour
        },
        **overrides,
    }
    path = folder / f"{device}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def outbox_ids(path: Path) -> list[int]:
    """The ids in an agent's outbox, read (committed state only) on a connection of our own."""
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT id FROM readings ORDER BY id")]


def sequence(path: Path) -> tuple[int, int]:
    """(first id, next id) of an outbox: its agent took exactly the ids in between."""
    with sqlite3.connect(path) as db:
        meta = dict(db.execute("SELECT key, value FROM meta"))
    return int(meta["first_id"]), int(meta["next_id"])


@dataclass
class Confirmer:
    """Ingest's side of the confirmation contract, for agent tests that are not about
    storage: with ingest's broker identity, it confirms every reading it receives on the
    data topics (``{root}/ack/{device}``) as ingest does once it has stored them."""

    client: MqttClient
    confirmed: set[tuple[str, int]] = field(default_factory=set)

    @classmethod
    def start(cls, broker: BrokerSettings, ident: MqttClientSettings) -> Confirmer:
        from vigil.messages import Confirmation, parse_readings

        me = cls(MqttClient(broker, ident))
        topics = broker.topics

        def confirm(msg: paho.MQTTMessage) -> None:
            device = topics.device_of(msg.topic)
            if device is None:
                return
            ids = [r.id for r in parse_readings(bytes(msg.payload), device)]
            me.client.publish(topics.ack(device), Confirmation.of(device, ids).encode())
            me.confirmed.update((device, i) for i in ids)

        me.client.subscribe(topics.data_filter, confirm, qos=1)
        me.client.start()
        if not me.client.subscribed.wait(10):
            me.client.stop()
            raise AssertionError("the confirmer could not subscribe")
        return me

    def stop(self) -> None:
        self.client.stop()
