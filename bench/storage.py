"""Storage benchmark: ``python -m bench.storage`` (``make bench`` runs it after bench.e2e).

Starts its own InfluxDB servers with bench.e2e's harness (three, and a fourth for the
rebalance; state in a temporary folder) and measures the storage layer in one run on this
machine, every figure also as a ratio to the raw batched-write rate of one server measured in
the same run (batches of 5,000 lines, one HTTP client, bench.e2e's reference):

1. per strategy (``consistent``, replication factor 2 on 3 servers, and ``full``): write
   throughput through ``StorageCluster.write`` with hint queues (batches of 5,000 readings),
   read latency of ``points(limit=100)`` over random series, the time from
   ``StorageOps.fail`` until a running writer treats the server as failed, and the time from
   ``StorageOps.recover`` until that writer's hint queue for it is empty;
2. write throughput while one server is hung (SIGSTOP) divided by the throughput with all up;
3. hint replay rate: a queue filled while a server is failed, drained after ``recover``,
   with the default ``hints.replay_points_per_s`` and with no practical limit;
4. the time ``StorageOps.repair`` takes to restore the points one replica lost;
5. the time ``StorageOps.add`` takes to move a 3-server cluster's data onto 4, per 1M points;
6. throughput and hint queue depth over time across a SIGSTOP/SIGCONT and across a
   fail/recover of one server, plotted to ``docs/img/bench-fail-recover.png``.

Prints a table and saves ``bench/results/storage.json``. ``--quick`` runs smaller sizes
(about a minute and a half); ``--profile`` also runs cProfile over the writer, the repair and
the rebalance (their timings are then inflated: use a run without it for the figures). While
it runs, each phase and its counts are shown on stderr (:mod:`bench.progress`).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import logging
import os
import platform
import pstats
import random
import signal
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.e2e import METRICS, ROOT, TS0, Bench, cpu_seconds, wait
from bench.progress import Phase, Progress
from stack.process import ManagedProcess, free_port
from storage_nodes import (
    SERVICE_USER,
    Credential,
    StorageCluster,
    admin_node,
    grant_database,
    influxd_command,
    provision_server,
    series_key,
)
from storage_nodes.hints import HintStore
from storage_nodes.lineproto import quote_ident
from storage_nodes.ops import StorageOps
from storage_nodes.repair import RepairProgress
from vigil.atomic import load_or_create_secret
from vigil.messages import Reading
from vigil.settings import StorageNode, StorageSettings

BATCH = 5000
DEVICES = 50  # x 4 metrics = 200 series
SERIES = [(f"bench-{d}", m) for d in range(DEVICES) for m in METRICS]
CADENCE_MS = 1000  # one reading per series per second
IMG = ROOT / "docs" / "img" / "bench-fail-recover.png"
GOALS = {"down_vs_up": 0.9, "repair_s": 60.0}


@dataclass(frozen=True)
class Sizes:
    raw_points: int
    strategy_readings: int
    read_samples: int
    fail_reps: int
    hinted_per_rep: int
    replay_points: int
    repair_points: int
    rebalance_points: int
    timeline_s: tuple[float, float, float]  # all up, one server out, back


FULL = Sizes(500_000, 300_000, 1000, 5, 50_000, 500_000, 1_000_000, 1_000_000, (10, 15, 20))
QUICK = Sizes(200_000, 50_000, 200, 2, 10_000, 100_000, 200_000, 200_000, (5, 8, 8))


# -- data --------------------------------------------------------------------------------
def series_reading(series_no: int, k: int) -> Reading:
    """The ``k``-th reading of series ``series_no``: one a second, ids unique per run."""
    device, metric = SERIES[series_no]
    return Reading(
        id=series_no * 10_000_000 + k + 1,
        device=device,
        ts=TS0 + k * CADENCE_MS,
        kind="sensor",
        metric=metric,
        value=k * 0.5,
        unit="u",
    )


class Stream:
    """Readings round-robin over some series, each series' readings in time order; it
    remembers how far each series got, so later batches are new points."""

    def __init__(self, series: Sequence[int]) -> None:
        self.series = list(series)
        self.next_k: Counter[int] = Counter()
        self.written: Counter[int] = Counter()  # readings handed out per series

    def batch(self, n: int = BATCH) -> list[Reading]:
        out = []
        for j in range(n):
            s = self.series[j % len(self.series)]
            out.append(series_reading(s, self.next_k[s]))
            self.next_k[s] += 1
            self.written[s] += 1
        return out

    def batches(self, total: int) -> Iterator[list[Reading]]:
        for start in range(0, total, BATCH):
            yield self.batch(min(BATCH, total - start))


def series_on(layout_owner: Callable[[str], Sequence[str]], server: str) -> list[int]:
    """The series (by number) ``server`` is a replica of."""
    return [i for i, (d, m) in enumerate(SERIES) if server in layout_owner(series_key(d, m))]


# -- measuring helpers ---------------------------------------------------------------------
class CpuMeter:
    """CPU seconds of this process and of the influxd servers between start and stop."""

    def __init__(self, influx_pids: Sequence[int]) -> None:
        self.pids = {"bench process": [os.getpid()], "influxd": list(influx_pids)}
        self.t0 = time.perf_counter()
        self.c0 = self._now()

    def _now(self) -> dict[str, float]:
        return {k: sum(cpu_seconds(p) for p in v) for k, v in self.pids.items()}

    def stop(self) -> dict[str, float]:
        now = self._now()
        out = {k: round(now[k] - self.c0[k], 2) for k in now}
        out["wall"] = round(time.perf_counter() - self.t0, 2)
        return out


@dataclass
class Profiler:
    """cProfile around chosen calls (``--profile``); the top functions per section."""

    enabled: bool
    sections: dict[str, str] = field(default_factory=dict)

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        prof = cProfile.Profile()
        prof.enable()
        try:
            yield
        finally:
            prof.disable()
            out = io.StringIO()
            stats = pstats.Stats(prof, stream=out)
            stats.sort_stats("tottime").print_stats(18)
            stats.sort_stats("cumulative").print_stats(18)
            self.sections[name] = out.getvalue()


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


# -- the rig -------------------------------------------------------------------------------
class Rig:
    """bench.e2e's servers (Mosquitto and three influxd, provisioned with authentication),
    one database and layout file per measurement, and a fourth server on demand."""

    def __init__(self, work: Path, progress: Progress | None = None) -> None:
        self.work = work
        self.bench = Bench(work, devices=1, progress=progress)
        self.progress = self.bench.progress

    def start(self) -> None:
        self.bench.start()
        self.bench.cluster.close()  # its probes would only add load
        password_file = self.bench.storage.password_file
        assert password_file is not None  # bench.e2e sets it
        self.service = Credential(SERVICE_USER, load_or_create_secret(password_file))

    def stop(self) -> None:
        for p in self.influx():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGCONT)
        self.bench.stop()

    def influx(self) -> list[ManagedProcess]:
        return [p for p in self.bench.procs if p.name.startswith("influx-")]

    def proc(self, name: str) -> ManagedProcess:
        return next(p for p in self.influx() if p.name == name)

    def pids(self) -> list[int]:
        return [p.pid for p in self.influx()]

    def settings(self, database: str, **update: Any) -> StorageSettings:
        """Settings for a fresh database on the three servers, with its own layout file."""
        for n in self.bench.storage.nodes:
            admin = admin_node(n.name, n.url, self.bench.admin)
            grant_database(admin, database, SERVICE_USER)
            admin.close()
        folder = self.work / database
        folder.mkdir()
        return self.bench.storage.model_copy(
            update={"database": database, "layout_path": folder / "layout.json", **update}
        )

    def writer(self, settings: StorageSettings) -> StorageCluster:
        """A writer as ingest runs it: hint queues, background probes and replay."""
        bounds = settings.hints
        assert settings.layout_path is not None
        hints = HintStore(
            settings.layout_path.parent / "hints",
            max_bytes=bounds.max_bytes,
            max_age_s=bounds.max_age_s,
        )
        return StorageCluster(settings, hints=hints)

    def ops(self, settings: StorageSettings, writer: StorageCluster | None = None) -> StorageOps:
        dirs = [] if writer is None or writer.hints is None else [writer.hints.root]
        return StorageOps(settings, writer_dirs=dirs)

    def start_server(self, name: str, database: str) -> StorageNode:
        http = free_port()
        p = ManagedProcess(
            name, influxd_command(self.work / name, http, free_port()), self.work / f"{name}.log"
        )
        self.bench.procs.append(p.start())
        p.wait_port("127.0.0.1", http, 60)
        url = f"http://127.0.0.1:{http}"
        provision_server(
            url, name=name, admin=self.bench.admin, database=database, service=self.service
        )
        return StorageNode(name=name, url=url)


def write_all(
    cluster: StorageCluster, batches: Iterator[list[Reading]], phase: Phase | None = None
) -> int:
    """Write every batch (none refused); ``phase``: shows the readings written so far."""
    n = 0
    for batch in batches:
        rejected = cluster.write(batch)
        if rejected:
            raise RuntimeError(f"{len(rejected)} readings refused: {rejected[0]}")
        n += len(batch)
        if phase is not None:
            phase.update(n)
    return n


def load(rig: Rig, cluster: StorageCluster, stream: Stream, readings: int, name: str) -> float:
    """Write ``readings`` of ``stream`` as the data a measurement starts from, shown as the
    phase ``name``; the seconds it took."""
    what = f"{readings:,} readings over {len(stream.series)} series"
    with rig.progress.phase(name, what, total=readings, unit="readings written") as ph:
        t0 = time.perf_counter()
        write_all(cluster, stream.batches(readings), ph)
        return time.perf_counter() - t0


def stored_on(cluster: StorageCluster, server: str) -> int:
    return sum(cluster.count_on(server, m) for m in METRICS)


def expected_on(cluster: StorageCluster, written: Counter[int]) -> dict[str, int]:
    """Points each server should hold for ``written`` readings per series."""
    out = dict.fromkeys(cluster.layout.names(), 0)
    for s, n in written.items():
        for name in cluster.layout.replicas_now(series_key(*SERIES[s])):
            out[name] += n
    return out


def check_stored(cluster: StorageCluster, written: Counter[int], what: str) -> None:
    want = expected_on(cluster, written)
    have = {name: stored_on(cluster, name) for name in want}
    if have != want:
        raise RuntimeError(f"{what}: stored {have}, expected {want}")


# -- 1. per strategy -----------------------------------------------------------------------
def strategy(rig: Rig, name: str, sizes: Sizes, prof: Profiler) -> dict[str, Any]:
    settings = rig.settings(f"strategy_{name}")
    writer = rig.writer(settings)
    ops = rig.ops(settings, writer)
    try:
        if name == "full":
            ops.set_strategy("full")
            wait(lambda: writer.layout.strategy == "full" and not writer.layout.moving, 10, name)
        copies = len(writer.layout.replicas_now(series_key(*SERIES[0])))
        stream = Stream(range(len(SERIES)))
        batches = list(stream.batches(sizes.strategy_readings))
        total = sizes.strategy_readings
        what = f"{total:,} readings, {copies} copies each, batches of {BATCH:,}"
        with rig.progress.phase(f"{name}: write", what, total=total, unit="readings") as ph:
            cpu = CpuMeter(rig.pids())
            t0 = time.perf_counter()
            with prof.section(f"write ({name})"):
                n = write_all(writer, iter(batches), ph)
            elapsed = time.perf_counter() - t0
            write_cpu = cpu.stop()
            check_stored(writer, stream.written, f"{name} write")
        what = "points(limit=100) of random series, and from one replica direct"
        samples = sizes.read_samples
        with rig.progress.phase(f"{name}: read", what, total=samples, unit="samples") as ph:
            lat, direct = reads(writer, settings, samples, ph)
        what = f"{sizes.fail_reps} x fail, {sizes.hinted_per_rep:,} hinted readings, recover"
        with rig.progress.phase(
            f"{name}: fail/recover", what, total=sizes.fail_reps, unit="rounds"
        ) as ph:
            fails, recovers = fail_recover(writer, ops, stream, sizes, ph)
        check_stored(writer, stream.written, f"{name} after fail/recover")
    finally:
        ops.close()
        writer.close()
    return {
        "strategy": name,
        "copies_per_reading": copies,
        "readings": n,
        "write_readings_per_s": round(n / elapsed),
        "write_points_per_s": round(n * copies / elapsed),
        "write_cpu_seconds": write_cpu,
        "read_ms_p50": round(statistics.median(lat) * 1000, 2),
        "read_ms_p99": round(pct(lat, 0.99) * 1000, 2),
        "read_samples": len(lat),
        "read_one_server_ms_p50": round(statistics.median(direct) * 1000, 2),
        "read_one_server_ms_p99": round(pct(direct, 0.99) * 1000, 2),
        "fail_s_median": round(statistics.median(fails), 3),
        "fail_s_max": round(max(fails), 3),
        "recover_s_median": round(statistics.median(recovers), 3),
        "recover_s_max": round(max(recovers), 3),
        "hinted_per_recover": sizes.hinted_per_rep,
        "reps": sizes.fail_reps,
    }


def reads(
    writer: StorageCluster, settings: StorageSettings, samples: int, phase: Phase
) -> tuple[list[float], list[float]]:
    """Seconds of ``samples`` reads of 100 points of a random series through ``writer``,
    and of the same query sent to one replica."""
    rng = random.Random(4)
    lat, direct = [], []
    for k in range(samples):
        device, metric = SERIES[rng.randrange(len(SERIES))]
        t = time.perf_counter()
        points = writer.points(device, metric, limit=100)
        lat.append(time.perf_counter() - t)
        if len(points) != 100:
            raise RuntimeError(f"read {len(points)} points of {device}/{metric}, not 100")
        # the reference: the same query to one replica, answer parsed, nothing merged
        replica = writer.replicas(device, metric)[0]
        q = f"SELECT * FROM {quote_ident(metric)} WHERE device = $device "
        t = time.perf_counter()
        replica.query(q + "ORDER BY time DESC LIMIT 100", settings.database, {"device": device})
        direct.append(time.perf_counter() - t)
        phase.update(k + 1)
    return lat, direct


def fail_recover(
    writer: StorageCluster, ops: StorageOps, stream: Stream, sizes: Sizes, phase: Phase
) -> tuple[list[float], list[float]]:
    """Seconds from each ``fail`` until the writer treats the server as failed, and from
    each ``recover`` until the writer's hint queue for it is empty."""
    fails, recovers = [], []
    for rep in range(sizes.fail_reps):
        victim = writer.layout.names()[rep % 3]
        phase.update(note=f"{victim} failed")
        t = time.perf_counter()
        ops.fail(victim)
        wait(lambda v=victim: writer.health.get(v).state == "failed", 10, "fail", 0.002)
        fails.append(time.perf_counter() - t)
        hinted = Stream(series_on(writer.layout.replicas_now, victim))
        hinted.next_k = stream.next_k  # new points of the same series
        write_all(writer, hinted.batches(sizes.hinted_per_rep))
        stream.written.update(hinted.written)
        queue = writer.hints.queue(victim)  # type: ignore[union-attr]
        if queue.stats().points != sizes.hinted_per_rep:
            raise RuntimeError(f"{queue.stats().points} points hinted, not {sizes.hinted_per_rep}")
        phase.update(note=f"{victim} recovering")
        t = time.perf_counter()
        ops.recover(victim)
        wait(lambda q=queue: q.stats().points == 0, 60, "hints replayed", 0.002)
        recovers.append(time.perf_counter() - t)
        phase.update(rep + 1, note="")
    return fails, recovers


