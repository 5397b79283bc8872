"""End-to-end benchmark: ``make bench`` (``python -m bench.e2e``).

Starts its own Mosquitto, three InfluxDB servers and the ingest service on free ports (state in
a temporary folder) and measures, in one run on this machine:

1. reference: the raw batched-write rate of one InfluxDB server (points per second, batches of
   5,000 lines in Vigil's own line format, one HTTP client);
2. end-to-end throughput: single-reading MQTT messages published at QoS 1 by device clients
   until every reading is stored on both its replicas, none lost (readings per second);
3. publish-to-queryable latency: single readings published one at a time while a background
   load runs; the time until the reading is visible on both replicas (p50 and p99).

Figures are printed as absolute numbers and as ratios to the reference, and saved to
``bench/results/latest.json``. While it runs, each phase and its counts are shown on stderr
(:mod:`bench.progress`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.progress import Phase, Progress
from bench.rawpub import end_session
from broker import provision
from stack.process import ManagedProcess, free_port
from storage_nodes import (
    ADMIN_USER,
    SERVICE_USER,
    Credential,
    InfluxNode,
    StorageCluster,
    admin_node,
    grant_database,
    influxd_command,
    provision_server,
    reading_to_line,
)
from vigil.atomic import load_or_create_secret, write_atomic
from vigil.messages import Reading, encode_readings
from vigil.mqtt import MqttClient
from vigil.readiness import is_ready
from vigil.settings import BrokerSettings, MqttClientSettings, StorageNode, StorageSettings
from vigil.topics import Topics

ROOT = Path(__file__).resolve().parent.parent
TS0 = 1_763_000_000_000
METRICS = ("temperature", "humidity", "pressure", "co2")


def wait(cond, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reading(device_no: int, i: int) -> Reading:
    return Reading(
        id=(device_no + 1) * 100_000_000 + i,
        device=f"bench-{device_no}",
        ts=TS0 + i,
        kind="sensor",
        metric=METRICS[i % 4],
        value=i * 0.5,
        unit="u",
    )


def publisher(
    broker: dict[str, Any],
    ident: dict[str, Any],
    device_no: int,
    start: int,
    count: int,
    rate: float | None,
    published: Any = None,
) -> None:
    """One device client publishing ``count`` single-reading messages at QoS 1;
    ``published``: a shared array whose slot ``device_no`` it keeps at the count handed to
    the client so far (every 100 messages, for the progress line)."""
    client = MqttClient(BrokerSettings(**broker), MqttClientSettings(**ident), max_inflight=2000)
    client.start()
    client.wait_connected(10)
    device = f"bench-{device_no}"
    topic = Topics().data(device)
    t0 = time.perf_counter()
    infos = []
    for i in range(start, start + count):
        infos.append(client.publish(topic, encode_readings(device, [reading(device_no, i)])))
        if published is not None and (i - start + 1) % 100 == 0:
            published[device_no] = i - start + 1
        if rate:
            ahead = (i - start + 1) / rate - (time.perf_counter() - t0)
            if ahead > 0:
                time.sleep(ahead)
    if published is not None:
        published[device_no] = count
    for info in infos:
        info.wait_for_publish(120)
    client.stop()


class Bench:
    def __init__(self, work: Path, devices: int, progress: Progress | None = None) -> None:
        self.work = work
        self.devices = [f"bench-{i}" for i in range(devices)]
        self.procs: list[ManagedProcess] = []
        self.progress = progress or Progress("bench")

    def start(self) -> None:
        """Mosquitto and three InfluxDB servers, provisioned with authentication."""
        with self.progress.phase("servers", "starting Mosquitto and 3 InfluxDB servers"):
            self._start()

    def _start(self) -> None:
        port = free_port()
        self.broker_files = provision(
            broker_dir=self.work / "broker",
            secrets_dir=self.work / "secrets",
            host="127.0.0.1",
            port=port,
            devices=self.devices,
            topics=Topics(),
        )
        mosq = ManagedProcess("mosquitto", self.broker_files.command(), self.work / "mosquitto.out")
        self.procs.append(mosq.start())
        mosq.wait_port("127.0.0.1", port)
        self.broker = BrokerSettings(host="127.0.0.1", port=port)
        nodes = []
        for i in range(1, 4):
            http = free_port()
            p = ManagedProcess(
                f"influx-{i}",
                influxd_command(self.work / f"influx-{i}", http, free_port()),
                self.work / f"influx-{i}.log",
            )
            self.procs.append(p.start())
            p.wait_port("127.0.0.1", http, 60)
            nodes.append(StorageNode(name=f"influx-{i}", url=f"http://127.0.0.1:{http}"))
        # Authenticated like the real stack: admin provisions, the services' user writes.
        secrets = self.work / "secrets"
        self.admin = Credential(
            ADMIN_USER, load_or_create_secret(secrets / f"influxdb-{ADMIN_USER}.password")
        )
        service_file = secrets / f"influxdb-{SERVICE_USER}.password"
        service = Credential(SERVICE_USER, load_or_create_secret(service_file))
        for n in nodes:
            provision_server(
                n.url, name=n.name, admin=self.admin, database="bench", service=service
            )
            admin = admin_node(n.name, n.url, self.admin)
            grant_database(admin, "rawref", SERVICE_USER)
            admin.close()
        self.storage = StorageSettings(
            database="bench", nodes=nodes, username=SERVICE_USER, password_file=service_file
        )
        self.cluster = StorageCluster(self.storage)
        self.cluster.ensure_database()

    def ident(self, user: str) -> dict[str, Any]:
        return {
            "client_id": user,
            "username": user,
            "password_file": str(self.broker_files.password_file(user)),
        }

    def write_config(self, members: int = 1, ingest: dict[str, Any] | None = None) -> Path:
        """The stack's configuration for this bench's servers (ingest with ``members``
        processes on a shared subscription when above 1; ``ingest``: more ingest settings)."""
        cfg = {
            "broker": self.broker.model_dump(mode="json"),
            "storage": self.storage.model_dump(mode="json"),
            "ingest": {
                "mqtt": self.ident("vigil-ingest"),
                "metrics_port": 0,
                "members": members,
                **(ingest or {}),
            },
            "alert_engine": {
                "mqtt": self.ident("vigil-alert-engine"),
                "state_path": str(self.work / "ae.sqlite3"),
            },
            "notifier": {
                "mqtt": self.ident("vigil-notifier"),
                "recipients": ["a@b.c"],
                "state_path": str(self.work / "n.sqlite3"),
            },
            "api": {"mqtt": self.ident("vigil-api"), "database": str(self.work / "api.db")},
        }
        path = self.work / "vigil.yaml"
        write_atomic(path, yaml.safe_dump(cfg))
        return path

    def start_ingest(
        self, members: int = 1, ingest: dict[str, Any] | None = None
    ) -> list[ManagedProcess]:
        """Start ingest (``members`` processes) and wait until each says it is ready."""
        what = "starting 1 ingest process" if members == 1 else f"starting {members} members"
        with self.progress.phase("ingest", what):
            return self._start_ingest(members, ingest)

    def _start_ingest(self, members: int, ingest: dict[str, Any] | None) -> list[ManagedProcess]:
        path = self.write_config(members, ingest)
        names = ["ingest"] if members == 1 else [f"ingest-{n}" for n in range(1, members + 1)]
        started = []
        for n, name in enumerate(names, 1):
            ready = self.work / "run" / f"{name}.ready.json"
            ready.parent.mkdir(exist_ok=True)
            ready.unlink(missing_ok=True)
            member = [] if members == 1 else ["--member", str(n)]
            cmd = [sys.executable, "-m", "ingest_service", "--config", str(path), *member]
            proc = ManagedProcess(
                name, [*cmd, "--ready-file", str(ready)], self.work / f"{name}.log", cwd=ROOT
            )
            self.procs.append(proc.start())
            started.append((proc, ready))
        for proc, ready in started:
            wait(
                lambda proc=proc, ready=ready: is_ready(ready, proc.pid) or not proc.alive(),
                60,
                f"{proc.name} to be ready",
            )
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
        return [proc for proc, _ in started]

    def stop_ingest(self, procs: list[ManagedProcess]) -> None:
        """Stop these ingest processes and discard their broker sessions (a stopped member
        would otherwise keep its share of the stream queued for it)."""
        for proc in procs:
            proc.stop()
            self.procs.remove(proc)
            user = "vigil-ingest" if proc.name == "ingest" else f"vigil-ingest-{proc.name[7:]}"
            password = self.broker_files.password_file(user).read_text().strip()
            end_session(self.broker.host, self.broker.port, user, password)

    def stop(self) -> None:
        cluster = getattr(self, "cluster", None)
        if cluster is not None:  # its probes would report the servers going down
            cluster.close()
        for p in reversed(self.procs):
            p.stop()

    def stored(self) -> int:
        return sum(self.cluster.count_on(n, m) for n in self.cluster.nodes for m in METRICS)

    # -- 1. reference -------------------------------------------------------------------
    def raw_write_rate(self, points: int, batch: int = 5000) -> float:
        node = InfluxNode(
            "ref",
            self.storage.nodes[0].url,
            username=self.storage.username,
            password=self.storage.password,
        )
        lines = [reading_to_line(reading(99, i)) for i in range(points)]
        what = f"{points:,} points to one InfluxDB server in batches of {batch:,}"
        with self.progress.phase("reference", what, total=points, unit="points") as ph:
            t0 = time.perf_counter()
            for i in range(0, points, batch):
                node.write("rawref", lines[i : i + batch])
                ph.update(min(points, i + batch))
            return points / (time.perf_counter() - t0)

    # -- 2. end to end -------------------------------------------------------------------
    def throughput(self, per_device: int) -> tuple[float, int, dict[str, float]]:
        """Readings per second end to end, readings stored, and the CPU seconds each part
        used meanwhile (where the time goes)."""
        total = per_device * len(self.devices)
        what = f"{len(self.devices)} devices x {per_device:,} single-reading messages at QoS 1"
        with self.progress.phase("throughput", what, total=total, unit="readings stored") as ph:
            return self._throughput(per_device, total, ph)

    def _throughput(
        self, per_device: int, total: int, ph: Phase
    ) -> tuple[float, int, dict[str, float]]:
        before = self.stored()
        ctx = mp.get_context("spawn")
        published = ctx.Array("q", len(self.devices), lock=False)
        procs = [
            ctx.Process(
                target=publisher,
                args=(self.broker.model_dump(), self.ident(d), i, 0, per_device, None, published),
            )
            for i, d in enumerate(self.devices)
        ]
        cpu0 = {p.name: cpu_seconds(p.pid) for p in self.procs}
        t0 = time.perf_counter()
        for p in procs:
            p.start()
        pubs = [p.pid for p in procs if p.pid is not None]
        pub_cpu = dict.fromkeys(pubs, 0.0)

        def done() -> bool:
            for pid in pubs:  # sample while they live: their /proc entry goes when reaped
                pub_cpu[pid] = max(pub_cpu[pid], cpu_seconds(pid))
            points = self.stored() - before  # two per reading: one on each replica
            ph.update(points // 2, note=f"published {sum(published):,} / {total:,}")
            return points >= 2 * total

        wait(done, 600, "all readings stored", interval=0.02)
        elapsed = time.perf_counter() - t0
        cpu = {p.name: cpu_seconds(p.pid) - cpu0[p.name] for p in self.procs}
        cpu["publishers"] = sum(pub_cpu.values())
        cpu["wall"] = elapsed
        for p in procs:
            p.join()
        stored = (self.stored() - before) // 2
        ph.update(stored)
        return total / elapsed, stored, cpu

    # -- 3. latency ------------------------------------------------------------------------
    def latency(self, samples: int, background_rate: float) -> list[float]:
        what = f"{samples} readings, one at a time, under {background_rate:,.0f} readings/s"
        with self.progress.phase("latency", what, total=samples, unit="samples") as ph:
            return self._latency(samples, background_rate, ph)

    def _latency(self, samples: int, background_rate: float, ph: Phase) -> list[float]:
        ctx = mp.get_context("spawn")
        duration = samples * 0.03 + 10
        bg = ctx.Process(
            target=publisher,
            args=(
                self.broker.model_dump(),
                self.ident(self.devices[0]),
                0,
                10_000_000,
                int(background_rate * duration),
                background_rate,
            ),
        )
        bg.start()
        time.sleep(1)
        device_no = 1
        client = MqttClient(self.broker, MqttClientSettings(**self.ident(self.devices[1])))
        client.start()
        client.wait_connected(10)
        out = []
        for k in range(samples):
            r = reading(device_no, 20_000_000 + k)
            nodes = self.cluster.replicas(r.device, r.metric)
            q = f'SELECT value FROM "{r.metric}" WHERE device = $d AND id = $i'
            params = {"d": r.device, "i": r.id}
            t0 = time.perf_counter()
            client.publish(Topics().data(r.device), encode_readings(r.device, [r]))

            def visible(nodes=nodes, q=q, params=params) -> bool:
                return all(n.query(q, "bench", params) for n in nodes)

            wait(visible, 30, "a reading to be queryable", interval=0.001)
            out.append(time.perf_counter() - t0)
            ph.update(k + 1)
        client.stop()
        deadline = time.monotonic() + duration + 30
        while bg.is_alive() and time.monotonic() < deadline:
            bg.join(0.25)
            ph.update(note="waiting for the background load to end")
        if bg.is_alive():
            bg.terminate()
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.e2e", description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=4)
    ap.add_argument("--per-device", type=int, default=15_000)
    ap.add_argument("--raw-points", type=int, default=200_000)
    ap.add_argument("--latency-samples", type=int, default=300)
    ap.add_argument(
        "--background-rate",
        type=float,
        default=1000.0,
        help="readings/s published during the latency measurement",
    )
    args = ap.parse_args(argv)
    progress = Progress("bench.e2e")
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp:
        bench = Bench(Path(tmp), args.devices, progress)
        try:
            bench.start()
            raw = bench.raw_write_rate(args.raw_points)
            bench.start_ingest()
            rate, stored, cpu = bench.throughput(args.per_device)
            lat = sorted(bench.latency(args.latency_samples, args.background_rate))
        finally:
            bench.stop()
    progress.finish()
    total = args.devices * args.per_device
    p50 = statistics.median(lat)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    result = {
        "command": "make bench",
        "raw_influx_points_per_s": round(raw),
        "e2e_readings_per_s": round(rate),
        "e2e_vs_raw": round(rate / raw, 3),
        "e2e_vs_raw_replicated": round(rate / (raw / 2), 3),
        "readings_published": total,
        "readings_stored_on_both_replicas": stored,
        "lost": total - stored,
        "latency_ms_p50": round(p50 * 1000, 1),
        "latency_ms_p99": round(p99 * 1000, 1),
        "latency_samples": len(lat),
        "latency_background_rate": args.background_rate,
        "cpu_seconds_during_throughput": {k: round(v, 2) for k, v in cpu.items()},
        "cores": os.cpu_count(),
    }
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"""
Vigil end-to-end benchmark (one run on this machine)
  reference: raw batched writes, one InfluxDB server   {raw:10,.0f} points/s
  end to end: QoS 1 single-reading messages, stored
    on both replicas ({stored:,} of {total:,}, {total - stored} lost)  {rate:10,.0f} readings/s
    = {rate / raw:.2f} x the raw single-server rate
      ({rate / (raw / 2):.2f} x the raw rate for 2 replica writes per reading)
  publish-to-queryable latency on both replicas,
    {len(lat)} samples under {args.background_rate:,.0f} readings/s of background load:
    p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms
  where the time goes during the throughput run ({cpu["wall"]:.1f} s wall,
    {os.cpu_count()} cores = {cpu["wall"] * (os.cpu_count() or 1):.1f} CPU-s), CPU seconds used:
"""
        + "".join(f"    {k:<12} {v:6.1f}\n" for k, v in cpu.items() if k != "wall")
    )
    return 0 if stored == total else 1


if __name__ == "__main__":
    raise SystemExit(main())
