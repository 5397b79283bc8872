"""A fast MQTT 5 receive path for the data-path consumers (ingest, the alert engine).

:class:`FastMqttClient` is a :class:`vigil.mqtt.ClientBase`, as the paho-based
:class:`vigil.mqtt.MqttClient` is: the same calls, semantics and log lines (they live in the
base), on a cheaper receive path.

Why: a paho subscriber that does nothing costs 87-100 µs of CPU per message. paho runs a
``select`` loop, makes three or four ``recv`` calls per message (header byte, length,
body...), writes one PUBACK per ``send`` and matches every topic against every subscription.
Here:

- **Sans-I/O codec.** The packets are encoded and decoded by the ``mqtt5`` package (Rust);
  this module only moves bytes. :func:`decode` and :func:`collect` are pure: bytes in,
  packets and routed messages out, tested without a broker.
- **One reader thread, big reads.** It calls ``recv(256 KiB)`` on a plain blocking socket and
  decodes *every* complete packet in the buffer, so under load one system call brings
  hundreds of PUBLISHes; a packet split across reads waits in the buffer for the rest.
- **Routing by one dict lookup.** The first subscription (``$share``-aware
  :class:`~vigil.topicfilter.TopicFilter`) matching a topic is cached per topic string.
- **Batches.** :meth:`FastMqttClient.subscribe_batch` hands a handler the *list* of messages
  of one read (one run of consecutive messages for that subscription, so arrival order is
  kept across subscriptions), which a consumer can enqueue at once.
  :meth:`FastMqttClient.ack_many` writes the PUBACKs of a whole batch in one ``sendall``.
- **Writes serialized.** Acks (from a worker), publishes (from any thread) and pings (the
  keepalive thread) all write through one lock around ``sendall``. No lock is held while a
  user callback or handler runs, so a handler that blocks (a full queue) blocks nobody else.

Delivery semantics follow paho's and MqttClient's: QoS 1 publishes are kept until their
PUBACK and re-sent (DUP) after a reconnect, within the broker's Receive Maximum; incoming
QoS 1 messages are acknowledged after the handler returns unless ``manual_ack``; a message
no subscription routes is acknowledged and dropped (logged once); an ack for a message of an
earlier connection is skipped. Only QoS 0 and 1 are supported (Vigil uses nothing else).
Topic aliases are refused (Topic Alias Maximum 0 in CONNECT).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import mqtt5

from vigil.config_core import BrokerAddress, MqttIdentity
from vigil.mqtt import (
    FAILURE,
    SESSION_NEVER_EXPIRES,
    BatchHandler,
    ClientBase,
    Message,
    MqttError,
    Will,
)
from vigil.topicfilter import TopicFilter

if TYPE_CHECKING:
    from mqtt5 import Packet

log = logging.getLogger(__name__)

#: how much one ``recv`` asks for: room for hundreds of small PUBLISHes
RECV_BYTES = 256 * 1024
#: a read of fewer packets than this is followed by the coalescing pause (when configured)
COALESCE_BELOW = 64
RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 10.0
#: TCP connect and CONNACK wait
CONNECT_TIMEOUT_S = 10.0
#: the routing cache is emptied past this many topics (a device can publish on any subtopic)
MAX_CACHED_TOPICS = 100_000
#: the result codes ``publish`` returns in ``rc`` (paho's numbers)
MQTT_ERR_SUCCESS = 0
MQTT_ERR_NO_CONN = 4
MQTT_ERR_QUEUE_SIZE = 15
_RC_TEXT = {
    MQTT_ERR_NO_CONN: "The client is not currently connected.",
    MQTT_ERR_QUEUE_SIZE: "Message queue full.",
}
_QOS = {0: mqtt5.QoS.AT_MOST_ONCE, 1: mqtt5.QoS.AT_LEAST_ONCE}
_PINGREQ = mqtt5.PingReqPacket().write()


class MalformedPacket(MqttError):
    """The broker sent bytes that are not an MQTT 5 packet; the connection is dropped."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"malformed packet at byte {offset}: {reason}")
        self.offset, self.reason = offset, reason


