"""Node operations: what ``vigil storage`` and the API's ``/storage`` routes do.

Status, fail (drain) and recover, the replicas of a series, repair (anti-entropy), and the
moves that change where series live: add a server, remove one, switch the strategy. Every
change is a new version of the layout file (``storage_nodes.layout``), which every service
follows within a probe interval.

A move runs in four steps, each safe to interrupt and run again (``resume``):

1. Write the layout with the new placement and the current one as ``previous``; wait until
   every running writer follows it. From then on writes go to old and new owners, and reads
   consult both.
2. Copy each series that gains an owner from its old owners (anti-entropy of the series over
   old and new owners: only what is missing moves), then check that every new owner holds
   at least as many of its points as any old owner.
3. Write the settled layout (no ``previous``), and wait for the writers again.
4. Delete each moved series from the servers that no longer own it.

So a reading is on its old owners until its new owners have it, and no copy is written twice
(point writes are idempotent).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage_nodes import layout as layouts
from storage_nodes.client import InfluxNode, StorageError
from storage_nodes.cluster import StorageCluster, read_hint_summary, series_key
from storage_nodes.layout import ALL_SERIES, Layout, Server, Strategy, Tombstone
from storage_nodes.lineproto import quote_ident, quote_literal
from storage_nodes.repair import (
    RepairProgress,
    RepairReport,
    list_series,
    repair_all,
    repair_series,
)
from vigil.messages import KINDS
from vigil.names import is_name
from vigil.rate import RateLimiter
from vigil.rollups import ROLLUP_KIND, is_rollup_metric, rollup_metric
from vigil.settings import StorageSettings

log = logging.getLogger(__name__)

#: A writer whose summary is older than this is taken for stopped: when it starts again it
#: reads the newest layout, so a move need not wait for it.
WRITER_STALE_S = 15.0
#: How many times a moved series is copied and counted before the move gives up.
VERIFY_ATTEMPTS = 5


class OperationError(Exception):
    """An operation that cannot be done as asked (unknown server, move in progress...)."""


@dataclass
class MoveReport:
    from_version: int
    to_version: int
    series_moved: int = 0
    points_copied: dict[str, int] = field(default_factory=dict)
    series_deleted: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "from_version": self.from_version,
            "to_version": self.to_version,
            "series_moved": self.series_moved,
            "points_copied": self.points_copied,
            "series_deleted": self.series_deleted,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
        }


Progress = Callable[[str, int, int], None]  # (phase, done, total)


def _quiet(phase: str, done: int, total: int) -> None:
    pass


class StorageOps:
    def __init__(
        self,
        settings: StorageSettings,
        *,
        writer_dirs: Sequence[Path] = (),
        cluster: StorageCluster | None = None,
        wait_s: float = 60.0,
    ) -> None:
        """``writer_dirs``: the hint folders of the writers (ingest processes), whose
        summaries say which layout each follows and what it has queued."""
        self.settings = settings
        self.writer_dirs = list(writer_dirs)
        self.cluster = cluster or StorageCluster(settings, background=False)
        self._owns_cluster = cluster is None
        self.wait_s = wait_s

    def close(self) -> None:
        if self._owns_cluster:
            self.cluster.close()

    # -- reading ---------------------------------------------------------------------
    def layout(self) -> Layout:
        self.cluster.reload_layout()
        return self.cluster.layout

    def writers(self) -> list[dict[str, Any]]:
        """The summary of each writer that published one recently."""
        now_ms = time.time() * 1000
        out = []
        for d in self.writer_dirs:
            summary = read_hint_summary(d)
            if summary is None:
                continue
            written = summary.get("written_ms")
            if not isinstance(written, int) or now_ms - written > WRITER_STALE_S * 1000:
                continue
            out.append({"dir": str(d), **summary})
        return out

    def status(self) -> dict[str, Any]:
        """The layout and every server: answering now, its state, share, last seen, and
        the hints the writers hold for it."""
        layout = self.layout()
        for name in layout.names():
            self.cluster.probe(name)  # one probe now, not a stale view
        hints: dict[str, dict[str, float]] = {}
        for w in self.writers():
            for name, stats in (w.get("servers") or {}).items():
                total = hints.setdefault(name, {"points": 0, "bytes": 0, "oldest_age_s": 0.0})
                if isinstance(stats, dict):
                    total["points"] += stats.get("points", 0)
                    total["bytes"] += stats.get("bytes", 0)
                    total["oldest_age_s"] = max(total["oldest_age_s"], stats.get("oldest_age_s", 0))
        servers = [
            {**entry, "hints": hints.get(entry["name"], {"points": 0, "bytes": 0})}
            for entry in self.cluster.status()
        ]
        return {
            "layout_version": layout.version,
            "strategy": layout.strategy,
            "replication_factor": layout.replication_factor,
            "moving": layout.moving,
            "servers": servers,
            "writers": [
                {"dir": w["dir"], "layout_version": w.get("layout_version")} for w in self.writers()
            ],
        }

    def replicas(self, device: str, metric: str) -> dict[str, Any]:
        if not is_name(device) or not is_name(metric):
            raise OperationError("device and metric must be valid names")
        layout = self.layout()
        key = series_key(device, metric)
        return {
            "series": key,
            "replicas": list(layout.replicas_now(key)),
            "owners": list(layout.owners(key)),
            "layout_version": layout.version,
        }

    # -- changing the layout -----------------------------------------------------------
    def _save(self, layout: Layout) -> Layout:
        if self.settings.layout_path is None:
            raise OperationError(
                "storage.layout_path is not set: the layout is the configuration's, fixed"
            )
        layouts.save(self.settings.layout_path, layout)
        self.cluster.reload_layout()
        log.warning("cluster layout is now version %d", layout.version)
        return layout

    def _known(self, name: str) -> Layout:
        layout = self.layout()
        if name not in layout.names():
            raise OperationError(
                f"no server {name!r} in the layout (servers: {', '.join(layout.names())})"
            )
        return layout

    def fail(self, name: str) -> Layout:
        """Drain ``name`` on purpose: writes for it become hints, reads avoid it."""
        layout = self._known(name)
        if layout.server(name).state == "failed":
            return layout
        if layout.server(name).state == "leaving":
            raise OperationError(f"{name} is leaving the cluster")
        return self._save(layout.with_state(name, "failed"))

    def recover(self, name: str) -> Layout:
        """Undo ``fail``: the writers replay its hints as soon as it answers, and it serves
        reads again."""
        layout = self._known(name)
        if layout.server(name).state != "failed":
            return layout
        return self._save(layout.with_state(name, "active"))

    def wait_for_writers(self, version: int, progress: Progress = _quiet) -> None:
        """Until every running writer follows layout ``version`` (or later)."""
        deadline = time.monotonic() + self.wait_s
        while True:
            behind = [
                w["dir"]
                for w in self.writers()
                if not isinstance(w.get("layout_version"), int) or w["layout_version"] < version
            ]
            if not behind:
                return
            if time.monotonic() > deadline:
                raise OperationError(
                    f"writers still on an older layout after {self.wait_s:g} s: "
                    f"{', '.join(behind)}; run the command again to resume"
                )
            progress("waiting for writers", 0, len(behind))
            time.sleep(0.2)

    # -- repair ------------------------------------------------------------------------
    def repair(
        self,
        *,
        since_ns: int | None = None,
        points_per_s: float | None = None,
        on_progress: Callable[[RepairProgress], None] | None = None,
    ) -> RepairReport:
        """Anti-entropy over every series: each owner ends with every point any owner has."""
        layout = self.layout()
        nodes = self._available_nodes(layout)
        limiter = RateLimiter(points_per_s) if points_per_s else None
        return repair_all(
            lambda device, metric: [
                self.cluster.nodes[n] for n in layout.owners(series_key(device, metric))
            ],
            nodes,
            self.settings.database,
            since_ns=since_ns,
            since_of=self.cluster.cutoff_ns,
            limiter=limiter,
            on_progress=on_progress,
        )

    def _available_nodes(self, layout: Layout) -> list[InfluxNode]:
        return [self.cluster.nodes[n] for n in layout.names() if layout.server(n).state != "failed"]

    # -- deletion and retention -------------------------------------------------------
    def delete_series(self, device: str, metric: str, before_ms: int | None = None) -> Deletion:
        """Delete a series (its points before ``before_ms``, or all): a tombstone in the
        layout first, so no hint, read repair or repair brings a point back, then the
        points on every server (a server that misses it is done again by maintenance, and
        is named in ``pending``)."""
        if not is_name(device) or not is_name(metric):
            raise OperationError("device and metric must be valid names")
        before_ns = 2**63 - 1 if before_ms is None else before_ms * 1_000_000
        # the series and its downsampled history (vigil/rollups.py)
        rollup = rollup_metric(metric, self.settings.downsample.bucket_s)
        metrics = [metric] if is_rollup_metric(metric) or rollup is None else [metric, rollup]
        now_ms = int(time.time() * 1000)
        layout = self._save(
            self.layout().with_tombstones(
                *(Tombstone(series_key(device, m), before_ns, now_ms) for m in metrics)
            )
        )
        self.wait_for_writers(layout.version)
        pending: set[str] = set()
        for m in metrics:
            pending.update(self.apply_deletions(only=series_key(device, m)))
        return Deletion(layout, sorted(pending))

    def delete_before(self, before_ms: int) -> Deletion:
        """Delete every series' points before ``before_ms`` (rollups included), as
        :meth:`delete_series` deletes one series'."""
        if before_ms <= 0:
            raise OperationError("before must be a positive time (epoch ms)")
        layout = self._save(
            self.layout().with_tombstones(
                Tombstone(ALL_SERIES, before_ms * 1_000_000, int(time.time() * 1000))
            )
        )
        self.wait_for_writers(layout.version)
        return Deletion(layout, self.apply_deletions(only=ALL_SERIES))

    def apply_deletions(self, only: str | None = None) -> list[str]:
        """Delete, on every server, what the tombstones and the retention say is gone;
        the servers that could not be reached (done again next time)."""
        layout = self.layout()
        failed: list[str] = []
        statements = []
        for t in layout.tombstones:
            if only is not None and t.series != only:
                continue
            if t.series == ALL_SERIES:
                statements.append(f"DELETE WHERE time < {t.before_ns:d}")
                continue
            device, _, metric = t.series.partition("/")
            statements.append(
                f"DELETE FROM {quote_ident(metric)} WHERE device = {quote_literal(device)} "  # noqa: S608
                f"AND time < {t.before_ns:d}"
            )
        if only is None:
            # raw readings by their kind, so the rollups outlive them (vigil/rollups.py)
            for kinds, retention in (
                (KINDS, self.settings.retention_s),
                ((ROLLUP_KIND,), self.settings.downsample.retention_s),
            ):
                if retention is None:
                    continue
                keep = time.time_ns() - int(retention * 1e9)
                statements += [
                    f'DELETE WHERE "kind" = {quote_literal(k)} AND time < {keep:d}' for k in kinds
                ]
        for name in layout.names():
            node = self.cluster.nodes[name]
            try:
                for q in statements:
                    node.query(q, self.settings.database, method="POST")
            except StorageError as exc:
                log.warning("deletions on %s failed (done again later): %s", name, exc)
                failed.append(name)
        return failed

    # -- moves -------------------------------------------------------------------------
    def add(self, name: str, url: str, progress: Progress = _quiet) -> MoveReport:
        layout = self.layout()
        if layout.moving:
            return self.resume(progress)
        if name in layout.names():
            raise OperationError(f"{name} is already in the layout")
        if not is_name(name):
            raise OperationError(f"{name!r} is not a valid server name")
        probe = InfluxNode(
            name,
            url,
            self.settings.probe_timeout_s * 5,
            username=self.settings.username,
            password=self.settings.password,
            ca_file=self.settings.ca_file,
        )
        try:
            self.cluster.check_database(probe)
        except StorageError as exc:
            raise OperationError(
                f"{name} at {url} is not ready: {exc.reason} (start and provision it first)"
            ) from exc
        finally:
            probe.close()
        servers = [*layout.servers, Server(name, url)]
        return self._move(layouts.moved(layout, servers, layout.strategy), progress)

    def remove(self, name: str, progress: Progress = _quiet) -> MoveReport:
        layout = self._known(name)
        if layout.moving:
            return self.resume(progress)
        staying = [s for s in layout.servers if s.name != name]
        if not staying:
            raise OperationError("cannot remove the last server")
        servers = [
            Server(s.name, s.url, "leaving") if s.name == name else s for s in layout.servers
        ]
        return self._move(layouts.moved(layout, servers, layout.strategy), progress)

    def set_strategy(self, strategy: Strategy, progress: Progress = _quiet) -> MoveReport:
        layout = self.layout()
        if layout.moving:
            return self.resume(progress)
        if strategy == layout.strategy:
            return MoveReport(layout.version, layout.version)
        return self._move(layouts.moved(layout, list(layout.servers), strategy), progress)

    def resume(self, progress: Progress = _quiet) -> MoveReport:
        """Finish a move that was interrupted (or do nothing if none is under way)."""
        layout = self.layout()
        if not layout.moving:
            return MoveReport(layout.version, layout.version)
        return self._move(layout, progress, save=False)

    def _move(self, target: Layout, progress: Progress, *, save: bool = True) -> MoveReport:
        started = time.monotonic()
        assert target.previous is not None
        previous = target.previous
        report = MoveReport(target.version - 1 if save else target.version, target.version)
        if save:
            self._save(target)
        self.wait_for_writers(target.version, progress)
        nodes = {n: self.cluster.nodes[n] for n in target.names()}
        found: set[tuple[str, str]] = set()
        for node in nodes.values():
            try:
                found |= list_series(node, self.settings.database)
            except StorageError as exc:
                raise OperationError(f"cannot list the series on {node.name}: {exc}") from exc
        moving = []
        for metric, device in sorted(found):
            key = series_key(device, metric)
            old, new = previous.replicas(key), target.replicas_now(key)
            if set(new) != set(old):
                moving.append((metric, device, old, new))
        for done, (metric, device, old, new) in enumerate(moving):
            progress("copying", done, len(moving))
            owners = list(dict.fromkeys([*new, *old]))
            for attempt in range(1, VERIFY_ATTEMPTS + 1):
                result = repair_series(
                    [nodes[n] for n in owners],
                    self.settings.database,
                    metric,
                    device,
                    since_ns=self.cluster.cutoff_ns(device, metric),
                )
                for n, count in result.copied.items():
                    report.points_copied[n] = report.points_copied.get(n, 0) + count
                if result.errors:
                    raise OperationError(
                        f"copying {key_of(metric, device)} failed: "
                        f"{'; '.join(result.errors)}; run the command again to resume"
                    )
                # Live writes go to old and new owners: a point counted on an old owner may
                # not have reached a new one yet. Copy again and count again.
                short = self._short(nodes, metric, device, old, new)
                if not short:
                    break
                if attempt == VERIFY_ATTEMPTS:
                    raise OperationError(
                        f"{key_of(metric, device)}: new owners hold fewer points than the old "
                        f"after {attempt} copies ({short}); run the command again to resume"
                    )
                time.sleep(0.5)
        report.series_moved = len(moving)
        progress("copying", len(moving), len(moving))
        final = self._save(layouts.settled(target))
        self.wait_for_writers(final.version, progress)
        for done, (metric, device, old, new) in enumerate(moving):
            progress("deleting moved copies", done, len(moving))
            for n in old:
                if n in new:
                    continue
                self._drop_series(nodes[n], metric, device)
                report.series_deleted[n] = report.series_deleted.get(n, 0) + 1
        progress("done", len(moving), len(moving))
        report.to_version = final.version
        report.seconds = time.monotonic() - started
        return report

    def _short(
        self,
        nodes: dict[str, InfluxNode],
        metric: str,
        device: str,
        old: Sequence[str],
        new: Sequence[str],
    ) -> dict[str, str]:
        """The new owners holding fewer points of the series than an old owner."""

        def count(n: str) -> int:
            q = f"SELECT count(value) FROM {quote_ident(metric)} WHERE device = $device"  # noqa: S608
            series = nodes[n].query(q, self.settings.database, {"device": device})
            return int(series[0]["values"][0][1]) if series else 0

        try:
            most = max(count(n) for n in old)
            return {n: f"{c} < {most}" for n in new if (c := count(n)) < most}
        except StorageError as exc:
            raise OperationError(f"cannot verify {key_of(metric, device)}: {exc}") from exc

    def _drop_series(self, node: InfluxNode, metric: str, device: str) -> None:
        q = f"DROP SERIES FROM {quote_ident(metric)} WHERE device = {quote_literal(device)}"
        try:
            node.query(q, self.settings.database, method="POST")
        except StorageError as exc:
            log.warning(
                "could not delete the moved copy of %s from %s: %s (repair reports it as "
                "misplaced)",
                key_of(metric, device),
                node.name,
                exc,
            )


