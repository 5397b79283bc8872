"""The periodic gap check: for each device whose status says which of its readings have left
its outbox (``first_id``, ``settled_below``), every id in between must be stored, unless the
status lists it as dropped. One that is neither is an unexplained gap (:mod:`vigil.gaps`):
counted in ``vigil_reading_gaps{device}`` (ids missing now) and
``vigil_reading_gap_events_total``, logged once per new gap, published as an event on
``{root}/events/{device}`` and shown by ``GET /devices/<device>/gaps``.

Ingest members on a shared subscription each see only part of a device's stream, so the
check lives here, on what storage holds. Each round reads, per device, only the ids above
what it verified before (at most ``MAX_WINDOW_IDS`` at a time), from every server: a
reading counts as stored if any replica has it. A round with a server unreachable reports
nothing new (the missing ids may sit on that server, or in a hint for it) and tries again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Gauge

from api.status import StatusBoard
from storage_nodes import StorageCluster
from vigil import gaps
from vigil.messages import DeviceStatus
from vigil.metrics import ServiceMetrics
from vigil.mqtt import MqttClient
from vigil.topics import Topics

log = logging.getLogger(__name__)

#: most ids one device's round reads
MAX_WINDOW_IDS = 200_000
#: most gap ranges kept (and published) per device
MAX_GAP_RANGES = 100
#: a device's readings, and the quotes it fetched (stored under their symbols)
GAP_QUERY = (
    "SELECT id FROM /.*/ WHERE (device = $device OR agent = $device) AND id >= $lo AND id < $hi"
)


@dataclass
class DeviceGaps:
    """What the check knows of one device."""

    first_id: int = 0
    verified_below: int = 0  # every id in [first_id, verified_below) stored or explained
    gaps: list[gaps.Range] = field(default_factory=list)  # unexplained, still missing
    checked_ms: int | None = None

    def to_json(self, device: str) -> dict[str, Any]:
        return {
            "device": device,
            "first_id": self.first_id,
            "verified_below": self.verified_below,
            "missing": gaps.count(self.gaps),
            "gaps": [list(r) for r in self.gaps],
            "checked_ms": self.checked_ms,
        }


class GapChecker:
    def __init__(
        self,
        storage: StorageCluster,
        *,
        status: StatusBoard,
        mqtt: MqttClient,
        topics: Topics,
        metrics: ServiceMetrics,
        interval_s: float,
    ) -> None:
        self.storage, self.status, self.mqtt, self.topics = storage, status, mqtt, topics
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._devices: dict[str, DeviceGaps] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gap-check", daemon=True)
        self._service = metrics.service
        self._missing = Gauge(
            "vigil_reading_gaps",
            "Readings of a device neither stored nor explained by its status (dropped, "
            "still in its outbox)",
            ["service", "device"],
            registry=metrics.registry,
        )
        self._events = metrics.counter(
            "vigil_reading_gap_events", "Unexplained gaps found (each new range once)"
        )
        self._failures = metrics.counter(
            "vigil_gap_check_failures", "Gap check rounds that could not read every server"
        )

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self.interval_s > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
            except Exception:  # one bad round must not end the checks
                self._failures.inc()
                log.exception("gap check failed")

    def report(self, device: str) -> dict[str, Any] | None:
        with self._lock:
            known = self._devices.get(device)
            return None if known is None else known.to_json(device)

    # -- one round ---------------------------------------------------------------------------
    def run_once(self) -> None:
        for device, status in sorted(self.status.all().items()):
            if status.first_id and status.settled_below > status.first_id:
                self._check(device, status)

    def _check(self, device: str, status: DeviceStatus) -> None:
        with self._lock:
            known = self._devices.get(device)
            if known is None or known.first_id != status.first_id:  # a new outbox
                known = self._devices[device] = DeviceGaps(status.first_id, status.first_id)
        lo = min([known.verified_below, *(a for a, _ in known.gaps)])
        hi = min(status.settled_below, lo + MAX_WINDOW_IDS)
        stored = self._stored_ids(device, lo, hi)
        if stored is None:
            self._failures.inc()
            return
        missing = gaps.unexplained(lo, hi, stored, status.dropped_ids)
        new = gaps.subtract(missing, known.gaps)
        with self._lock:
            known.gaps = missing[-MAX_GAP_RANGES:]
            known.verified_below = hi
            known.checked_ms = int(time.time() * 1000)
        self._missing.labels(self._service, device).set(gaps.count(missing))
        if new:
            self._events.inc(len(new))
            log.warning(
                "device %s: %d reading(s) neither stored nor explained by its status, ids %s",
                device,
                gaps.count(new),
                ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in new[:10]),
            )
            event = {
                "v": 1,
                "kind": "gap",
                "device": device,
                "ids": [list(r) for r in new[:MAX_GAP_RANGES]],
                "count": gaps.count(new),
                "ts": int(time.time() * 1000),
            }
            self.mqtt.publish(self.topics.events(device), json.dumps(event).encode())

    def _stored_ids(self, device: str, lo: int, hi: int) -> set[int] | None:
        """The ids in ``[lo, hi)`` any server holds; None if a server did not answer."""
        found: set[int] = set()
        for name in self.storage.nodes:
            try:
                series = self.storage.nodes[name].query(
                    GAP_QUERY, self.storage.database, {"device": device, "lo": lo, "hi": hi}
                )
            except Exception as exc:  # unreachable, or refusing: decide nothing this round
                log.debug("gap check: %s did not answer: %s", name, exc)
                return None
            for s in series:
                column = s["columns"].index("id")
                found.update(int(row[column]) for row in s["values"] if row[column] is not None)
        return found
