"""Helpers of the storage chaos tests (tests/test_storage_chaos.py): a private cluster of
real influxd servers that a test may pause, kill, wipe and restart; devices publishing a
steady stream of readings; a reader timing cluster reads; and the check that every reading
is on exactly its replicas."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from support import wait_until

from stack.process import ManagedProcess, free_port
from storage_nodes import (
    Credential,
    InfluxNode,
    StorageCluster,
    StorageError,
    provision_server,
    series_key,
)
from storage_nodes.layout import Layout
from storage_nodes.lineproto import quote_ident
from storage_nodes.server import influxd_command
from vigil.messages import Reading, encode_readings
from vigil.mqtt import MqttClient, PublishError
from vigil.settings import BrokerSettings, MqttClientSettings

Series = tuple[str, str]  # (device, metric)


# -- servers ------------------------------------------------------------------------------
@dataclass
class ChaosServer:
    """One influxd of a private cluster, on fixed ports so it can be restarted in place."""

    name: str
    base: Path
    admin: Credential
    service: Credential
    viewer: Credential
    database: str
    http_port: int = field(default_factory=free_port)
    rpc_port: int = field(default_factory=free_port)
    proc: ManagedProcess | None = None
    paused: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def data_dir(self) -> Path:
        return self.base / self.name

    def start(self) -> ChaosServer:
        """Start influxd (without waiting for it: see :meth:`ready`)."""
        cmd = influxd_command(self.data_dir, self.http_port, self.rpc_port)
        self.proc = ManagedProcess(self.name, cmd, self.base / f"{self.name}.log").start()
        return self

    def ready(self) -> ChaosServer:
        """Wait for its port, then make its users and the test's database (idempotent, as
        the launcher provisions a server that restarted)."""
        assert self.proc is not None
        self.proc.wait_port("127.0.0.1", self.http_port, 60)
        provision_server(
            self.url,
            name=self.name,
            admin=self.admin,
            database=self.database,
            service=self.service,
            viewer=self.viewer,
        )
        return self

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections, nothing answers (a hung server)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        """SIGKILL, as in a crash."""
        assert self.proc is not None
        self.proc.kill()
        self.paused = False

    def wipe(self) -> None:
        """Delete all it stored (it must not be running): a replaced disk."""
        assert self.proc is None or not self.proc.alive()
        shutil.rmtree(self.data_dir)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.paused:
            self.resume()
        self.proc.stop()

    def client(self, timeout_s: float) -> InfluxNode:
        """A client with the services' credential (close it when done)."""
        return InfluxNode(
            self.name,
            self.url,
            timeout_s,
            username=self.service.username,
            password=self.service.password,
        )

    def log_tail(self, n: int = 30) -> str:
        return "(not started)" if self.proc is None else self.proc.log_tail(n)


@dataclass
class ChaosCluster:
    """The private servers of one test, by name; :meth:`add` starts one more."""

    base: Path
    admin: Credential
    service: Credential
    viewer: Credential
    database: str
    servers: dict[str, ChaosServer] = field(default_factory=dict)

    def add(self, name: str) -> ChaosServer:
        server = ChaosServer(name, self.base, self.admin, self.service, self.viewer, self.database)
        self.servers[name] = server.start()
        return server

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    def describe(self) -> str:
        return "\n".join(f"----- {s.name} -----\n{s.log_tail()}" for s in self.servers.values())


# -- devices ------------------------------------------------------------------------------
@dataclass
class Publisher:
    """Each device publishes, at QoS 1, one message holding one reading of every metric
    every ``interval_s``, and waits for the broker's PUBACK before the next. A reading
    counts as acknowledged once the broker acknowledged its message, having routed it to a
    subscriber's session (``unrouted_is_refused``): every acknowledged reading must end up
    stored. Ids are unique per device; timestamps grow with them."""

    broker: BrokerSettings
    idents: Mapping[str, MqttClientSettings]  # device -> its MQTT credential
    metrics: Sequence[str]
    topic: Callable[[str], str]  # device -> its data topic
    base_ts: int
    interval_s: float = 0.02
    acked: dict[Series, set[int]] = field(default_factory=lambda: defaultdict(set))
    errors: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _go: threading.Event = field(default_factory=threading.Event)
    _busy: dict[str, threading.Lock] = field(default_factory=dict)  # held while publishing
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Publisher:
        self._go.set()
        for index, device in enumerate(self.idents):
            self._busy[device] = threading.Lock()
            t = threading.Thread(
                target=self._run, args=(index, device), name=f"publish-{device}", daemon=True
            )
            t.start()
            self._threads.append(t)
        return self

    def _run(self, index: int, device: str) -> None:
        client = MqttClient(self.broker, self.idents[device], unrouted_is_refused=True)
        client.start()
        try:
            if not client.wait_connected(10):
                self._error(f"{device} could not connect")
                return
            n = 0
            while not self._stop.is_set():
                if not self._go.wait(0.1):
                    continue  # paused
                with self._busy[device]:
                    if not self._go.is_set():
                        continue  # paused meanwhile
                    readings = []
                    for metric in self.metrics:
                        n += 1
                        rid = 1_000_000_000 * (index + 1) + n
                        readings.append(
                            Reading(rid, device, self.base_ts + n, "sensor", metric, float(n), "u")
                        )
                    try:
                        client.publish_wait(
                            self.topic(device), encode_readings(device, readings), timeout=30
                        )
                    except PublishError as exc:
                        self._error(f"{device}: {exc}")
                        return
                    with self._lock:
                        for r in readings:
                            self.acked[(device, r.metric)].add(r.id)
                self._stop.wait(self.interval_s)
        finally:
            client.stop()

    def _error(self, message: str) -> None:
        with self._lock:
            self.errors.append(message)

    def pause(self) -> None:
        """Stop publishing; returns once no publish is in flight."""
        self._go.clear()
        for device, busy in self._busy.items():
            assert busy.acquire(timeout=40), f"{device} still publishing"
            busy.release()

    def resume(self) -> None:
        self._go.set()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(40)
        assert not any(t.is_alive() for t in self._threads), "a publisher is stuck"

    def expected(self) -> dict[Series, set[int]]:
        """The acknowledged ids by series."""
        with self._lock:
            return {k: set(v) for k, v in self.acked.items()}

    def total(self) -> int:
        with self._lock:
            return sum(len(v) for v in self.acked.values())


