"""The MQTT connection helpers: :class:`ClientBase`, what every client of Vigil's offers and
says (the consumers' fast one, :mod:`vigil.fastmqtt`, is one too), and :class:`MqttClient`,
the one on paho-mqtt 2 every service uses to publish: MQTT 5, Vigil's defaults.

- username/password from the service's settings, optional last will;
- automatic reconnection with a capped backoff, run by paho's network thread;
- subscriptions registered once and renewed on every (re)connect;
- persistent sessions (``clean_start=False`` with a session expiry) for consumers that must
  not lose QoS 1 messages while they are down, and manual acknowledgement so a message is
  acknowledged only once its work is done;
- ``publish_wait`` for publishers that must know the broker has the message.

paho calls callbacks on its network thread; handlers registered here run there too and must
hand work to the service's own thread or loop rather than block.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as mqttc
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from vigil.config_core import BrokerAddress, MqttIdentity
from vigil.tls import client_context
from vigil.topicfilter import TopicFilter

log = logging.getLogger(__name__)

SESSION_NEVER_EXPIRES = 0xFFFFFFFF
NO_MATCHING_SUBSCRIBERS = 0x10  # an MQTT 5 PUBACK reason code that is not a failure
#: a reason code at or above this is a failure (MQTT 5, 2.4)
FAILURE = 0x80
MessageHandler = Callable[[mqttc.MQTTMessage], None]


class MqttError(Exception):
    """A broker operation that did not succeed."""


class PublishError(MqttError):
    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(f"publish to {topic} failed: {reason}")
        self.topic, self.reason = topic, reason


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(slots=True)
class Message:
    """One PUBLISH as received, what batch handlers get: the attributes of paho's MQTTMessage
    the consumers read, plus the ``connection`` it arrived on (for :meth:`ClientBase.ack`)."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    retain: bool
    connection: int
    dup: bool = False


BatchHandler = Callable[[list[Message]], None]


class Pending(Protocol):
    """What ``publish`` returns (paho's MQTTMessageInfo, or fastmqtt's PublishInfo)."""

    @property
    def mid(self) -> int: ...

    def is_published(self) -> bool: ...

    def wait_for_publish(self, timeout: float | None = None) -> object: ...