# -- 3. hint replay ------------------------------------------------------------------------
def replay(rig: Rig, limited: bool, sizes: Sizes) -> dict[str, Any]:
    label = "default" if limited else "unlimited"
    update: dict[str, Any] = {}
    if not limited:
        hints = rig.bench.storage.hints.model_copy(update={"replay_points_per_s": 1e12})
        update["hints"] = hints
    settings = rig.settings(f"replay_{label}", **update)
    writer = rig.writer(settings)
    ops = rig.ops(settings, writer)
    victim = "influx-2"
    try:
        ops.fail(victim)
        wait(lambda: writer.health.get(victim).state == "failed", 10, "fail", 0.002)
        stream = Stream(series_on(writer.layout.replicas_now, victim))
        fill_s = load(rig, writer, stream, sizes.replay_points, f"replay ({label}): fill")
        queue = writer.hints.queue(victim)  # type: ignore[union-attr]
        queued = queue.stats().points
        if queued != sizes.replay_points:
            raise RuntimeError(f"{queued} points hinted, not {sizes.replay_points}")
        what = f"recover {victim}, replay its {queued:,} hinted points"
        with rig.progress.phase(
            f"replay ({label}): drain", what, total=queued, unit="points replayed"
        ) as ph:
            cpu = CpuMeter(rig.pids())
            t0 = time.perf_counter()
            ops.recover(victim)
            wait(lambda: writer.health.available(victim), 10, "up again", 0.002)
            t_up = time.perf_counter()

            def drained() -> bool:
                left = queue.stats().points
                ph.update(queued - left)
                return left == 0

            wait(drained, 120, "hints replayed", 0.002)
            t_empty = time.perf_counter()
            used = cpu.stop()
        got = stored_on(writer, victim)
        if got != queued:
            raise RuntimeError(f"{victim} holds {got} points after replay, not {queued}")
    finally:
        ops.close()
        writer.close()
    return {
        "limit_points_per_s": settings.hints.replay_points_per_s,
        "points": queued,
        "fill_readings_per_s_with_server_failed": round(queued / fill_s),
        "recover_to_up_s": round(t_up - t0, 3),
        "drain_s": round(t_empty - t_up, 3),
        "replay_points_per_s": round(queued / (t_empty - t_up)),
        "cpu_seconds": used,
    }


