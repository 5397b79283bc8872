"""The alert engine's I/O: readings and rule sets in from MQTT, alerts out, state in SQLite.

The consumer runtime (:mod:`vigil.consumer`) receives and acknowledges; this module is the
batch handler (whatever is queued, up to ``MAX_BATCH`` messages):

1. apply rule-set messages, evaluate readings and device statuses, in arrival order; then,
   at most once a second (the runtime calls with an empty batch when nothing comes), what
   time alone changes (no data for a while, offline for a while);
2. publish each transition once at QoS 1, and the alert's current state retained on
   ``{root}/firing/{device}/{rule_id}`` (the firing alert; cleared when it resolves), and
   wait until the broker confirmed each
   (``MqttClient.publish_wait``: paho re-sends it across reconnects, however long the broker
   is away); one the broker refuses is published again with backoff;
3. save the changed state (and the rule set) to SQLite;
4. publish a dead letter for each message whose handling raised (``vigil.contain``: a
   payload can never stop the engine; invalid readings are only counted here, since the
   ingest service dead-letters them);
5. say the batch is durable: the runtime acknowledges its messages.

A message whose batch did not get through step 3 is never acknowledged, so the broker
delivers it again (persistent session) and, since the state was not saved either, its
transitions are computed again with the same alert ids. A message received on an earlier
connection is not acknowledged (the runtime skips it: its packet id may belong to another
message by now): the broker has re-sent it, and the evaluator skips it as already seen.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from alert_engine.evaluator import Evaluator, RuleSetChange
from alert_engine.store import StateStore
from vigil.consumer import Consumer, Received
from vigil.contain import Failed, contain
from vigil.deadletter import DeadLetter, DeadLetters
from vigil.messages import (
    Alert,
    DeviceStatus,
    InvalidMessage,
    Rule,
    decode_rules,
    now_ms,
    parse_readings,
)
from vigil.metrics import ServiceMetrics
from vigil.mqtt import PublishError
from vigil.readiness import Readiness
from vigil.retry import Backoff, retry
from vigil.settings import AlertEngineSettings, BrokerSettings
from vigil.topics import DATA, STATUS

log = logging.getLogger(__name__)

MAX_BATCH = 1000
RECEIVE_MAXIMUM = 2000
RETRY_BACKOFF = Backoff(initial_s=0.5, cap_s=10.0, jitter=0.0)
#: How often what time alone changes is evaluated (nodata, offline for a duration).
TICK_S = 1.0
#: A batch of alerts confirmed later than this is logged (the outage itself is logged by
#: ``vigil.mqtt`` when the connection drops).
SLOW_CONFIRM_S = 5.0


def _num(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def describe(alert: Alert) -> str:
    """One line for the log: ``FIRING high-temp on dev-1: temperature 31.2 above 30``."""
    if alert.detail:
        return f"{alert.state.upper()} {alert.rule}: {alert.detail} (alert {alert.alert_id})"
    verb = alert.op if alert.state == "firing" else f"no longer {alert.op}"
    return (
        f"{alert.state.upper()} {alert.rule} on {alert.device}: {alert.metric} "
        f"{_num(alert.value)} {verb} {_num(alert.threshold)} (alert {alert.alert_id})"
    )


class AlertEngine:
    def __init__(
        self,
        broker: BrokerSettings,
        settings: AlertEngineSettings,
        metrics: ServiceMetrics | None = None,
        ready_file: Path | None = None,
        *,
        quote_agents: Collection[str] = frozenset(),
    ) -> None:
        self.topics = broker.topics
        #: the devices whose quotes are evaluated (devices[].quotes); others' are ignored
        self.quote_agents = frozenset(quote_agents)
        self.settings = settings
        self.metrics = metrics or ServiceMetrics("alert_engine", "evaluate")
        self._latency = self.metrics.histogram(
            "vigil_alert_latency_seconds",
            "Per alert transition: from the reading behind it to the broker's confirmation "
            "(the SLO alert_latency)",
        )
        self._rules_gauge = self.metrics.gauge("vigil_alert_rules", "Rules loaded").labels(
            self.metrics.service
        )
        self._firing_gauge = self.metrics.gauge(
            "vigil_alerts_firing", "Series (rule, device) currently firing"
        ).labels(self.metrics.service)
        self.store = StateStore(settings.state_path)
        version, rules, states = self.store.load()
        self.evaluator = Evaluator.restore(rules, version, states)
        self.consumer = Consumer(
            broker,
            settings.mqtt,
            service="alert_engine",
            subscriptions=[self.topics.data_filter, self.topics.rules, self.topics.status_filter],
            handler=self._process,
            batch_max=MAX_BATCH,
            linger_s=0.0,  # whatever is queued: evaluation wants no wait
            receive_maximum=RECEIVE_MAXIMUM,
            metrics=self.metrics,
            readiness=Readiness("alert_engine", ready_file),
            tick_s=TICK_S,
        )
        self._last_tick = 0.0
        self._handlers: dict[str, Callable[[Received], object]] = {
            "rule set": self._apply_rules,
            "status": self._status,
            "readings": self._evaluate,
        }
        self.mqtt = self.consumer.mqtt
        self._stopping = self.consumer.stopping
        self.dead_letters = DeadLetters(
            self.mqtt, self.topics, "alert_engine", self.metrics, self._stopping
        )
        #: resolutions of the rule set just applied, taken by the batch handler
        self._resolutions: list[Alert] = []
        self._update_gauges()
        log.info(
            "state %s: rule set version %d with %d rule(s), %d series, %d firing",
            settings.state_path,
            version,
            len(rules),
            len(states),
            self.evaluator.firing_count(),
        )

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self.consumer.start()

    def stop(self) -> None:
        self.consumer.stop()
        self.store.close()
        log.info("stopped")

    # -- the batch handler ----------------------------------------------------------------
    def _process(self, batch: list[Received]) -> bool:
        alerts: list[Alert] = []
        new_rule_set: tuple[int, list[Rule]] | None = None
        dead: list[DeadLetter] = []
        for d in batch:
            kind = self._kind_of(d.topic)
            result = contain(
                lambda: self._handlers[kind](d),  # noqa: B023
                what=f"evaluating the {kind}" if kind != "rule set" else "applying the rule set",
                subject=d.topic,
            )
            if isinstance(result, Failed):  # only an exception: invalid content is skipped
                self.metrics.error("unprocessable")
                dead.append(DeadLetter(d.topic, d.payload, d.received_at, result.reason))
            elif isinstance(result, list):
                alerts.extend(result)
            elif isinstance(result, tuple):
                new_rule_set = result
                # Firing alerts whose rule went away resolve, in the batch's order.
                alerts.extend(self._resolutions)
                self._resolutions.clear()
        if time.monotonic() - self._last_tick >= TICK_S:
            self._last_tick = time.monotonic()
            alerts.extend(self.evaluator.tick(now_ms()))
        if not self.publish_alerts(alerts):
            return False
        changes = self.evaluator.take_changes()
        if not self._retry("save the alert state", lambda: self.store.save(changes, new_rule_set)):
            return False
        if not self.dead_letters.publish(dead):
            return False
        if alerts or new_rule_set is not None:
            self._update_gauges()
        return True

    def _kind_of(self, topic: str) -> str:
        if topic == self.topics.rules:
            return "rule set"
        return "status" if self.topics.device_of(topic, STATUS) is not None else "readings"

    def publish_alerts(self, alerts: Sequence[Alert]) -> bool:
        """Publish ``alerts`` in order, each once, with each one's current state retained,
        and wait until the broker confirmed each, however long it is away. Returns False
        only if the engine is stopping first."""
        started = time.monotonic()
        for n, alert in enumerate(alerts):
            current = self.topics.firing(alert.device, alert.rule_id)
            steps = (
                (self.topics.alert(alert.device, alert.rule_id), alert.encode(), False),
                # the current state: idempotent, so sending it again changes nothing
                (current, alert.encode() if alert.state == "firing" else b"", True),
            )
            for topic, payload, retain in steps:

                def publish(
                    topic: str = topic, payload: bytes = payload, retain: bool = retain
                ) -> None:
                    # No timeout: besides stopping, only a publish the broker refused (or
                    # paho did not queue) raises, so the broker has no copy and retrying
                    # cannot duplicate it.
                    self.mqtt.publish_wait(
                        topic, payload, retain=retain, timeout=None, stop=self._stopping
                    )

                if not self._retry(
                    f"publish alert {alert.alert_id} to {topic}", publish, PublishError, "publish"
                ):
                    log.warning(
                        "stopping with %d alert(s) not confirmed by the broker; their "
                        "readings stay unacknowledged and will be evaluated again",
                        len(alerts) - n,
                    )
                    return False
            log.info("%s", describe(alert))
            self.metrics.messages_out.inc()
            self._latency.observe(max(0.0, time.time() - alert.ts / 1000))
        if alerts and time.monotonic() - started > SLOW_CONFIRM_S:
            log.info(
                "broker confirmed %d alert(s) after %.1fs",
                len(alerts),
                time.monotonic() - started,
            )
        return True

    def _evaluate(self, msg: Received) -> list[Alert]:
        self.metrics.messages_in.inc()
        device = self.topics.device_of(msg.topic, DATA)
        try:
            if device is None:
                raise InvalidMessage(f"topic {msg.topic} names no valid device")
            readings = parse_readings(msg.payload, device, self.quote_agents)
        except InvalidMessage as exc:
            # The ingest service dead-letters it with the reason; here it is only counted.
            self.metrics.error("invalid_message")
            log.debug("ignoring invalid message on %s: %s", msg.topic, exc.reason)
            return []
        started = time.perf_counter()
        now = now_ms()
        alerts = [a for r in readings for a in self.evaluator.evaluate(r, now)]
        self.metrics.step_seconds.observe(time.perf_counter() - started)
        return alerts

    def _status(self, msg: Received) -> list[Alert]:
        """A device status (retained; the last will says offline) for ``offline`` rules."""
        if not msg.payload:
            return []  # a cleared retained status
        try:
            status = DeviceStatus.decode(msg.payload)
        except InvalidMessage as exc:
            self.metrics.error("invalid_status")
            log.debug("ignoring invalid status on %s: %s", msg.topic, exc.reason)
            return []
        if status.device != self.topics.device_of(msg.topic, STATUS):
            self.metrics.error("invalid_status")
            return []
        return self.evaluator.status(status, now_ms())

    def _apply_rules(self, msg: Received) -> tuple[int, list[Rule]] | None:
        """Install a newer rule set; returns it (to save) or None if it was not applied."""
        if not msg.payload:
            log.warning(
                "empty message on %s (rule set cleared?); keeping rule set version %d",
                msg.topic,
                self.evaluator.version,
            )
            return None
        try:
            version, rules = decode_rules(msg.payload)
        except InvalidMessage as exc:
            self.metrics.error("invalid_rules")
            log.error(
                "ignoring invalid rule set on %s: %s; keeping version %d",
                msg.topic,
                exc.reason,
                self.evaluator.version,
            )
            return None
        current = self.evaluator.version
        if version <= current:
            if version < current:
                log.warning(
                    "ignoring rule set version %d on %s: older than version %d in use",
                    version,
                    msg.topic,
                    current,
                )
            return None
        ids = [r.id for r in rules]
        if len(set(ids)) != len(ids):
            log.warning(
                "rule set version %d repeats a rule id; the last one of each counts", version
            )
        change = self.evaluator.replace_rules(rules, version, now_ms())
        self._log_change(change, len(self.evaluator.rules))
        self._resolutions.extend(change.resolved)
        return version, self.evaluator.rules

    @staticmethod
    def _log_change(change: RuleSetChange, count: int) -> None:
        log.info(
            "rule set version %d applied: %d rule(s) (%s)", change.version, count, change.summary
        )
        for alert in change.resolved:
            log.info("alert %s resolves: %s", alert.alert_id, alert.reason)

    def _retry(
        self,
        what: str,
        action: Callable[[], None],
        errors: type[Exception] | tuple[type[Exception], ...] = (sqlite3.Error, OSError),
        kind: str = "store",
    ) -> bool:
        """Run ``action`` until it succeeds (capped backoff) or the engine stops; each
        failure (one of ``errors``) is counted as an error of ``kind``."""
        return retry(
            what,
            action,
            errors,
            backoff=RETRY_BACKOFF,
            log=log,
            stop=self._stopping,
            on_failure=lambda _exc: self.metrics.error(kind),
        )

    def _update_gauges(self) -> None:
        self._rules_gauge.set(len(self.evaluator.rules))
        self._firing_gauge.set(self.evaluator.firing_count())
