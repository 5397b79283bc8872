"""Ingest benchmark: ``python -m bench.ingest`` (part of ``make bench``).

Starts its own Mosquitto and three InfluxDB 1.6 servers (authentication on, RF 2) on free
ports, in a temporary folder, and drives the ingest service as ``make run`` starts it (the
fast receive path, confirmations to the edge, members on an MQTT 5 shared subscription)
with the raw-socket publishers of :mod:`bench.rawpub`, so the load generator is never the
bottleneck. Measured in one run, in this order:

1. **references**: raw batched writes to one InfluxDB server (batches of 5,000 lines in
   Vigil's line format), and the broker's own limit: a do-nothing subscriber (Vigil's fast
   client, QoS 1, acknowledging every message and nothing else) receiving as fast as four
   unthrottled publishers can send, with the InfluxDB servers up;
2. for 1, 2 and 4 ingest processes, single-reading messages at fixed offered rates (3k, 6k
   and 10k msg/s by default): ingest's CPU per message, the stored rate, and how far the
   last confirmation lagged the last send;
3. the zero-loss ceiling of 1 and 2 processes: unthrottled publishers (the broker queues
   what ingest cannot take yet; nothing is dropped), readings stored per second from the
   first send to the last confirmation (ramp-up and drain included: a lower bound);
4. with 2 processes (what ``make run`` starts): publish-to-stored latency (PUBLISH sent to
   the confirmation on ``vigil/ack/{device}``) at half the ceiling, and batched messages of
   50 readings against the raw rate divided by RF.

Every run checks that every reading is stored, once per replica (the servers' counts grow by
exactly 2 x the readings). ``--profile`` records one ingest process with py-spy during the
single-process ceiling run and lists where its CPU goes. Results go to
``bench/results/ingest.json``; the figures and the command are in docs/benchmarks.md. While
it runs, each run's counts are shown on stderr (:mod:`bench.progress`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.e2e import ROOT, Bench, cpu_seconds, wait
from bench.progress import Phase, Progress
from bench.rawpub import PublisherResult, percentile, run_many
from stack.process import ManagedProcess
from vigil.atomic import write_atomic

TARGET_US_PER_MSG = 25.0
TARGET_CEILING = 23_000.0
TARGET_BATCHED_SHARE = 0.5
TARGET_P99_MS = 200.0
RF = 2
#: reading ids of run k start at k x ID_BLOCK + 1, so no run repeats another's readings
ID_BLOCK = 10_000_000


# -- pure helpers ------------------------------------------------------------------------
def top_frames(raw: Iterable[str], n: int = 15) -> list[tuple[str, float]]:
    """The ``n`` frames with the most self time in py-spy's raw (collapsed) output, each
    with its share of all samples."""
    self_time: Counter[str] = Counter()
    total = 0
    for line in raw:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        self_time[stack.rsplit(";", 1)[-1]] += int(count)
    return [(frame, k / total) for frame, k in self_time.most_common(n)] if total else []


def versus(value: float | None, target: float, higher_is_better: bool = True) -> str:
    """``value`` against ``target``: met, or short by how much."""
    if value is None:
        return "not measured"
    if (value >= target) if higher_is_better else (value <= target):
        return "met"
    ratio = value / target if higher_is_better else target / value
    return f"short: {ratio:.2f} x the target"


# -- the do-nothing subscriber -------------------------------------------------------------
def null_subscriber(
    broker: dict[str, Any],
    ident: dict[str, Any],
    receive_maximum: int,
    received: Any,
    ready: Any,
    stop: Any,
) -> None:
    """Subscribe to every data topic at QoS 1 with Vigil's fast client and acknowledge each
    message, nothing else; count what arrives in ``received``."""
    from vigil.fastmqtt import FastMqttClient
    from vigil.mqtt import Message
    from vigil.settings import BrokerSettings, MqttClientSettings
    from vigil.topics import Topics

    client = FastMqttClient(
        BrokerSettings(**broker),
        MqttClientSettings(**ident),
        manual_ack=True,
        receive_maximum=receive_maximum,
    )

    def handle(messages: list[Message]) -> None:
        client.ack_many((m.mid, m.qos, m.connection) for m in messages)
        with received.get_lock():
            received.value += len(messages)

    client.on_subscribed.append(ready.set)
    client.subscribe_batch(Topics().data_filter, handle)
    client.start()
    stop.wait()
    client.stop()


# -- the bench ---------------------------------------------------------------------------
class IngestBench(Bench):
    def __init__(
        self, work: Path, devices: int, window: int, progress: Progress | None = None
    ) -> None:
        super().__init__(work, devices, progress)
        self.window = window
        self.runs = 0

    def specs(
        self, per_device: int, rate: float | None, batch: int = 1, **kw: Any
    ) -> list[dict[str, Any]]:
        self.runs += 1
        out = []
        for d in self.devices:
            out.append(
                {
                    "host": self.broker.host,
                    "port": self.broker.port,
                    "username": d,
                    "password": self.broker_files.password_file(d).read_text().strip(),
                    "count": per_device,
                    "rate": rate / len(self.devices) if rate else None,
                    "batch": batch,
                    "start_id": self.runs * ID_BLOCK + 1,
                    "window": self.window,
                    **kw,
                }
            )
        return out

    def broker_limit(self, per_device: int) -> dict[str, Any]:
        """A do-nothing subscriber's receive rate: the broker's limit on this machine."""
        total = per_device * len(self.devices)
        what = f"a do-nothing subscriber, {total:,} messages from {len(self.devices)} publishers"
        with self.progress.phase("broker limit", what, total=total, unit="received") as ph:
            return self._broker_limit(per_device, total, ph)

    def _broker_limit(self, per_device: int, total: int, ph: Phase) -> dict[str, Any]:
        ctx = mp.get_context("spawn")
        received, ready, stop = ctx.Value("q", 0), ctx.Event(), ctx.Event()
        sub = ctx.Process(
            target=null_subscriber,
            args=(
                self.broker.model_dump(mode="json"),
                self.ident("vigil-ingest"),
                5000,
                received,
                ready,
                stop,
            ),
        )
        sub.start()
        try:
            if not ready.wait(30):
                raise TimeoutError("the do-nothing subscriber did not subscribe")
            specs = self.specs(per_device, None)
            results: list[PublisherResult] = []
            pub = threading.Thread(target=lambda: results.extend(run_many(specs, delay=0.0)))
            cpu0 = {p.name: cpu_seconds(p.pid) for p in self.procs}
            sub_cpu0 = cpu_seconds(sub.pid or 0)
            t0 = time.perf_counter()
            pub.start()
            while received.value < total and time.perf_counter() - t0 < 120:
                time.sleep(0.005)
                ph.update(received.value)
            elapsed = time.perf_counter() - t0
            pub.join()
            cpu = {p.name: cpu_seconds(p.pid) - cpu0[p.name] for p in self.procs}
            cpu["subscriber"] = cpu_seconds(sub.pid or 0) - sub_cpu0
        finally:
            stop.set()
            sub.join(15)
            if sub.is_alive():
                sub.kill()
        password = self.broker_files.password_file("vigil-ingest").read_text().strip()
        from bench.rawpub import end_session

        end_session(self.broker.host, self.broker.port, "vigil-ingest", password)
        return {
            "messages": total,
            "received": received.value,
            "msg_per_s": received.value / elapsed,
            "publisher_cpu_us_per_msg": _mean(r.cpu_us_per_msg for r in results),
            "subscriber_cpu_us_per_msg": cpu["subscriber"] / max(1, received.value) * 1e6,
            "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
        }

    def run(
        self,
        ingest: list[ManagedProcess],
        per_device: int,
        rate: float | None,
        batch: int = 1,
        sample_every: int = 0,
        profile: Path | None = None,
    ) -> dict[str, Any]:
        """Publish, wait for every confirmation and for the servers to hold every reading on
        both its replicas; what it cost and how fast it went."""
        label = _label(len(ingest), rate, batch)
        what = f"{per_device * len(self.devices):,} messages of {batch} reading(s)"
        with self.progress.phase(label, what) as ph:
            out = self._run(ingest, per_device, rate, batch, sample_every, profile, ph)
        _report(out)
        return out

    def _run(
        self,
        ingest: list[ManagedProcess],
        per_device: int,
        rate: float | None,
        batch: int,
        sample_every: int,
        profile: Path | None,
        ph: Phase,
    ) -> dict[str, Any]:
        specs = self.specs(
            per_device, rate, batch, confirm=True, confirm_timeout=120.0, sample_every=sample_every
        )
        messages = per_device * len(self.devices)
        readings = messages * batch
        stored0 = self.stored()
        spy = _start_profile(ingest[0].pid, profile) if profile else None
        cpu0 = {p.name: cpu_seconds(p.pid) for p in self.procs}
        t0 = time.perf_counter()
        results = run_many(specs, delay=0.1, phase=ph)
        wall = time.perf_counter() - t0
        cpu = {p.name: cpu_seconds(p.pid) - cpu0[p.name] for p in self.procs}
        top = _stop_profile(spy, profile) if spy and profile else None
        errors = [r.error for r in results if r.error]

        def all_stored() -> bool:
            points = self.stored() - stored0  # two per reading: one on each replica
            ph.update(points // RF, total=readings, note="", unit="readings stored")
            return points >= RF * readings

        with contextlib.suppress(TimeoutError):
            wait(all_stored, 60, "every reading stored", interval=0.2)
        stored = self.stored() - stored0
        ingest_cpu = sum(cpu[p.name] for p in ingest)
        confirmed_at = [r.all_confirmed_at for r in results]
        last_confirm = None if None in confirmed_at else max(c for c in confirmed_at if c)
        last_send = max(r.send_elapsed for r in results)
        latencies = [x for r in results for x in r.latencies]
        out: dict[str, Any] = {
            "members": len(ingest),
            "batch": batch,
            "offered_msg_per_s": rate,
            "messages": messages,
            "readings": readings,
            "sent_msg_per_s": messages / last_send if last_send else None,
            "stored_readings_per_s": readings / last_confirm if last_confirm else None,
            "confirm_lag_s": None if last_confirm is None else last_confirm - last_send,
            "ingest_cpu_s": round(ingest_cpu, 3),
            "ingest_cpu_us_per_msg": ingest_cpu / messages * 1e6,
            "ingest_cores": ingest_cpu / wall,
            "publisher_cpu_us_per_msg": _mean(r.cpu_us_per_msg for r in results),
            "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
            "wall_s": round(wall, 2),
            "stored_points": stored,
            "lost": max(0, readings - stored // RF),
            "extra_points": max(0, stored - RF * readings),
            "errors": errors,
        }
        if latencies:
            out["latency_samples"] = len(latencies)
            out["latency_ms_p50"] = (percentile(latencies, 0.5) or 0) * 1000
            out["latency_ms_p99"] = (percentile(latencies, 0.99) or 0) * 1000
        if top is not None:
            out["profile"] = [{"frame": f, "share": round(s, 4)} for f, s in top]
        return out


def _mean(values: Iterable[float]) -> float:
    v = list(values)
    return sum(v) / len(v) if v else 0.0


def _start_profile(pid: int, path: Path) -> subprocess.Popen[bytes] | None:
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        print("  (py-spy is not installed: make bootstrap-dev installs it)", file=sys.stderr)
        return None
    cmd = [str(spy), "record", "--pid", str(pid), "--format", "raw", "--rate", "250", "--gil"]
    proc = subprocess.Popen(
        [*cmd, "--output", str(path), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # attached before the load starts
    return proc


def _stop_profile(proc: subprocess.Popen[bytes], path: Path) -> list[tuple[str, float]]:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return []
    try:
        return top_frames(path.read_text().splitlines())
    except OSError:
        return []


def _fmt(x: float | None, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def _label(members: int, rate: float | None, batch: int) -> str:
    """``2 member(s), batch 1, offered 3,000 msg/s`` (``max`` when unthrottled)."""
    offered = _fmt(rate) if rate else "max"
    return f"{members} member(s), batch {batch}, offered {offered} msg/s"


def _report(r: dict[str, Any]) -> None:
    line = (
        f"  {_label(r['members'], r['offered_msg_per_s'], r['batch'])}: "
        f"stored {_fmt(r['stored_readings_per_s'])} readings/s, "
        f"ingest {r['ingest_cpu_us_per_msg']:.1f} µs CPU/msg ({r['ingest_cores']:.2f} cores), "
        f"lag {_fmt(r['confirm_lag_s'], '.2f')} s, lost {r['lost']}, extra {r['extra_points']}"
    )
    if "latency_ms_p99" in r:
        line += f", p50 {r['latency_ms_p50']:.0f} ms, p99 {r['latency_ms_p99']:.0f} ms"
    print(line, flush=True)
    for e in r["errors"]:
        print(f"    publisher error: {e}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.ingest", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short runs (about 2 minutes)")
    ap.add_argument("--devices", type=int, default=4)
    ap.add_argument("--members", default="1,2,4", help="ingest processes to measure")
    ap.add_argument("--rates", default="3000,6000,10000", help="offered msg/s")
    ap.add_argument("--seconds", type=float, default=None, help="each fixed-rate run")
    ap.add_argument("--window", type=int, default=1000, help="in flight per publisher")
    ap.add_argument("--profile", action="store_true", help="py-spy the 1-process ceiling run")
    args = ap.parse_args(argv)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    ceiling_msgs = 40_000 if args.quick else 240_000
    raw_points = 100_000 if args.quick else 300_000
    members = [int(m) for m in args.members.split(",")]
    rates = [float(r) for r in args.rates.split(",")]
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "command": "python -m bench.ingest" + (" --quick" if args.quick else ""),
        "cores": os.cpu_count(),
        "devices": args.devices,
        "replication_factor": RF,
        "fixed": [],
        "ceiling": {},
    }
    progress = Progress("bench.ingest")
    with tempfile.TemporaryDirectory(prefix="vigil-bench-ingest-") as tmp:
        bench = IngestBench(Path(tmp), args.devices, args.window, progress)
        try:
            bench.start()
            raw = bench.raw_write_rate(raw_points)
            result["raw_influx_points_per_s"] = raw
            result["raw_per_rf"] = raw / RF
            print(f"reference: raw batched writes {raw:,.0f} points/s ({raw / RF:,.0f} ÷ RF)")
            limit = bench.broker_limit(ceiling_msgs // args.devices)
            result["broker_limit"] = limit
            print(
                f"reference: do-nothing subscriber {_fmt(limit['msg_per_s'])} msg/s "
                f"({limit['subscriber_cpu_us_per_msg']:.1f} µs CPU/msg; publishers "
                f"{limit['publisher_cpu_us_per_msg']:.1f} µs/msg)",
                flush=True,
            )
            for m in members:
                procs = bench.start_ingest(m)
                try:
                    for rate in rates:
                        per_device = int(rate * seconds / args.devices)
                        result["fixed"].append(bench.run(procs, per_device, rate))
                    if m in (1, 2):
                        prof = out_dir / "ingest-profile.txt" if args.profile and m == 1 else None
                        r = bench.run(procs, ceiling_msgs // args.devices, None, profile=prof)
                        result["ceiling"][str(m)] = r
                    if m == 2:
                        ceiling = result["ceiling"]["2"]["stored_readings_per_s"] or 2000.0
                        half = ceiling / 2
                        n = int(half * seconds * 2 / args.devices)
                        result["latency_at_half_ceiling"] = bench.run(
                            procs, n, half, sample_every=max(1, n // 250)
                        )
                        n = int(ceiling * 0.9 * seconds / args.devices)
                        result["at_0_9_ceiling"] = bench.run(procs, n, ceiling * 0.9)
                        n = max(1, ceiling_msgs // 25 // args.devices)
                        result["batched_50"] = bench.run(procs, n, None, batch=50)
                finally:
                    bench.stop_ingest(procs)
        finally:
            bench.stop()
    progress.finish()
    summarise(result)
    write_atomic(out_dir / "ingest.json", json.dumps(result, indent=2, default=float) + "\n")
    lost = sum(r["lost"] + r["extra_points"] for r in _runs(result))
    return 0 if lost == 0 else 1


def _runs(result: dict[str, Any]) -> list[dict[str, Any]]:
    runs = list(result["fixed"]) + list(result["ceiling"].values())
    runs += [result[k] for k in ("latency_at_half_ceiling", "at_0_9_ceiling", "batched_50")]
    return [r for r in runs if r]


def summarise(result: dict[str, Any]) -> None:
    """The goals of issue 8 point 6, each against its figure from this run."""
    # with the processes make run starts, at the highest fixed rate (the least idle share)
    us = [r["ingest_cpu_us_per_msg"] for r in result["fixed"] if r["members"] == 2][-1:]
    ceiling2 = (result["ceiling"].get("2") or {}).get("stored_readings_per_s")
    limit = result["broker_limit"]["msg_per_s"]
    ceiling_target = min(TARGET_CEILING, 0.9 * limit)
    batched = (result.get("batched_50") or {}).get("stored_readings_per_s")
    share = batched / result["raw_per_rf"] if batched else None
    p99 = (result.get("latency_at_half_ceiling") or {}).get("latency_ms_p99")
    goals = {
        "ingest_cpu_us_per_msg": {
            "figure": min(us) if us else None,
            "target": TARGET_US_PER_MSG,
            "verdict": versus(min(us) if us else None, TARGET_US_PER_MSG, False),
        },
        "ceiling_2_members": {
            "figure": ceiling2,
            "target": ceiling_target,
            "verdict": versus(ceiling2, ceiling_target),
        },
        "batched_share_of_raw_per_rf": {
            "figure": share,
            "target": TARGET_BATCHED_SHARE,
            "verdict": versus(share, TARGET_BATCHED_SHARE),
        },
        "p99_ms_at_half_ceiling": {
            "figure": p99,
            "target": TARGET_P99_MS,
            "verdict": versus(p99, TARGET_P99_MS, False),
        },
    }
    result["goals"] = goals
    print("\ngoals (issue 8, point 6):")
    for name, g in goals.items():
        print(
            f"  {name:<30} {_fmt(g['figure'], ',.2f'):>12}  target {g['target']:,.2f}: "
            f"{g['verdict']}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
