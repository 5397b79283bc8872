"""Service level objectives on the pipeline's own metrics, pure: definitions, the indicator
over a window from two scrapes, and the state (seed 003's SLA manager).

Kinds:

- ``ingest_lag``: at least ``target`` of the stored batches had their oldest reading stored
  within ``threshold_s`` (histogram ``vigil_ingest_lag_seconds`` of every ingest process);
- ``alert_latency``: at least ``target`` of the alert transitions were confirmed by the broker
  within ``threshold_s`` of the reading behind them (``vigil_alert_latency_seconds``);
- ``delivery_success``: at least ``target`` of the notifications delivered or failed for good
  were delivered (``vigil_messages_out_total`` and ``vigil_notifications_failed_total`` of
  the notifier).

The indicator is computed over the last ``window_s`` from the counters' growth between the
newest scrape and the newest one at least that old (the oldest kept, until the scrapes span
the window). No event in it, or a single scrape: no data (neither met nor violated). A
process whose counters went down restarted: its counts since then are used. A violation is
each change from met (or no data) to violated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from vigil.metrics import AGE_BUCKETS, SampleKey, sample_sum
from vigil.names import is_name
from vigil.text import shown

SLO_KINDS = ("ingest_lag", "alert_latency", "delivery_success")
SloKind = Literal["ingest_lag", "alert_latency", "delivery_success"]
HISTOGRAMS = {
    "ingest_lag": "vigil_ingest_lag_seconds",
    "alert_latency": "vigil_alert_latency_seconds",
}
#: where each kind's samples come from
SOURCES = {"ingest_lag": "ingest", "alert_latency": "alert_engine", "delivery_success": "notifier"}
#: the label the runner adds to each sample: the URL of the process it came from
TARGET_LABEL = "_target"

#: one scrape: ``{(sample name, frozenset of label items): value}``
Samples = Mapping[SampleKey, float]


class InvalidSlo(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Slo:
    id: str
    kind: SloKind
    target: float
    window_s: float
    threshold_s: float | None = None
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "target": self.target,
            "threshold_s": self.threshold_s,
            "window_s": self.window_s,
            "description": self.description,
        }


def _number(obj: Mapping[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidSlo(f"{key}: must be a number, got {shown(value)}")
    return float(value)


def parse_slo(obj: object) -> Slo:
    """A definition from outside input; InvalidSlo says what is wrong."""
    if not isinstance(obj, dict):
        raise InvalidSlo("an SLO must be a JSON object")
    unknown = sorted(set(obj) - {"id", "kind", "target", "threshold_s", "window_s", "description"})
    if unknown:
        raise InvalidSlo(f"unknown field {unknown[0]!r}")
    sid = obj.get("id")
    if not is_name(sid):
        raise InvalidSlo(f"id: {shown(sid)} is not a valid name")
    kind = obj.get("kind")
    if kind not in SLO_KINDS:
        raise InvalidSlo(f"kind: must be one of {', '.join(SLO_KINDS)}, got {shown(kind)}")
    target = _number(obj, "target")
    if target is None or not 0 < target <= 1:
        raise InvalidSlo("target: a fraction of events, more than 0 and at most 1 (0.99)")
    window = _number(obj, "window_s")
    window = 300.0 if window is None else window
    if not 10 <= window <= 30 * 86_400:
        raise InvalidSlo("window_s: from 10 s to 30 days")
    threshold = _number(obj, "threshold_s")
    if kind in HISTOGRAMS:
        if threshold not in AGE_BUCKETS:
            raise InvalidSlo(
                f"threshold_s: one of {', '.join(f'{b:g}' for b in AGE_BUCKETS)} (the "
                "histogram's bounds)"
            )
    elif threshold is not None:
        raise InvalidSlo(f"threshold_s: does not apply to {kind}")
    description = obj.get("description", "")
    if not isinstance(description, str) or len(description) > 500:
        raise InvalidSlo("description: text of at most 500 characters")
    return Slo(str(sid), kind, target, window, threshold, description)


def counts(slo: Slo, samples: Samples) -> tuple[float, float]:
    """(good, total) events so far, summed over every process scraped."""
    if slo.kind == "delivery_success":
        good = sample_sum(samples, "vigil_messages_out_total", service="notifier")
        return good, good + sample_sum(samples, "vigil_notifications_failed_total")
    name = HISTOGRAMS[slo.kind]
    total = sample_sum(samples, f"{name}_count")
    good = sample_sum(samples, f"{name}_bucket", le=_le(slo.threshold_s))
    return good, total


def _by_target(samples: Samples) -> Mapping[str, Samples]:
    """The samples of each process apart, by their ``_target`` label (the URL scraped)."""
    out: dict[str, dict[SampleKey, float]] = {}
    for key, value in samples.items():
        target = next((v for k, v in key[1] if k == TARGET_LABEL), "")
        out.setdefault(target, {})[key] = value
    return out


def _le(bound: float | None) -> str:
    """How prometheus_client writes a bucket's bound (``0.5``, ``1.0``, ``300.0``)."""
    return repr(float(bound or 0.0))


@dataclass(frozen=True, slots=True)
class Reading:
    """The indicator over the window: ``sli`` None when no event happened in it."""

    sli: float | None
    good: float
    total: float
    state: Literal["met", "violated", "no_data"]


def evaluate(slo: Slo, history: Sequence[tuple[float, Samples]], now: float) -> Reading:
    """The indicator over ``slo.window_s`` before ``now`` from ``history`` (scrapes, oldest
    first, each ``(time, samples)``)."""
    if not history:
        return Reading(None, 0, 0, "no_data")
    start = now - slo.window_s
    base = next((h for h in reversed(history) if h[0] <= start), history[0])
    if base is history[-1]:  # one scrape: no growth to measure yet
        return Reading(None, 0, 0, "no_data")
    then = _by_target(base[1])
    good = total = 0.0
    for target, samples in _by_target(history[-1][1]).items():
        good_now, total_now = counts(slo, samples)
        good_then, total_then = counts(slo, then.get(target, {}))
        if good_now < good_then or total_now < total_then:
            good_then = total_then = 0.0  # the process restarted: its counters began again
        good += good_now - good_then
        total += total_now - total_then
    if total <= 0:
        return Reading(None, 0, 0, "no_data")
    sli = min(1.0, good / total)
    return Reading(sli, good, total, "met" if sli >= slo.target else "violated")