def replay_profiled(rig: Rig, sizes: Sizes, prof: Profiler) -> dict[str, Any]:
    """``--profile`` only: the replay steps of a writer without background threads, driven
    from this thread (cProfile sees one thread), unlimited rate."""
    hints = rig.bench.storage.hints.model_copy(update={"replay_points_per_s": 1e12})
    settings = rig.settings("replay_profiled", hints=hints)
    assert settings.layout_path is not None
    store = HintStore(settings.layout_path.parent / "hints", max_bytes=2**30, max_age_s=1e6)
    writer = StorageCluster(settings, hints=store, background=False)
    ops = rig.ops(settings)
    victim = "influx-2"
    try:
        ops.fail(victim)
        writer.reload_layout()
        stream = Stream(series_on(writer.layout.replicas_now, victim))
        load(rig, writer, stream, sizes.replay_points, "replay (profiled): fill")
        ops.recover(victim)
        writer.reload_layout()
        writer.probe(victim)
        queue = store.queue(victim)
        total = sizes.replay_points
        with rig.progress.phase(
            "replay (profiled): drain", "replay steps in this thread, under cProfile", total=total
        ) as ph:
            t0 = time.perf_counter()
            with prof.section("hint replay (steps driven in one thread)"):
                while left := queue.stats().points:
                    writer._replay_step()  # private: the replay thread's own step
                    ph.update(total - left, unit="points replayed")
            elapsed = time.perf_counter() - t0
            ph.update(total)
    finally:
        ops.close()
        writer.close()
    return {"points": sizes.replay_points, "points_per_s": round(sizes.replay_points / elapsed)}


