"""The ingest service: MQTT in, replicated InfluxDB writes out, acknowledged only once stored.

Threads: paho's network thread only queues each message (``Inbound``); one writer thread
batches them (size and linger), validates, drops duplicates, writes the batch to the ring,
publishes dead letters, and only then acknowledges every message of the batch. A message the
broker sent is therefore acknowledged only after its readings are stored at the configured
consistency, with a fsynced hint for every replica that missed them, or its dead letter is on
the broker; anything unacknowledged when the process dies is redelivered to
the persistent session.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as paho

from ingest_service.batcher import Batcher
from ingest_service.dedupe import RecentIds
from ingest_service.prepare import Inbound, Prepared, dead_letter, prepare
from storage_nodes import Rejected, RetriableStorageError, StorageCluster
from storage_nodes.hints import HintStore
from storage_nodes.metrics import StorageCollector
from vigil.contain import Failed, contain
from vigil.deadletter import DeadLetters
from vigil.messages import Reading, now_ms
from vigil.metrics import ServiceMetrics
from vigil.mqtt import MqttClient
from vigil.retry import Backoff, retry_until
from vigil.settings import VigilConfig

log = logging.getLogger(__name__)

SERVICE = "ingest"
STORAGE_BACKOFF = Backoff(initial_s=0.1, cap_s=5.0, jitter=0.0)


class IngestService:
    def __init__(self, config: VigilConfig, metrics: ServiceMetrics | None = None) -> None:
        self.config = config
        self.settings = config.ingest
        self.topics = config.broker.topics
        self.metrics = metrics or ServiceMetrics(SERVICE, "store batch")
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
        self._inbox: queue.SimpleQueue[Inbound] = queue.SimpleQueue()
        self._stop = threading.Event()
        self.mqtt = MqttClient(
            config.broker,
            self.settings.mqtt,
            persistent_session=True,
            manual_ack=True,
            receive_maximum=self.settings.receive_maximum,
        )
        self.mqtt.subscribe(self.topics.data_filter, self._on_message, qos=1)
        self.dead_letters = DeadLetters(self.mqtt, self.topics, SERVICE, self.metrics, self._stop)
        self.on_fatal: Callable[[], None] = lambda: os._exit(70)
        self._writer = threading.Thread(target=self._run, name="ingest-writer", daemon=True)

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
        self._writer.start()
        self.mqtt.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking messages, finish the batch in hand, disconnect."""
        self._stop.set()
        self._writer.join(timeout)
        self.mqtt.stop()
        self.storage.close()

    # -- paho thread: hand over, nothing else -------------------------------------------
    def _on_message(self, msg: paho.MQTTMessage) -> None:
        self._inbox.put(
            Inbound(msg.mid, msg.qos, msg.topic, bytes(msg.payload), now_ms(), self.mqtt.connection)
        )

    # -- writer thread ------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:
            # Crash-only: a process that keeps its MQTT session but no longer acknowledges
            # anything would stall the pipeline silently. Exit; unacknowledged messages are
            # redelivered to the restarted service.
            log.critical(
                "the writer thread failed; exiting so the service is restarted "
                "(unacknowledged messages will be redelivered)",
                exc_info=True,
            )
            self.on_fatal()

    def _loop(self) -> None:
        batcher: Batcher[Inbound] = Batcher(
            self.settings.batch_max_messages, self.settings.batch_linger_ms / 1000
        )
        while not self._stop.is_set() or len(batcher):
            left = batcher.time_left()
            try:
                item = self._inbox.get(timeout=0.2 if left is None else max(left, 0.0005))
                batcher.add(item)
                while not batcher.full:  # drain what is already waiting, cheaply
                    batcher.add(self._inbox.get_nowait())
            except queue.Empty:
                pass
            if len(batcher) and (batcher.ready() or self._stop.is_set()):
                self.process(batcher.take())

    def process(self, batch: list[Inbound]) -> None:
        started = time.perf_counter()
        self.metrics.messages_in.inc(len(batch))
        work = prepare(batch, self.topics, self.recent)
        self._store(work, batch)
        if not self.dead_letters.publish(work.dead):
            return
        # A message from an earlier connection is not acknowledged: the broker re-sent it on
        # this one (its packet id may now name another message) and that copy, dropped as a
        # duplicate, gets acknowledged.
        for msg in batch:
            self.mqtt.ack(msg.mid, msg.qos, msg.connection)
        for r in work.all_readings:
            self.recent.add((r.device, r.id))
        self.metrics.messages_out.inc(len(work.all_readings))  # stored at the consistency
        if work.duplicates:
            self.duplicates.inc(work.duplicates)
        self.metrics.step_seconds.observe(time.perf_counter() - started)

    def _store(self, work: Prepared, batch: list[Inbound]) -> None:
        """Write the batch, retrying while servers are unreachable. A reading a server
        refuses becomes a dead letter of its own (the rest of its message counts as
        stored); if writing the batch raises anything else, the messages are written one
        by one and the ones that raise are dead-lettered with the exception."""
        if not work.readings:
            return
        stored = contain(
            lambda: self._write(work.all_readings),
            what="storing a batch",
            subject=f"{len(work.readings)} message(s)",
            passthrough=(RetriableStorageError,),
        )
        rejected = self._store_one_by_one(work, batch) if isinstance(stored, Failed) else stored
        if not rejected:
            return
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

    def _store_one_by_one(self, work: Prepared, batch: list[Inbound]) -> list[Rejected]:
        rejected: list[Rejected] = []
        kept = []
        for index, readings in work.readings:
            result = contain(
                lambda: self._write(readings),  # noqa: B023 - called at once
                what="storing the readings",
                subject=batch[index].topic,
                passthrough=(RetriableStorageError,),
            )
            if isinstance(result, Failed):
                work.dead.append(dead_letter(batch[index], result.reason))
            else:
                rejected.extend(result)
                kept.append((index, readings))
        work.readings = kept
        return rejected

    def _write(self, readings: list[Reading]) -> list[Rejected]:
        """Store ``readings``, retrying while a server is unreachable (writes are idempotent,
        so a retry after a partial success stores nothing twice); returns the refused."""

        def on_error(exc: Exception, failures: int) -> None:
            self.metrics.error("storage_unavailable")
            if failures == 1:
                log.warning("storage unreachable, holding the batch and retrying: %s", exc)

        result: list[Rejected] = []

        def attempt() -> None:
            result[:] = self.storage.write(readings)

        failures = retry_until(
            attempt, RetriableStorageError, backoff=STORAGE_BACKOFF, on_error=on_error
        )
        if failures:
            log.warning("storage is back after %d failed attempt(s)", failures)
        return result
