"""The consumer runtime: what every service that consumes MQTT at QoS 1 shares (ingest, the
alert engine, the notifier). Each service keeps only its own logic, a *handler* of batches.

- **Received**: each message, frozen, with the number of the connection it came on and the
  subscription (``$share``-aware :class:`~vigil.topicfilter.TopicFilter`) it matched.
- **Transport**: :class:`vigil.fastmqtt.FastMqttClient` (``transport: fast``, the default),
  which hands over the messages of one read as a list and writes a batch's PUBACKs in one
  send, or paho through :class:`vigil.mqtt.MqttClient` (``transport: paho``). Both are a
  :class:`vigil.mqtt.ClientBase` with the same semantics; tests/test_consumer_transports.py
  runs the runtime on both.
- **Queue and batches**: the client's network thread only puts the messages on a bounded
  hand-off. One worker thread takes batches, closed by count (``batch_max``) or by time
  (``linger_s`` after the first), and calls the handler; it is woken when a batch can
  close, not by every read.
- **Acknowledgement after the durable step**: the handler returns True once the batch's
  effects are durable (stored, published, saved); only then is every message of the batch
  acknowledged, each on the connection it arrived on. A message from an earlier connection is
  not acknowledged there: the broker re-sent it on the new connection (its packet id may name
  another message now), and that copy is acknowledged instead. False (stopping before the
  batch was durable) acknowledges nothing: the broker redelivers to the persistent session.
- **Crash-only**: a handler that raises ends the process (``on_fatal``, exit status 70),
  after one log line. A process that keeps its session but no longer acknowledges would stall
  the pipeline silently; a restarted one gets every unacknowledged message again.
- **Graceful stop**: no batch is taken after the one in hand, which has ``STOP_GRACE_S`` to
  finish as usual before its handler sees ``stopping`` and gives up unacknowledged.
- **Readiness** (:mod:`vigil.readiness`): ready once the broker granted every subscription,
  not ready while disconnected; a file (``--ready-file``) and the gauge ``vigil_ready``.

The queue's bound is a multiple of the session's Receive Maximum, which normally caps the
messages the broker has in flight to this client, with room for old copies still queued
beside the ones re-sent after a reconnect. It is back-pressure, not a limit that loses
anything: Mosquitto 2.0.11 ignores Receive Maximum when a session resumes and sends its whole
queue at once; the network thread then waits in ``put`` until the worker has taken batches
(or the consumer stops: what it held is not acknowledged, so the broker sends it again).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from vigil.batching import Batcher
from vigil.config_core import BrokerAddress, MqttIdentity
from vigil.fastmqtt import FastMqttClient
from vigil.messages import now_ms
from vigil.metrics import ServiceMetrics
from vigil.mqtt import ClientBase, Message, MqttClient
from vigil.readiness import Readiness
from vigil.topicfilter import TopicFilter

log = logging.getLogger(__name__)

#: the process exit status of a consumer whose handler failed (EX_SOFTWARE)
FATAL_EXIT = 70
#: how long a stop lets the batch in hand finish as usual before its handler is told to
#: give up (``stopping``)
STOP_GRACE_S = 3.0


@dataclass(frozen=True, slots=True)
class Received:
    """One message as it arrived."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    connection: int  # the connection it came on: its acknowledgement goes on that one
    received_at: int  # epoch ms
    subscription: TopicFilter
    retain: bool = False


BatchHandler = Callable[[list[Received]], bool]


def _exit_fatal() -> None:
    os._exit(FATAL_EXIT)