# -- reads --------------------------------------------------------------------------------
@dataclass
class Reader:
    """Reads the series in a loop through its own ``StorageCluster`` (the API's view) and
    records every exception and how long each call took."""

    cluster: StorageCluster
    series: Sequence[Series]
    limit: int = 50
    calls: list[tuple[float, float, Series]] = field(default_factory=list)  # start, took
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Reader:
        self._thread = threading.Thread(target=self._run, name="chaos-reader", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for device, metric in self.series:
                started = time.monotonic()
                try:
                    self.cluster.points(device, metric, limit=self.limit)
                except Exception as exc:  # any exception is a failed read
                    self.errors.append(f"{device}/{metric}: {type(exc).__name__}: {exc}")
                self.calls.append((started, time.monotonic() - started, (device, metric)))
                if self._stop.wait(0.01):
                    return

    def slowest(self) -> tuple[float, Series | None]:
        if not self.calls:
            return 0.0, None
        _, took, series = max(self.calls, key=lambda c: c[1])
        return took, series

    def between(self, start: float, end: float) -> int:
        """How many reads started in ``[start, end]`` (monotonic clock)."""
        return sum(1 for t, _, _ in self.calls if start <= t <= end)

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            assert not self._thread.is_alive(), "a read never returned"
        self.cluster.close()


# -- counting -----------------------------------------------------------------------------
def counts_on(node: InfluxNode, database: str, metrics: Iterable[str]) -> dict[Series, int]:
    """How many points of each (device, metric) one server holds (one query)."""
    sources = ", ".join(quote_ident(m) for m in metrics)
    q = f"SELECT count(value) FROM {sources} GROUP BY device"
    out: dict[Series, int] = {}
    for s in node.query(q, database):
        device = (s.get("tags") or {}).get("device")
        if device and s.get("values"):
            out[(device, s["name"])] = int(s["values"][0][1])
    return out


def ids_on(node: InfluxNode, database: str, device: str, metric: str) -> list[int]:
    """The ids of one series' points on one server (with repeats, if any)."""
    q = f"SELECT id FROM {quote_ident(metric)} WHERE device = $d"
    return [int(row[1]) for s in node.query(q, database, {"d": device}) for row in s["values"]]


def misplacement(
    layout: Layout,
    nodes: Mapping[str, InfluxNode],
    database: str,
    metrics: Sequence[str],
    expected: Mapping[Series, set[int]],
) -> list[str]:
    """What differs from "each series is on exactly its replicas in ``layout``, each
    holding as many points as were acknowledged, and on no other of ``nodes``" (empty:
    nothing)."""
    problems = []
    if layout.moving:
        problems.append(f"layout {layout.version} is still moving data")
    for name, node in nodes.items():
        try:
            have = counts_on(node, database, metrics)
        except StorageError as exc:
            problems.append(f"{name}: {exc}")
            continue
        for key in sorted(set(have) | set(expected)):
            device, metric = key
            owner = name in layout.replicas_now(series_key(device, metric))
            want = len(expected.get(key, ())) if owner else 0
            got = have.get(key, 0)
            if got != want:
                role = "replica" if owner else "non-replica"
                problems.append(f"{device}/{metric} on {name} ({role}): {got} != {want}")
    return problems


def converge(problems: Callable[[], list[str]], timeout: float, what: str) -> None:
    """Wait until ``problems()`` finds none; fail listing those still found."""
    last: list[str] = []

    def none_left() -> bool:
        last[:] = problems()
        return not last

    try:
        wait_until(none_left, timeout, interval=0.2, what=what)
    except AssertionError as exc:
        shown = "; ".join(last[:12]) + (f" (+{len(last) - 12} more)" if len(last) > 12 else "")
        raise AssertionError(f"{exc}: {len(last)} problem(s): {shown}") from None


def exact_ids(
    layout: Layout,
    nodes: Mapping[str, InfluxNode],
    database: str,
    expected: Mapping[Series, set[int]],
) -> None:
    """Each replica of each series holds exactly the acknowledged ids, each once."""
    for (device, metric), ids in sorted(expected.items()):
        for name in layout.replicas_now(series_key(device, metric)):
            got = ids_on(nodes[name], database, device, metric)
            assert len(got) == len(set(got)), f"{device}/{metric} on {name}: repeated ids"
            lost, extra = ids - set(got), set(got) - ids
            assert not lost, f"{device}/{metric} on {name}: {len(lost)} lost, e.g. {min(lost)}"
            assert not extra, f"{device}/{metric} on {name}: {len(extra)} never published"
