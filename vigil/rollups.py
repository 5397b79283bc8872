"""Downsampled long-term series ("rollups"), pure: their names, and the readings a bucket's
aggregates become.

A series ``temperature`` of ``dev-1`` has the rollup ``temperature.1h`` (``.<n>m``, ``.<n>h``
or ``.<n>d`` by the bucket): one point per bucket and statistic, tag ``stat`` (``mean``,
``min``, ``max``, ``count``), kind ``rollup``, at the bucket's start, with the id
``bucket start / 1000``. They are readings like any other (point identities, placed on the
ring by their own series, copied by repair, deleted by tombstones), so each replica holds
the same points, and computing a bucket again rewrites them. They are kept for
``storage.downsample.retention_s``, the raw readings for ``storage.retention_s``.

No reading a device sends may take a rollup's name: a metric ending like ``.1h`` is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from vigil.names import MAX_NAME_LEN

STATS = ("mean", "min", "max", "count")
ROLLUP_KIND: Literal["rollup"] = "rollup"
_SUFFIX = re.compile(r"\.\d+[mhd]\Z")


def bucket_label(bucket_s: int) -> str:
    """``3600`` → ``1h``, ``300`` → ``5m``, ``86400`` → ``1d``."""
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if bucket_s % size == 0:
            return f"{bucket_s // size}{unit}"
    raise ValueError(f"a bucket of {bucket_s} s is not a whole number of minutes")


def is_rollup_metric(metric: str) -> bool:
    """Whether ``metric`` is (or is named like) a rollup: ``temperature.1h``."""
    return _SUFFIX.search(metric) is not None


def rollup_metric(metric: str, bucket_s: int) -> str | None:
    """The rollup of ``metric`` (None when the name would be too long to be a name)."""
    name = f"{metric}.{bucket_label(bucket_s)}"
    return name if len(name) <= MAX_NAME_LEN else None


def window(now_ms: int, bucket_ms: int, lookback_ms: int, settle_ms: int) -> tuple[int, int]:
    """``[start, end)`` of the buckets to compute now: every whole bucket that ended at
    least ``settle_ms`` ago (late readings and repair have had that long), back to
    ``lookback_ms`` before its end."""
    end = (now_ms - settle_ms) // bucket_ms * bucket_ms
    start = max(0, (end - lookback_ms) // bucket_ms * bucket_ms)
    return start, max(start, end)


@dataclass(frozen=True, slots=True)
class Bucket:
    start_ms: int
    count: int
    mean: float
    min: float
    max: float


def buckets(answers: Sequence[Sequence[Sequence[object]]]) -> list[Bucket]:
    """The buckets of several replicas' answers to ``SELECT count(value), mean(value),
    min(value), max(value) ... GROUP BY time(...) fill(none)`` (rows ``[time_ms, count, mean,
    min, max]``): for each bucket, the answer of the replica that holds the most points (one
    still missing some, before repair, does not win). Rows that are not numbers are skipped."""
    best: dict[int, Bucket] = {}
    for rows in answers:
        for row in rows:
            b = _bucket(row)
            if b is not None and (b.start_ms not in best or b.count > best[b.start_ms].count):
                best[b.start_ms] = b
    return [best[t] for t in sorted(best)]


def _bucket(row: Sequence[object]) -> Bucket | None:
    if len(row) != 5:
        return None
    t, count, mean, low, high = row
    numbers = (count, mean, low, high)
    if not isinstance(t, int) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in numbers
    ):
        return None
    if not isinstance(count, int | float) or count <= 0:
        return None
    return Bucket(t, int(count), float(mean), float(low), float(high))  # type: ignore[arg-type]


def values(bucket: Bucket) -> Mapping[str, float]:
    return {
        "mean": bucket.mean,
        "min": bucket.min,
        "max": bucket.max,
        "count": float(bucket.count),
    }
