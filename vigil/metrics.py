"""The Prometheus metrics every service exposes on its own port.

Each service gets ``vigil_messages_in_total``, ``vigil_messages_out_total``,
``vigil_errors_total{kind}`` and ``vigil_step_seconds`` (the latency of its main step),
all labelled with ``service``, in a registry of its own so several services can live in one
test process.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)
CounterChild = Any  # prometheus_client's labelled Counter

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


#: Bounds of the pipeline's age histograms (ingest lag, alert latency), in seconds: the
#: thresholds an SLO on them may use (api/slo.py).
AGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)


class ServiceMetrics:
    def __init__(self, service: str, step: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        labels = ["service"]
        self._in = Counter("vigil_messages_in", "Messages received", labels, registry=self.registry)
        self._out = Counter(
            "vigil_messages_out", "Messages sent or stored", labels, registry=self.registry
        )
        self._errors = Counter(
            "vigil_errors", "Errors by kind", [*labels, "kind"], registry=self.registry
        )
        self._step = Histogram(
            "vigil_step_seconds",
            f"Latency of the main step ({step})",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.messages_in = self._in.labels(service)
        self.messages_out = self._out.labels(service)
        self.step_seconds = self._step.labels(service)

    def error(self, kind: str, n: int = 1) -> None:
        self._errors.labels(self.service, kind).inc(n)

    def gauge(self, name: str, doc: str) -> Gauge:
        """A gauge labelled ``service``: call ``.labels(service)`` to set it."""
        return Gauge(name, doc, ["service"], registry=self.registry)

    def histogram(self, name: str, doc: str, buckets: tuple[float, ...] = AGE_BUCKETS) -> Any:
        """A histogram of this service (seconds by default: ``AGE_BUCKETS``)."""
        return Histogram(name, doc, ["service"], buckets=buckets, registry=self.registry).labels(
            self.service
        )

    def counter(self, name: str, doc: str) -> CounterChild:
        """A counter of this service (``name`` without the ``_total`` suffix)."""
        return Counter(name, doc, ["service"], registry=self.registry).labels(self.service)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose ``/metrics`` on ``port`` (0 disables)."""
        if port:
            start_http_server(port, addr=host, registry=self.registry)
            log.info("%s metrics on http://%s:%d/metrics", self.service, host, port)


#: a sample's identity: its name and its labels
SampleKey = tuple[str, frozenset[tuple[str, str]]]
#: one scrape of a /metrics page: ``{(sample name, frozenset of label items): value}``
Scrape = dict[SampleKey, float]


def sample_sum(samples: Mapping[SampleKey, float], name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` that carry (at least) ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def parse_exposition(text: str) -> Scrape:
    """The samples of a Prometheus text exposition (ValueError if it is not one)."""
    samples: Scrape = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return samples


def scrape_metrics(url: str, timeout_s: float) -> Scrape:
    """GET ``url`` (a service's /metrics) and parse it; OSError or ValueError if it fails."""
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - our own ports
        return parse_exposition(resp.read().decode("utf-8", "replace"))
