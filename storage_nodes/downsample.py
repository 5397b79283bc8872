"""Computing the downsampled series (:mod:`vigil.rollups`) once, in the API process.

Every ``storage.downsample.every_s`` a thread, ``downsample``, lists the series of every
server that is up, and for each raw series asks each of its replicas that is up for the
aggregates of the buckets in the window (``count``, ``mean``, ``min``, ``max``, ``GROUP BY
time(bucket)``: the servers compute them). Per bucket the replica holding the most points
wins; its aggregates are written as rollup readings through the cluster's normal write
path (replicas, hints, consistency), so replicas agree and repair and deletions treat them
as any series. The window reaches ``lookback_s`` back, so a bucket is computed again while
late readings may still arrive; writing it again rewrites the same points.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from storage_nodes.client import StorageError
from storage_nodes.cluster import StorageCluster
from storage_nodes.lineproto import quote_ident
from storage_nodes.repair import list_series
from vigil.messages import Reading
from vigil.rollups import ROLLUP_KIND, buckets, is_rollup_metric, rollup_metric, values, window
from vigil.settings import DownsampleSettings

log = logging.getLogger(__name__)


@dataclass
class DownsampleReport:
    series: int = 0
    buckets: int = 0
    points: int = 0
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "series": self.series,
            "buckets": self.buckets,
            "points": self.points,
            "errors": self.errors[:20],
        }


class Downsampler:
    def __init__(self, cluster: StorageCluster, settings: DownsampleSettings) -> None:
        self.cluster = cluster
        self.settings = settings
        self.last: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="downsample", daemon=True)
        self._failing = False

    def start(self) -> None:
        if self.settings.every_s > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.every_s):
            try:
                report = self.run_once()
            except Exception:
                log.exception("downsampling failed; trying again in %.0fs", self.settings.every_s)
                continue
            if report.errors and not self._failing:
                log.warning(
                    "downsampling: %d error(s), first: %s (their buckets are done again on "
                    "the next runs)",
                    len(report.errors),
                    report.errors[0],
                )
            elif not report.errors and self._failing:
                log.info("downsampling works again: %d series", report.series)
            self._failing = bool(report.errors)

    def run_once(self, now_ms: int | None = None) -> DownsampleReport:
        """One pass over every raw series; what it did."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        s = self.settings
        bucket_ms = s.bucket_s * 1000
        start, end = window(now, bucket_ms, int(s.lookback_s * 1000), int(s.settle_s * 1000))
        report = DownsampleReport()
        if end <= start:
            return report
        c = self.cluster
        every: set[tuple[str, str]] = set()
        for name, node in c.nodes.items():
            if not c.server_up(name):
                continue
            try:
                every |= list_series(node, c.database)
            except StorageError as exc:
                report.errors.append(f"{name}: listing series: {exc}")
        for measurement, device in sorted(every):
            if is_rollup_metric(measurement):
                continue
            target = rollup_metric(measurement, s.bucket_s)
            if target is None:
                continue
            report.series += 1
            self._series(device, measurement, target, (start, end), report)
        self.last = {"finished_ms": now, **report.to_json()}
        return report

    def _series(
        self,
        device: str,
        measurement: str,
        target: str,
        span: tuple[int, int],
        report: DownsampleReport,
    ) -> None:
        start, end = span
        c = self.cluster
        bucket_ms = self.settings.bucket_s * 1000
        cut = c.cutoff_ns(device, measurement)
        if cut is not None:  # only whole buckets the raw readings still cover
            start = max(start, -(-(cut // 1_000_000) // bucket_ms) * bucket_ms)
        if start >= end:
            return
        q = (
            f"SELECT count(value), mean(value), min(value), max(value) FROM "  # noqa: S608
            f"{quote_ident(measurement)} WHERE device = $device AND time >= {start * 1_000_000:d}"
            f" AND time < {end * 1_000_000:d} GROUP BY time({self.settings.bucket_s:d}s)"
            " fill(none)"
        )
        answers = []
        for node in c.replicas(device, measurement):
            if not c.server_up(node.name):
                continue
            try:
                series = node.query(q, c.database, {"device": device})
            except StorageError as exc:
                report.errors.append(f"{device}/{measurement} on {node.name}: {exc}")
                continue
            answers.append([row for s in series for row in s.get("values") or []])
        if not answers:
            return
        found = buckets(answers)
        readings = [
            Reading(
                max(1, b.start_ms // 1000),
                device,
                b.start_ms,
                ROLLUP_KIND,
                target,
                value,
                "",
                {"stat": stat},
            )
            for b in found
            for stat, value in values(b).items()
        ]
        if not readings:
            return
        try:
            rejected = c.write(readings)
        except StorageError as exc:
            report.errors.append(f"{device}/{target}: {exc}")
            return
        if rejected:
            report.errors.append(f"{device}/{target}: {rejected[0].reason}")
        report.buckets += len(found)
        report.points += len(readings) - len(rejected)
