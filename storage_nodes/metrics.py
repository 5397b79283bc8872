"""Prometheus metrics of a storage cluster, per server, read at scrape time.

``vigil_storage_server_up{server}`` (1 up, 0 down or failed), ``vigil_storage_server_failed``
(drained by the operator), and for a writer's hint queues ``vigil_storage_hint_points``,
``_bytes``, ``_oldest_age_seconds``, ``vigil_storage_hints_dropped_points_total`` (by a size or
age bound), ``vigil_storage_hints_replayed_points_total`` (its rate is the replay rate),
``vigil_storage_hinted_points_total``, and ``vigil_storage_read_repaired_points_total``.
All carry the ``service`` label of the process.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from storage_nodes.cluster import StorageCluster
    from storage_nodes.ops import AutoRepair


class StorageCollector(Collector):
    def __init__(self, cluster: StorageCluster, service: str) -> None:
        self.cluster = cluster
        self.service = service

    def collect(self) -> Iterator[Metric]:
        labels = ["service", "server"]
        up = GaugeMetricFamily(
            "vigil_storage_server_up", "Server answers (1) or not", labels=labels
        )
        failed = GaugeMetricFamily(
            "vigil_storage_server_failed", "Server drained by the operator", labels=labels
        )
        for name, h in self.cluster.health.snapshot().items():
            up.add_metric([self.service, name], 1.0 if h.available else 0.0)
            failed.add_metric([self.service, name], 1.0 if h.state == "failed" else 0.0)
        yield up
        yield failed
        c = self.cluster.counters
        for metric, doc, values in (
            ("vigil_storage_hinted_points", "Points queued as hints", c.hinted),
            ("vigil_storage_hints_replayed_points", "Hinted points replayed", c.replayed),
            (
                "vigil_storage_hints_refused_points",
                "Replayed points the server refused",
                c.replay_refused,
            ),
            (
                "vigil_storage_hints_expired_points",
                "Hinted points not replayed: deleted or past retention meanwhile",
                c.hints_expired,
            ),
            (
                "vigil_storage_read_repaired_points",
                "Points written back by read repair",
                c.read_repaired,
            ),
        ):
            family = CounterMetricFamily(metric, doc, labels=labels)
            for name, value in dict(values).items():
                family.add_metric([self.service, name], float(value))
            yield family
        if self.cluster.hints is None:
            return
        stats = self.cluster.hints.stats()
        points = GaugeMetricFamily("vigil_storage_hint_points", "Points queued", labels=labels)
        size = GaugeMetricFamily("vigil_storage_hint_bytes", "Bytes queued", labels=labels)
        age = GaugeMetricFamily(
            "vigil_storage_hint_oldest_age_seconds", "Age of the oldest hint", labels=labels
        )
        dropped = CounterMetricFamily(
            "vigil_storage_hints_dropped_points",
            "Hinted points dropped by a size or age bound",
            labels=labels,
        )
        for name, s in stats.items():
            points.add_metric([self.service, name], float(s.points))
            size.add_metric([self.service, name], float(s.bytes))
            age.add_metric([self.service, name], s.oldest_age_s)
            dropped.add_metric([self.service, name], float(s.dropped_points))
        yield points
        yield size
        yield age
        yield dropped


class RepairCollector(Collector):
    """``vigil_storage_repair_runs_total``, ``_failures_total`` (a run that raised or met
    errors) and ``vigil_storage_repair_copied_points_total`` of the automatic repair."""

    def __init__(self, repair: AutoRepair, service: str) -> None:
        self.repair = repair
        self.service = service

    def collect(self) -> Iterator[Metric]:
        r = self.repair
        for name, doc, value in (
            ("vigil_storage_repair_runs", "Automatic repair runs", r.runs),
            ("vigil_storage_repair_failures", "Repair runs that failed or met errors", r.failures),
            ("vigil_storage_repair_copied_points", "Points copied by repair", r.copied_points),
        ):
            family = CounterMetricFamily(name, doc, labels=["service"])
            family.add_metric([self.service], float(value))
            yield family