class Handoff:
    """Lists of messages from the network thread to the worker, bounded by messages: ``put``
    waits while ``bound`` or more are waiting, unless ``stopping`` is set (then it drops the
    list: nothing of it was acknowledged).

    The worker is woken when what it waits for is there (:meth:`take`'s ``want``), not for
    every list: one wake-up per batch, not per read. A thread switch per read was the largest
    per-message cost at moderate rates, where each read holds a message or two."""

    def __init__(self, bound: int, stopping: threading.Event) -> None:
        self.bound = bound
        self._stopping = stopping
        self._lists: list[list[Received]] = []
        self._count = 0
        self._want = 0  # messages the worker waits for; 0 while it is not waiting
        self._blocked = 0  # puts waiting for room
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return self._count

    def put(self, items: list[Received]) -> bool:
        with self._cond:
            while self._count >= self.bound:
                if self._stopping.is_set():
                    return False
                self._blocked += 1
                try:
                    self._cond.wait(0.2)
                finally:
                    self._blocked -= 1
            self._lists.append(items)
            self._count += len(items)
            if self._want and self._count >= self._want:
                self._cond.notify_all()
        return True

    def take(self, want: int, timeout: float) -> list[list[Received]]:
        """Every list waiting, oldest first, once ``want`` messages (at most ``bound``) are
        waiting; after ``timeout``, whatever is there (perhaps nothing)."""
        want = max(1, min(want, self.bound))
        with self._cond:
            if self._count < want and timeout > 0:
                self._want = want
                try:
                    self._cond.wait_for(lambda: self._count >= want, timeout)
                finally:
                    self._want = 0
            lists, self._lists, self._count = self._lists, [], 0
            if self._blocked:
                self._cond.notify_all()
            return lists