MessageHandler = Callable[[Message], None]


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    """A subscription's handler: called per message, or per run of messages (``batch``)."""

    subscription: TopicFilter
    handler: Callable[..., None]
    batch: bool = False


# -- the pure core: bytes to packets, packets to routed runs ----------------------------------
class Decoded(NamedTuple):
    packets: list[Packet]
    consumed: int  # bytes of ``data`` the packets took; the rest waits for more
    error: MalformedPacket | None  # after the packets: the connection must be dropped


def packet_length(data: bytes | bytearray, offset: int = 0) -> int | None:
    """The whole length of the packet starting at ``offset``, read from its fixed header
    (type byte and variable-length Remaining Length); None if the header is incomplete."""
    value, multiplier = 0, 1
    for i in range(1, 5):
        if offset + i >= len(data):
            return None
        byte = data[offset + i]
        value += (byte & 0x7F) * multiplier
        if not byte & 0x80:
            return 1 + i + value
        multiplier *= 128
    raise MalformedPacket(offset, "remaining length longer than 4 bytes")


def decode(data: bytes | bytearray) -> Decoded:
    """Every complete packet at the start of ``data``, in order.

    ``mqtt5.read`` raises IndexError when the buffer ends inside a packet (wait for more)
    and ValueError when the bytes are not a packet. An IndexError although the fixed header
    says the whole packet is there means its contents are inconsistent: malformed too.
    """
    packets: list[Packet] = []
    offset, end = 0, len(data)
    read = mqtt5.read
    error: MalformedPacket | None = None
    with memoryview(data) as view:
        while offset < end:
            try:
                packet, size = read(view[offset:])
            except IndexError:
                try:
                    length = packet_length(data, offset)
                except MalformedPacket as exc:
                    error = exc
                    break
                if length is not None and length <= end - offset:
                    error = MalformedPacket(offset, "contents longer than the packet")
                break
            except ValueError as exc:
                error = MalformedPacket(offset, str(exc))
                break
            packets.append(packet)
            offset += size
    return Decoded(packets, offset, error)


class Router:
    """Subscriptions in the order they were made; a topic goes to the first that matches
    (as MqttClient routes), looked up once per topic string and then cached."""

    def __init__(self) -> None:
        self._routes: tuple[Route, ...] = ()
        self._cache: dict[str, Route | None] = {}

    @property
    def routes(self) -> tuple[Route, ...]:
        return self._routes

    def add(self, route: Route) -> None:
        # Replaced, not mutated: the reader thread may be routing meanwhile.
        self._routes = (*self._routes, route)
        self._cache = {}

    def route(self, topic: str) -> Route | None:
        cache = self._cache
        try:
            return cache[topic]
        except KeyError:
            pass
        found = next((r for r in self._routes if r.subscription.matches(topic)), None)
        if len(cache) >= MAX_CACHED_TOPICS:
            cache.clear()
        cache[topic] = found
        return found


Run = tuple[Route | None, list[Message]]


def collect(
    packets: Iterable[Packet], router: Router, connection: int
) -> tuple[list[Run], list[Packet]]:
    """Split decoded packets into runs of consecutive PUBLISHes with the same route (None:
    no subscription routes them), in arrival order, and the other packets."""
    runs: list[Run] = []
    control: list[Packet] = []
    route_of = router.route
    publish = mqtt5.PublishPacket
    last: Route | None = None
    current: list[Message] | None = None
    for p in packets:
        if type(p) is not publish:
            control.append(p)
            continue
        topic = p.topic
        msg = Message(
            topic, p.payload, p.qos.value, p.packet_id or 0, p.retain, connection, p.duplicate
        )
        route = route_of(topic)
        if current is not None and route is last:
            current.append(msg)
        else:
            current = [msg]
            runs.append((route, current))
            last = route
    return runs, control


