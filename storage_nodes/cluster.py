"""The storage cluster: InfluxDB servers on a consistent-hash ring with replicas.

A series is one device's metric. Its readings are written to every replica the ring names
(consistency ALL in this version: ``write`` returns only when all replicas stored them) and
read from the first replica that answers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from storage_nodes.client import (
    DatabaseNotFound,
    FatalStorageError,
    InfluxNode,
    RetriableStorageError,
    StorageError,
)
from storage_nodes.lineproto import LineProtocolError, quote_ident, reading_to_line
from storage_nodes.ring import HashRing
from vigil.messages import Reading
from vigil.names import is_name
from vigil.settings import StorageSettings

log = logging.getLogger(__name__)

MAX_QUERY_ROWS = 10_000


def series_key(device: str, metric: str) -> str:
    return f"{device}/{metric}"


@dataclass(frozen=True, slots=True)
class Rejected:
    """A reading a server refused to store, with the server's reason."""

    reading: Reading
    node: str  # the server that refused it ("" if it could not even be written)
    reason: str


@dataclass(frozen=True, slots=True)
class Point:
    ts: int  # epoch ms
    value: float
    id: int | None


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _points(series: list[dict[str, Any]]) -> list[Point]:
    """Points of a ``SELECT value, id`` answer. A row that is not a Vigil point (a value that
    is not a number: written by someone else, in another shard's field type) is skipped,
    not a crash of the reader."""
    out: list[Point] = []
    skipped = 0
    for s in series:
        cols = s.get("columns") or []
        if "value" not in cols or "id" not in cols:
            continue
        iv, ii = cols.index("value"), cols.index("id")
        for row in s.get("values") or []:
            ts, value, rid = row[0], row[iv], row[ii]
            if not (_number(ts) and _number(value) and (rid is None or _number(rid))):
                skipped += 1
                continue
            out.append(Point(int(ts), float(value), None if rid is None else int(rid)))
    if skipped:
        log.warning("skipped %d stored row(s) that are not Vigil readings", skipped)
    return out


