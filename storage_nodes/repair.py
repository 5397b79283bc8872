"""Anti-entropy between the replicas of each series: find the points a replica lacks and
copy them from one that holds them, bucket by time bucket (what Cassandra's repair and
InfluxDB Enterprise's anti-entropy service do for their shards).

A series is one device's metric: the points of measurement ``metric`` whose tag ``device``
is the device, whatever their other tags. A point is known by its identity ``(time_ns,
id)``. Repair never deletes: afterwards every replica that answered holds the union of what
they held, so a point deleted on one replica only comes back (delete on every replica).

How one series is repaired (:func:`repair_series`):

1. every replica's digest per time bucket (:class:`BucketDigest`): how many points it holds
   there and the sum of their ids modulo 2**64, computed by the server
   (``count(id), sum(id) ... GROUP BY time``), so an equal bucket moves two numbers;
2. the buckets whose digests differ (:func:`differing_buckets`) are looked at closer: the
   identities each replica holds there and those it lacks (:func:`missing_points`). A
   differing bucket with more than :data:`MAX_IDS_PER_FETCH` points on a replica is first
   cut into :data:`SPLIT` sub-buckets and only the differing ones are looked at;
3. each lacking point is read whole (``SELECT *``) from the first replica that holds it,
   rebuilt as the line its writer sent (:func:`storage_nodes.lineproto.row_to_line`) and
   written to the replica that lacks it, in chunks of :data:`WRITE_CHUNK` lines at the
   pace of a :class:`RateLimiter`.

Writes are idempotent, so repair may run while ingest writes: a point that reaches a second
replica while repair looks is at worst written once more onto itself. A replica that fails
(any :class:`StorageError`) is left out of the rest of its series' repair and named in
``errors``; nothing raises out of :func:`repair_series` for a server's sake.

What InfluxDB 1.6 does, checked against influxd 1.6.7 (tests/test_storage_repair.py):

- ``sum()`` of an integer field is int64 arithmetic that wraps on overflow, within a shard
  and when the shards' partial sums are merged: no error, no float, no lost precision.
  Addition modulo 2**64 does not depend on order, so the answer is deterministic and equals
  ``sum(ids) mod 2**64`` read as a signed int64 (2,000 ids in [2**62, 2**63) in one bucket,
  and buckets spread over several shards, give the local wrapped sum exactly). The
  server's sum is therefore the digest. A bucket whose sum comes back as a float (a shard
  where someone wrote ``id`` as a float) is digested here from its ids instead.
- Integers in the JSON answer are printed in full (Python reads them exactly); floats in
  their shortest round-trip form, ``1.0`` as ``1`` and ``-0.0`` as ``-0`` (which
  :func:`query_ns` reads as -0.0, so a copy keeps the sign).
- ``GROUP BY time(<n>ns)`` buckets start at multiples of n from the epoch, the first one
  too when the time range starts inside it; empty buckets come back as count 0 and sum
  null unless ``fill(none)``. Such a query without an upper time bound stops at now(),
  which would miss points stamped in the future: every query here has both bounds.
- ``SHOW TAG VALUES WITH KEY = "device"`` without ``FROM`` answers one series per
  measurement, so one request lists a server's series; a series whose points were all
  deleted (``DELETE``, ``DROP SERIES``) is no longer listed.
- ``SELECT *`` answers tags a point lacks as null, and one merged series per measurement
  (LIMIT and OFFSET apply to it, so long answers are read a page at a time).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from storage_nodes.client import (
    InfluxNode,
    StorageError,
)
from storage_nodes.lineproto import quote_ident, row_to_line
from vigil.rate import RateLimiter

log = logging.getLogger(__name__)
T = TypeVar("T")

#: a point's identity: (time in epoch nanoseconds, id)
Identity = tuple[int, int]
#: a series: (measurement, device)
Series = tuple[str, str]

HOUR_NS = 3600 * 10**9
#: lines per write request to a lacking replica
WRITE_CHUNK = 5000
#: rows per query page (InfluxDB's ``max-row-limit``, where set, is 10,000 or more)
PAGE_ROWS = 10_000
#: a differing bucket with more points than this on a replica is cut before ids are read
MAX_IDS_PER_FETCH = 50_000
#: sub-buckets a differing bucket is cut into
SPLIT = 16
#: the earliest and latest times InfluxDB 1.x stores (ns)
MIN_TIME_NS = -(2**63) + 2
MAX_TIME_NS = 2**63 - 2

_MOD = 2**64


# -- pure parts ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BucketDigest:
    """What one replica holds in one time bucket of a series: how many points, and the
    sum of their ids modulo 2**64 (the server's wrapping int64 ``sum(id)``, unsigned)."""

    count: int
    digest: int

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError(f"count {self.count} is negative")
        if not 0 <= self.digest < _MOD:
            raise ValueError(f"digest {self.digest} is not in [0, 2**64)")

    @classmethod
    def of(cls, ids: Iterable[int]) -> BucketDigest:
        """The digest of a bucket holding these ids."""
        count = total = 0
        for rid in ids:
            count += 1
            total += rid
        return cls(count, total % _MOD)


EMPTY = BucketDigest(0, 0)


def bucket_start(time_ns: int, bucket_ns: int) -> int:
    """The start of the bucket holding ``time_ns``, as ``GROUP BY time`` places it."""
    return time_ns - time_ns % bucket_ns


def differing_buckets(per_node: Mapping[str, Mapping[int, BucketDigest]]) -> list[int]:
    """Bucket starts, in order, where the replicas' digests are not all equal; a bucket a
    replica lacks counts as empty there."""
    buckets: set[int] = set()
    for digests in per_node.values():
        buckets.update(digests)
    return [
        b
        for b in sorted(buckets)
        if len({digests.get(b, EMPTY) for digests in per_node.values()}) > 1
    ]


def missing_points(per_node: Mapping[str, set[Identity]]) -> dict[str, set[Identity]]:
    """For every node, the identities some other node holds and it does not."""
    union: set[Identity] = set().union(*per_node.values())
    return {name: union - held for name, held in per_node.items()}


def copy_plan(per_node: Mapping[str, set[Identity]]) -> dict[str, dict[str, set[Identity]]]:
    """``source -> target -> identities``: every identity a node lacks, to be read from
    the first node (in the mapping's order) that holds it."""
    plan: dict[str, dict[str, set[Identity]]] = {}
    for target, lacking in missing_points(per_node).items():
        for ident in lacking:
            source = next(name for name, held in per_node.items() if ident in held)
            plan.setdefault(source, {}).setdefault(target, set()).add(ident)
    return plan


# -- results ------------------------------------------------------------------------------
@dataclass(slots=True)
class SeriesRepair:
    """What repairing one series did; ``copied`` names every replica, with the points
    written to it."""

    measurement: str
    device: str
    buckets_compared: int = 0
    buckets_differing: int = 0
    copied: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def points_copied(self) -> int:
        return sum(self.copied.values())


@dataclass(frozen=True, slots=True)
class RepairProgress:
    series_done: int
    series_total: int
    points_copied: int


@dataclass(frozen=True, slots=True)
class RepairReport:
    """What :func:`repair_all` did. ``series``: how many were repaired; ``copied``: points
    written per server; ``misplaced``: per server, series it holds but is not a replica of
    (reported, never deleted); ``errors``: one line per failure."""

    series: int
    buckets_differing: int
    copied: dict[str, int]
    misplaced: dict[str, list[Series]]
    errors: list[str]
    seconds: float

    @property
    def points_copied(self) -> int:
        return sum(self.copied.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "series": self.series,
            "buckets_differing": self.buckets_differing,
            "points_copied": dict(self.copied),
            "misplaced": {
                name: [{"metric": m, "device": d} for m, d in series]
                for name, series in self.misplaced.items()
            },
            "errors": list(self.errors),
            "seconds": round(self.seconds, 3),
        }


# -- queries ------------------------------------------------------------------------------
def query_ns(
    node: InfluxNode, q: str, database: str, params: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """:meth:`InfluxNode.query` with times in epoch nanoseconds (a cut answer raises)."""
    return node.query(q, database, params, epoch="ns")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _where(since_ns: int | None, until_ns: int | None) -> str:
    lo = MIN_TIME_NS if since_ns is None else max(MIN_TIME_NS, since_ns)
    hi = MAX_TIME_NS if until_ns is None else min(MAX_TIME_NS, until_ns)
    return f"device = $device AND time >= {int(lo):d} AND time <= {int(hi):d}"


def _rows(
    node: InfluxNode, database: str, q: str, device: str
) -> Iterator[tuple[list[str], list[Any]]]:
    """(columns, row) of a SELECT without GROUP BY tags, read PAGE_ROWS at a time."""
    offset = 0
    while True:
        page = query_ns(
            node, f"{q} LIMIT {PAGE_ROWS:d} OFFSET {offset:d}", database, {"device": device}
        )
        n = 0
        for s in page:
            columns = list(s.get("columns") or [])
            for row in s.get("values") or []:
                n += 1
                yield columns, row
        if n < PAGE_ROWS:
            return
        offset += PAGE_ROWS


def list_series(node: InfluxNode, database: str) -> set[Series]:
    """Every (measurement, device) with points on one server."""
    out: set[Series] = set()
    for s in query_ns(node, 'SHOW TAG VALUES WITH KEY = "device"', database):
        name = s.get("name")
        for row in s.get("values") or []:
            if isinstance(name, str) and len(row) == 2 and isinstance(row[1], str):
                out.add((name, row[1]))
    return out


def series_extent(
    node: InfluxNode,
    database: str,
    measurement: str,
    device: str,
    *,
    since_ns: int | None = None,
    until_ns: int | None = None,
) -> tuple[int, int] | None:
    """The times of the first and the last point of a series on one server (within the
    bounds, both inclusive); None if it holds none."""
    times = []
    for selector in ("first", "last"):
        where = _where(since_ns, until_ns)
        q = f"SELECT {selector}(id) FROM {quote_ident(measurement)} WHERE {where}"  # noqa: S608
        series = query_ns(node, q, database, {"device": device})
        values = series[0].get("values") if series else None
        if not values or not _is_int(values[0][0]):
            return None
        times.append(int(values[0][0]))
    return times[0], times[1]


def _grouped_digests(
    node: InfluxNode,
    database: str,
    measurement: str,
    device: str,
    *,
    lo: int,
    hi: int,
    bucket_ns: int,
) -> dict[int, BucketDigest]:
    q = (
        f"SELECT count(id), sum(id) FROM {quote_ident(measurement)} "  # noqa: S608 - quoted, integers
        f"WHERE {_where(lo, hi)} GROUP BY time({bucket_ns:d}ns) fill(none)"
    )
    out: dict[int, BucketDigest] = {}
    for columns, row in _rows(node, database, q, device):
        cells = dict(zip(columns, row, strict=False))
        start, count, total = cells.get("time"), cells.get("count"), cells.get("sum")
        if not isinstance(start, int) or not isinstance(count, int) or count <= 0:
            continue
        if isinstance(total, int):
            out[start] = BucketDigest(count, total % _MOD)
        else:  # not an integer sum: a shard where id is not an integer field
            ids = identities(
                node,
                database,
                measurement,
                device,
                since_ns=max(start, lo),
                until_ns=min(start + bucket_ns - 1, hi),
            )
            out[start] = BucketDigest.of(rid for _, rid in ids)
    return out


def bucket_digests(
    node: InfluxNode,
    database: str,
    measurement: str,
    device: str,
    *,
    bucket_ns: int = HOUR_NS,
    since_ns: int | None = None,
    until_ns: int | None = None,
) -> dict[int, BucketDigest]:
    """One server's digest of each time bucket of a series that holds points (within the
    bounds, both inclusive), by bucket start."""
    if bucket_ns <= 0:
        raise ValueError(f"bucket_ns must be positive, got {bucket_ns}")
    extent = series_extent(
        node, database, measurement, device, since_ns=since_ns, until_ns=until_ns
    )
    if extent is None:
        return {}
    lo, hi = extent
    return _grouped_digests(node, database, measurement, device, lo=lo, hi=hi, bucket_ns=bucket_ns)


def identities(
    node: InfluxNode,
    database: str,
    measurement: str,
    device: str,
    *,
    since_ns: int | None = None,
    until_ns: int | None = None,
) -> set[Identity]:
    """The identities of a series' points on one server (within the bounds, both
    inclusive)."""
    where = _where(since_ns, until_ns)
    q = f"SELECT id FROM {quote_ident(measurement)} WHERE {where}"  # noqa: S608
    out: set[Identity] = set()
    for columns, row in _rows(node, database, q, device):
        if "id" not in columns:
            continue
        t, rid = row[0], row[columns.index("id")]
        if _is_int(t) and _is_int(rid):
            out.add((t, rid))
    return out


# -- repair -------------------------------------------------------------------------------
class _Batches:
    """Lines bound for one replica, written WRITE_CHUNK at a time at the limiter's pace."""

    def __init__(self, node: InfluxNode, run: _SeriesRun) -> None:
        self.node = node
        self.run = run
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        self.lines.append(line)
        if len(self.lines) >= WRITE_CHUNK:
            self.flush()

    def flush(self) -> None:
        lines, self.lines = self.lines, []
        if not lines or self.node.name in self.run.failed:
            return
        if self.run.limiter is not None:
            self.run.limiter.acquire(len(lines))
        try:
            self.node.write(self.run.database, lines)
        except StorageError as exc:
            self.run.fail(self.node, exc)
            return
        self.run.result.copied[self.node.name] += len(lines)


class _SeriesRun:
    """The state of one series' repair: its replicas, those that failed, the result."""

    def __init__(
        self,
        replicas: Sequence[InfluxNode],
        database: str,
        measurement: str,
        device: str,
        limiter: RateLimiter | None,
    ) -> None:
        self.replicas = list(replicas)
        self.database = database
        self.measurement = measurement
        self.device = device
        self.limiter = limiter
        self.failed: set[str] = set()
        self.result = SeriesRepair(measurement, device, copied={n.name: 0 for n in replicas})

    def fail(self, node: InfluxNode, exc: StorageError) -> None:
        """Leave ``node`` out of the rest of this series' repair."""
        self.failed.add(node.name)
        message = f"{self.device}/{self.measurement}: {exc}"
        log.warning("repair: %s", message)
        self.result.errors.append(message)

    def live(self) -> list[InfluxNode]:
        return [n for n in self.replicas if n.name not in self.failed]

    def ask_live(self, ask: Callable[[InfluxNode], T]) -> dict[str, T]:
        """``ask`` each replica still in this repair; one that fails is left out of the
        rest of it (and of the answer)."""
        out: dict[str, T] = {}
        for node in self.live():
            try:
                out[node.name] = ask(node)
            except StorageError as exc:
                self.fail(node, exc)
        return out

    def digests(self, lo: int, hi: int, bucket_ns: int) -> dict[str, dict[int, BucketDigest]]:
        return self.ask_live(
            lambda node: _grouped_digests(
                node,
                self.database,
                self.measurement,
                self.device,
                lo=lo,
                hi=hi,
                bucket_ns=bucket_ns,
            )
        )

    def repair_window(self, lo: int, hi: int, counts: Mapping[str, int]) -> None:
        """Make the replicas agree on the points with ``lo <= time <= hi``; ``counts``:
        how many each holds there."""
        if max(counts.values(), default=0) > MAX_IDS_PER_FETCH and hi - lo >= SPLIT:
            sub = -(-(hi - lo + 1) // SPLIT)
            per_node = self.digests(lo, hi, sub)
            for start in differing_buckets(per_node):
                self.repair_window(
                    max(start, lo),
                    min(start + sub - 1, hi),
                    {name: d.get(start, EMPTY).count for name, d in per_node.items()},
                )
            return
        held = self.ask_live(
            lambda node: identities(
                node,
                self.database,
                self.measurement,
                self.device,
                since_ns=lo,
                until_ns=hi,
            )
        )
        by_name = {n.name: n for n in self.replicas}
        for source, targets in copy_plan(held).items():
            self.copy(by_name[source], {by_name[t]: ids for t, ids in targets.items()})

    def copy(self, source: InfluxNode, targets: Mapping[InfluxNode, set[Identity]]) -> None:
        """Read the points ``targets`` lack from ``source`` and write them to them."""
        wanted: dict[Identity, list[_Batches]] = {}
        batches = [_Batches(node, self) for node in targets]
        for batch in batches:
            for ident in targets[batch.node]:
                wanted.setdefault(ident, []).append(batch)
        lo, hi = min(t for t, _ in wanted), max(t for t, _ in wanted)
        q = f"SELECT * FROM {quote_ident(self.measurement)} WHERE {_where(lo, hi)}"  # noqa: S608
        unbuildable = 0
        try:
            for columns, row in _rows(source, self.database, q, self.device):
                if "id" not in columns:
                    continue
                dest = wanted.get((row[0], row[columns.index("id")]))
                if not dest:
                    continue
                line = row_to_line(self.measurement, columns, row)
                if line is None:
                    unbuildable += 1
                    continue
                for batch in dest:
                    batch.add(line)
        except StorageError as exc:
            self.fail(source, exc)
        for batch in batches:
            batch.flush()
        if unbuildable:
            message = (
                f"{self.device}/{self.measurement}: {source.name}: {unbuildable} point(s) "
                "are not Vigil points line protocol can carry; not copied"
            )
            log.warning("repair: %s", message)
            self.result.errors.append(message)


def repair_series(
    replicas: Sequence[InfluxNode],
    database: str,
    measurement: str,
    device: str,
    *,
    bucket_ns: int = HOUR_NS,
    since_ns: int | None = None,
    until_ns: int | None = None,
    limiter: RateLimiter | None = None,
) -> SeriesRepair:
    """Make the replicas of one series hold the same points: the union of theirs, within
    ``since_ns <= time <= until_ns`` (None: unbounded). Points outside the bounds are
    neither compared nor copied (``since_ns``: now minus the retention). Never raises
    StorageError: a replica that fails is named in ``errors`` and left out."""
    if bucket_ns <= 0:
        raise ValueError(f"bucket_ns must be positive, got {bucket_ns}")
    run = _SeriesRun(replicas, database, measurement, device, limiter)
    lo: int | None = None
    hi: int | None = None
    for node in run.live():
        try:
            extent = series_extent(
                node, database, measurement, device, since_ns=since_ns, until_ns=until_ns
            )
        except StorageError as exc:
            run.fail(node, exc)
            continue
        if extent is not None:
            lo = extent[0] if lo is None else min(lo, extent[0])
            hi = extent[1] if hi is None else max(hi, extent[1])
    if lo is None or hi is None or len(run.live()) < 2:
        return run.result
    per_node = run.digests(lo, hi, bucket_ns)
    run.result.buckets_compared = len(set().union(*per_node.values()))
    differing = differing_buckets(per_node)
    run.result.buckets_differing = len(differing)
    for start in differing:
        if len(run.live()) < 2:
            break
        run.repair_window(
            max(start, lo),
            min(start + bucket_ns - 1, hi),
            {name: d.get(start, EMPTY).count for name, d in per_node.items()},
        )
    if run.result.points_copied:
        log.info(
            "repair: %s/%s: %d differing bucket(s) of %d, copied %s",
            device,
            measurement,
            len(differing),
            run.result.buckets_compared,
            run.result.copied,
        )
    return run.result


def _later(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def repair_all(
    replicas_of: Callable[[str, str], Sequence[InfluxNode]],
    nodes: Sequence[InfluxNode],
    database: str,
    *,
    since_ns: int | None = None,
    since_of: Callable[[str, str], int | None] | None = None,
    bucket_ns: int = HOUR_NS,
    limiter: RateLimiter | None = None,
    on_progress: Callable[[RepairProgress], None] | None = None,
) -> RepairReport:
    """Repair every series any of ``nodes`` holds among its replicas
    (``replicas_of(device, measurement)``), one series after the other. A server that holds
    a series it is not a replica of is reported in ``misplaced``; nothing is deleted.
    ``since_of(device, measurement)``: the first time of a series that may be compared and
    copied (retention and deletions), over ``since_ns``."""
    started = time.monotonic()
    errors: list[str] = []
    held: dict[str, set[Series]] = {}
    for node in nodes:
        try:
            held[node.name] = list_series(node, database)
        except StorageError as exc:
            log.warning("repair: cannot list the series of %s: %s", node.name, exc)
            errors.append(f"listing series: {exc}")
    everything = sorted(set().union(*held.values()))
    copied = {node.name: 0 for node in nodes}
    misplaced: dict[str, list[Series]] = {}
    differing = 0
    for done, (measurement, device) in enumerate(everything, 1):
        replicas = replicas_of(device, measurement)
        owners = {r.name for r in replicas}
        for name, series in held.items():
            if (measurement, device) in series and name not in owners:
                misplaced.setdefault(name, []).append((measurement, device))
        result = repair_series(
            replicas,
            database,
            measurement,
            device,
            bucket_ns=bucket_ns,
            since_ns=_later(since_ns, None if since_of is None else since_of(device, measurement)),
            limiter=limiter,
        )
        differing += result.buckets_differing
        for name, n in result.copied.items():
            copied[name] = copied.get(name, 0) + n
        errors.extend(result.errors)
        if on_progress is not None:
            on_progress(RepairProgress(done, len(everything), sum(copied.values())))
    for name, series_list in misplaced.items():
        log.warning("repair: %s holds %d series it is not a replica of", name, len(series_list))
    return RepairReport(
        series=len(everything),
        buckets_differing=differing,
        copied=copied,
        misplaced=misplaced,
        errors=errors,
        seconds=time.monotonic() - started,
    )