# -- 4. repair -----------------------------------------------------------------------------
def repair(rig: Rig, sizes: Sizes, prof: Profiler) -> dict[str, Any]:
    settings = rig.settings("repair")
    ops = rig.ops(settings)
    victim = "influx-3"
    try:
        stream = Stream(series_on(ops.cluster.layout.replicas_now, victim))
        load_s = load(rig, ops.cluster, stream, sizes.repair_points, "repair: load")
        node = next(n for n in settings.nodes if n.name == victim)
        admin = admin_node(victim, node.url, rig.bench.admin, timeout_s=120)
        for m in METRICS:
            admin.query(f"DROP SERIES FROM {quote_ident(m)}", settings.database, method="POST")
        admin.close()
        if stored_on(ops.cluster, victim) != 0:
            raise RuntimeError("DROP SERIES left points behind")
        what = f"anti-entropy over every series, {sizes.repair_points:,} points missing on {victim}"
        with rig.progress.phase("repair", what, unit="series") as ph:

            def show(p: RepairProgress) -> None:
                ph.update(p.series_done, total=p.series_total, note=f"{p.points_copied:,} copied")

            cpu = CpuMeter(rig.pids())
            with prof.section("repair"):
                report = ops.repair(on_progress=show)
            used = cpu.stop()
        if report.errors or report.copied.get(victim) != sizes.repair_points:
            raise RuntimeError(f"repair: copied {report.copied}, errors {report.errors[:3]}")
        check_stored(ops.cluster, stream.written, "repair")
    finally:
        ops.close()
    return {
        "points_missing": sizes.repair_points,
        "series": report.series,
        "points_per_series": sizes.repair_points // len(stream.series),
        "buckets_differing": report.buckets_differing,
        "seconds": round(report.seconds, 2),
        "points_per_s": round(sizes.repair_points / report.seconds),
        "load_readings_per_s": round(sizes.repair_points / load_s),
        "cpu_seconds": used,
    }