class ClientBase(ABC):
    """What both clients share, :class:`MqttClient` on paho and
    :class:`vigil.fastmqtt.FastMqttClient`: the identity and options, the callbacks, the
    connection counter and the readiness events, the log lines said once, ``publish_wait``.
    The consumer runtime and the services use a client only through this."""

    def __init__(
        self,
        broker: BrokerAddress,
        ident: MqttIdentity,
        *,
        persistent_session: bool = False,
        manual_ack: bool = False,
        receive_maximum: int | None = None,
        max_inflight: int = 1000,
        will: Will | None = None,
        unrouted_is_refused: bool = False,
    ) -> None:
        """``max_inflight``: QoS 1 publishes sent and not yet acknowledged at most.
        ``unrouted_is_refused``: treat a PUBACK "No matching subscribers" (MQTT 5 reason
        0x10) as a refusal. For publishers whose messages must reach a consumer's session
        (readings): if no session exists yet, the broker accepted the message but will deliver
        it to nobody, so the publisher must keep it and try again later."""
        self.broker = broker
        self.ident = ident
        self.persistent_session = persistent_session
        self.unrouted_is_refused = unrouted_is_refused
        self._manual_ack = manual_ack
        self._receive_maximum = receive_maximum
        self._max_inflight = max_inflight
        self._will = will
        self.on_connected: list[Callable[[bool], None]] = []
        self.on_disconnected: list[Callable[[], None]] = []
        #: called (on the network thread) once the broker granted every subscription
        self.on_subscribed: list[Callable[[], None]] = []
        #: called with the mid of each QoS 1 publish the broker accepted
        self.on_published: list[Callable[[int], None]] = []
        #: called with the mid and reason of each publish the broker refused (e.g. its ACL)
        self.on_refused: list[Callable[[int, str], None]] = []
        #: counts successful connections; messages carry the number they arrived on
        self.connection = 0
        self.subscribed = threading.Event()
        self._connected = threading.Event()
        self._last_error = ""
        self._refusal_logged = False
        self._unrouted_logged = False

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    @abstractmethod
    def start(self) -> None:
        """Connect in the background and keep reconnecting until :meth:`stop`."""

    @abstractmethod
    def stop(self, *, end_session: bool = False) -> None:
        """Disconnect and stop. ``end_session``: ask the broker to discard this client's
        persistent session now (Session Expiry Interval 0), what a consumer that leaves for
        good does."""

    @abstractmethod
    def subscribe_batch(self, topic_filter: str, handler: BatchHandler, qos: int = 1) -> None:
        """Route messages matching ``topic_filter`` to ``handler`` as lists of messages that
        arrived together, in order. A shared subscription (``$share/GROUP/FILTER``) routes
        the messages matching FILTER."""

    @abstractmethod
    def unsubscribe(self, topic_filters: list[str], timeout: float = 10.0) -> bool:
        """Stop subscribing ``topic_filters`` (also on later reconnects) and wait for the
        broker's UNSUBACK; False if it did not come in time. Their handlers stay: messages
        the session already holds are still delivered, and handled."""

    @abstractmethod
    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> Any:
        """Send now or, for QoS 1, keep until acknowledged (sent on reconnect, re-sent with
        DUP if the connection drops before the PUBACK). Returns a :class:`Pending`."""

    @abstractmethod
    def ack(self, mid: int, qos: int, connection: int | None = None) -> bool:
        """Acknowledge a message received with manual acknowledgement.

        Pass the ``connection`` number the message arrived on (``Message.connection``):
        after a reconnect the broker re-sends unacknowledged messages and may reuse packet
        ids, so acknowledging an id from an earlier connection could acknowledge a
        different, unprocessed message. Such acks are skipped (returns False); the re-sent
        copy gets acknowledged instead.
        """

    def ack_many(self, items: Iterable[tuple[int, int, int | None]]) -> int:
        """Acknowledge ``(mid, qos, connection)`` triples as :meth:`ack` each; returns how
        many PUBACKs were written (QoS 0 and earlier connections need none)."""
        return sum(1 for mid, qos, connection in items if qos and self.ack(mid, qos, connection))

    # -- publish_wait ---------------------------------------------------------------------
    @abstractmethod
    def _not_queued(self, info: Any, qos: int) -> str | None:
        """Why ``publish`` did not even queue ``info``, or None."""

    @abstractmethod
    def _refusal_of(self, info: Any) -> str | None:
        """The broker's reason for refusing the acknowledged ``info``, or None."""

    def publish_wait(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout: float | None = 10.0,
        stop: threading.Event | None = None,
    ) -> None:
        """Publish once and wait until the broker acknowledged it (QoS 1) or it was sent.

        While disconnected the message is kept and sent on reconnect, so this keeps waiting
        for that (``timeout=None``: as long as it takes, or until ``stop`` is set). On a
        timeout the message is still queued: do not publish it again, or the broker gets two
        copies. A publish the broker refuses raises PublishError.
        """
        info = self.publish(topic, payload, qos=qos, retain=retain)
        error = self._not_queued(info, qos)
        if error is not None:
            raise PublishError(topic, error)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not info.is_published():
            if stop is not None and stop.is_set():
                raise PublishError(topic, "stopped before the broker acknowledged it")
            if deadline is not None and time.monotonic() >= deadline:
                raise PublishError(
                    topic,
                    f"not acknowledged within {timeout:g}s (still queued: it is sent on reconnect)",
                )
            info.wait_for_publish(0.1)  # wakes on the PUBACK
        refused = self._refusal_of(info)
        if refused is not None:
            raise PublishError(topic, f"refused by the broker: {refused}")

    # -- what both clients say, once ------------------------------------------------------
    def _connect_refused(self, reason: str) -> None:
        if reason != self._last_error:
            log.error(
                "broker %s:%s refused %s: %s",
                self.broker.host,
                self.broker.port,
                self.ident.username,
                reason,
            )
            self._last_error = reason

    def _connected_now(self, session_present: bool) -> None:
        """(the connection counted) log it; the caller sets ``_connected`` and calls back."""
        self._last_error = ""
        log.info(
            "connected to broker %s:%s as %s (session present: %s)",
            self.broker.host,
            self.broker.port,
            self.ident.client_id,
            session_present,
        )

    def _subscribe_answered(self, topic_filter: str, refused: str | None, last: bool) -> None:
        """A SUBACK: ``refused`` the broker's reasons if it refused; ``last``: no other
        SUBACK is awaited."""
        if refused is not None:
            log.error(
                "broker refused subscription to %s for %s: %s",
                topic_filter,
                self.ident.username,
                refused,
            )
            return
        log.info("subscribed to %s", topic_filter)
        if last:
            self.subscribed.set()
            for cb in self.on_subscribed:
                cb()

    def _connection_lost(self, reason: object, stopping: bool) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self.subscribed.clear()
        if was and not stopping:
            log.warning(
                "disconnected from broker %s:%s (%s); reconnecting",
                self.broker.host,
                self.broker.port,
                reason,
            )
        for cb in self.on_disconnected:
            cb()

    def _unrouted(self, topic: str) -> None:
        if not self._unrouted_logged:
            self._unrouted_logged = True
            log.warning("message on %s matched no handler; acknowledged and dropped", topic)

    def _puback(self, mid: int, code: int, text: str) -> str | None:
        """A PUBACK with reason ``code`` (``text``): log a refusal once until a publish goes
        through again, call back; returns the refusal's reason, or None if accepted."""
        unrouted = code == NO_MATCHING_SUBSCRIBERS and self.unrouted_is_refused
        if code >= FAILURE or unrouted:
            if not self._refusal_logged:
                self._refusal_logged = True
                if unrouted:
                    log.warning(
                        "broker has no subscriber for %s's messages yet (is the ingest service "
                        "running?): keeping them to publish again",
                        self.ident.username,
                    )
                else:
                    log.error("broker refused a publish by %s: %s", self.ident.username, text)
            for rcb in self.on_refused:
                rcb(mid, text)
            return text
        self._refusal_logged = False
        for cb in self.on_published:
            cb(mid)
        return None


