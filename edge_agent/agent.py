"""The agent's loop: take readings, commit them to the outbox, publish, and delete them once
ingest confirms they are stored.

One thread owns the outbox and the loop; paho's network thread only posts events (connected,
disconnected, acknowledged mid, confirmation) to a queue the loop drains, so no lock is held
across paho calls and an acknowledgement is always matched after its publish was recorded.

A reading leaves the outbox only on a storage confirmation (``{root}/ack/{device}``, id
ranges, published by ingest once the reading is stored at the configured consistency). The
broker's PUBACK only frees the in-flight slot. A reading published but not confirmed within
``confirm_timeout_s`` (the broker died before persisting it, no consumer session existed,
the confirmation was lost) is published again; storage absorbs the repeat.

Publishing: readings with an id above ``_cursor`` have never been handed to paho in this
process. While connected the loop publishes them oldest first, at most ``batch_max`` per
message and at most ``MAX_INFLIGHT`` unacknowledged messages at a time; on start the cursor
is 0, so whatever a previous run left in the outbox goes first. paho keeps an unacknowledged
QoS 1 message across reconnects and resends it itself; readings taken while disconnected
stay in the outbox and go out once the connection is back. A message the broker refuses
(PUBACK reason code, e.g. not authorized, or "no matching subscribers" while no consumer
session exists) is not a delivery: its readings stay in the outbox and are published again
after a backoff (1 s doubling to 60 s).

Live configuration: the agent subscribes to ``{root}/config/devices/{device}`` (retained,
versioned, published by the API; :mod:`vigil.device_config`). A new version is validated and
applied between two ticks (sensors, sampling interval, tickers, batch size); the status
topic then says which version is in force, or why the latest was rejected.
"""

from __future__ import annotations

import json
import logging
import queue
import time
from collections.abc import Callable
from typing import Literal

import msgspec
from paho.mqtt.enums import MQTTErrorCode
from prometheus_client import Counter

from edge_agent.outbox import Outbox
from edge_agent.quotes import BREAKER_STATE_VALUES, Clock, Fetcher, QuoteFeed
from edge_agent.samples import Sample
from edge_agent.sensors import SensorBank
from edge_agent.sources import build_sources
from vigil import __version__
from vigil.agent_settings import AgentConfig
from vigil.device_config import (
    MAX_DEVICE_CONFIG_BYTES,
    DeviceConfig,
    DeviceSettings,
    decode_device_config,
)
from vigil.messages import Confirmation, DeviceStatus, InvalidMessage, Reading, encode_readings
from vigil.metrics import ServiceMetrics
from vigil.mqtt import MqttClient, PublishError, Will
from vigil.rate import RateLimiter

log = logging.getLogger(__name__)

#: Unacknowledged data messages at a time (each up to batch_max readings).
MAX_INFLIGHT = 20
#: a refused publish (ACL, or no subscriber session to queue it) is retried with this backoff
REFUSED_RETRY_MIN_S = 1.0
REFUSED_RETRY_MAX_S = 60.0
#: re-send rounds back off up to this many confirm_timeout_s while nothing is confirmed
RESEND_BACKOFF_MAX = 8
#: how often the outbox's bounds (bytes, age) are enforced
OUTBOX_CHECK_S = 10.0
#: Longest the loop waits before it looks at the stop flag again.
MAX_WAIT_S = 0.5
Event = tuple[
    Literal["connected", "disconnected", "acked", "refused", "confirmed", "config"], int | bytes
]