# -- 5. rebalance --------------------------------------------------------------------------
def rebalance(rig: Rig, sizes: Sizes, prof: Profiler) -> dict[str, Any]:
    settings = rig.settings("rebalance")
    ops = rig.ops(settings)
    try:
        stream = Stream(range(len(SERIES)))
        load(rig, ops.cluster, stream, sizes.rebalance_points, "rebalance: load")
        with rig.progress.phase("rebalance: influx-4", "starting a fourth InfluxDB server"):
            fourth = rig.start_server("influx-4", settings.database)
        what = f"add {fourth.name}: move its share of {len(SERIES)} series onto it"
        with rig.progress.phase("rebalance", what, unit="series") as ph:

            def show(step: str, done: int, total: int) -> None:
                ph.update(done, total=total, note=step)

            cpu = CpuMeter(rig.pids())
            t0 = time.perf_counter()
            with prof.section("rebalance"):
                report = ops.add(fourth.name, fourth.url, show)
            elapsed = time.perf_counter() - t0
            used = cpu.stop()
        if report.errors:
            raise RuntimeError(f"rebalance: {report.errors[:3]}")
        ops.layout()
        check_stored(ops.cluster, stream.written, "rebalance")
    finally:
        ops.close()
    copied = sum(report.points_copied.values())
    per_m = sizes.rebalance_points / 1e6
    return {
        "readings_stored": sizes.rebalance_points,
        "copies_stored": sizes.rebalance_points * 2,
        "series": len(SERIES),
        "series_moved": report.series_moved,
        "points_copied": copied,
        "seconds": round(elapsed, 2),
        "seconds_per_1m_readings_stored": round(elapsed / per_m, 2),
        "seconds_per_1m_points_copied": round(elapsed / (copied / 1e6), 2) if copied else None,
        "cpu_seconds": used,
    }