class MqttClient(ClientBase):
    """One MQTT 5 connection on paho with Vigil's defaults. Start with :meth:`start`."""

    def __init__(
        self,
        broker: BrokerAddress,
        ident: MqttIdentity,
        *,
        persistent_session: bool = False,
        manual_ack: bool = False,
        receive_maximum: int | None = None,
        max_inflight: int = 1000,
        will: Will | None = None,
        unrouted_is_refused: bool = False,
    ) -> None:
        super().__init__(
            broker,
            ident,
            persistent_session=persistent_session,
            manual_ack=manual_ack,
            receive_maximum=receive_maximum,
            max_inflight=max_inflight,
            will=will,
            unrouted_is_refused=unrouted_is_refused,
        )
        self._client = mqttc.Client(
            CallbackAPIVersion.VERSION2,
            client_id=ident.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=manual_ack,
        )
        self._client.username_pw_set(ident.username, ident.password)
        if broker.ca_file is not None:
            # The broker's chain and name are verified; a failure is a connect error.
            self._client.tls_set_context(client_context(broker.ca_file))
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        self._client.max_inflight_messages_set(max_inflight)
        self._client.max_queued_messages_set(0)
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self._subscriptions: dict[str, int] = {}
        self._handlers: list[tuple[TopicFilter, MessageHandler]] = []
        self._refused: dict[int, str] = {}
        self._stopping = False
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._pending_subs: dict[int, str] = {}

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def paho(self) -> mqttc.Client:
        return self._client

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if self.persistent_session:
            props.SessionExpiryInterval = SESSION_NEVER_EXPIRES
        if self._receive_maximum:
            props.ReceiveMaximum = self._receive_maximum
        self._client.connect_async(
            self.broker.host,
            self.broker.port,
            keepalive=self.broker.keepalive_s,
            clean_start=not self.persistent_session,
            properties=props,
        )
        self._client.loop_start()

    def stop(self, *, end_session: bool = False) -> None:
        self._stopping = True
        props = None
        if end_session:
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
        try:
            self._client.disconnect(properties=props)
        finally:
            self._client.loop_stop()
            self._connected.clear()

    # -- subscriptions and handlers -----------------------------------------------------
    def subscribe(self, topic_filter: str, handler: MessageHandler, qos: int = 1) -> None:
        """Route messages matching ``topic_filter`` to ``handler`` (on paho's thread). A
        shared subscription (``$share/GROUP/FILTER``) routes the messages matching FILTER."""
        parsed = TopicFilter.parse(topic_filter)  # InvalidFilter (a ValueError) if not one
        self._subscriptions[topic_filter] = qos
        self._handlers.append((parsed, handler))
        if self.connected:
            _rc, mid = self._client.subscribe(topic_filter, qos)
            if mid is not None:
                self._pending_subs[mid] = topic_filter

    def subscribe_batch(self, topic_filter: str, handler: BatchHandler, qos: int = 1) -> None:
        """As :meth:`subscribe`; paho delivers one message at a time, so each list holds one."""

        def one(msg: mqttc.MQTTMessage) -> None:
            handler(
                [
                    Message(
                        msg.topic,
                        bytes(msg.payload),
                        msg.qos,
                        msg.mid,
                        bool(msg.retain),
                        self.connection,
                        bool(msg.dup),
                    )
                ]
            )

        self.subscribe(topic_filter, one, qos)

    def unsubscribe(self, topic_filters: list[str], timeout: float = 10.0) -> bool:
        for f in topic_filters:
            self._subscriptions.pop(f, None)
        done = threading.Event()
        self._client.on_unsubscribe = lambda *_a: done.set()
        rc, _mid = self._client.unsubscribe(topic_filters)
        return rc == MQTTErrorCode.MQTT_ERR_SUCCESS and done.wait(timeout)

    def _on_message(self, _c: mqttc.Client, _u: object, msg: mqttc.MQTTMessage) -> None:
        for topic_filter, handler in self._handlers:
            if topic_filter.matches(msg.topic):
                try:
                    handler(msg)
                except Exception:
                    log.exception(
                        "handler for %s failed on a message on %s", topic_filter.raw, msg.topic
                    )
                return
        # Not ours (a subscription this client no longer routes): acknowledged, or the
        # broker would hold it in flight, and redeliver it, forever.
        if msg.qos and self._manual_ack:
            self._client.ack(msg.mid, msg.qos)
        self._unrouted(msg.topic)

    # -- publishing ---------------------------------------------------------------------
    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> mqttc.MQTTMessageInfo:
        """Queue a publish; paho sends it now or on reconnect (QoS 1 is kept until acked)."""
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    def _not_queued(self, info: mqttc.MQTTMessageInfo, qos: int) -> str | None:
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0:
            # paho keeps it and sends it on reconnect, but its is_published() and
            # wait_for_publish() raise RuntimeError for as long as rc says NO_CONN.
            info.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return mqttc.error_string(info.rc)
        return None

    def _refusal_of(self, info: mqttc.MQTTMessageInfo) -> str | None:
        # paho calls on_publish (which records a refusal) before it marks it published.
        return self._refused.pop(info.mid, None)

    def ack(self, mid: int, qos: int, connection: int | None = None) -> bool:
        if qos == 0:
            return True
        if connection is not None and connection != self.connection:
            return False
        self._client.ack(mid, qos)
        return True

    # -- paho callbacks -----------------------------------------------------------------
    def _on_connect(
        self,
        client: mqttc.Client,
        _u: object,
        flags: mqttc.ConnectFlags,
        rc: ReasonCode,
        _props: Properties | None,
    ) -> None:
        if rc.is_failure:
            self._connect_refused(str(rc))
            return
        self.connection += 1
        self._connected_now(flags.session_present)
        for topic_filter, qos in self._subscriptions.items():
            _rc, mid = client.subscribe(topic_filter, qos)
            if mid is not None:
                self._pending_subs[mid] = topic_filter
        self._connected.set()
        for cb in self.on_connected:
            cb(flags.session_present)

    def _on_subscribe(
        self,
        _c: mqttc.Client,
        _u: object,
        mid: int,
        codes: list[ReasonCode],
        _p: Properties | None,
    ) -> None:
        topic_filter = self._pending_subs.pop(mid, "?")
        refused = ", ".join(str(c) for c in codes) if any(c.is_failure for c in codes) else None
        self._subscribe_answered(topic_filter, refused, not self._pending_subs)

    def _on_disconnect(
        self,
        _c: mqttc.Client,
        _u: object,
        _flags: mqttc.DisconnectFlags,
        rc: ReasonCode,
        _props: Properties | None,
    ) -> None:
        self._pending_subs.clear()  # a SUBACK lost with the connection never comes
        self._connection_lost(rc, self._stopping)

    def _on_publish(
        self, _c: mqttc.Client, _u: object, mid: int, _rc: ReasonCode, _p: Properties | None
    ) -> None:
        # paho holds its _out_message_mutex here: take no lock a publishing thread may hold.
        # paho marks a refused publish published: the refusal is only here, kept per mid
        # (the latest PUBACK for that mid wins) for publish_wait.
        refused = self._puback(mid, _rc.value, str(_rc))
        if refused is not None:
            self._refused[mid] = refused
        else:
            self._refused.pop(mid, None)