class Agent:
    """One device's agent. ``clock`` gives the wall time (epoch seconds) of readings."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Callable[[], float] = time.time,
        quote_fetcher: Fetcher | None = None,
        quote_clock: Clock | None = None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        #: the agent's own file; ``config`` is it with the live configuration applied
        self.base_config = config
        self.config = config
        self.config_version = 0  # the live configuration applied (0: none, the file)
        self.config_error = ""  # why the latest live configuration was rejected
        self.clock = clock
        self.device = config.device_id
        topics = config.broker.topics
        self.data_topic = topics.data(self.device)
        self.status_topic = topics.status(self.device)
        self.sensors = SensorBank(config.sensors, config.seed)
        self.sources = build_sources(config.sources)  # SourceError: a plugin cannot start
        self._source_failing: dict[str, str] = {}  # source -> its error, while it fails
        self.quotes = QuoteFeed(config.quotes, config.seed, quote_fetcher, quote_clock)
        self.metrics = metrics or ServiceMetrics("edge_agent", "publish")
        self._source_errors = Counter(
            "vigil_source_errors",
            "Ticks in which a source failed or gave something that is not a reading",
            ["service", "source"],
            registry=self.metrics.registry,
        )
        self._breaker_gauge = self.metrics.gauge(
            "vigil_quote_breaker_state",
            "The quote source's circuit breaker: 0 closed, 1 half-open, 2 open",
        ).labels("edge_agent")
        #: readings per second the agent publishes at most (backlog and re-sends)
        self._replay = RateLimiter(
            config.replay_max_per_s, burst=max(config.replay_max_per_s, config.batch_max)
        )
        self._depth_gauge = self.metrics.gauge(
            "vigil_outbox_depth", "Readings in the outbox, not yet confirmed stored"
        ).labels("edge_agent")
        self._unconfirmed_gauge = self.metrics.gauge(
            "vigil_outbox_unconfirmed", "Readings published and waiting for their confirmation"
        ).labels("edge_agent")
        self._oldest_gauge = self.metrics.gauge(
            "vigil_outbox_oldest_unconfirmed_seconds",
            "How long the oldest published reading has waited for its confirmation",
        ).labels("edge_agent")
        self._dropped = self.metrics.counter(
            "vigil_outbox_dropped",
            "Readings dropped unsent: the outbox was full or they were too old",
        )
        self._resent = self.metrics.counter(
            "vigil_outbox_resent", "Readings published again after confirm_timeout_s"
        )
        self.outbox = Outbox(config.outbox_path, self.device, now_us=int(clock() * 1_000_000))
        will = DeviceStatus(self.device, "offline", None, "connection lost").encode()
        # "No matching subscribers" means no ingest session exists to queue the readings:
        # not delivered, keep them (see MqttClient.unrouted_is_refused).
        self.client = MqttClient(
            config.broker,
            config.mqtt,
            will=Will(self.status_topic, will),
            unrouted_is_refused=True,
        )
        self._events: queue.Queue[Event] = queue.Queue()
        self.client.on_connected.append(lambda _sp: self._events.put(("connected", 0)))
        self.client.on_disconnected.append(lambda: self._events.put(("disconnected", 0)))
        self.client.on_published.append(lambda mid: self._events.put(("acked", mid)))
        self.client.on_refused.append(self._on_refused)
        self.client.subscribe(
            topics.ack(self.device),
            lambda msg: self._events.put(("confirmed", bytes(msg.payload))),
            qos=1,
        )
        self.client.subscribe(
            topics.device_config(self.device),
            lambda msg: self._events.put(("config", bytes(msg.payload))),
            qos=1,
        )
        #: reading id -> monotonic time it was handed to paho, until confirmed; kept in that
        #: order (a re-sent id moves to the end), so the oldest is always first
        self._sent: dict[int, float] = {}
        self._bad_confirmation_logged = False
        self._resend_after = 0.0  # monotonic time before which no re-send round starts
        self._resend_rounds = 0  # re-send rounds since the last confirmation
        self._inflight: dict[int, list[int]] = {}  # paho mid -> reading ids
        self._cursor = 0  # highest reading id handed to paho by this process
        self._online = False
        self._stopping = False
        self._publish_failing = False
        self._refused = 0
        self._retry_after = 0.0  # monotonic time before which refused readings wait
        self._retry_delay = REFUSED_RETRY_MIN_S

    # -- the loop -------------------------------------------------------------------------
    def run(self, ticks: int | None = None, drain_timeout_s: float = 10.0) -> None:
        """Take readings every ``interval_s`` until :meth:`stop`; with ``ticks``, stop after
        that many rounds once the outbox is empty (or ``drain_timeout_s`` passed)."""
        if self.outbox.depth:
            log.info(
                "outbox %s holds %d readings from an earlier run: publishing them first",
                self.outbox.path,
                self.outbox.depth,
            )
        self.trim_outbox()
        self._depth_gauge.set(self.outbox.depth)
        self.client.start()
        next_tick = next_quotes = next_trim = time.monotonic()
        next_status = next_tick + self.config.status_interval_s
        taken = 0
        drain_deadline: float | None = None
        try:
            while not self._stopping:
                now = time.monotonic()
                if (ticks is None or taken < ticks) and now >= next_tick:
                    with_quotes = bool(self.quotes.symbols) and now >= next_quotes
                    if with_quotes:
                        next_quotes = now + self.config.quotes.interval_s
                    self.tick(with_quotes=with_quotes)
                    taken += 1
                    next_tick += self.config.interval_s  # read anew: live config changes it
                    if next_tick <= now:  # fell behind (a slow quote fetch): skip, no burst
                        next_tick = now + self.config.interval_s
                next_tick = min(next_tick, now + self.config.interval_s)  # a shorter interval
                if ticks is not None and taken >= ticks:
                    drain_deadline = drain_deadline or now + drain_timeout_s
                    if self.outbox.depth == 0 or now >= drain_deadline:
                        break
                if now >= next_trim:
                    next_trim = now + OUTBOX_CHECK_S
                    self.trim_outbox()
                if now >= next_status:  # the heartbeat: the retained status, fresh
                    next_status = now + self.config.status_interval_s
                    if self.client.connected:
                        status = self._status("online").encode()
                        self.client.publish(self.status_topic, status, retain=True)
                self.flush()
                wait = next_tick - time.monotonic() if ticks is None or taken < ticks else 0.1
                self._handle_events(timeout=min(max(wait, 0.0), MAX_WAIT_S))
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Ask the loop to stop; it does within MAX_WAIT_S. Only sets a flag, so it is safe
        from a signal handler (which must not take the event queue's lock) and any thread."""
        self._stopping = True

    def tick(self, *, with_quotes: bool = True) -> list[Reading]:
        """Take one reading per sensor (and quote), commit them, publish if connected."""
        started = time.perf_counter()
        ts_ms = int(self.clock() * 1000)
        samples = self.sensors.sample(ts_ms) + self._sample_sources(ts_ms)
        if with_quotes:
            samples += self.quotes.sample()
            self._breaker_gauge.set(BREAKER_STATE_VALUES[self.quotes.breaker_state])
        readings = self.outbox.add(ts_ms, samples)
        self.metrics.messages_in.inc(len(readings))
        self.flush()
        self._depth_gauge.set(self.outbox.depth)
        self.metrics.step_seconds.observe(time.perf_counter() - started)
        return readings

    def _sample_sources(self, ts_ms: int) -> list[Sample]:
        """Every source's readings; a failing source is counted, and logged when it starts
        failing (or fails otherwise) and when it recovers, not every tick."""
        out: list[Sample] = []
        for source in self.sources:
            got = source.sample(ts_ms)
            out += got
            if source.errors:
                self._source_errors.labels("edge_agent", source.name).inc()
                first = source.errors[0]
                if self._source_failing.get(source.name) != first:
                    self._source_failing[source.name] = first
                    log.warning(
                        "source %s of %s: %s%s",
                        source.name,
                        self.device,
                        first,
                        f" (and {len(source.errors) - 1} more)" if len(source.errors) > 1 else "",
                    )
            elif self._source_failing.pop(source.name, None) is not None:
                log.info("source %s of %s is reading again", source.name, self.device)
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        unique = []
        for sample in out:  # one reading per series and tick: the first source wins
            key = (sample.metric, tuple(sorted(sample.tags.items())))
            if key not in seen:
                seen.add(key)
                unique.append(sample)
        return unique

    def trim_outbox(self) -> None:
        """Enforce the outbox's bounds: when it is full (``outbox_max_bytes``) or readings
        are older than ``outbox_max_age_s``, the oldest are dropped, counted, logged and
        shown on the status (count and id ranges). Newest data wins: a device that cannot
        deliver for long keeps its latest readings."""
        drops = self.outbox.trim(
            now_ms=int(self.clock() * 1000),
            max_age_ms=int(self.config.outbox_max_age_s * 1000),
            max_bytes=self.config.outbox_max_bytes,
        )
        for drop in drops:
            for i in drop.ids:
                self._sent.pop(i, None)
            self._dropped.inc(len(drop.ids))
            lo, hi = drop.ranges[0][0], drop.ranges[-1][1]
            log.warning(
                "outbox %s: dropped %d unsent reading(s), ids %d-%d (%s)",
                self.outbox.path,
                len(drop.ids),
                lo,
                hi,
                "older than outbox_max_age_s"
                if drop.reason == "age"
                else "the outbox is full: outbox_max_bytes",
            )
        if drops and self.client.connected:
            self.client.publish(self.status_topic, self._status("online").encode(), retain=True)

    def _status(self, state: Literal["online", "offline"], reason: str = "") -> DeviceStatus:
        count, ranges = self.outbox.dropped
        return DeviceStatus(
            self.device,
            state,
            int(self.clock() * 1000),
            reason,
            count,
            tuple(ranges),
            self.config_version,
            self.config_error,
            self.outbox.first_id,
            self.outbox.lowest_id(),
            __version__,
            tuple(s.name for s in self.sources),
            self.outbox.depth,
            len(self._sent),
            self.quotes.breaker_state if self.quotes.symbols else "",
            self.config.status_interval_s if state == "online" else 0.0,
        )

    # -- live configuration ---------------------------------------------------------------
    def apply_config(self, payload: bytes) -> bool:
        """Apply a message of the device's config topic; True if the configuration changed.

        A configuration that is not valid, or names another device, is rejected: the one in
        force stays, and the status says why. A version already applied, or older, changes
        nothing (the retained message comes again on every reconnect). An empty message
        (the API removed the live configuration) brings back the agent's own file."""
        if not payload:
            if self.config_version == 0:
                return False
            self._use(DeviceSettings(), 0)
            log.info("live configuration removed: back to %s's own file", self.device)
            return True
        try:
            live = decode_device_config(payload)
            if live.device != self.device:
                raise InvalidMessage(f"it is for device {live.device!r}")
        except InvalidMessage as exc:
            version = _version_of(payload)
            self.config_error = f"{'version ' + str(version) if version else 'config'} rejected: "
            self.config_error += exc.reason
            log.warning(
                "live configuration for %s rejected, keeping version %d: %s",
                self.device,
                self.config_version,
                exc.reason,
            )
            return True
        if live.version <= self.config_version:
            return False
        try:
            self._use(live.settings, live.version)
        except ValueError as exc:
            self.config_error = f"version {live.version} rejected: {exc}"
            log.warning("live configuration version %d rejected: %s", live.version, exc)
            return True
        log.info("live configuration version %d applied: %s", live.version, _summary(live))
        return True

    def _use(self, live: DeviceSettings, version: int) -> None:
        """Make ``live`` (over the agent's own file) the configuration in force."""
        base = self.base_config
        tickers = live.tickers if live.tickers is not None else base.quotes.symbols
        config = msgspec.structs.replace(
            base,
            interval_s=live.interval_s or base.interval_s,
            batch_max=live.batch_max or base.batch_max,
            sensors=live.sensors if live.sensors is not None else base.sensors,
            quotes=msgspec.structs.replace(base.quotes, symbols=list(tickers)),
        )
        self.quotes.set_symbols(config.quotes.symbols)
        self.sensors = SensorBank(config.sensors, config.seed)
        self.config = config
        self.config_version = version
        self.config_error = ""

    def flush(self) -> None:
        """Publish readings unconfirmed past ``confirm_timeout_s`` again, then readings never
        handed to paho yet, within the in-flight budget. Only once the broker granted the
        confirmation topic: a confirmation sent before that would be lost."""
        if time.monotonic() < self._retry_after:
            return
        due = self._due() if time.monotonic() >= self._resend_after else []
        if due:
            # One window's worth per round; while nothing is confirmed, rounds back off
            # (x2 up to RESEND_BACKOFF_MAX), so a long ingest outage cannot flood the
            # broker's queue with copies.
            due = due[: MAX_INFLIGHT * self.config.batch_max]
            self._resend_after = time.monotonic() + self.config.confirm_timeout_s * min(
                2**self._resend_rounds, RESEND_BACKOFF_MAX
            )
            self._resend_rounds += 1
            log.info(
                "%d reading(s) not confirmed stored after %.0fs: publishing them again",
                len(due),
                self.config.confirm_timeout_s,
            )
        while (
            self.client.connected
            and self.client.subscribed.is_set()
            and len(self._inflight) < MAX_INFLIGHT
        ):
            if due:
                batch = self.outbox.get(due[: self.config.batch_max])
                gone = set(due[: self.config.batch_max]) - {r.id for r in batch}
                for rid in gone:  # confirmed meanwhile or dropped: nothing to send
                    self._sent.pop(rid, None)
                due = due[self.config.batch_max :]
                if not batch:
                    continue
                self._resent.inc(len(batch))
            else:
                batch = self.outbox.pending(after_id=self._cursor, limit=self.config.batch_max)
                if not batch:
                    return
            if not self._replay.try_acquire(len(batch)):
                return  # replay_max_per_s: the rest goes on a later pass (due ones come again)
            if not self._publish(batch):
                return

    def _due(self) -> list[int]:
        """Ids published but unconfirmed for longer than ``confirm_timeout_s``, and not in
        flight (paho still re-sends those itself), oldest first."""
        if not self._sent:
            return []
        deadline = time.monotonic() - self.config.confirm_timeout_s
        flying = {i for ids in self._inflight.values() for i in ids}
        due = []
        for i, t in self._sent.items():  # oldest first: stop at the first one not yet due
            if t > deadline:
                break
            if i not in flying:
                due.append(i)
        return sorted(due)

    def _publish(self, batch: list[Reading]) -> bool:
        """Hand ``batch`` to paho as one message; False if paho refused it."""
        info = self.client.publish(self.data_topic, encode_readings(self.device, batch))
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self.metrics.error("publish")
            if not self._publish_failing:
                log.error(
                    "publish to %s refused by the client (%s); retrying",
                    self.data_topic,
                    info.rc,
                )
                self._publish_failing = True
            return False
        self._publish_failing = False
        self._inflight[info.mid] = [r.id for r in batch]
        now = time.monotonic()
        for r in batch:
            self._sent.pop(r.id, None)  # to the end: the order stays the order of time
            self._sent[r.id] = now
        self._cursor = max(self._cursor, batch[-1].id)
        return True

    # -- events from paho's thread --------------------------------------------------------
    def _on_refused(self, mid: int, _reason: str) -> None:  # MqttClient logs the reason
        self._events.put(("refused", mid))

    def _handle_events(self, timeout: float) -> None:
        try:
            event = self._events.get(timeout=timeout)
            while True:
                self._handle(event)
                event = self._events.get_nowait()
        except queue.Empty:
            pass
        self._depth_gauge.set(self.outbox.depth)
        self._unconfirmed_gauge.set(len(self._sent))
        oldest = next(iter(self._sent.values()), None)
        self._oldest_gauge.set(0 if oldest is None else time.monotonic() - oldest)

    def _confirmed(self, payload: bytes) -> None:
        try:
            confirmation = Confirmation.decode(payload)
            if confirmation.device != self.device:
                raise InvalidMessage(f"it names device {confirmation.device!r}")
        except InvalidMessage as exc:
            self.metrics.error("bad_confirmation")
            if not self._bad_confirmation_logged:
                self._bad_confirmation_logged = True
                log.warning("ignoring a confirmation that is not one: %s", exc.reason)
            return
        self._resend_rounds = 0
        self._resend_after = 0.0
        # By range: readings an earlier run published are confirmed the same way.
        deleted = self.outbox.delete_ranges(confirmation.ranges)
        for lo, hi in confirmation.ranges:
            if hi - lo < len(self._sent):  # walk the smaller of the range and _sent
                for i in range(lo, hi + 1):
                    self._sent.pop(i, None)
            else:
                for i in [i for i in self._sent if lo <= i <= hi]:
                    del self._sent[i]
        self.metrics.messages_out.inc(deleted)

    def _handle(self, event: Event) -> None:
        kind, mid = event
        if kind == "confirmed":
            assert isinstance(mid, bytes)
            self._confirmed(mid)
            return
        if kind == "config":
            assert isinstance(mid, bytes)
            if self.apply_config(mid) and self.client.connected:
                self.client.publish(self.status_topic, self._status("online").encode(), retain=True)
            return
        assert isinstance(mid, int)
        if kind == "refused":  # not delivered: keep the readings and try them again later
            refused = self._inflight.pop(mid, [])
            if refused:
                self._refused += len(refused)
                self.metrics.error("refused", len(refused))
                for i in refused:
                    self._sent.pop(i, None)
                self._cursor = min(self._cursor, min(refused) - 1)
                self._retry_after = time.monotonic() + self._retry_delay
                self._retry_delay = min(self._retry_delay * 2, REFUSED_RETRY_MAX_S)
        elif kind == "acked":  # the broker has it: the slot is free, the reading stays
            if self._inflight.pop(mid, None):
                self._retry_delay = REFUSED_RETRY_MIN_S
        elif kind == "connected":
            self._online = True
            self.client.publish(self.status_topic, self._status("online").encode(), retain=True)
            backlog = self.outbox.depth - sum(len(ids) for ids in self._inflight.values())
            if backlog > 0:
                log.info("connected: publishing %d readings waiting in the outbox", backlog)
        elif kind == "disconnected" and self._online:
            self._online = False
            log.warning("broker unreachable: readings are kept in the outbox until it is back")

    def _shutdown(self) -> None:
        try:
            if self.client.connected:
                offline = self._status("offline", "stopped")
                self.client.publish_wait(
                    self.status_topic, offline.encode(), retain=True, timeout=5
                )
                self._handle_events(timeout=0)  # acks that came before the status's
        except PublishError as exc:
            log.warning("could not publish offline status: %s", exc)
        finally:
            self.client.stop()
            if self.outbox.depth:
                log.info(
                    "stopped with %d readings in the outbox (%d refused by the broker), "
                    "published on next start",
                    self.outbox.depth,
                    self._refused,
                )
            self.outbox.close()


def _version_of(payload: bytes) -> int:
    """The version a rejected configuration claims, if it says one (0 if not)."""
    try:
        obj = json.loads(payload[:MAX_DEVICE_CONFIG_BYTES])
    except (ValueError, UnicodeDecodeError, RecursionError):
        return 0
    version = obj.get("version") if isinstance(obj, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and 0 < version <= 2**53:
        return version
    return 0


def _summary(live: DeviceConfig) -> str:
    parts = []
    if live.interval_s is not None:
        parts.append(f"interval {live.interval_s:g}s")
    if live.batch_max is not None:
        parts.append(f"batch {live.batch_max}")
    if live.sensors is not None:
        parts.append(f"sensors {', '.join(s.metric for s in live.sensors) or 'none'}")
    if live.tickers is not None:
        parts.append(f"tickers {', '.join(live.tickers) or 'none'}")
    return "; ".join(parts) or "nothing changed from the file"
