"""The notifier's I/O: alert transitions in from MQTT, one email out per transition.

paho's network thread hands each message to the asyncio loop (``call_soon_threadsafe``),
tagged with the connection it came on (``MqttClient.connection``). One consumer task handles
them in order:

1. decode the alert; a bad one, or one whose handling raises anything but a failure of the
   sent log's disk, goes to the dead-letter topic with the reason (``vigil.contain``) and
   is acknowledged;
2. skip it if (alert id, state) was already emailed (a redelivery);
3. render the email and send it, retrying with capped backoff until the SMTP server
   accepts it; nothing is acknowledged meanwhile;
4. record (alert id, state) as sent, then acknowledge the MQTT message.

A message received on an earlier connection is not acknowledged (``MqttClient.ack`` skips
it: its packet id may name another message by now); the broker re-sends it and step 2
recognises it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import threading
from dataclasses import dataclass
from email.message import EmailMessage

import paho.mqtt.client as paho

from notifier.mailer import Mailer, SendError
from notifier.render import render_email, subject
from notifier.store import SentStore
from vigil.contain import Failed, contain_async
from vigil.deadletter import DeadLetter, DeadLetters
from vigil.messages import Alert, now_ms
from vigil.metrics import ServiceMetrics
from vigil.mqtt import MqttClient
from vigil.retry import Backoff
from vigil.settings import BrokerSettings, NotifierSettings

log = logging.getLogger(__name__)

RECEIVE_MAXIMUM = 100
#: On SIGTERM, how long an email being sent may take to finish before it is abandoned.
STOP_GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class Delivery:
    msg: paho.MQTTMessage
    connection: int


class Notifier:
    def __init__(
        self,
        broker: BrokerSettings,
        settings: NotifierSettings,
        metrics: ServiceMetrics | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.topics = broker.topics
        self.settings = settings
        self.metrics = metrics or ServiceMetrics("notifier", "send")
        self._duplicates = self.metrics.counter(
            "vigil_notifier_duplicates", "Alert messages already emailed (redeliveries)"
        )
        self.backoff = backoff or Backoff()
        self.mailer = Mailer(settings.smtp, settings.recipients)
        self.store = SentStore(settings.state_path)
        self.mqtt = MqttClient(
            broker,
            settings.mqtt,
            persistent_session=True,
            manual_ack=True,
            receive_maximum=RECEIVE_MAXIMUM,
        )
        self._stopping = asyncio.Event()
        self._stopping_thread = threading.Event()  # for the dead-letter publisher's thread
        self.dead_letters = DeadLetters(
            self.mqtt, self.topics, "notifier", self.metrics, self._stopping_thread
        )
        log.info(
            "sent-alert log %s: %d entries (%d old ones pruned)",
            settings.state_path,
            self.store.count(),
            self.store.pruned,
        )

    # -- the loop -----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Consume alerts until ``stop`` is set (or the consumer fails: re-raised)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Delivery | None] = asyncio.Queue()

        def hand_over(msg: paho.MQTTMessage) -> None:  # paho's thread
            delivery = Delivery(msg, self.mqtt.connection)
            # RuntimeError: the loop is closed (stopping); the broker keeps the message.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, delivery)

        self.mqtt.subscribe(self.topics.alerts_filter, hand_over)
        self.mqtt.start()
        log.info(
            "notifier started: %s -> %s via SMTP %s",
            self.topics.alerts_filter,
            ", ".join(self.settings.recipients),
            self.mailer.server,
        )
        consumer = asyncio.create_task(self._consume(queue), name="notifier-consume")
        stopper = asyncio.create_task(stop.wait(), name="notifier-stop")
        try:
            await asyncio.wait({consumer, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._stopping.set()
            self._stopping_thread.set()
            queue.put_nowait(None)
            stopper.cancel()
            done, _ = await asyncio.wait({consumer}, timeout=STOP_GRACE_S)
            if not done:
                log.warning(
                    "an email was still being sent after %.0fs; abandoning it (its "
                    "alert stays unacknowledged)",
                    STOP_GRACE_S,
                )
                consumer.cancel()
                await asyncio.gather(consumer, return_exceptions=True)
            self.mqtt.stop()
            self.store.close()
        failure = None if consumer.cancelled() else consumer.exception()
        if failure is not None:
            raise failure
        log.info("stopped")

    async def _consume(self, queue: asyncio.Queue[Delivery | None]) -> None:
        while True:
            delivery = await queue.get()
            if delivery is None or self._stopping.is_set():
                return
            await self._handle(delivery)

    async def _handle(self, d: Delivery) -> None:
        self.metrics.messages_in.inc()
        outcome = await contain_async(
            lambda: self._handle_alert(d),
            what="emailing the alert",
            subject=d.msg.topic,
            passthrough=(sqlite3.Error, OSError),  # the sent log's disk: crash-only
        )
        if isinstance(outcome, Failed):
            self.metrics.error("invalid_alert")
            dead = DeadLetter(d.msg.topic, bytes(d.msg.payload), now_ms(), outcome.reason)
            if await asyncio.to_thread(self.dead_letters.publish, [dead]):
                self._ack(d)

    async def _handle_alert(self, d: Delivery) -> None:
        alert = Alert.decode(bytes(d.msg.payload))
        if self.store.seen(alert.alert_id, alert.state):
            self._duplicates.inc()
            log.debug("alert %s %s already emailed; acknowledging", alert.alert_id, alert.state)
            self._ack(d)
            return
        email = render_email(
            alert, sender=self.settings.smtp.sender, recipients=self.settings.recipients
        )
        if not await self._send_until_accepted(alert, email):
            return  # stopping: not acknowledged, the broker keeps it
        self.store.record(alert.alert_id, alert.state)
        self.metrics.messages_out.inc()
        self._ack(d)

    async def _send_until_accepted(self, alert: Alert, email: EmailMessage) -> bool:
        """Send until the SMTP server accepts; False if stopping came first."""
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            started = loop.time()
            try:
                refused = await self.mailer.send(email)
            except SendError as exc:
                failures += 1
                self.metrics.error("smtp_refused" if exc.permanent else "smtp")
                if failures == 1 or failures % 20 == 0:
                    level = logging.ERROR if exc.permanent else logging.WARNING
                    hint = " (check notifier.smtp and recipients)" if exc.permanent else ""
                    log.log(
                        level,
                        "cannot email %r via %s (attempt %d): %s%s; retrying "
                        "with backoff up to %.0fs",
                        subject(alert),
                        self.mailer.server,
                        failures,
                        exc.reason,
                        hint,
                        self.backoff.cap_s,
                    )
                delay = self.backoff.delay(failures, random.random())
                try:
                    await asyncio.wait_for(self._stopping.wait(), delay)
                except TimeoutError:
                    continue
                return False
            self.metrics.step_seconds.observe(loop.time() - started)
            if refused:
                self.metrics.error("recipient_refused")
                log.warning(
                    "SMTP server refused recipient(s) %s for %r; sent to the others",
                    ", ".join(refused),
                    subject(alert),
                )
            log.info(
                "emailed %r to %d recipient(s)%s",
                subject(alert),
                len(self.settings.recipients) - len(refused),
                f" after {failures} failed attempt(s)" if failures else "",
            )
            return True

    def _ack(self, d: Delivery) -> None:
        self.mqtt.ack(d.msg.mid, d.msg.qos, d.connection)
