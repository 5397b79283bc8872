"""The ingest service: MQTT in, replicated InfluxDB writes out, acknowledged only once stored.

The consumer runtime (:mod:`vigil.consumer`) receives, batches (size and linger) and
acknowledges; this module is the batch handler: validate, drop duplicates, write the batch to
the ring, publish dead letters, and only then say the batch is durable. A message the broker
sent is therefore acknowledged only after its readings are stored at the configured
consistency, with a fsynced hint for every replica that missed them, or its dead letter is on
the broker; anything unacknowledged when the process dies is redelivered to the persistent
session.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from ingest_service.dedupe import RecentIds
from ingest_service.prepare import Prepared, confirmations, dead_letter, prepare
from storage_nodes import Rejected, RetriableStorageError, StorageCluster
from storage_nodes.hints import HintStore
from storage_nodes.metrics import StorageCollector
from vigil.consumer import Consumer, Received
from vigil.contain import Failed, contain
from vigil.deadletter import DeadLetters
from vigil.messages import Confirmation, Reading
from vigil.metrics import ServiceMetrics
from vigil.readiness import Readiness
from vigil.retry import Backoff, retry
from vigil.settings import VigilConfig

log = logging.getLogger(__name__)

SERVICE = "ingest"
STORAGE_BACKOFF = Backoff(initial_s=0.1, cap_s=5.0, jitter=0.0)
#: a leaving process's session counts as drained once nothing arrived for this long
LEAVE_QUIET_S = 2.0


class IngestService:
    def __init__(
        self,
        config: VigilConfig,
        metrics: ServiceMetrics | None = None,
        ready_file: Path | None = None,
    ) -> None:
        self.config = config
        self.settings = config.ingest
        self.topics = config.broker.topics
        self.metrics = metrics or ServiceMetrics(SERVICE, "store batch")
        self._lag = self.metrics.histogram(
            "vigil_ingest_lag_seconds",
            "Per stored batch: how long ago its oldest reading was taken (the SLO ingest_lag)",
        )
        self.duplicates = self.metrics.counter(
            "vigil_ingest_duplicates_dropped", "Redelivered readings dropped by message id"
        )
        bounds = config.storage.hints
        hints = None
        if self.settings.hints_dir is not None:
            hints = HintStore(
                self.settings.hints_dir, max_bytes=bounds.max_bytes, max_age_s=bounds.max_age_s
            )
        self.storage = StorageCluster(config.storage, hints=hints)
        self.metrics.registry.register(StorageCollector(self.storage, SERVICE))
        self.recent = RecentIds(self.settings.dedupe_window)
        self.consumer = Consumer(
            config.broker,
            self.settings.mqtt,
            service=SERVICE,
            subscriptions=[self.settings.subscription(self.topics.data_filter)],
            handler=self.process,
            batch_max=self.settings.batch_max_messages,
            linger_s=self.settings.batch_linger_ms / 1000,
            receive_maximum=self.settings.receive_maximum,
            metrics=self.metrics,
            readiness=Readiness(SERVICE, ready_file),
        )
        self.mqtt = self.consumer.mqtt
        self._stop = self.consumer.stopping
        self.dead_letters = DeadLetters(self.mqtt, self.topics, SERVICE, self.metrics, self._stop)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Start consuming. Storage servers that are down or not provisioned yet do not stop
        it: a batch for them is held (unacknowledged) and retried until they answer."""
        self.storage.log_server_check(SERVICE)
        log.info(
            "storage ring: %s, replication factor %d, consistency %s, database %s, hints in %s",
            ", ".join(f"{n.name}={n.url}" for n in self.storage.nodes.values()),
            self.storage.ring.replication_factor,
            self.storage.consistency,
            self.storage.database,
            self.settings.hints_dir,
        )
        self.consumer.start()

    def stop(self, timeout: float = 10.0, *, end_session: bool = False) -> None:
        """Stop taking messages, finish the batch in hand, disconnect."""
        self.consumer.stop(timeout, end_session=end_session)
        self.storage.close()

    def leave(self, timeout_s: float, quiet_s: float = LEAVE_QUIET_S) -> bool:
        """Retire this identity for good (a member no longer configured, or the single
        process after a switch to members): connect to its session, unsubscribe so the
        broker routes it nothing new, handle what the session still holds, replay every
        hint it queued, then end the session and delete the hint folder. True once all of
        that is done; False (the session and the hints kept, for a later run or repair)
        if it did not finish within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        who = self.settings.mqtt.client_id
        self.start()
        if not self.mqtt.subscribed.wait(max(0.0, deadline - time.monotonic())):
            log.error("leave: %s could not connect to the broker in time", who)
            self.stop()
            return False
        data = self.topics.data_filter
        self.mqtt.unsubscribe([data, f"$share/{self.settings.share_group}/{data}"])
        log.info("leave: %s unsubscribed; handling what its session still holds", who)
        while not self.consumer.drained(quiet_s) and time.monotonic() < deadline:
            self._stop.wait(0.2)
        drained = self.consumer.drained(quiet_s)
        pending = self._hints_pending()
        if pending:
            log.info("leave: replaying %d hinted point(s) before leaving", sum(pending.values()))
        while pending and time.monotonic() < deadline:
            self._stop.wait(0.5)
            pending = self._hints_pending()
        if not drained or pending:
            left = ", ".join(f"{n}: {p}" for n, p in sorted(pending.items())) or "none"
            log.error(
                "leave: %s did not finish within %.0fs (session %s; hinted points left: %s): "
                "its session and hints are kept; run --leave again once the servers are up, "
                "or run 'vigil storage repair'",
                who,
                timeout_s,
                "drained" if drained else "still delivering",
                left,
            )
            self.stop()
            return False
        self.stop(end_session=True)
        if self.settings.hints_dir is not None and self.settings.hints_dir.exists():
            shutil.rmtree(self.settings.hints_dir)
        log.info("leave: %s left: session ended, no hint left, hint folder removed", who)
        return True

    def _hints_pending(self) -> dict[str, int]:
        return {
            name: int(s["points"])
            for name, s in self.storage.hint_stats().items()
            if s["points"] > 0
        }

    # -- the batch handler ----------------------------------------------------------------
    def process(self, batch: list[Received]) -> bool:
        """Store ``batch``'s readings and publish its dead letters; True once both are
        durable (the runtime then acknowledges the batch), False if stopping first."""
        started = time.perf_counter()
        self.metrics.messages_in.inc(len(batch))
        work = prepare(batch, self.topics, self.recent, self.config.quote_agents)
        if not self._store(work, batch) or not self.dead_letters.publish(work.dead):
            return False
        self._confirm(work)
        for r in work.all_readings:
            self.recent.add((r.device, r.id))
        self.metrics.messages_out.inc(len(work.all_readings))  # stored at the consistency
        if work.duplicates:
            self.duplicates.inc(work.duplicates)
        self.metrics.step_seconds.observe(time.perf_counter() - started)
        return True

    def _confirm(self, work: Prepared) -> None:
        """Tell each device which of its readings are now safe (``{root}/ack/{device}``).
        Not waited for: paho sends it across reconnects, and a lost one only costs the
        agent a re-send after its ``confirm_timeout_s``, which storage absorbs."""
        for device, ids in confirmations(work, self.topics).items():
            self.mqtt.publish(self.topics.ack(device), Confirmation.of(device, ids).encode())

    def _store(self, work: Prepared, batch: list[Received]) -> bool:
        """Write the batch, retrying while servers are unreachable; False if stopping
        first. A reading a server refuses becomes a dead letter of its own (the rest of its
        message counts as stored); if writing the batch raises anything else, the messages
        are written one by one and the ones that raise are dead-lettered with the exception."""
        if not work.readings:
            return True
        stored = contain(
            lambda: self._write(work.all_readings),
            what="storing a batch",
            subject=f"{len(work.readings)} message(s)",
            passthrough=(RetriableStorageError,),
        )
        rejected = self._store_one_by_one(work, batch) if isinstance(stored, Failed) else stored
        if rejected is None:
            return False
        oldest = min((r.ts for _, readings in work.readings for r in readings), default=None)
        if oldest is not None:
            self._lag.observe(max(0.0, time.time() - oldest / 1000))
        if not rejected:
            return True
        index_of = {(r.device, r.id): index for index, readings in work.readings for r in readings}
        refused = {(x.reading.device, x.reading.id) for x in rejected}
        for x in rejected:
            msg = batch[index_of[(x.reading.device, x.reading.id)]]
            where = f" by {x.node}" if x.node else ""
            work.dead.append(
                dead_letter(
                    msg,
                    f"reading {x.reading.id} ({x.reading.metric}) was refused{where}: {x.reason}",
                    x.reading.id,
                )
            )
        work.readings = [
            (index, kept)
            for index, readings in work.readings
            if (kept := [r for r in readings if (r.device, r.id) not in refused])
        ]  # the storage cluster logged the refusals, the dead-letter publisher logs the rest
        return True

    def _store_one_by_one(self, work: Prepared, batch: list[Received]) -> list[Rejected] | None:
        rejected: list[Rejected] = []
        kept = []
        for index, readings in work.readings:
            result = contain(
                lambda: self._write(readings),  # noqa: B023 - called at once
                what="storing the readings",
                subject=batch[index].topic,
                passthrough=(RetriableStorageError,),
            )
            if result is None:
                return None
            if isinstance(result, Failed):
                work.dead.append(dead_letter(batch[index], result.reason))
            else:
                rejected.extend(result)
                kept.append((index, readings))
        work.readings = kept
        return rejected

    def _write(self, readings: list[Reading]) -> list[Rejected] | None:
        """Store ``readings``, retrying while a server is unreachable (writes are idempotent,
        so a retry after a partial success stores nothing twice); returns the refused, or
        None if the service is stopping first."""
        result: list[Rejected] = []

        def attempt() -> None:
            result[:] = self.storage.write(readings)

        stored = retry(
            "store a batch (storage unreachable; holding it)",
            attempt,
            RetriableStorageError,
            backoff=STORAGE_BACKOFF,
            log=log,
            stop=self._stop,
            on_failure=lambda _exc: self.metrics.error("storage_unavailable"),
        )
        return result if stored else None