def encode_acks(mids: Iterable[int]) -> bytes:
    """The PUBACKs (success) of ``mids``, back to back: one write."""
    puback = mqtt5.PubAckPacket
    return b"".join([puback(mid).write() for mid in mids])


def reason_text(code: object) -> str:
    """``NOT_AUTHORIZED`` -> ``Not authorized``, as paho words reason codes."""
    name = getattr(code, "name", None) or str(code)
    return name.replace("_", " ").capitalize()


# -- publishing state -----------------------------------------------------------------------
class PublishInfo:
    """What :meth:`FastMqttClient.publish` returns, like paho's MQTTMessageInfo: ``mid``,
    ``rc`` (0: queued or sent), and whether the broker acknowledged it. ``refused`` holds
    the reason of a PUBACK that refused it (then it is still "published": settled)."""

    __slots__ = ("_done", "mid", "rc", "reason_code", "refused")

    def __init__(self, mid: int, rc: int = MQTT_ERR_SUCCESS) -> None:
        self.mid, self.rc = mid, rc
        self.reason_code: int | None = None
        self.refused: str | None = None
        self._done = threading.Event()

    def is_published(self) -> bool:
        return self._done.is_set()

    def wait_for_publish(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)


@dataclass(slots=True)
class _Outgoing:
    topic: str
    payload: bytes
    retain: bool
    info: PublishInfo
    sent: bool = False  # sent on some connection: a re-send carries DUP


class _Refused(Exception):
    """The broker answered CONNECT with a failure (already logged)."""