# -- 2 and 6. throughput over time across an outage ---------------------------------------
def timeline(rig: Rig, how: str, sizes: Sizes) -> dict[str, Any]:
    """A writer at full speed; ``how`` = ``sigstop`` (SIGSTOP then SIGCONT the server) or
    ``fail`` (StorageOps.fail then recover). Batches done and hint depth over time."""
    up_s, out_s, back_s = sizes.timeline_s
    settings = rig.settings(f"timeline_{how}")
    writer = rig.writer(settings)
    ops = rig.ops(settings, writer)
    victim = "influx-2"
    stream = Stream(range(len(SERIES)))
    done: list[tuple[float, int]] = []
    samples: list[tuple[float, int, str]] = []
    errors: list[str] = []
    stop = threading.Event()
    queue = writer.hints.queue(victim)  # type: ignore[union-attr]

    def write_loop() -> None:
        while not stop.is_set():
            batch = stream.batch()  # built here, as ingest builds its batches
            while True:
                try:
                    writer.write(batch)
                    break
                except Exception as exc:  # ingest retries a batch the cluster refused
                    errors.append(repr(exc))
                    time.sleep(0.1)
            done.append((time.perf_counter(), len(batch)))

    def sample_loop() -> None:
        while not stop.is_set():
            samples.append(
                (time.perf_counter(), queue.stats().points, writer.health.get(victim).state)
            )
            time.sleep(0.1)

    threads = [threading.Thread(target=f, daemon=True) for f in (write_loop, sample_loop)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    events: dict[str, float] = {}

    def outage(begins: bool) -> None:
        events["out" if begins else "back"] = time.perf_counter()
        if how == "sigstop":
            os.kill(rig.proc(victim).pid, signal.SIGSTOP if begins else signal.SIGCONT)
        else:
            (ops.fail if begins else ops.recover)(victim)

    def hold(ph: Phase, seconds: float, what: str) -> None:
        """Let the writer run for ``seconds``, showing how far it got."""
        until = time.perf_counter() + seconds
        while (left := until - time.perf_counter()) > 0:
            time.sleep(min(0.25, left))
            depth = samples[-1][1] if samples else 0  # what sample_loop saw last
            note = f"{what}, {depth:,} hints queued"
            ph.update(sum(n for _, n in done), note=note)

    out_what = "SIGSTOP" if how == "sigstop" else "fail"
    what = f"{up_s:g} s all up, {out_s:g} s {victim} out ({out_what}), {back_s:g} s back"
    with rig.progress.phase(f"timeline ({how})", what, unit="readings written") as ph:
        try:
            hold(ph, up_s, "all up")
            outage(True)
            hold(ph, out_s, f"{victim} out")
            outage(False)
            hold(ph, back_s, f"{victim} back")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(rig.proc(victim).pid, signal.SIGCONT)
            stop.set()
            for t in threads:
                t.join(60)
    end = time.perf_counter()
    try:
        queued = queue.stats().points
        what = f"replay the {queued:,} points still hinted"
        with rig.progress.phase(
            f"timeline ({how}): drain", what, total=queued, unit="points replayed"
        ) as ph:

            def drained() -> bool:
                left = queue.stats().points
                ph.update(max(0, queued - left))
                return left == 0

            wait(drained, 120, "hints replayed")
        drained_at = time.perf_counter()
        check_stored(writer, stream.written, f"timeline {how}")
    finally:
        ops.close()
        writer.close()

    def rate(lo: float, hi: float) -> float:
        return sum(n for t, n in done if lo < t <= hi) / (hi - lo)

    first_hint = next((t for t, depth, _ in samples if t > events["out"] and depth > 0), None)
    detected = next((t for t, _, s in samples if t > events["out"] and s != "up"), None)
    empty = next((t for t, depth, _ in samples if t > events["back"] and depth == 0), drained_at)
    up = rate(t0 + 1, events["out"])  # the first second warms up connections
    out = rate(events["out"], events["back"])
    steady = rate(first_hint, events["back"]) if first_hint else None
    return {
        "how": how,
        "seconds": [up_s, out_s, back_s],
        "readings": sum(n for _, n in done),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "up_readings_per_s": round(up),
        "out_readings_per_s": round(out),
        "out_vs_up": round(out / up, 3),
        "out_steady_readings_per_s": None if steady is None else round(steady),
        "out_steady_vs_up": None if steady is None else round(steady / up, 3),
        "back_readings_per_s": round(rate(events["back"], end)),
        "detected_after_s": None if detected is None else round(detected - events["out"], 2),
        "first_hint_after_s": None if first_hint is None else round(first_hint - events["out"], 2),
        "hints_peak": max(d for _, d, _ in samples),
        "hints_empty_after_back_s": round(empty - events["back"], 2),
        "series": {
            "done": [(round(t - t0, 3), n) for t, n in done],
            "hints": [(round(t - t0, 3), d) for t, d, _ in samples],
            "events": {k: round(v - t0, 3) for k, v in events.items()},
        },
    }


def plot(runs: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {
        "sigstop": "one server hung (SIGSTOP), then resumed (SIGCONT)",
        "fail": "one server drained (StorageOps.fail), then recovered",
    }
    labels = {
        "sigstop": ("SIGSTOP", "SIGCONT"),
        "fail": ("fail", "recover"),
    }
    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 3.4 * len(runs)), squeeze=False)
    for ax, run in zip(axes[:, 0], runs, strict=True):
        s = run["series"]
        span = int(sum(run["seconds"]))  # whole seconds only: the last bin is not cut short
        bins = [0.0] * span
        for t, n in s["done"]:
            if int(t) < span:
                bins[int(t)] += n
        xs = [i + 0.5 for i in range(span)]
        ax.step(xs, [b / 1000 for b in bins], where="mid", color="tab:blue", label="written")
        ax.axhline(run["up_readings_per_s"] * 0.9 / 1000, color="tab:blue", ls=":", lw=1)
        ax.set_ylabel("thousand readings/s (1 s bins)", color="tab:blue")
        ax.set_ylim(bottom=0)
        ax.set_xlim(0, span)
        ax2 = ax.twinx()
        ax2.plot(
            [t for t, _ in s["hints"]],
            [d / 1000 for _, d in s["hints"]],
            color="tab:orange",
            label="hint queue",
        )
        ax2.set_ylabel("hints queued (thousand points)", color="tab:orange")
        ax2.set_ylim(bottom=0)
        for key, label in zip(("out", "back"), labels[run["how"]], strict=True):
            x = s["events"][key]
            ax.axvline(x, color="grey", ls="--", lw=1)
            ax.text(x, ax.get_ylim()[1] * 0.97, f" {label}", va="top", fontsize=8)
        ax.set_title(
            f"{titles[run['how']]}: {run['out_vs_up']:.2f} x while out "
            f"({run['out_steady_vs_up'] or 0:.2f} x after detection)",
            fontsize=10,
        )
        ax.set_xlabel("seconds (dotted: 0.9 x the all-up rate)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- main ----------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "influxd": "1.6",
        "date": time.strftime("%Y-%m-%d"),
    }


