"""The storage cluster: InfluxDB servers on a consistent-hash ring with replicas.

A series is one device's metric. Writes go to every replica the ring names, in parallel. A
batch counts as stored once ``consistency`` of each reading's replicas stored it and the
writes for the others are fsynced in their hint queues (``storage_nodes.hints``); a
background thread replays the hints once their server answers again. A server that fails a
request or a probe is marked down (``storage_nodes.health``): its writes go straight to its
hints and reads leave it out, so no request spends a timeout on it. Reads ask every available
replica, merge the answers by point identity, and write what one replica lacks back to it
(read repair).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage_nodes import layout as layouts
from storage_nodes.client import (
    DatabaseNotFound,
    FatalStorageError,
    InfluxNode,
    RetriableStorageError,
    StorageError,
)
from storage_nodes.consistency import required, shortfalls
from storage_nodes.health import Health
from storage_nodes.hints import HintStore
from storage_nodes.layout import ALL_SERIES, Layout, LayoutError
from storage_nodes.lineproto import (
    LineProtocolError,
    line_series_time,
    point_time_ns,
    quote_ident,
    reading_to_line,
    row_to_line,
)
from storage_nodes.merge import Row, merge
from storage_nodes.ring import HashRing
from vigil.atomic import write_atomic
from vigil.messages import Reading
from vigil.names import is_name
from vigil.rate import RateLimiter
from vigil.rollups import is_rollup_metric
from vigil.settings import StorageSettings

log = logging.getLogger(__name__)

MAX_QUERY_ROWS = 10_000
#: What the writer publishes of its hint queues for other processes (API, CLI) to read.
HINT_SUMMARY = "summary.json"


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


class SeriesUnavailable(RetriableStorageError):
    """No replica of a series could answer: each is down, failed or erred."""

    def __init__(self, series: str, servers: Sequence[str], detail: str) -> None:
        super().__init__("cluster", f"no replica of {series} answered ({detail})")
        self.series = series
        self.servers = list(servers)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _rows(measurement: str, series: list[dict[str, Any]]) -> tuple[list[Row], int]:
    """Rows of a ``SELECT *`` answer (times in ns), and how many rows were not Vigil points
    (a value that is not a number: written by someone else, in another shard's field type):
    those are skipped, not a crash of the reader."""
    out: list[Row] = []
    skipped = 0
    for s in series:
        cols = s.get("columns") or []
        if "value" not in cols or "id" not in cols:
            continue
        iv, ii = cols.index("value"), cols.index("id")
        for row in s.get("values") or []:
            ts, value, rid = row[0], row[iv], row[ii]
            if not (_number(ts) and _number(value) and _number(rid)):
                skipped += 1
                continue
            out.append(Row(int(ts), int(rid), float(value), row_to_line(measurement, cols, row)))
    return out, skipped


@dataclass
class _Counters:
    """What happened per server, for metrics (monotonic)."""

    replayed: dict[str, int]
    replay_refused: dict[str, int]
    read_repaired: dict[str, int]
    hinted: dict[str, int]
    hints_expired: dict[str, int]


class StorageCluster:
    def __init__(
        self,
        settings: StorageSettings,
        *,
        hints: HintStore | None = None,
        background: bool = True,
    ) -> None:
        """``hints``: the writer's hint queues (ingest has them; a cluster without them
        cannot acknowledge a write that a replica missed). ``background``: probe the servers
        and replay hints in threads of this cluster (off only in pure tests)."""
        self.settings = settings
        self.database = settings.database
        self.consistency = settings.consistency
        self._password = settings.password
        self.layout_path = settings.layout_path
        self.layout = layouts.load(self.layout_path, settings)
        self._layout_stamp = layouts.stamp(self.layout_path)
        self.nodes: dict[str, InfluxNode] = {}
        self._probes: dict[str, InfluxNode] = {}
        self._clients: dict[str, InfluxNode] = {}
        self._probe_clients: dict[str, InfluxNode] = {}
        self._inflight: dict[int, int] = defaultdict(int)  # writes per layout version
        self._inflight_lock = threading.Lock()
        self.health = Health([])
        self.hints = hints
        self.counters = _Counters(*(defaultdict(int) for _ in range(5)))
        self._apply_layout(self.layout)
        # Several requests per server may be in flight: one stuck on a hung server until its
        # timeout must not hold up writes to the others, nor the next batch.
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="influx-io")
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._limiter = RateLimiter(settings.hints.replay_points_per_s)
        self._last_bounds = 0.0
        if background:
            self._start("_probe_step", "storage-probe")
            if hints is not None:
                self._start("_replay_step", "hint-replay")

    def _start(self, step: str, name: str) -> None:
        """Run method ``step`` in a thread until close, or until this cluster is garbage
        (the thread holds it weakly: a cluster nobody closed does not probe forever)."""
        thread = threading.Thread(
            target=_run_steps, args=(weakref.ref(self), self._stop, step), name=name, daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.settings.probe_timeout_s + 5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.hints is not None:
            self._write_hint_summary()
            self.hints.close()
        for node in [*self._clients.values(), *self._probe_clients.values()]:
            node.close()

    # -- layout -----------------------------------------------------------------------
    def _apply_layout(self, layout: Layout) -> None:
        """Follow ``layout``: clients for its servers, their drained state, its placement."""
        s = self.settings
        # Clients are kept for servers that left: a batch planned before a server left may
        # still be writing to it (its copy is deleted when the move ends).
        nodes, probes = self._clients, self._probe_clients
        for server in layout.servers:
            if server.name not in nodes or nodes[server.name].url != server.url.rstrip("/"):
                for clients, timeout_s in ((nodes, s.timeout_s), (probes, s.probe_timeout_s)):
                    clients[server.name] = InfluxNode(
                        server.name,
                        server.url,
                        timeout_s,
                        username=s.username,
                        password=self._password,
                        ca_file=s.ca_file,
                    )
        names = layout.names()
        self.nodes = {n: nodes[n] for n in names}
        self._probes = {n: probes[n] for n in names}
        self.health.set_names(names)
        for server in layout.servers:
            self.health.set_failed(server.name, server.state == "failed")
        self.layout = layout

    def reload_layout(self) -> bool:
        """Follow ``layout.json`` if it changed; True if it did. A file that does not parse
        is logged and ignored: the layout in force stays."""
        stamp = layouts.stamp(self.layout_path)
        if stamp == self._layout_stamp:
            return False
        self._layout_stamp = stamp
        try:
            layout = layouts.load(self.layout_path, self.settings)
        except LayoutError as exc:
            log.error("ignoring the new cluster layout: %s", exc)
            return False
        if layout == self.layout:
            return False
        log.warning(
            "cluster layout %d -> %d: servers %s, strategy %s%s",
            self.layout.version,
            layout.version,
            ", ".join(f"{x.name}({x.state})" for x in layout.servers),
            layout.strategy,
            ", moving data" if layout.moving else "",
        )
        self._apply_layout(layout)
        return True

    def cutoff_ns(self, device: str, metric: str) -> int | None:
        """Points of the series before this time (ns) are gone for good: past retention or
        deleted. Writes, hints, read repair and anti-entropy leave them alone, and reads
        leave out any a server still holds."""
        cut = self.layout.deleted_before(series_key(device, metric))
        retention = (
            self.settings.downsample.retention_s
            if is_rollup_metric(metric)
            else self.settings.retention_s
        )
        if retention is not None:
            keep = time.time_ns() - int(retention * 1e9)
            cut = keep if cut is None else max(cut, keep)
        return cut

    def _cutoffs_apply(self) -> bool:
        return (
            bool(self.layout.tombstones)
            or self.settings.retention_s is not None
            or self.settings.downsample.retention_s is not None
        )

    @property
    def ring(self) -> HashRing:
        return self.layout.placement.ring

    # -- placement --------------------------------------------------------------------
    def replicas(self, device: str, metric: str) -> list[InfluxNode]:
        """The servers a series belongs on, primary first (not those it is leaving)."""
        return [self.nodes[n] for n in self.layout.replicas_now(series_key(device, metric))]

    def plan(self, readings: Iterable[Reading]) -> dict[str, list[str]]:
        """Line-protocol lines per server name, each reading on each of its replicas."""
        by_node, _, _ = self._plan(list(readings), [])
        return {name: [line for line, _ in entries] for name, entries in by_node.items()}

    def _plan(
        self, readings: Sequence[Reading], rejected: list[Rejected]
    ) -> tuple[dict[str, list[tuple[str, int]]], list[tuple[str, ...]], list[str]]:
        """(line, index into ``readings``) per server, the replicas of each reading, and its
        line; a reading that cannot be a line is added to ``rejected`` instead (and has no
        replicas)."""
        by_node: dict[str, list[tuple[str, int]]] = defaultdict(list)
        replicas_of: list[tuple[str, ...]] = []
        lines: list[str] = []
        check_cutoff = self._cutoffs_apply()
        deleted = {t.series for t in self.layout.tombstones}
        for index, r in enumerate(readings):
            try:
                line = reading_to_line(r)
            except LineProtocolError as exc:
                rejected.append(Rejected(r, "", f"cannot be written as line protocol: {exc}"))
                replicas_of.append(())
                lines.append("")
                continue
            cut = self.cutoff_ns(r.stored_device, r.metric) if check_cutoff else None
            if cut is not None and point_time_ns(r) < cut:
                gone = r.series_key in deleted or ALL_SERIES in deleted
                why = "was deleted" if gone else "is past retention"
                rejected.append(Rejected(r, "", f"the series {why} up to this time"))
                replicas_of.append(())
                lines.append("")
                continue
            names = self.layout.owners(r.series_key)
            replicas_of.append(names)
            lines.append(line)
            for name in names:
                by_node[name].append((line, index))
        return dict(by_node), replicas_of, lines

    # -- health -----------------------------------------------------------------------
    def _probe_step(self) -> float:
        """Follow the layout, probe every server, publish the hint summary; the pause
        before the next step."""
        try:
            self.reload_layout()
        except Exception:
            log.exception("cannot follow the cluster layout")
        futures = [self._pool.submit(self.probe, name) for name in self.nodes]
        wait(futures, timeout=self.settings.probe_timeout_s * 3 + 1)
        if self.hints is not None:
            with contextlib.suppress(OSError):
                self._write_hint_summary()
        return self.settings.probe_interval_s

    def probe(self, name: str) -> None:
        """An up server must answer a ping; a down one must also accept our credentials and
        have the database before it is trusted with writes again."""
        probe = self._probes[name]
        state = self.health.get(name).state
        try:
            if state == "up":
                if not probe.ping(self.settings.probe_timeout_s):
                    raise RetriableStorageError(name, "no answer to a ping")
            else:
                self.check_database(probe)
        except StorageError as exc:
            self.health.mark_down(name, exc.reason)
            return
        self.health.seen(name)

    def server_up(self, name: str) -> bool:
        """Whether ``name`` is up as this process knows it; a server that has not answered
        yet is probed now (with the probe's short timeout)."""
        if self.health.get(name).last_seen is None and self.health.available(name):
            self.probe(name)
        return self.health.available(name)

    def _failed(self, name: str, exc: StorageError) -> None:
        self.health.mark_down(name, exc.reason)

    def ensure_database(self, timeout_s: float = 30.0) -> None:
        """Wait until every server answers and has the database (provisioned by
        ``storage_nodes.provision`` with the admin credential; created here only if this
        cluster's user may). Raises the last StorageError after ``timeout_s``. For tools
        that need every server (benchmarks); services start without it."""
        deadline = time.monotonic() + timeout_s
        for node in self.nodes.values():
            while True:
                try:
                    self.check_database(node)
                    break
                except RetriableStorageError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)

    def log_server_check(self, service: str) -> threading.Thread:
        """Log, once at start and in the background (a hung server would hold start-up for
        its timeout), each server that is not ready: unreachable, refusing the credentials,
        or without the database; such a server is marked down. The services run meanwhile."""

        def check() -> None:
            for name in self.nodes:
                try:
                    self.check_database(self._probes[name])
                except StorageError as exc:
                    self.health.mark_down(name, exc.reason)
                    log.warning(
                        "storage server %s is not ready (%s): %s goes on without it",
                        name,
                        exc.reason,
                        service,
                    )

        thread = threading.Thread(target=check, name="storage-check", daemon=True)
        thread.start()
        return thread

    def check_database(self, node: InfluxNode) -> None:
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

    # -- writes -----------------------------------------------------------------------
    def write(self, readings: Sequence[Reading]) -> list[Rejected]:
        """Store ``readings`` at the configured consistency.

        Returns the readings a server refused, each with the server's reason. Every other
        reading is then stored on at least the required number of its replicas, and the
        write for each of its other replicas is fsynced in that server's hint queue.

        Writes go in parallel to the replicas that are up; a server known to be down gets
        none (its lines go to its hints at once). Once every reading has enough stores, a
        slower server is waited for ``straggler_s`` more, then marked down and hinted (a
        write of it that lands later only rewrites the same points). A refusal (HTTP 400,
        including InfluxDB's "partial write", where the server stored some points and
        dropped others without saying which) is narrowed down by writing halves of that
        server's lines again (idempotent) until the refused lines are found one by one.

        Raises RetriableStorageError, queueing no hint, when too few replicas stored some
        reading (nothing is lost by trying again: a retry rewrites the same points).
        """
        version = self.layout.version
        with self._inflight_lock:
            self._inflight[version] += 1
        try:
            return self._write(readings)
        finally:
            with self._inflight_lock:
                self._inflight[version] -= 1
                if not self._inflight[version]:
                    del self._inflight[version]

    def followed_version(self) -> int:
        """The oldest layout version a write of this process may still be using: what it
        publishes, so a move deletes a moved copy only once no write planned before can
        land on it."""
        with self._inflight_lock:
            return min([self.layout.version, *self._inflight])

    def _write(self, readings: Sequence[Reading]) -> list[Rejected]:
        rejected: list[Rejected] = []
        plan, replicas_of, _ = self._plan(readings, rejected)
        to_hint: dict[str, list[tuple[str, int]]] = {}
        futures: dict[Future[list[tuple[int, str]]], str] = {}
        for name, entries in plan.items():
            if self.health.available(name):
                futures[self._pool.submit(self._write_narrowing, name, entries)] = name
            else:
                to_hint[name] = entries
        stored_on: dict[str, set[int]] = {}
        refused: dict[int, Rejected] = {}
        failures: dict[str, RetriableStorageError] = {}
        pending = set(futures)
        deadline: float | None = None
        while pending:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, pending = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
            for fut in done:
                name = futures[fut]
                exc = fut.exception()
                if isinstance(exc, RetriableStorageError):
                    self._failed(name, exc)
                    to_hint[name] = plan[name]
                    failures[name] = exc
                    continue
                if exc is not None:
                    raise exc
                self.health.seen(name)
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
                bad = {index for index, _ in found}
                stored_on[name] = {i for _, i in plan[name] if i not in bad}
            if not done and deadline is not None:
                break  # the rest are stragglers
            if deadline is None and not self._short(replicas_of, refused, stored_on):
                deadline = time.monotonic() + self.settings.straggler_s
        for fut in pending:
            name = futures[fut]
            self.health.mark_down(
                name, f"no answer to a write within {self.settings.straggler_s:g} s"
            )
            to_hint[name] = plan[name]
        short = self._short(replicas_of, refused, stored_on)
        if short:
            first = short[0]
            for name in first.missing:
                if name in failures:
                    raise failures[name]
            raise RetriableStorageError(
                "cluster",
                f"{len(short)} reading(s) stored on fewer replicas than consistency "
                f"{self.consistency} needs (first: {first.stored} of {first.needed}; "
                f"not stored on {', '.join(first.missing)})",
            )
        self._hint(to_hint, refused, failures)
        return rejected + [refused[i] for i in sorted(refused)]

    def _short(
        self,
        replicas_of: list[tuple[str, ...]],
        refused: dict[int, Rejected],
        stored_on: dict[str, set[int]],
    ) -> list[Any]:
        wanted = [() if i in refused else r for i, r in enumerate(replicas_of)]
        return shortfalls(self.consistency, wanted, stored_on)

    def _hint(
        self,
        to_hint: dict[str, list[tuple[str, int]]],
        refused: dict[int, Any],
        failures: dict[str, RetriableStorageError],
    ) -> None:
        """Queue, fsynced, the lines of each server that did not store them. Without hint
        queues, the failure of such a server is the write's (it is retried)."""
        for name, entries in to_hint.items():
            lines = [line for line, index in entries if index not in refused]
            if not lines:
                continue
            if self.hints is None:
                raise failures.get(name) or RetriableStorageError(
                    name,
                    f"the server is {self.health.get(name).state} and this writer keeps "
                    "no hint queue",
                )
            try:
                self.hints.queue(name).append(lines)
            except OSError as exc:
                raise RetriableStorageError(name, f"cannot queue hints: {exc}") from exc
            self.counters.hinted[name] += len(lines)

    def needed_stores(self, replicas: int) -> int:
        return required(self.consistency, replicas)

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
        node = self._clients[name]
        try:
            node.write(self.database, lines)
        except DatabaseNotFound:
            self.check_database(node)  # creates it if this user may; else DatabaseNotFound
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

    # -- hinted handoff ---------------------------------------------------------------
    def _replay_step(self) -> float:
        """Replay one batch per server that is up and has hints; enforce the bounds every
        10 s. The pause before the next step: none while there was work."""
        assert self.hints is not None
        worked = False
        for name in self.hints.targets():
            if self._stop.is_set():
                return 0.0
            if name in self.nodes and self.health.available(name):
                worked |= self._replay_one(name, self._limiter)
        if time.monotonic() - self._last_bounds > 10:
            self._last_bounds = time.monotonic()
            for name in self.hints.targets():
                self.hints.queue(name).enforce_bounds()
        return 0.0 if worked else 0.2

    def _replay_one(self, name: str, limiter: RateLimiter) -> bool:
        """Replay one batch of ``name``'s hints, oldest first; True if one was replayed."""
        assert self.hints is not None
        queue = self.hints.queue(name)
        batch = queue.read(self.settings.hints.replay_batch_points)
        if batch is None:
            return False
        limiter.acquire(batch.points)
        lines = self._live_lines(name, batch.lines)
        try:
            found = self._write_narrowing(name, [(line, i) for i, line in enumerate(lines)])
        except RetriableStorageError as exc:
            self._failed(name, exc)
            return False
        if found:
            # Stored on the other replicas already; this server refuses it (a field type
            # conflict on it alone): nothing replay can do. Logged once per batch.
            log.warning(
                "server %s refused %d replayed hint point(s) (first: %s); dropped them",
                name,
                len(found),
                found[0][1],
            )
            self.counters.replay_refused[name] += len(found)
        queue.commit(batch)
        self.counters.replayed[name] += batch.points
        return True

    def _live_lines(self, name: str, lines: list[str]) -> list[str]:
        """``lines`` without the points deleted or past retention since they were hinted,
        and without those of series ``name`` no longer owns (a move took them elsewhere)."""
        layout = self.layout
        rule: dict[tuple[str, str], int | None] = {}  # per series: keep from (None: drop)
        kept = []
        for line in lines:
            key = line_series_time(line)
            if key is not None:
                metric, device, time_ns = key
                if (device, metric) not in rule:
                    owned = name in layout.owners(series_key(device, metric))
                    rule[device, metric] = (self.cutoff_ns(device, metric) or 0) if owned else None
                keep_from = rule[device, metric]
                if keep_from is None or time_ns < keep_from:
                    continue
            kept.append(line)
        if len(kept) < len(lines):
            self.counters.hints_expired[name] += len(lines) - len(kept)
        return kept

    def hint_stats(self) -> dict[str, dict[str, float]]:
        if self.hints is None:
            return {}
        return {
            name: {
                "points": s.points,
                "bytes": s.bytes,
                "oldest_age_s": round(s.oldest_age_s, 3),
                "dropped_points": s.dropped_points,
            }
            for name, s in self.hints.stats().items()
        }

    def _write_hint_summary(self) -> None:
        """Publish the hint queues' state for the API and the CLI (atomically)."""
        assert self.hints is not None
        summary = {
            "written_ms": int(time.time() * 1000),
            "layout_version": self.followed_version(),
            "servers": self.hint_stats(),
        }
        write_atomic(self.hints.root / HINT_SUMMARY, json.dumps(summary, sort_keys=True))

    # -- reads ------------------------------------------------------------------------
    def ask_series(self, device: str, metric: str, q: str) -> dict[str, list[dict[str, Any]]]:
        """Each answering replica's results of the statements ``q`` about one series
        (rendered and escaped by the caller; times in ns), as :meth:`_ask_replicas` asks:
        SeriesUnavailable when none answered, an empty answer when nothing is stored."""
        return self._ask_replicas(device, metric, q, {}, statements=True)

    def ask_servers(self, q: str) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
        """The results of ``q`` on every server that is up (a series lives whole on each
        of its replicas, so the union is everything whose replicas are not all down), and
        the servers that did not answer."""
        names = [n for n in self.nodes if self.server_up(n)]
        futures = {
            n: self._pool.submit(self._clients[n].query_statements, q, self.database) for n in names
        }
        answers: dict[str, list[dict[str, Any]]] = {}
        missed = [n for n in self.nodes if n not in futures]
        for name, fut in futures.items():
            try:
                answers[name] = fut.result()
            except StorageError:
                missed.append(name)
        return answers, missed

    def _ask_replicas(
        self,
        device: str,
        metric: str,
        q: str,
        params: dict[str, Any],
        *,
        statements: bool = False,
    ) -> dict[str, list[dict[str, Any]]]:
        """The answer of each replica of the series that answers (times in ns).

        Every available replica is asked at once. Once one has answered, the others get
        ``straggler_s`` more; any error leaves that replica out (down, timeout, a missing
        database, an error inside a 200 answer). Raises SeriesUnavailable when none
        answered; an empty answer when every replica lacks the database (nothing stored)."""
        series = series_key(device, metric)
        names = list(self.layout.owners(series))
        live = [n for n in names if self.health.available(n)]
        if not live:
            down = ", ".join(f"{n} {self.health.get(n).state}" for n in names)
            raise SeriesUnavailable(series, names, down)
        futures = {
            (
                self._pool.submit(self._clients[n].query_statements, q, self.database)
                if statements
                else self._pool.submit(self._clients[n].query, q, self.database, params, epoch="ns")
            ): n
            for n in live
        }
        for fut, name in futures.items():
            fut.add_done_callback(lambda f, name=name: self._read_done(name, f))  # type: ignore[misc]
        answers: dict[str, list[dict[str, Any]]] = {}
        errors: dict[str, StorageError] = {}
        pending = set(futures)
        deadline: float | None = None
        while pending:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, pending = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
            if not done:
                break
            for fut in done:
                exc = fut.exception()
                if isinstance(exc, StorageError):
                    errors[futures[fut]] = exc
                elif exc is not None:
                    raise exc
                else:
                    answers[futures[fut]] = fut.result()
            if answers and deadline is None:
                deadline = time.monotonic() + self.settings.straggler_s
        if answers:
            return answers
        if len(errors) == len(live) and all(
            isinstance(e, DatabaseNotFound) for e in errors.values()
        ):
            return {}  # no replica has the database yet: nothing is stored
        detail = "; ".join(f"{n}: {e.reason}" for n, e in errors.items()) or "no answer in time"
        raise SeriesUnavailable(series, names, detail)

    def _read_done(self, name: str, fut: Future[Any]) -> None:
        exc = fut.exception()
        if exc is None:
            self.health.seen(name)
        elif isinstance(exc, RetriableStorageError) and not isinstance(exc, DatabaseNotFound):
            self._failed(name, exc)

    def _repair(self, name: str, lines: list[str]) -> None:
        """Read repair: write to ``name`` the points its answer lacked (best effort: what
        fails here, anti-entropy repair finds)."""
        try:
            self._write_node(name, lines)
        except StorageError as exc:
            log.info("read repair of %d point(s) on %s failed: %s", len(lines), name, exc)
            return
        self.counters.read_repaired[name] += len(lines)

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
        """Stored readings of one series, merged from its replicas; what a replica lacks is
        written back to it in the background. ``device`` and ``metric`` must be valid names
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
            f"SELECT * FROM {quote_ident(metric)} WHERE {' AND '.join(where)} "  # noqa: S608
            f"ORDER BY time {order} LIMIT {int(limit):d}"
        )
        answers = self._ask_replicas(device, metric, q, {"device": device})
        rows: dict[str, list[Row]] = {}
        skipped = 0
        for name, series in answers.items():
            rows[name], bad = _rows(metric, series)
            skipped = max(skipped, bad)
        if skipped:
            log.warning("skipped %d stored row(s) that are not Vigil readings", skipped)
        cut = self.cutoff_ns(device, metric)
        if cut is not None:  # a server that missed a deletion still holds what it deleted
            rows = {n: [r for r in rs if r.time_ns >= cut] for n, rs in rows.items()}
        merged = merge(rows, limit, newest_first)
        belongs = set(self.layout.replicas_now(series_key(device, metric)))
        for name, lacking in merged.missing.items():
            if name not in belongs:
                continue  # a server the series is leaving: repair would strand a copy there
            lines = [r.line for r in lacking if r.line]
            if lines:
                self._pool.submit(self._repair, name, lines)
        return [Point(r.time_ns // 1_000_000, r.value, r.id) for r in merged.rows]

    def latest(self, device: str, metric: str) -> Point | None:
        pts = self.points(device, metric, limit=1)
        return pts[0] if pts else None

    def mean_of_last(self, device: str, metric: str, n: int) -> tuple[float, int] | None:
        """Mean of the last ``n`` values and how many there were, or None if no data."""
        pts = self.points(device, metric, limit=n)
        if not pts:
            return None
        return sum(p.value for p in pts) / len(pts), len(pts)

    def metrics_of(self, device: str) -> tuple[list[str], list[str]]:
        """The metrics stored for ``device`` on any server (a series lives whole on each of
        its replicas, so the union over the servers that answer is every metric whose
        replicas are not all down), and the servers that did not answer."""
        if not is_name(device):
            raise ValueError("invalid name")
        found: set[str] = set()
        missed: list[str] = []
        for name, node in self.nodes.items():
            if not self.server_up(name):
                missed.append(name)
                continue
            try:
                series = node.query(
                    'SHOW MEASUREMENTS WHERE "device" = $device', self.database, {"device": device}
                )
            except StorageError:
                missed.append(name)
                continue
            for s in series:
                found.update(str(row[0]) for row in s.get("values") or [])
        return sorted(m for m in found if is_name(m)), missed

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
        """Every server: its state as this process sees it, its share of the ring, when it
        last answered, and its hint queue (when this process keeps hints)."""
        share = self.ring.share()
        hints = self.hint_stats()
        out = []
        for name, node in self.nodes.items():
            h = self.health.get(name)
            entry: dict[str, Any] = {
                "name": name,
                "url": node.url,
                "up": h.available,
                "state": h.state,
                "layout_state": self.layout.server(name).state,
                "since_ms": int(h.since * 1000),
                "last_seen_ms": None if h.last_seen is None else int(h.last_seen * 1000),
                "reason": h.reason,
                "share": round(share.get(name, 0.0), 4),
            }
            if name in hints:
                entry["hints"] = hints[name]
            out.append(entry)
        return out


def _run_steps(ref: weakref.ref[StorageCluster], stop: threading.Event, step: str) -> None:
    while not stop.is_set():
        cluster = ref()
        if cluster is None:
            return
        try:
            pause = float(getattr(cluster, step)())
        except Exception:
            log.exception("storage background step %s failed; going on", step)
            pause = 1.0
        del cluster
        stop.wait(pause)


def read_hint_summary(hints_dir: Path) -> dict[str, Any] | None:
    """What a writer last published of its hint queues (``None`` if nothing yet)."""
    try:
        raw = (hints_dir / HINT_SUMMARY).read_bytes()
    except OSError:
        return None
    try:
        summary = json.loads(raw)
    except ValueError:
        return None
    return summary if isinstance(summary, dict) else None
