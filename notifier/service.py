"""The notifier's I/O: alert transitions in from MQTT, notifications out by email.

The consumer runtime (:mod:`vigil.consumer`) receives, acknowledges, and hands each message
(batches of one) from its worker thread to the asyncio loop, where everything the notifier
does happens, in order:

1. **receive**: decode the alert; a bad one, or one whose handling raises anything but a
   failure of the state file's disk, goes to the dead-letter topic with the reason
   (``vigil.contain``) and is acknowledged. A transition already received (a redelivery) is
   acknowledged and counted. A new one is stored with its group (:mod:`notifier.grouping`)
   in one transaction; then the runtime acknowledges the message;
2. **group** (at once after each alert, and every ``TICK_S``): each group whose time came
   (group wait, group interval, repeat interval) becomes one notification per channel of its
   owner, written with the group's new state in one transaction. Where it goes: the
   addresses of the rule's owner, from the rule-set snapshot on ``{root}/config/rules``
   (followed outside the batches); the admin's alerts (and those of rules from before
   owners) go to the admin's addresses, or ``notifier.recipients`` if the admin has none. An
   owner without addresses: the notification is recorded as skipped, with the reason;
3. **deliver**: pending notifications are sent in order, retrying with capped backoff while
   the SMTP server is away or answers 4xx (an outage). A 5xx answer (a refused sender,
   recipient or login) is permanent: retrying cannot help, and it must not hold up every
   notification after it, so it is recorded as failed, with the reason.

A notification is written before it is sent and marked sent after, so a crash between the
two sends it again after the restart (at least once; the Message-ID is the same, so mail
systems can tell). A failure of the state file's disk ends the process (crash-only): an
alert not yet stored stays unacknowledged for the restarted notifier.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from notifier.grouping import Flush, Group, Timing, apply, due, group_key
from notifier.mailer import Mailer, SendError
from notifier.render import (
    render_notification,
    summary,
    telegram_text,
    with_user_templates,
)
from notifier.store import SentStore, StoredNotification
from notifier.telegram import TelegramSender
from notifier.webhook import WebhookSender, body_of
from vigil.consumer import Consumer, Received
from vigil.contain import Failed, contain_async
from vigil.deadletter import DeadLetter, DeadLetters
from vigil.messages import (
    Alert,
    ChannelSet,
    DeviceStatus,
    InvalidMessage,
    Notification,
    NotifiedAlert,
    RuleSet,
    decode_channels,
    decode_rule_set,
    muting_silence,
    now_ms,
)
from vigil.metrics import ServiceMetrics
from vigil.mqtt import PublishError
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
#: Delivery records published per look at the state file.
RECORDS_PER_PASS = 100
#: The group's other alerts still firing listed in a notification, at most.
MAX_CONTEXT = 20
#: Delivery records kept per owner (on the broker and in the state file).
HISTORY_PER_OWNER = 500
#: How often the groups are looked at (group wait, interval and repeat are kept to this).
TICK_S = 0.25


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
            "Notifications not delivered: the channel refused them for good (SMTP 5xx, HTTP "
            "4xx) or every attempt failed",
        )
        self.backoff = backoff or Backoff()
        self.mailer = Mailer(settings.smtp)
        self._routing: RuleSet | None = None
        self._routing_known = threading.Event()
        self.store = SentStore(settings.state_path)
        g = settings.grouping
        self.timing = Timing.of(g.group_by, g.group_wait_s, g.group_interval_s, g.repeat_interval_s)
        self.groups: dict[tuple[str, str], Group] = {
            (group.owner, group.key): group for group in self.store.groups()
        }
        self._suppressed = self.metrics.counter(
            "vigil_notifications_suppressed",
            "Alert transitions not notified: a silence or the device being offline muted them",
        )
        self._pending = self.metrics.gauge(
            "vigil_notifications_pending", "Notifications made and not delivered yet"
        ).labels("notifier")
        self.consumer = Consumer(
            broker,
            settings.mqtt,
            service="notifier",
            subscriptions=[self.topics.alerts_filter],
            handler=self._handle_from_thread,
            batch_max=1,  # each alert acknowledged once stored
            linger_s=0.0,
            receive_maximum=RECEIVE_MAXIMUM,
            metrics=self.metrics,
            readiness=Readiness("notifier", ready_file),
        )
        self.consumer.watch(self.topics.rules, self._on_rule_set)
        self._channels: ChannelSet | None = None
        self._channels_known = threading.Event()
        self.consumer.watch(self.topics.channels, self._on_channels)
        self.webhooks = WebhookSender(settings.webhooks)
        self.telegram = TelegramSender(settings.telegram)
        #: the devices whose status says offline (their last will): their alerts are muted
        self.offline: set[str] = set()
        self.consumer.watch(self.topics.status_filter, self._on_status, qos=0)
        self.mqtt = self.consumer.mqtt
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._recorded = asyncio.Event()  # a notification's state changed: publish it
        self._loop: asyncio.AbstractEventLoop | None = None
        self.dead_letters = DeadLetters(
            self.mqtt, self.topics, "notifier", self.metrics, self.consumer.stopping
        )
        log.info(
            "notifier state %s: %d transitions, %d groups, %d notifications to deliver "
            "(%d old entries pruned)",
            settings.state_path,
            self.store.count(),
            len(self.groups),
            len(self.store.pending()),
            self.store.pruned,
        )

    # -- the loop -----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Consume alerts and deliver notifications until ``stop`` is set."""
        self._loop = asyncio.get_running_loop()
        self.consumer.start()
        log.info(
            "notifier started: %s -> each rule owner's recipients (the admin's: %s) via SMTP "
            "%s, grouped by owner%s (wait %.0fs, interval %.0fs, repeat %s)",
            self.topics.alerts_filter,
            ", ".join(self.settings.recipients),
            self.mailer.server,
            "".join(f", {name}" for name in self.timing.group_by),
            self.timing.group_wait_ms / 1000,
            self.timing.group_interval_ms / 1000,
            f"{self.timing.repeat_interval_ms / 1000:.0f}s"
            if self.timing.repeat_interval_ms
            else "never",
        )
        deliverer = asyncio.create_task(self._deliver_forever(), name="deliver")
        ticker = asyncio.create_task(self._tick_forever(), name="group")
        recorder = asyncio.create_task(self._publish_forever(), name="records")
        for task in (deliverer, ticker, recorder):
            task.add_done_callback(self._task_ended)
        try:
            await stop.wait()
        finally:
            self._stopping.set()
            self._wake.set()
            await asyncio.to_thread(self.consumer.stop, STOP_GRACE_S)
            ticker.cancel()
            self._recorded.set()
            try:
                await asyncio.wait_for(deliverer, STOP_GRACE_S)
            except TimeoutError:
                log.warning(
                    "a notification was still being sent after %.0fs; abandoning it (it is "
                    "sent again after the restart)",
                    STOP_GRACE_S,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(recorder, STOP_GRACE_S)
            self.webhooks.close()
            self.telegram.close()
            self.store.close()
        log.info("stopped")

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """Crash-only: a loop of the notifier's own (grouping, delivery, records) that ends
        with an error ends the process; the restarted one takes over from the state file."""
        if task.cancelled() or self._stopping.is_set():
            return
        exc = task.exception()
        if exc is None:
            return
        log.critical(
            "the notifier's %s loop failed; exiting so it is restarted (what is pending is "
            "in the state file)",
            task.get_name(),
            exc_info=exc,
        )
        self.consumer.on_fatal()

    def _handle_from_thread(self, batch: list[Received]) -> bool:
        """The runtime's handler (its worker thread): run the batch on the loop, wait."""
        assert self._loop is not None, "run() starts the consumer"
        future = asyncio.run_coroutine_threadsafe(self._handle_batch(batch), self._loop)
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
        """Store ``d``'s alert, or dead-letter it; True once that is done (to acknowledge)."""
        self.metrics.messages_in.inc()
        outcome = await contain_async(
            lambda: self._handle_alert(d),
            what="taking the alert",
            subject=d.topic,
            passthrough=(sqlite3.Error, OSError),  # the state file's disk: crash-only
        )
        if isinstance(outcome, Failed):
            self.metrics.error("invalid_alert")
            dead = DeadLetter(d.topic, d.payload, d.received_at, outcome.reason)
            return await asyncio.to_thread(self.dead_letters.publish, [dead])
        return outcome

    async def _handle_alert(self, d: Received) -> bool:
        alert = Alert.decode(d.payload)
        if self.store.seen(alert.alert_id, alert.state):
            self._duplicates.inc()
            log.debug("alert %s %s already received; acknowledging", alert.alert_id, alert.state)
            return True
        owner = alert.owner or ADMIN_USER
        if owner != ADMIN_USER and not self._routing_known.is_set():
            # just started: the retained snapshot comes right after the subscription
            await asyncio.to_thread(self._routing_known.wait, ROUTING_WAIT_S)
            await asyncio.to_thread(self._channels_known.wait, ROUTING_WAIT_S)
        key = (owner, group_key(alert, self.timing.group_by))
        now = now_ms()
        group = self.groups.get(key) or Group(*key)
        changed = group.add(alert, now)
        with self.store.transaction():
            if changed:
                self.store.record(alert.alert_id, alert.state, outcome="pending", attempts=0)
                self.store.save_group(group)
            else:
                self.store.record(
                    alert.alert_id,
                    alert.state,
                    outcome="skipped",
                    attempts=0,
                    reason="its episode had already resolved",
                )
        self.groups[key] = group
        self._group(now)
        return True

    # -- grouping -----------------------------------------------------------------------
    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self._group(now_ms())

    def _group(self, now: int) -> None:
        """Every group whose time came becomes its notifications (and suppressions)."""
        made = False
        for key, group in list(self.groups.items()):
            flush = due(group, self.timing, now, self.muted)
            if flush is None:
                continue
            with self.store.transaction():
                if flush.alerts:
                    self._notifications_of(flush, now)
                    made = True
                for alert, reason in flush.suppressed:
                    self.store.settle([(alert.alert_id, alert.state)], "suppressed", 0, reason)
                empty = apply(group, flush, now)
                self.store.save_group(group)
            if empty:
                del self.groups[key]
            if flush.suppressed:
                self._suppressed.inc(len(flush.suppressed))
                log.info(
                    "not notifying %d transition(s) of %s's group %r: %s",
                    len(flush.suppressed),
                    flush.owner,
                    flush.key,
                    flush.suppressed[0][1],
                )
        if made:
            self._wake.set()
            self._recorded.set()

    def muted(self, alert: Alert, now: int) -> str | None:
        """Why ``alert`` is not notified at ``now``, or None: a silence matches it, or its
        device is offline (inhibition: the offline alert itself still goes out)."""
        if alert.kind != "offline" and alert.device in self.offline:
            return f"inhibited: device {alert.device} is offline"
        routing = self._routing
        if routing is None or not routing.silences:
            return None
        silence = muting_silence(routing.silences, alert, alert.owner or ADMIN_USER, now)
        if silence is None:
            return None
        return f"silenced by {silence.id}" + (f" ({silence.comment})" if silence.comment else "")

    def _on_status(self, d: Received) -> None:
        """A device status (on the network thread): follow which devices are offline."""
        device = d.topic.rpartition("/")[2]
        if not d.payload:
            self.offline.discard(device)  # the device was removed
            return
        try:
            status = DeviceStatus.decode(d.payload)
        except InvalidMessage as exc:
            self.metrics.error("invalid_status")
            log.debug("ignoring the status on %s: %s", d.topic, exc.reason)
            return
        if status.state == "offline":
            if device not in self.offline:
                log.info("device %s is offline: its alerts are inhibited", device)
            self.offline.add(device)
        elif device in self.offline:
            self.offline.discard(device)
            log.info("device %s is back online: its alerts are notified again", device)

    def _notifications_of(self, flush: Flush, now: int) -> None:
        recipients, nobody = self.recipients_for_owner(flush.owner)
        transitions = covered(flush.alerts)
        if nobody is not None:
            log.warning(
                "not emailing %d transition(s) of %s's group %r: %s",
                len(flush.alerts),
                flush.owner,
                flush.key,
                nobody,
            )
            self.store.add_notification(
                owner=flush.owner,
                group_key=flush.key,
                channel="email",
                target="",
                alerts=flush.alerts,
                firing=flush.firing[:MAX_CONTEXT],
                repeat=flush.repeat,
                state="skipped",
                reason=nobody,
                at=now,
            )
            self.store.settle(transitions, "skipped", 1, nobody)
            self._channel_notifications(flush, now)
            return
        self.store.add_notification(
            owner=flush.owner,
            group_key=flush.key,
            channel="email",
            target=", ".join(recipients),
            alerts=flush.alerts,
            firing=flush.firing[:MAX_CONTEXT],
            repeat=flush.repeat,
            at=now,
        )
        self._channel_notifications(flush, now)

    def _channel_notifications(self, flush: Flush, now: int) -> None:
        """The owner's other channels: each webhook, and the Telegram chat."""
        channels = self._channels
        chat = None if channels is None else channels.telegram.get(flush.owner)
        if chat is not None:
            off = (
                None
                if self.telegram.enabled
                else "Telegram is off (notifier.telegram.bot_token_file)"
            )
            self.store.add_notification(
                owner=flush.owner,
                group_key=flush.key,
                channel="telegram",
                target=chat,
                alerts=flush.alerts,
                firing=flush.firing[:MAX_CONTEXT],
                repeat=flush.repeat,
                state="pending" if off is None else "skipped",
                reason=off,
                at=now,
            )
        for hook in () if channels is None else channels.webhooks.get(flush.owner, ()):
            self.store.add_notification(
                owner=flush.owner,
                group_key=flush.key,
                channel="webhook",
                target=f"{hook.name} {hook.url}",
                alerts=flush.alerts,
                firing=flush.firing[:MAX_CONTEXT],
                repeat=flush.repeat,
                at=now,
            )

    def _on_channels(self, d: Received) -> None:
        """A channel snapshot (on the network thread): keep the newest one's webhooks."""
        if not d.payload:
            return
        try:
            channels = decode_channels(d.payload)
        except InvalidMessage as exc:
            self.metrics.error("invalid_channels")
            log.error("ignoring the channel set on %s: %s", d.topic, exc.reason)
            return
        current = self._channels
        if current is None or channels.version > current.version:
            self._channels = channels
            hooks = sum(len(h) for h in channels.webhooks.values())
            log.info(
                "channel set version %d: %d webhook(s), %d Telegram chat(s)",
                channels.version,
                hooks,
                len(channels.telegram),
            )
        self._channels_known.set()

    # -- delivery -----------------------------------------------------------------------
    async def _deliver_forever(self) -> None:
        """Deliver the pending notifications, in order within each lane (a channel and its
        target), the lanes apart: a webhook that is away holds up only its own."""
        lanes: dict[tuple[str, str], asyncio.Task[None]] = {}
        while not self._stopping.is_set():
            self._wake.clear()
            self._pending.set(self.store.pending_count())
            for lane in self.store.pending_lanes():
                task = lanes.get(lane)
                if task is None or task.done():
                    lanes[lane] = asyncio.create_task(self._deliver_lane(*lane))
            for lane in [k for k, t in lanes.items() if t.done()]:
                lanes.pop(lane).result()  # a lane that raised ends the process (crash-only)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
        if lanes:
            await asyncio.gather(*lanes.values(), return_exceptions=True)

    async def _deliver_lane(self, channel: str, target: str) -> None:
        """Deliver one lane's notifications, oldest first, until none is left."""
        while not self._stopping.is_set():
            n = self.store.next_pending(channel, target)
            if n is None or not await self._deliver(n):
                return

    async def _deliver(self, n: StoredNotification) -> bool:
        """Deliver ``n``; False if stopping came first (it stays pending)."""
        if n.channel == "webhook":
            result = await self._post_webhook(n)
        elif n.channel == "telegram":
            result = await self._send_telegram(n)
        else:
            result = await self._email(n)
        if result is None:
            return False
        attempts, refusal = result
        transitions = covered(n.alerts) if not n.repeat else []
        if refusal is None:
            self.store.finish(n.seq, "sent", attempts)
            self.store.settle(transitions, "sent", attempts)
            self.metrics.messages_out.inc()
        else:
            self.store.finish(n.seq, "failed", attempts, refusal)
            self.store.settle(transitions, "failed", attempts, refusal)
            self._failed.inc()
        self._recorded.set()
        return True

    async def _email(self, n: StoredNotification) -> tuple[int, str | None] | None:
        recipients = n.target.split(", ")
        email = render_notification(
            n.alerts,
            firing=n.firing,
            repeat=n.repeat,
            notification_id=n.id,
            sender=self.settings.smtp.sender,
            recipients=recipients,
        )
        channels = self._channels
        own = None if channels is None else channels.templates.get(n.owner)
        if own:
            email, problem = with_user_templates(
                email, own, alerts=n.alerts, firing=n.firing, repeat=n.repeat, owner=n.owner
            )
            if problem is not None:
                self.metrics.error("user_template")
                log.warning(
                    "%s's template cannot render notification %s (%s): sent with Vigil's",
                    n.owner,
                    n.id,
                    problem,
                )
        title = str(email["Subject"])
        sent_to = [0]

        async def attempt() -> None:
            refused = await self.mailer.send(email, recipients)
            if refused:
                self.metrics.error("recipient_refused")
                log.warning(
                    "SMTP server refused recipient(s) %s for %r; sent to the others",
                    ", ".join(refused),
                    title,
                )
            sent_to[0] = len(recipients) - len(refused)

        result = await self._until_accepted(n, attempt, title, "email", None)
        if result is not None and result[1] is None:
            failures = result[0] - 1
            log.info(
                "emailed %r to %d recipient(s)%s",
                title,
                sent_to[0],
                f" after {failures} failed attempt(s)" if failures else "",
            )
        return result

    async def _send_telegram(self, n: StoredNotification) -> tuple[int, str | None] | None:
        text = telegram_text(n.alerts, n.firing, repeat=n.repeat)
        title = f"{n.owner}'s notification {n.id} to Telegram chat {n.target}"

        async def attempt() -> None:
            await asyncio.to_thread(self.telegram.send, n.target, text)

        result = await self._until_accepted(
            n, attempt, title, "telegram", self.settings.telegram.max_attempts
        )
        if result is not None and result[1] is None:
            log.info("sent %s (attempt %d)", title, result[0])
        return result

    async def _post_webhook(self, n: StoredNotification) -> tuple[int, str | None] | None:
        name, _, url = n.target.partition(" ")
        channels = self._channels
        hooks = () if channels is None else channels.webhooks.get(n.owner, ())
        hook = next((h for h in hooks if h.name == name and h.url == url), None)
        if hook is None:
            return n.attempts, f"webhook {name} ({url}) of {n.owner} was removed before delivery"
        body = body_of(
            notification_id=n.id,
            owner=n.owner,
            group=n.group_key,
            repeat=n.repeat,
            alerts=n.alerts,
            firing=n.firing,
            webhook=name,
        )
        title = f"{n.owner}'s notification {n.id} to webhook {name}"

        async def attempt() -> None:
            await asyncio.to_thread(self.webhooks.post, hook, body, n.id, int(time.time()))

        result = await self._until_accepted(
            n, attempt, title, "webhook", self.settings.webhooks.max_attempts
        )
        if result is not None and result[1] is None:
            log.info("posted %s (attempt %d)", title, result[0])
        return result

    # -- delivery records -----------------------------------------------------------------
    async def _publish_forever(self) -> None:
        """Keep the broker's retained delivery records (``{root}/notifications/{owner}/
        {id}``) equal to the state file: each notification's newest state, the history past
        ``HISTORY_PER_OWNER`` (or older than the log keeps) cleared."""
        while not self._stopping.is_set():
            self._recorded.clear()
            try:
                for n in self.store.unpublished(RECORDS_PER_PASS):
                    topic = self.topics.notification(n.owner, n.id)
                    await self._publish_record(topic, record_of(n).encode())
                    self.store.mark_published(n.seq, n.state)
                for seq, owner, nid in self.store.prunable(HISTORY_PER_OWNER, now_ms()):
                    await self._publish_record(self.topics.notification(owner, nid), b"")
                    self.store.forget(seq)
            except PublishError as exc:
                if self.consumer.stopping.is_set():
                    return  # what is unpublished is published after the restart
                self.metrics.error("record_publish")
                log.error("cannot publish a delivery record (retrying in 5s): %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 5.0)
                continue
            if self.store.unpublished(1):
                continue  # more than one pass held
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._recorded.wait(), 5.0)

    async def _publish_record(self, topic: str, payload: bytes) -> None:
        """Publish retained and wait for the broker, however long it is away."""
        await asyncio.to_thread(
            self.mqtt.publish_wait,
            topic,
            payload,
            retain=True,
            timeout=None,
            stop=self.consumer.stopping,
        )

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
        return self.recipients_for_owner(alert.owner or ADMIN_USER)

    def recipients_for_owner(self, owner: str) -> tuple[list[str], str | None]:
        """Who gets ``owner``'s emails, or why nobody does."""
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

    async def _until_accepted(
        self,
        n: StoredNotification,
        attempt: Callable[[], Awaitable[None]],
        title: str,
        kind: str,
        max_attempts: int | None,
    ) -> tuple[int, str | None] | None:
        """Try until accepted, or refused for good, or ``max_attempts`` failed:
        ``(attempts, None)`` once delivered, ``(attempts, reason)`` if not; None if stopping
        came first. Attempts made before a restart count too."""
        loop = asyncio.get_running_loop()
        server = {
            "email": self.mailer.server,
            "telegram": self.telegram.server,
        }.get(kind) or n.target.partition(" ")[2]
        failures = n.attempts
        while True:
            started = loop.time()
            try:
                await attempt()
            except SendError as exc:
                failures += 1
                label = "smtp" if kind == "email" else kind
                self.metrics.error(f"{label}_refused" if exc.permanent else label)
                if exc.permanent:
                    log.error(
                        "%s refused %r for good: %s (check its settings); recorded as failed, "
                        "going on with the next one",
                        f"the SMTP server {server}" if kind == "email" else server,
                        title,
                        exc.reason,
                    )
                    return failures, exc.reason
                if max_attempts is not None and failures >= max_attempts:
                    reason = f"gave up after {failures} attempts: {exc.reason}"
                    log.error("%s: %s; recorded as failed", title, reason)
                    return failures, reason
                if failures == 1 or failures % 20 == 0:
                    log.warning(
                        "cannot %s %r via %s (attempt %d): %s; retrying with backoff up to %.0fs",
                        {"email": "email", "webhook": "post"}.get(kind, "send"),
                        title,
                        server,
                        failures,
                        exc.reason,
                        self.backoff.cap_s,
                    )
                self.store.attempted(n.seq, failures, exc.reason)
                delay = self.backoff.delay(failures, random.random())
                try:
                    await asyncio.wait_for(self._stopping.wait(), delay)
                except TimeoutError:
                    continue
                return None
            self.metrics.step_seconds.observe(loop.time() - started)
            return failures + 1, None


def covered(alerts: Iterable[Alert]) -> list[tuple[str, str]]:
    """The transitions a notification of ``alerts`` carries: a resolved alert also carries
    its firing (it may have fired and resolved before its group went out)."""
    out: list[tuple[str, str]] = []
    for a in alerts:
        if a.state == "resolved":
            out.append((a.alert_id, "firing"))
        out.append((a.alert_id, a.state))
    return out


def record_of(n: StoredNotification) -> Notification:
    """The delivery record published for ``n``."""
    return Notification(
        id=n.id,
        owner=n.owner,
        channel=n.channel,
        target=clean(n.target, 2000),
        state=n.state,
        attempts=n.attempts,
        reason=None if n.reason is None else clean(n.reason, 1000),
        created_at=n.created_at,
        updated_at=n.updated_at,
        repeat=n.repeat,
        group=clean(n.group_key, 1000),
        alerts=tuple(NotifiedAlert.of(a, clean(summary(a), 1000)) for a in n.alerts),
    )


def clean(text: str, limit: int) -> str:
    """``text`` as a record's field: on one line, without backslashes, at most ``limit``."""
    return "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in text).replace("\\", "/")[
        :limit
    ]
