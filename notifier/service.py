"""The notifier's I/O: alert transitions in from MQTT, one email out per transition.

The consumer runtime (:mod:`vigil.consumer`) receives, acknowledges, and hands each message
(batches of one) from its worker thread to the asyncio loop, where it is handled in order:

1. decode the alert; a bad one, or one whose handling raises anything but a failure of the
   sent log's disk, goes to the dead-letter topic with the reason (``vigil.contain``) and
   is acknowledged;
2. skip it if (alert id, state) was already emailed (a redelivery);
3. find its recipients: the addresses of the rule's owner, from the rule-set snapshot on
   ``{root}/config/rules`` (followed outside the batches, so an alert never waits behind
   it); the admin's alerts (and those of rules from before owners) go to the admin's
   addresses, or ``notifier.recipients`` if the admin has none. A user without addresses:
   recorded as skipped, with the reason;
4. render the email and send it, retrying with capped backoff while the SMTP server is away
   or answers 4xx (an outage); nothing is acknowledged meanwhile. A 5xx answer (a refused
   sender, recipient or login) is permanent: retrying cannot help, and it must not hold up
   every alert after it, so the transition is recorded as failed, with the reason;
5. record (alert id, state) as sent (or failed); the runtime then acknowledges the message.

A message received on an earlier connection is not acknowledged (the runtime skips it: its
packet id may name another message by now); the broker re-sends it and step 2 recognises it.
A failure of the sent log's disk ends the process (crash-only); the alert stays
unacknowledged for the restarted notifier.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import sqlite3
import threading
from email.message import EmailMessage
from pathlib import Path

from notifier.mailer import Mailer, SendError
from notifier.render import render_email, subject
from notifier.store import SentStore
from vigil.consumer import Consumer, Received
from vigil.contain import Failed, contain_async
from vigil.deadletter import DeadLetter, DeadLetters
from vigil.messages import Alert, InvalidMessage, RuleSet, decode_rule_set
from vigil.metrics import ServiceMetrics
from vigil.names import ADMIN_USER
from vigil.readiness import Readiness
from vigil.retry import Backoff
from vigil.settings import BrokerSettings, NotifierSettings

log = logging.getLogger(__name__)

RECEIVE_MAXIMUM = 100
#: How long an alert waits for the first rule-set snapshot (who gets it) after a start.
ROUTING_WAIT_S = 10.0
#: On SIGTERM, how long an email being sent may take to finish before it is abandoned.
STOP_GRACE_S = 5.0


class Notifier:
    def __init__(
        self,
        broker: BrokerSettings,
        settings: NotifierSettings,
        metrics: ServiceMetrics | None = None,
        backoff: Backoff | None = None,
        ready_file: Path | None = None,
    ) -> None:
        self.topics = broker.topics
        self.settings = settings
        self.metrics = metrics or ServiceMetrics("notifier", "send")
        self._duplicates = self.metrics.counter(
            "vigil_notifier_duplicates", "Alert messages already emailed (redeliveries)"
        )
        self._failed = self.metrics.counter(
            "vigil_notifications_failed",
            "Alert transitions not delivered: the SMTP server refused them for good (5xx)",
        )
        self.backoff = backoff or Backoff()
        self.mailer = Mailer(settings.smtp)
        self._routing: RuleSet | None = None
        self._routing_known = threading.Event()
        self.store = SentStore(settings.state_path)
        self.consumer = Consumer(
            broker,
            settings.mqtt,
            service="notifier",
            subscriptions=[self.topics.alerts_filter],
            handler=self._handle_from_thread,
            batch_max=1,  # one email at a time, each acknowledged once sent
            linger_s=0.0,
            receive_maximum=RECEIVE_MAXIMUM,
            metrics=self.metrics,
            readiness=Readiness("notifier", ready_file),
        )
        self.consumer.watch(self.topics.rules, self._on_rule_set)
        self.mqtt = self.consumer.mqtt
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._in_flight: concurrent.futures.Future[bool] | None = None
        self.dead_letters = DeadLetters(
            self.mqtt, self.topics, "notifier", self.metrics, self.consumer.stopping
        )
        log.info(
            "sent-alert log %s: %d entries (%d old ones pruned)",
            settings.state_path,
            self.store.count(),
            self.store.pruned,
        )

    # -- the loop -----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Consume alerts until ``stop`` is set."""
        self._loop = asyncio.get_running_loop()
        self.consumer.start()
        log.info(
            "notifier started: %s -> each rule owner's recipients (the admin's: %s) via SMTP %s",
            self.topics.alerts_filter,
            ", ".join(self.settings.recipients),
            self.mailer.server,
        )
        try:
            await stop.wait()
        finally:
            self._stopping.set()
            await asyncio.to_thread(self.consumer.stop, STOP_GRACE_S)
            in_flight = self._in_flight
            if in_flight is not None and not in_flight.done():
                log.warning(
                    "an email was still being sent after %.0fs; abandoning it (its "
                    "alert stays unacknowledged)",
                    STOP_GRACE_S,
                )
                in_flight.cancel()
            self.store.close()
        log.info("stopped")

    def _handle_from_thread(self, batch: list[Received]) -> bool:
        """The runtime's handler (its worker thread): run the batch on the loop, wait."""
        assert self._loop is not None, "run() starts the consumer"
        future = asyncio.run_coroutine_threadsafe(self._handle_batch(batch), self._loop)
        self._in_flight = future
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            return False  # abandoned while stopping: not acknowledged

    async def _handle_batch(self, batch: list[Received]) -> bool:
        for d in batch:
            if self._stopping.is_set() or not await self._handle(d):
                return False
        return True

    async def _handle(self, d: Received) -> bool:
        """Email ``d``'s alert, or dead-letter it; True once that is done (to acknowledge)."""
        self.metrics.messages_in.inc()
        outcome = await contain_async(
            lambda: self._handle_alert(d),
            what="emailing the alert",
            subject=d.topic,
            passthrough=(sqlite3.Error, OSError),  # the sent log's disk: crash-only
        )
        if isinstance(outcome, Failed):
            self.metrics.error("invalid_alert")
            dead = DeadLetter(d.topic, d.payload, d.received_at, outcome.reason)
            return await asyncio.to_thread(self.dead_letters.publish, [dead])
        return outcome

    # -- routing ------------------------------------------------------------------------
    def _on_rule_set(self, d: Received) -> None:
        """A rule-set snapshot (on the network thread): keep the newest one's recipients."""
        if not d.payload:
            return
        try:
            rule_set = decode_rule_set(d.payload)
        except InvalidMessage as exc:
            self.metrics.error("invalid_rules")
            log.error("ignoring the rule set on %s: %s", d.topic, exc.reason)
            return
        current = self._routing
        if current is None or rule_set.version > current.version:
            self._routing = rule_set
            if current is None:
                log.info("recipients of rule set version %d known", rule_set.version)
        self._routing_known.set()

    def recipients_for(self, alert: Alert) -> tuple[list[str], str | None]:
        """Who gets ``alert``'s email, or why nobody does."""
        owner = alert.owner or ADMIN_USER
        routing = self._routing
        known = None if routing is None else routing.recipients
        own = list(known.get(owner, ())) if known is not None else []
        if owner == ADMIN_USER:
            return (own or list(self.settings.recipients)), None
        if own:
            return own, None
        if known is None:
            return [], f"who gets {owner}'s alerts is not known yet (no rule-set snapshot)"
        return [], f"user {owner} has no email recipients"

    async def _handle_alert(self, d: Received) -> bool:
        alert = Alert.decode(d.payload)
        if self.store.seen(alert.alert_id, alert.state):
            self._duplicates.inc()
            log.debug("alert %s %s already emailed; acknowledging", alert.alert_id, alert.state)
            return True
        if (alert.owner or ADMIN_USER) != ADMIN_USER and not self._routing_known.is_set():
            # just started: the retained snapshot comes right after the subscription
            await asyncio.to_thread(self._routing_known.wait, ROUTING_WAIT_S)
        recipients, nobody = self.recipients_for(alert)
        if nobody is not None:
            log.warning("not emailing %r: %s", subject(alert), nobody)
            self.store.record(alert.alert_id, alert.state, outcome="skipped", reason=nobody)
            return True
        email = render_email(alert, sender=self.settings.smtp.sender, recipients=recipients)
        result = await self._send_until_accepted(alert, email, recipients)
        if result is None:
            return False  # stopping: not acknowledged, the broker keeps it
        attempts, refusal = result
        if refusal is None:
            self.store.record(alert.alert_id, alert.state, attempts=attempts)
            self.metrics.messages_out.inc()
        else:
            self.store.record(
                alert.alert_id, alert.state, outcome="failed", attempts=attempts, reason=refusal
            )
            self._failed.inc()
        return True

    async def _send_until_accepted(
        self, alert: Alert, email: EmailMessage, recipients: list[str]
    ) -> tuple[int, str | None] | None:
        """Send until the SMTP server accepts, or refuses for good: ``(attempts, None)``
        once sent, ``(attempts, reason)`` if refused for good; None if stopping came first."""
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            started = loop.time()
            try:
                refused = await self.mailer.send(email, recipients)
            except SendError as exc:
                failures += 1
                self.metrics.error("smtp_refused" if exc.permanent else "smtp")
                if exc.permanent:
                    log.error(
                        "the SMTP server %s refused %r for good: %s (check notifier.smtp and "
                        "recipients); recorded as failed, going on with the next alert",
                        self.mailer.server,
                        subject(alert),
                        exc.reason,
                    )
                    return failures, exc.reason
                if failures == 1 or failures % 20 == 0:
                    log.warning(
                        "cannot email %r via %s (attempt %d): %s; retrying with backoff up "
                        "to %.0fs",
                        subject(alert),
                        self.mailer.server,
                        failures,
                        exc.reason,
                        self.backoff.cap_s,
                    )
                delay = self.backoff.delay(failures, random.random())
                try:
                    await asyncio.wait_for(self._stopping.wait(), delay)
                except TimeoutError:
                    continue
                return None
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
                len(recipients) - len(refused),
                f" after {failures} failed attempt(s)" if failures else "",
            )
            return failures + 1, None