def key_of(metric: str, device: str) -> str:
    return series_key(device, metric)


@dataclass(frozen=True)
class Deletion:
    """A deletion done: the layout holding its tombstone, and the servers that could not
    apply it yet (the maintenance does it again; nothing deleted comes back meanwhile)."""

    layout: Layout
    pending: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"layout_version": self.layout.version, "pending": self.pending}


class AutoRepair:
    """Anti-entropy repair every ``storage.repair_interval_s``, rate-limited, in a thread.
    A run that copied something or met errors is logged once with what it did; the last
    report shows in ``GET /storage``."""

    def __init__(self, ops: StorageOps) -> None:
        self.ops = ops
        self.interval_s = ops.settings.repair_interval_s
        self.runs = 0
        self.failures = 0
        self.copied_points = 0
        self.last: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="auto-repair", daemon=True)

    def start(self) -> None:
        if self.interval_s > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.run_once()

    def run_once(self) -> None:
        """Deletions first (retention, tombstones a server missed), then repair."""
        self.ops.apply_deletions()
        if self.ops.layout().moving:
            return  # the move copies what moves; repair waits for the settled layout
        try:
            report = self.ops.repair(points_per_s=self.ops.settings.repair_points_per_s)
        except Exception:
            self.failures += 1
            log.exception("automatic repair failed")
            return
        self.runs += 1
        if report.errors:
            self.failures += 1
        self.last = {"finished_ms": int(time.time() * 1000), **report.to_json()}
        copied = sum(report.copied.values())
        self.copied_points += copied
        if copied or report.errors:
            log.warning(
                "automatic repair: %d series, %d point(s) copied (%s), %d error(s)%s",
                report.series,
                copied,
                ", ".join(f"{n} {c}" for n, c in sorted(report.copied.items()) if c) or "-",
                len(report.errors),
                f"; first: {report.errors[0]}" if report.errors else "",
            )