class StorageCluster:
    def __init__(self, settings: StorageSettings) -> None:
        self.settings = settings
        self.database = settings.database
        password = settings.password
        self.nodes = {
            n.name: InfluxNode(
                n.name, n.url, settings.timeout_s, username=settings.username, password=password
            )
            for n in settings.nodes
        }
        self.ring = HashRing(list(self.nodes), settings.vnodes, settings.replication_factor)
        self._pool = ThreadPoolExecutor(
            max_workers=len(self.nodes), thread_name_prefix="influx-write"
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    # -- placement --------------------------------------------------------------------
    def replicas(self, device: str, metric: str) -> list[InfluxNode]:
        return [self.nodes[n] for n in self.ring.replicas(series_key(device, metric))]

    def plan(self, readings: Iterable[Reading]) -> dict[str, list[str]]:
        """Line-protocol lines per server name, each reading on each of its replicas."""
        return {
            name: [line for line, _ in entries]
            for name, entries in self._plan(list(readings), []).items()
        }

    def _plan(
        self, readings: Sequence[Reading], rejected: list[Rejected]
    ) -> dict[str, list[tuple[str, int]]]:
        """(line, index into ``readings``) per server; a reading that cannot be a line is
        added to ``rejected`` instead."""
        by_node: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for index, r in enumerate(readings):
            try:
                line = reading_to_line(r)
            except LineProtocolError as exc:
                rejected.append(Rejected(r, "", f"cannot be written as line protocol: {exc}"))
                continue
            for name in self.ring.replicas(r.series_key):
                by_node[name].append((line, index))
        return dict(by_node)

    # -- writes -----------------------------------------------------------------------
    def ensure_database(self, timeout_s: float = 30.0) -> None:
        """Wait until every server answers and has the database (provisioned by
        ``storage_nodes.provision`` with the admin credential; created here only if this
        cluster's user may). Raises the last StorageError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        for node in self.nodes.values():
            while True:
                try:
                    self._check_database(node)
                    break
                except RetriableStorageError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)

    def log_server_check(self, service: str) -> threading.Thread:
        """Log, once at start and in the background (a hung server would hold start-up for
        its timeout), each server that is not ready: unreachable, refusing the credentials,
        or without the database. The services run meanwhile; what needs the server waits."""

        def check() -> None:
            for name, node in self.nodes.items():
                try:
                    self._check_database(node)
                except StorageError as exc:
                    log.warning(
                        "storage server %s is not ready (%s): %s goes on; what needs it waits",
                        name,
                        exc.reason,
                        service,
                    )

        thread = threading.Thread(target=check, name="storage-check", daemon=True)
        thread.start()
        return thread

    def _check_database(self, node: InfluxNode) -> None:
        series = node.query("SHOW DATABASES", None)
        names = {row[0] for s in series for row in s.get("values") or []}
        if self.database in names:
            return
        try:
            node.create_database(self.database)
        except StorageError as exc:
            raise DatabaseNotFound(
                node.name,
                f"database {self.database} does not exist and {node.username} may not create "
                f"it ({exc.reason}); provision the server (vigil run does)",
            ) from exc

    def write(self, readings: Sequence[Reading]) -> list[Rejected]:
        """Store ``readings`` on all their replicas.

        Returns the readings a server refused, each with the server's reason; every other
        reading is stored on all its replicas. A refusal (HTTP 400, including InfluxDB's
        "partial write", where the server stored some points and dropped others without
        saying which) is narrowed down by writing halves of that server's lines again
        (idempotent: a stored point is rewritten in place) until the refused lines are
        found one by one. Raises RetriableStorageError if a server could not be reached
        (nothing is lost by trying again).
        """
        rejected: list[Rejected] = []
        plan = self._plan(readings, rejected)
        futures = {
            name: self._pool.submit(self._write_narrowing, name, entries)
            for name, entries in plan.items()
        }
        errors: list[StorageError] = []
        refused: dict[int, Rejected] = {}
        for name, fut in futures.items():
            exc = fut.exception()
            if isinstance(exc, StorageError):
                errors.append(exc)
            elif exc is not None:
                raise exc
            else:
                found = fut.result()
                if found:
                    log.warning(
                        "server %s refused %d of %d points (first: %s)",
                        name,
                        len(found),
                        len(plan[name]),
                        found[0][1],
                    )
                for index, reason in found:
                    refused.setdefault(index, Rejected(readings[index], name, reason))
        if errors:
            raise errors[0]
        return rejected + [refused[i] for i in sorted(refused)]

    def _write_narrowing(self, name: str, entries: list[tuple[str, int]]) -> list[tuple[int, str]]:
        """Write ``entries`` to one server; the (index, reason) of each line it refuses,
        found by writing each half again while a part is refused."""
        try:
            self._write_node(name, [line for line, _ in entries])
            return []
        except FatalStorageError as exc:
            if len(entries) == 1:
                return [(entries[0][1], exc.reason)]
        mid = len(entries) // 2
        return self._write_narrowing(name, entries[:mid]) + self._write_narrowing(
            name, entries[mid:]
        )

    def _write_node(self, name: str, lines: list[str]) -> None:
        node = self.nodes[name]
        try:
            node.write(self.database, lines)
        except DatabaseNotFound:
            self._check_database(node)  # creates it if this user may; else DatabaseNotFound
            log.warning("server %s lacked database %s: created it", name, self.database)
            node.write(self.database, lines)

    def write_plan(self, plan: dict[str, list[str]]) -> None:
        """Write prepared lines per server as they are (benchmarks: the raw reference)."""
        futures = {
            name: self._pool.submit(self._write_node, name, lines) for name, lines in plan.items()
        }
        errors: list[StorageError] = []
        for fut in futures.values():
            exc = fut.exception()
            if isinstance(exc, StorageError):
                errors.append(exc)
            elif exc is not None:
                raise exc
        if errors:
            fatal = [e for e in errors if isinstance(e, FatalStorageError)]
            raise (fatal or errors)[0]

    # -- reads ------------------------------------------------------------------------
    def _query_series(
        self, device: str, metric: str, q: str, params: dict[str, Any]
    ) -> list[dict[str, Any]]:
        errors: list[StorageError] = []
        for node in self.replicas(device, metric):
            try:
                return node.query(q, self.database, params)
            except StorageError as exc:
                # Any replica error fails over: unreachable, timeout, a missing database
                # (a replaced server), an error inside a 200 answer.
                log.warning("query on %s failed, trying the next replica: %s", node.name, exc)
                errors.append(exc)
        if all(isinstance(e, DatabaseNotFound) for e in errors):
            return []  # no replica has the database yet: nothing is stored
        retriable = [e for e in errors if isinstance(e, RetriableStorageError)]
        raise (retriable or errors)[0]

    def points(
        self,
        device: str,
        metric: str,
        *,
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int = 100,
        newest_first: bool = True,
    ) -> list[Point]:
        """Stored readings of one series. ``device`` and ``metric`` must be valid names
        (checked here: they are identifiers in the query); the values are bound."""
        if not is_name(device) or not is_name(metric):
            raise ValueError("device and metric must be valid names")
        if not 1 <= limit <= MAX_QUERY_ROWS:
            raise ValueError(f"limit must be between 1 and {MAX_QUERY_ROWS}")
        where = ["device = $device"]
        if since_ms is not None:
            where.append(f"time >= {int(since_ms) * 1_000_000:d}")
        if until_ms is not None:
            where.append(f"time <= {int(until_ms) * 1_000_000 + 999_999:d}")
        order = "DESC" if newest_first else "ASC"
        # Identifiers are checked names, quoted; numbers are ints; values are bound.
        q = (
            f"SELECT value, id FROM {quote_ident(metric)} WHERE {' AND '.join(where)} "  # noqa: S608
            f"ORDER BY time {order} LIMIT {int(limit):d}"
        )
        series = self._query_series(device, metric, q, {"device": device})
        return _points(series)

    def latest(self, device: str, metric: str) -> Point | None:
        pts = self.points(device, metric, limit=1)
        return pts[0] if pts else None

    def mean_of_last(self, device: str, metric: str, n: int) -> tuple[float, int] | None:
        """Mean of the last ``n`` values and how many there were, or None if no data."""
        pts = self.points(device, metric, limit=n)
        if not pts:
            return None
        return sum(p.value for p in pts) / len(pts), len(pts)

    def count_on(self, node_name: str, metric: str, device: str | None = None) -> int:
        """How many points of ``metric`` (optionally one device's) server ``node_name``
        holds: for checks that a series lives exactly on its replicas."""
        if not is_name(metric) or (device is not None and not is_name(device)):
            raise ValueError("invalid name")
        q = f"SELECT count(value) FROM {quote_ident(metric)}"  # noqa: S608 - quoted name
        params: dict[str, Any] = {}
        if device is not None:
            q += " WHERE device = $device"
            params["device"] = device
        series = self.nodes[node_name].query(q, self.database, params)
        return int(series[0]["values"][0][1]) if series else 0

    def status(self) -> list[dict[str, Any]]:
        share = self.ring.share()
        return [
            {"name": n.name, "url": n.url, "up": n.ping(), "share": round(share[n.name], 4)}
            for n in self.nodes.values()
        ]