class Consumer:
    """One service's QoS 1 consumption: subscribe, batch, handle, acknowledge."""

    def __init__(
        self,
        broker: BrokerAddress,
        ident: MqttIdentity,
        *,
        service: str,
        subscriptions: Sequence[str],
        handler: BatchHandler,
        batch_max: int,
        linger_s: float,
        receive_maximum: int,
        metrics: ServiceMetrics,
        readiness: Readiness | None = None,
        transport: Literal["fast", "paho"] | None = None,
        tick_s: float | None = None,
    ) -> None:
        """``transport``: the client to receive with; by default the identity's own
        (``ident.transport``, fast if it has none). ``tick_s``: call the handler at least
        this often, with an empty batch when nothing came (what time alone changes)."""
        self.tick_s = tick_s
        self.service = service
        self.handler = handler
        self.batch_max = batch_max
        self.linger_s = linger_s
        self.metrics = metrics
        self.readiness = readiness or Readiness(service, None)
        self.transport = transport or getattr(ident, "transport", "fast")
        self.mqtt: ClientBase
        if self.transport == "fast":
            self.mqtt = FastMqttClient(
                broker,
                ident,
                persistent_session=True,
                manual_ack=True,
                receive_maximum=receive_maximum,
                coalesce_s=getattr(ident, "read_coalesce_ms", 0.0) / 1000,
            )
        else:
            self.mqtt = MqttClient(
                broker,
                ident,
                persistent_session=True,
                manual_ack=True,
                receive_maximum=receive_maximum,
            )
        #: set when stopping; handlers wait on it instead of sleeping
        self.stopping = threading.Event()
        #: set first when stopping: no batch is taken after the one in hand
        self._draining = threading.Event()
        self.on_fatal: Callable[[], None] = _exit_fatal
        self._handoff = Handoff(4 * receive_maximum + 16, self.stopping)
        self._ready_gauge = metrics.gauge(
            "vigil_ready", "1 while the service is ready (connected, subscriptions granted)"
        ).labels(service)
        for raw in subscriptions:
            self.mqtt.subscribe_batch(raw, self._receiver(TopicFilter.parse(raw)), qos=1)
        self.mqtt.on_subscribed.append(lambda: self._set_ready(True, "subscribed"))
        self.mqtt.on_disconnected.append(lambda: self._set_ready(False, "disconnected"))
        self._worker = threading.Thread(target=self._run, name=f"{service}-worker", daemon=True)
        # written by one thread each (paho's, the worker): read by drained()
        self._received = 0
        self._handled = 0
        self._last_received = time.monotonic()

    def watch(self, raw: str, callback: Callable[[Received], None], qos: int = 1) -> None:
        """Messages on ``raw`` handled at once on the network thread, outside the batches,
        and acknowledged then: small retained configuration the handler consults (it must
        not wait behind the batches that need it). ``qos`` 0 for a state whose retained
        latest is all that matters (the session does not queue it meanwhile). Call before
        :meth:`start`."""
        subscription = TopicFilter.parse(raw)

        def receive(messages: list[Message]) -> None:
            at = now_ms()
            for m in messages:
                callback(
                    Received(
                        m.topic, m.payload, m.qos, m.mid, m.connection, at, subscription, m.retain
                    )
                )
            self.mqtt.ack_many((m.mid, m.qos, m.connection) for m in messages)

        self.mqtt.subscribe_batch(raw, receive, qos=qos)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._worker.start()
        self.mqtt.start()

    def stop(
        self, timeout: float = 15.0, *, end_session: bool = False, grace_s: float = STOP_GRACE_S
    ) -> None:
        """Stop taking batches and let the one in hand finish: for ``grace_s`` as usual (a
        broker that is up confirms its publishes, so a stop does not cut a batch between its
        publishes and its durable step), then with ``stopping`` set, so that a handler still
        waiting gives up (its messages stay unacknowledged). Then disconnect
        (``end_session``: and have the broker discard the session), and say not ready."""
        self._draining.set()
        self._worker.join(min(grace_s, timeout))
        self.stopping.set()
        self._worker.join(max(0.0, timeout - grace_s))
        self.mqtt.stop(end_session=end_session)
        self._set_ready(False, "stopped")

    def _set_ready(self, ready: bool, detail: str) -> None:
        self._ready_gauge.set(1 if ready else 0)
        try:
            self.readiness.set(ready, detail)
        except OSError as exc:  # the signal is lost, not the service
            log.error("cannot write the ready file %s: %s", self.readiness.path, exc)

    # -- the network thread: hand over, nothing else -------------------------------------
    def _receiver(self, subscription: TopicFilter) -> Callable[[list[Message]], None]:
        def receive(messages: list[Message]) -> None:
            self._received += len(messages)
            self._last_received = time.monotonic()
            at = now_ms()
            self._handoff.put(
                [
                    Received(
                        m.topic, m.payload, m.qos, m.mid, m.connection, at, subscription, m.retain
                    )
                    for m in messages
                ]
            )

        return receive

    # -- the worker -----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:
            log.critical(
                "%s: handling a batch failed; exiting so the service is restarted "
                "(unacknowledged messages will be redelivered)",
                self.service,
                exc_info=True,
            )
            self.on_fatal()

    def _loop(self) -> None:
        batcher: Batcher[Received] = Batcher(self.batch_max, self.linger_s)
        idle_wait = 0.2 if self.tick_s is None else min(0.2, self.tick_s)
        last_call = time.monotonic()
        while not (self._draining.is_set() or self.stopping.is_set()):
            if not batcher.ready():
                left = batcher.time_left()
                if left is None:  # no batch open: wake on the first message
                    lists = self._handoff.take(1, idle_wait)
                else:  # wake when the batch is full or due
                    lists = self._handoff.take(self.batch_max - len(batcher), max(left, 0.0005))
                for items in lists:
                    batcher.extend(items)
            if len(batcher) and batcher.ready():
                self.handle(batcher.take())
                last_call = time.monotonic()
            elif (
                self.tick_s is not None
                and not len(batcher)
                and time.monotonic() - last_call >= self.tick_s
            ):
                self.handle([])  # a tick: nothing to acknowledge
                last_call = time.monotonic()

    def handle(self, batch: list[Received]) -> None:
        """Run the handler on ``batch``; acknowledge it if the handler says it is durable."""
        if not self.handler(batch):
            return
        self.mqtt.ack_many((m.mid, m.qos, m.connection) for m in batch)
        self._handled += len(batch)

    def drained(self, quiet_s: float) -> bool:
        """Every message received so far is handled and acknowledged, and none came for
        ``quiet_s``: what a consumer that leaves for good waits for."""
        return self._received == self._handled and time.monotonic() - self._last_received >= quiet_s