def show(result: dict[str, Any]) -> str:
    raw = result["raw_influx_points_per_s"]

    def r(x: float) -> str:
        return f"{x / raw:.3f} x raw"

    lines = [
        "",
        f"Vigil storage benchmark ({'--quick' if result['quick'] else 'full'}, "
        f"{result['machine']['cores']} cores, {result['runtime_s']:.0f} s)",
        f"  reference: raw batched writes, one server        {raw:10,} points/s",
        "",
        "  strategy    write readings/s (points/s)       read p50/p99 ms   fail s   recover s",
    ]
    for s in result["strategies"]:
        lines.append(
            f"  {s['strategy']:<11} {s['write_readings_per_s']:>8,} ({s['write_points_per_s']:>8,})"
            f" {r(s['write_points_per_s'])}  {s['read_ms_p50']:5.1f} / {s['read_ms_p99']:5.1f}"
            f"     {s['fail_s_median']:5.2f}    {s['recover_s_median']:5.2f}"
            f"  ({s['hinted_per_recover']:,} hinted)"
        )
    lines.append("")
    for t in result["timelines"]:
        lines.append(
            f"  one server out ({t['how']}): {t['out_readings_per_s']:,} readings/s against "
            f"{t['up_readings_per_s']:,} all up = {t['out_vs_up']:.3f} x "
            f"(after detection {t['out_steady_vs_up']} x; goal >= 0.9)"
        )
    for p in result["replay"]:
        lines.append(
            f"  hint replay, limit {p['limit_points_per_s']:,.0f}/s: {p['points']:,} points in "
            f"{p['drain_s']:.2f} s = {p['replay_points_per_s']:,} points/s "
            f"({r(p['replay_points_per_s'])})"
        )
    rp = result["repair"]
    lines.append(
        f"  repair {rp['points_missing']:,} missing points: {rp['seconds']:.1f} s "
        f"= {rp['points_per_s']:,} points/s ({r(rp['points_per_s'])}; goal <= 60 s)"
    )
    rb = result["rebalance"]
    lines.append(
        f"  rebalance 3 -> 4 servers, {rb['readings_stored']:,} readings stored: "
        f"{rb['seconds']:.1f} s = {rb['seconds_per_1m_readings_stored']:.1f} s per 1M readings "
        f"({rb['points_copied']:,} points copied, {rb['series_moved']} of {rb['series']} series)"
    )
    lines.append(f"  plot: {result['plot']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.storage", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (about 1.5 minutes)")
    ap.add_argument("--profile", action="store_true", help="cProfile the writer, repair, move")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG")
    args = ap.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    prof = Profiler(args.profile)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "command": "python -m bench.storage" + (" --quick" if args.quick else ""),
        "quick": args.quick,
        "profiled": args.profile,
        "sizes": asdict(sizes),
        "machine": machine(),
    }
    progress = Progress("bench.storage")
    handler = progress.log_handler()  # log lines do not land on the live line
    handler.setFormatter(logging.Formatter("  [log] %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    with tempfile.TemporaryDirectory(prefix="vigil-bench-storage-") as tmp:
        rig = Rig(Path(tmp), progress)
        try:
            rig.start()
            defaults = rig.bench.storage
            result["settings"] = {
                "consistency": defaults.consistency,
                "straggler_s": defaults.straggler_s,
                "probe_interval_s": defaults.probe_interval_s,
                "probe_timeout_s": defaults.probe_timeout_s,
                "timeout_s": defaults.timeout_s,
                "replay_points_per_s": defaults.hints.replay_points_per_s,
                "replay_batch_points": defaults.hints.replay_batch_points,
                "batch_readings": BATCH,
                "series": len(SERIES),
                "cadence_s": CADENCE_MS / 1000,
            }
            result["raw_influx_points_per_s"] = round(rig.bench.raw_write_rate(sizes.raw_points))
            result["strategies"] = []
            for name in ("consistent", "full"):
                result["strategies"].append(strategy(rig, name, sizes, prof))
            result["replay"] = []
            for limited in (True, False):
                result["replay"].append(replay(rig, limited, sizes))
            if args.profile:
                result["replay_profiled"] = replay_profiled(rig, sizes, prof)
            result["repair"] = repair(rig, sizes, prof)
            result["timelines"] = []
            for how in ("sigstop", "fail"):
                result["timelines"].append(timeline(rig, how, sizes))
            result["rebalance"] = rebalance(rig, sizes, prof)
        finally:
            rig.stop()
    raw = result["raw_influx_points_per_s"]
    for s in result["strategies"]:
        s["write_points_vs_raw"] = round(s["write_points_per_s"] / raw, 3)
        s["write_readings_vs_raw"] = round(s["write_readings_per_s"] / raw, 3)
    for p in result["replay"]:
        p["replay_vs_raw"] = round(p["replay_points_per_s"] / raw, 3)
    result["repair"]["vs_raw"] = round(result["repair"]["points_per_s"] / raw, 3)
    rb = result["rebalance"]
    rb["copied_points_per_s_vs_raw"] = round(rb["points_copied"] / rb["seconds"] / raw, 3)
    for t in result["timelines"]:
        t["up_vs_raw"] = round(t["up_readings_per_s"] / raw, 3)
    result["goals"] = {
        "down_vs_up>=0.9": result["timelines"][0]["out_vs_up"] >= GOALS["down_vs_up"],
        "repair<=60s": result["repair"]["seconds"] <= GOALS["repair_s"],
    }
    if not args.no_plot:
        with progress.phase("plot", str(IMG.relative_to(ROOT))):
            plot(result["timelines"], IMG)
    result["plot"] = None if args.no_plot else str(IMG.relative_to(ROOT))
    result["runtime_s"] = round(time.perf_counter() - started, 1)
    progress.finish()
    if prof.sections:
        result["profiles"] = prof.sections
        for name, text in prof.sections.items():
            print(f"\n== profile: {name} ==\n{text}")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "storage.json").write_text(json.dumps(result, indent=2) + "\n")
    print(show(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
