"""The alert engine's I/O: readings and rule sets in from MQTT, alerts out, state in SQLite.

paho's network thread only tags each message with the connection it came on
(``MqttClient.connection``) and puts it on a queue; one worker thread does everything else, a
batch at a time (whatever is queued, up to ``MAX_BATCH`` messages):

1. apply rule-set messages and evaluate readings, in arrival order;
2. publish each transition once at QoS 1 and wait until the broker confirmed it
   (``MqttClient.publish_wait``: paho re-sends it across reconnects, however long the broker
   is away); one the broker refuses is published again with backoff;
3. save the changed state (and the rule set) to SQLite;
4. publish a dead letter for each message whose handling raised (``vigil.contain``: a
   payload can never stop the engine; invalid readings are only counted here, since the
   ingest service dead-letters them);
5. acknowledge the batch's messages.

A message whose batch did not get through step 3 is never acknowledged, so the broker
delivers it again (persistent session) and, since the state was not saved either, its
transitions are computed again with the same alert ids. A message received on an earlier
connection is not acknowledged (``MqttClient.ack`` skips it: its packet id may belong to another
message by now): the broker has re-sent it, and the evaluator skips it as already seen.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import paho.mqtt.client as paho

from alert_engine.evaluator import Evaluator, RuleSetChange
from alert_engine.store import StateStore
from vigil.contain import Failed, contain
from vigil.deadletter import DeadLetter, DeadLetters
from vigil.messages import Alert, InvalidMessage, Rule, decode_rules, now_ms, parse_readings
from vigil.metrics import ServiceMetrics
from vigil.mqtt import MqttClient, PublishError
from vigil.retry import Backoff, retry_until
from vigil.settings import AlertEngineSettings, BrokerSettings
from vigil.topics import DATA

log = logging.getLogger(__name__)

MAX_BATCH = 1000
RECEIVE_MAXIMUM = 2000
RETRY_BACKOFF = Backoff(initial_s=0.5, cap_s=10.0, jitter=0.0)
#: A batch of alerts confirmed later than this is logged (the outage itself is logged by
#: ``vigil.mqtt`` when the connection drops).
SLOW_CONFIRM_S = 5.0


@dataclass(frozen=True, slots=True)
class Delivery:
    msg: paho.MQTTMessage
    connection: int  # which connection it arrived on


def _num(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def describe(alert: Alert) -> str:
    """One line for the log: ``FIRING high-temp on dev-1: temperature 31.2 above 30``."""
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
    ) -> None:
        self.topics = broker.topics
        self.settings = settings
        self.metrics = metrics or ServiceMetrics("alert_engine", "evaluate")
        self._rules_gauge = self.metrics.gauge("vigil_alert_rules", "Rules loaded").labels(
            self.metrics.service
        )
        self._firing_gauge = self.metrics.gauge(
            "vigil_alerts_firing", "Series (rule, device) currently firing"
        ).labels(self.metrics.service)
        self.store = StateStore(settings.state_path)
        version, rules, states = self.store.load()
        self.evaluator = Evaluator.restore(rules, version, states)
        self.mqtt = MqttClient(
            broker,
            settings.mqtt,
            persistent_session=True,
            manual_ack=True,
            receive_maximum=RECEIVE_MAXIMUM,
        )
        self._queue: queue.Queue[Delivery] = queue.Queue()
        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._run, name="alert-engine-worker", daemon=True)
        #: Set when the worker died of an unexpected error; main exits non-zero.
        self.failed = threading.Event()
        self.dead_letters = DeadLetters(
            self.mqtt, self.topics, "alert_engine", self.metrics, self._stopping
        )
        self.mqtt.subscribe(self.topics.data_filter, self._enqueue)
        self.mqtt.subscribe(self.topics.rules, self._enqueue)
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
        self._worker.start()
        self.mqtt.start()

    def stop(self) -> None:
        self._stopping.set()
        self._worker.join(timeout=15)
        self.mqtt.stop()
        self.store.close()
        log.info("stopped")

    # -- paho's thread ------------------------------------------------------------------
    def _enqueue(self, msg: paho.MQTTMessage) -> None:
        self._queue.put(Delivery(msg, self.mqtt.connection))

    # -- the worker ---------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    first = self._queue.get(timeout=0.25)
                except queue.Empty:
                    continue
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                self._process(batch)
        except Exception:
            log.exception("alert engine worker failed; stopping")
            self.failed.set()

    def _process(self, batch: list[Delivery]) -> None:
        alerts: list[Alert] = []
        new_rule_set: tuple[int, list[Rule]] | None = None
        dead: list[DeadLetter] = []
        for d in batch:
            rules = d.msg.topic == self.topics.rules
            result = contain(
                lambda: self._apply_rules(d.msg) if rules else self._evaluate(d.msg),  # noqa: B023
                what="applying the rule set" if rules else "evaluating the readings",
                subject=d.msg.topic,
            )
            if isinstance(result, Failed):  # only an exception: invalid content is skipped
                self.metrics.error("unprocessable")
                dead.append(DeadLetter(d.msg.topic, bytes(d.msg.payload), now_ms(), result.reason))
            elif isinstance(result, list):
                alerts.extend(result)
            elif result is not None:
                new_rule_set = result
        if not self.publish_alerts(alerts):
            return
        changes = self.evaluator.take_changes()
        if not self._retry("save the alert state", lambda: self.store.save(changes, new_rule_set)):
            return
        if not self.dead_letters.publish(dead):
            return
        for d in batch:
            self._ack(d)
        if alerts or new_rule_set is not None:
            self._update_gauges()

    def publish_alerts(self, alerts: Sequence[Alert]) -> bool:
        """Publish ``alerts`` in order, each once, and wait until the broker confirmed each,
        however long it is away. Returns False only if the engine is stopping first."""
        started = time.monotonic()
        for n, alert in enumerate(alerts):
            topic, payload = self.topics.alert(alert.device, alert.rule_id), alert.encode()

            def publish(topic: str = topic, payload: bytes = payload) -> None:
                # No timeout: besides stopping, only a publish the broker refused (or paho
                # did not queue) raises, so the broker has no copy and retrying cannot
                # duplicate it.
                self.mqtt.publish_wait(topic, payload, timeout=None, stop=self._stopping)

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
        if alerts and time.monotonic() - started > SLOW_CONFIRM_S:
            log.info(
                "broker confirmed %d alert(s) after %.1fs",
                len(alerts),
                time.monotonic() - started,
            )
        return True

    def _evaluate(self, msg: paho.MQTTMessage) -> list[Alert]:
        self.metrics.messages_in.inc()
        device = self.topics.device_of(msg.topic, DATA)
        try:
            if device is None:
                raise InvalidMessage(f"topic {msg.topic} names no valid device")
            readings = parse_readings(bytes(msg.payload), device)
        except InvalidMessage as exc:
            # The ingest service dead-letters it with the reason; here it is only counted.
            self.metrics.error("invalid_message")
            log.debug("ignoring invalid message on %s: %s", msg.topic, exc.reason)
            return []
        started = time.perf_counter()
        alerts = [a for r in readings for a in self.evaluator.evaluate(r)]
        self.metrics.step_seconds.observe(time.perf_counter() - started)
        return alerts

    def _apply_rules(self, msg: paho.MQTTMessage) -> tuple[int, list[Rule]] | None:
        """Install a newer rule set; returns it (to save) or None if it was not applied."""
        if not msg.payload:
            log.warning(
                "empty message on %s (rule set cleared?); keeping rule set version %d",
                msg.topic,
                self.evaluator.version,
            )
            return None
        try:
            version, rules = decode_rules(bytes(msg.payload))
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
        change = self.evaluator.replace_rules(rules, version)
        self._log_change(change, len(self.evaluator.rules))
        return version, self.evaluator.rules

    @staticmethod
    def _log_change(change: RuleSetChange, count: int) -> None:
        log.info(
            "rule set version %d applied: %d rule(s) (%s)", change.version, count, change.summary
        )
        for (rule_id, device), episode in change.dropped_firing:
            log.warning(
                "rule %s no longer covers %s, which was firing (alert %s): its state "
                "is dropped and no resolved alert will follow",
                rule_id,
                device,
                episode.alert_id,
            )

    def _ack(self, d: Delivery) -> None:
        # Skipped if it came on an earlier connection: the broker re-sent it on the new
        # one, and that copy gets acknowledged.
        self.mqtt.ack(d.msg.mid, d.msg.qos, d.connection)

    def _retry(
        self,
        what: str,
        action: Callable[[], None],
        errors: type[Exception] | tuple[type[Exception], ...] = (sqlite3.Error, OSError),
        kind: str = "store",
    ) -> bool:
        """Run ``action`` until it succeeds (capped backoff) or the engine stops; each
        failure (one of ``errors``) is counted as an error of ``kind``."""

        def on_error(exc: Exception, failures: int) -> None:
            self.metrics.error(kind)
            if failures == 1:
                log.error("cannot %s: %s; retrying", what, exc)

        failures = retry_until(
            action, errors, backoff=RETRY_BACKOFF, on_error=on_error, stop=self._stopping
        )
        if failures:
            log.info("managed to %s after %d failure(s)", what, failures)
        return failures is not None

    def _update_gauges(self) -> None:
        self._rules_gauge.set(len(self.evaluator.rules))
        self._firing_gauge.set(self.evaluator.firing_count())