class FastMqttClient(ClientBase):
    """One MQTT 5 connection with Vigil's defaults and a batched receive path. Start with
    :meth:`start`. Handlers run on the reader thread and must hand work over, not block
    for long (while they run nothing is read). The options are :class:`ClientBase`'s;
    ``max_inflight`` is also capped by the broker's Receive Maximum, the rest wait, in
    order."""

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
        coalesce_s: float = 0.0,
    ) -> None:
        """``coalesce_s``: after a read that brought fewer than :data:`COALESCE_BELOW`
        packets, wait this long before reading again (see ``read_coalesce_ms``)."""
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
        if broker.ca_file is not None:
            # One thread reads while others write: an SSL object is not safe for that.
            raise ValueError(
                "the fast MQTT transport has no TLS: use transport paho for a broker reached "
                "over TLS (broker.ca_file)"
            )
        self._stopping = threading.Event()
        self._coalesce_s = coalesce_s
        self._router = Router()
        # _state guards what follows; _write guards the socket and every sendall. Order:
        # _state before _write, never the other way; neither is held around a callback.
        self._state = threading.Lock()
        self._write = threading.Lock()
        self._sock: socket.socket | None = None  # the connection in use (CONNACK received)
        self._handshake: socket.socket | None = None  # being connected (for stop)
        self._subscriptions: dict[str, int] = {}
        self._pending_subs: dict[int, str] = {}
        self._pending_unsubs: dict[int, threading.Event] = {}
        self._pending: dict[int, _Outgoing] = {}  # QoS 1 not yet acknowledged, in order
        self._unsent: deque[int] = deque()  # of those, not sent on this connection yet
        self._inflight = 0
        self._window = max_inflight
        self._next_id = 0
        self._keepalive_s = float(broker.keepalive_s)
        self._last_in = self._last_out = time.monotonic()
        self._ping_sent_at: float | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        if self._threads:
            return
        name = self.ident.client_id
        self._threads = [
            threading.Thread(target=self._run, name=f"fastmqtt-{name}", daemon=True),
            threading.Thread(target=self._keepalive, name=f"fastmqtt-{name}-ping", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def stop(self, *, end_session: bool = False, timeout: float = 10.0) -> None:
        """Send DISCONNECT and wait (up to ``timeout``) for the broker to close the
        connection, then stop the threads.

        The broker reads a connection's packets in order and closes it on DISCONNECT, so
        once it has closed, every PUBACK sent before has been applied to the session. Closing
        at once would not do: a client that reconnects with the same id can be taken over by
        the broker before it has read the old connection's last acknowledgements, and the
        messages they settled come again. Messages that still arrive meanwhile are neither
        handled nor acknowledged: they stay in the session."""
        self._stopping.set()
        packet = mqtt5.DisconnectPacket(session_expiry_interval=0 if end_session else None)
        with self._write:
            sock, handshake = self._sock, self._handshake
            self._sock = None  # nothing more is written after the DISCONNECT
            try:
                if sock is not None:
                    sock.sendall(packet.write())
                    sock.shutdown(socket.SHUT_WR)  # the reader waits for the broker's close
                elif handshake is not None:
                    handshake.shutdown(socket.SHUT_RDWR)
            except OSError:
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))
        if sock is not None and any(t.is_alive() for t in self._threads):
            with contextlib.suppress(OSError):  # the broker did not close in time
                sock.shutdown(socket.SHUT_RDWR)
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join(1.0)
        self._connected.clear()

    # -- subscriptions ------------------------------------------------------------------
    def subscribe(self, topic_filter: str, handler: MessageHandler, qos: int = 1) -> None:
        """Route messages matching ``topic_filter`` to ``handler``, one call per message (on
        the reader thread). A shared subscription (``$share/GROUP/FILTER``) routes the
        messages matching FILTER."""
        self._add(topic_filter, Route(TopicFilter.parse(topic_filter), handler, False), qos)

    def subscribe_batch(self, topic_filter: str, handler: BatchHandler, qos: int = 1) -> None:
        """``handler`` gets the messages for this subscription that arrived together (one
        read), in order."""
        self._add(topic_filter, Route(TopicFilter.parse(topic_filter), handler, True), qos)

    def _add(self, raw: str, route: Route, qos: int) -> None:
        if qos not in _QOS:
            raise ValueError(f"QoS {qos} is not supported (0 or 1)")
        with self._state:
            self._subscriptions[raw] = qos
            self._router.add(route)
            data = self._subscribe_packet(raw, qos) if self._sock is not None else b""
        if data:
            self._send(data)

    def _subscribe_packet(self, raw: str, qos: int) -> bytes:
        """(``_state`` held) a SUBSCRIBE for ``raw``, its packet id registered."""
        mid = self._allocate_id()
        self._pending_subs[mid] = raw
        flt = mqtt5.TopicFilter(raw, max_qos=_QOS[qos])  # mqtt5's default is EXACTLY_ONCE
        return mqtt5.SubscribePacket(mid, [flt]).write()

    def unsubscribe(self, topic_filters: list[str], timeout: float = 10.0) -> bool:
        done = threading.Event()
        with self._state:
            for f in topic_filters:
                self._subscriptions.pop(f, None)
            if self._sock is None:
                return False
            mid = self._allocate_id()
            self._pending_unsubs[mid] = done
        try:
            data = mqtt5.UnsubscribePacket(mid, list(topic_filters)).write()
            return self._send(data) and done.wait(timeout)
        finally:
            with self._state:
                self._pending_unsubs.pop(mid, None)

    # -- acknowledging ------------------------------------------------------------------
    def ack(self, mid: int, qos: int, connection: int | None = None) -> bool:
        if qos == 0:
            return True
        if connection is not None and connection != self.connection:
            return False
        self._send(mqtt5.PubAckPacket(mid).write(), connection)
        return True

    def ack_many(self, items: Iterable[tuple[int, int, int | None]]) -> int:
        """As :meth:`ClientBase.ack_many`, with one write."""
        with self._write:  # the connection number cannot change meanwhile
            current = self.connection
            mids = [
                mid
                for mid, qos, connection in items
                if qos and (connection is None or connection == current)
            ]
            if not mids:
                return 0
            self._send_locked(encode_acks(mids))
        return len(mids)

    # -- publishing ---------------------------------------------------------------------
    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> PublishInfo:
        if qos not in _QOS:
            raise ValueError(f"QoS {qos} is not supported (0 or 1)")
        if qos == 0:
            info = PublishInfo(0)
            data = mqtt5.PublishPacket(topic, payload, retain=retain).write()
            if self._send(data):
                info._done.set()
            else:
                info.rc = MQTT_ERR_NO_CONN
            return info
        with self._state:
            mid = self._allocate_id()
            if mid == 0:
                return PublishInfo(0, MQTT_ERR_QUEUE_SIZE)
            info = PublishInfo(mid)
            self._pending[mid] = _Outgoing(topic, payload, retain, info)
            self._unsent.append(mid)
            self._pump()
        return info

    def _not_queued(self, info: PublishInfo, qos: int) -> str | None:
        if info.rc == MQTT_ERR_SUCCESS:
            return None
        return _RC_TEXT.get(info.rc, f"error {info.rc}")

    def _refusal_of(self, info: PublishInfo) -> str | None:
        return info.refused

    def _allocate_id(self) -> int:
        """(``_state`` held) a packet id no publish, subscribe or unsubscribe uses; 0 if
        all 65535 are taken."""
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            mid = self._next_id
            if (
                mid not in self._pending
                and mid not in self._pending_subs
                and mid not in self._pending_unsubs
            ):
                return mid
        return 0

    def _pump(self) -> None:
        """(``_state`` held) send waiting QoS 1 publishes while the window has room."""
        if self._sock is None:
            return
        chunks = []
        publish, qos1 = mqtt5.PublishPacket, mqtt5.QoS.AT_LEAST_ONCE
        while self._unsent and self._inflight < self._window:
            mid = self._unsent.popleft()
            out = self._pending.get(mid)
            if out is None:
                continue
            chunks.append(
                publish(
                    out.topic,
                    out.payload,
                    qos=qos1,
                    retain=out.retain,
                    packet_id=mid,
                    duplicate=out.sent,
                ).write()
            )
            out.sent = True
            self._inflight += 1
        if chunks:
            self._send(b"".join(chunks))

    # -- writing --------------------------------------------------------------------------
    def _send(self, data: bytes, connection: int | None = None) -> bool:
        with self._write:
            if connection is not None and connection != self.connection:
                return False
            return self._send_locked(data)

    def _send_locked(self, data: bytes) -> bool:
        """(``_write`` held) write ``data`` whole; False if there is no connection. A failed
        write may have sent part of a packet: the connection is shut down (the reader
        notices and reconnects)."""
        sock = self._sock
        if sock is None:
            return False
        try:
            sock.sendall(data)
        except OSError:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            return False
        self._last_out = time.monotonic()
        return True

    # -- the reader thread: connect, read, reconnect ------------------------------------
    def _run(self) -> None:
        delay = RECONNECT_MIN_S
        while not self._stopping.is_set():
            try:
                sock, connack, early, rest = self._connect()
            except _Refused:
                pass
            except (OSError, MqttError) as exc:
                text = f"cannot connect: {exc}"
                if text != self._last_error and not self._stopping.is_set():
                    log.warning(
                        "broker %s:%s: %s; retrying", self.broker.host, self.broker.port, text
                    )
                    self._last_error = text
            else:
                delay = RECONNECT_MIN_S
                reason = self._serve(sock, connack, early, rest)
                self._lost(sock, reason)
            if self._stopping.wait(delay):
                break
            delay = min(delay * 2, RECONNECT_MAX_S)

    def _connect_packet(self) -> bytes:
        password = self.ident.password
        will = None
        if self._will is not None:
            w = self._will
            will = mqtt5.Will(w.topic, payload=w.payload, qos=_QOS[w.qos], retain=w.retain)
        return mqtt5.ConnectPacket(
            self.ident.client_id,
            username=self.ident.username,
            password=None if password is None else password.encode(),
            clean_start=not self.persistent_session,
            will=will,
            keep_alive=self.broker.keepalive_s,
            session_expiry_interval=SESSION_NEVER_EXPIRES if self.persistent_session else 0,
            receive_max=self._receive_maximum or 65535,
            topic_alias_max=0,  # no aliases: every PUBLISH carries its topic
        ).write()

    def _connect(self) -> tuple[socket.socket, mqtt5.ConnAckPacket, list[Packet], bytearray]:
        """TCP, CONNECT, CONNACK. Returns the socket, the CONNACK, the packets that came
        in the same read after it (a resumed session's queue follows it at once) and the
        bytes of an incomplete packet after those."""
        sock = socket.create_connection(
            (self.broker.host, self.broker.port), timeout=CONNECT_TIMEOUT_S
        )
        with self._write:
            self._handshake = sock
        try:
            if self._stopping.is_set():
                raise ConnectionAbortedError("stopping")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(self._connect_packet())
            buf = bytearray()
            while True:
                data = sock.recv(RECV_BYTES)
                if not data:
                    raise ConnectionResetError("the broker closed the connection before CONNACK")
                buf += data
                decoded = decode(buf)
                if decoded.packets:
                    break
                if decoded.error is not None:
                    raise decoded.error
            connack, *early = decoded.packets
            if not isinstance(connack, mqtt5.ConnAckPacket):
                raise MalformedPacket(0, f"expected CONNACK, got {type(connack).__name__}")
            if int(connack.reason_code) >= FAILURE:
                text = reason_text(connack.reason_code)
                self._connect_refused(text)
                raise _Refused(text)
            if decoded.error is not None:
                raise decoded.error
        except BaseException:
            sock.close()
            raise
        finally:
            with self._write:
                self._handshake = None
        return sock, connack, early, buf[decoded.consumed :]

    def _serve(
        self,
        sock: socket.socket,
        connack: mqtt5.ConnAckPacket,
        early: list[Packet],
        rest: bytearray,
    ) -> str:
        """Use a connection until it ends; returns why it ended."""
        self._keepalive_s = float(connack.server_keep_alive or self.broker.keepalive_s)
        sock.settimeout(1.5 * self._keepalive_s)  # nothing at all for that long: lost
        now = time.monotonic()
        with self._state:
            with self._write:
                self._sock = sock
                self.connection += 1
                self._last_in = self._last_out = now
                self._ping_sent_at = None
            subscribes = b"".join(
                self._subscribe_packet(raw, qos) for raw, qos in self._subscriptions.items()
            )
            # Every QoS 1 publish not acknowledged goes again, in order, within the window.
            self._window = max(1, min(self._max_inflight, connack.receive_max))
            self._inflight = 0
            self._unsent = deque(self._pending)
            if subscribes:
                self._send(subscribes)
            self._pump()
        self._connected_now(connack.session_present)
        if self._stopping.is_set():
            return "stopping"
        self._connected.set()
        for cb in self.on_connected:
            cb(connack.session_present)
        buf = rest  # the start of a packet the next read completes
        packets, error = early, None
        while True:
            if packets:
                reason = self._process(packets)
                if reason:
                    return reason
            if error is not None:
                return str(error)
            if 0 < len(packets) < COALESCE_BELOW and self._coalesce_s:
                time.sleep(self._coalesce_s)  # let a few more arrive: one read for them all
            try:
                data: bytes | bytearray = sock.recv(RECV_BYTES)
            except TimeoutError:
                return f"no packet from the broker for {1.5 * self._keepalive_s:g}s"
            except OSError as exc:
                return str(exc)
            if not data:
                return "connection closed"
            self._last_in = time.monotonic()
            if buf:
                buf += data
                data = buf
            packets, consumed, error = decode(data)
            buf = bytearray(data[consumed:]) if consumed < len(data) else bytearray()

    def _process(self, packets: list[Packet]) -> str:
        """Handle the packets of one read; returns why the connection must end, or ""."""
        if self._stopping.is_set():  # DISCONNECT sent: left in the session
            packets = [p for p in packets if not isinstance(p, mqtt5.PublishPacket)]
        runs, control = collect(packets, self._router, self.connection)
        ended = ""
        for p in control:
            ended = self._on_control(p) or ended
        acks: list[int] = []
        auto = not self._manual_ack
        for route, messages in runs:
            if route is None:
                self._unrouted(messages[0].topic)
            elif route.batch:
                try:
                    route.handler(messages)
                except Exception:
                    log.exception(
                        "handler for %s failed on %d message(s) on %s",
                        route.subscription.raw,
                        len(messages),
                        messages[0].topic,
                    )
            else:
                handler = route.handler
                for msg in messages:
                    try:
                        handler(msg)
                    except Exception:
                        log.exception(
                            "handler for %s failed on a message on %s",
                            route.subscription.raw,
                            msg.topic,
                        )
            # Not ours: acknowledged anyway, or the broker would hold it in flight, and
            # redeliver it, forever.
            if auto or route is None:
                acks.extend(m.mid for m in messages if m.qos)
        if acks:
            self._send(encode_acks(acks), self.connection)
        return ended

    def _on_control(self, p: Packet) -> str:
        if isinstance(p, mqtt5.PubAckPacket):
            self._on_puback(p.packet_id, p.reason_code)
        elif isinstance(p, mqtt5.PingRespPacket):
            self._ping_sent_at = None
        elif isinstance(p, mqtt5.SubAckPacket):
            self._on_suback(p.packet_id, [int(c) for c in p.reason_codes], p.reason_codes)
        elif isinstance(p, mqtt5.UnsubAckPacket):
            with self._state:
                done = self._pending_unsubs.get(p.packet_id)
            if done is not None:
                done.set()
        elif isinstance(p, mqtt5.DisconnectPacket):
            return f"the broker disconnected: {reason_text(p.reason_code)}"
        else:
            return f"unexpected {type(p).__name__} from the broker"
        return ""

    def _on_puback(self, mid: int, code: object) -> None:
        with self._state:
            out = self._pending.pop(mid, None)
            if out is None:
                return
            if out.sent:
                self._inflight = max(0, self._inflight - 1)
            self._pump()
        value = int(code)  # type: ignore[call-overload]
        info = out.info
        info.reason_code = value
        # As paho: the callbacks first, then the publish is marked done.
        info.refused = self._puback(mid, value, reason_text(code))
        info._done.set()

    def _on_suback(self, mid: int, values: list[int], codes: Sequence[object]) -> None:
        with self._state:
            topic_filter = self._pending_subs.pop(mid, "?")
            all_granted = not self._pending_subs
        failed = any(v >= FAILURE for v in values)
        refused = ", ".join(reason_text(c) for c in codes) if failed else None
        self._subscribe_answered(topic_filter, refused, all_granted)

    def _lost(self, sock: socket.socket, reason: str) -> None:
        with self._state:
            with self._write:
                self._sock = None
            self._pending_subs.clear()  # a SUBACK lost with the connection never comes
        with contextlib.suppress(OSError):
            sock.close()
        self._connection_lost(reason, self._stopping.is_set())

    # -- the keepalive thread -------------------------------------------------------------
    def _keepalive(self) -> None:
        """PINGREQ when nothing was sent for the keepalive (the broker would drop us after
        1.5 times that), or nothing received for it (so a live connection always brings
        something within the reader's 1.5 x keepalive timeout)."""
        while not self._stopping.wait(min(1.0, self._keepalive_s / 4)):
            if self._sock is None:
                continue
            now = time.monotonic()
            ka = self._keepalive_s
            idle_out = now - self._last_out >= ka
            idle_in = now - self._last_in >= ka and self._ping_sent_at is None
            if idle_out or idle_in:
                self._ping_sent_at = now
                self._send(_PINGREQ)
