"""``vigil run``: the whole system on this machine, state under ``.vigil/``.

Starts Mosquitto (generated credentials, ACL, persistence), the InfluxDB servers of the ring,
a local SMTP server that keeps every email as a file, the ingest service, alert engine,
notifier and API, and the simulated edge agents; prints what runs where and writes it to
``.vigil/stack.json``; restarts a service that dies; stops everything on Ctrl-C or SIGTERM.
Running it again reuses the data and the credentials.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from broker import PluginBuildError, TlsListener, provision
from stack import local_servers, prometheus, status_line
from stack.process import ManagedProcess, free_port, port_open
from storage_nodes import (
    VIEWER_USER,
    ClusterCredentials,
    Credential,
    StorageError,
    credentials,
    influxd_command,
    provision_node,
)
from vigil.agent_settings import AgentConfig, load_agent_config
from vigil.atomic import write_atomic
from vigil.localca import ServerCert, default_names, ensure_server_cert, issued_by
from vigil.metrics import Scrape, scrape_metrics
from vigil.readiness import is_ready
from vigil.settings import StorageNode, VigilConfig, load_config
from vigil.tls import client_context

log = logging.getLogger("vigil.stack")

RESTART_BACKOFF_S = 5.0
#: what the admin follows on the first run, so the demo has share prices
DEMO_SYMBOLS = ("AAPL", "MSFT", "ENI.MI")
#: a child that ran this long before it died was healthy: its restart backoff starts over
HEALTHY_RUN_S = 60.0


def restart_delay(restarts: int) -> float:
    """Seconds to wait before restarting a child that died after ``restarts`` restarts
    since its last healthy run: 5 s, 10 s, ... up to 30 s."""
    return RESTART_BACKOFF_S * min(restarts + 1, 6)


def restarts_after(restarts: int, ran_for_s: float) -> int:
    """The restart count that sets a dead child's backoff: a child that ran at least
    ``HEALTHY_RUN_S`` was healthy, so its death starts a new series (0)."""
    return 0 if ran_for_s >= HEALTHY_RUN_S else restarts


@dataclass
class Child:
    proc: ManagedProcess
    host: str | None = None
    port: int | None = None
    #: the child's ``--ready-file``: it is ready once that file says so, with its pid
    ready_file: Path | None = None
    #: run once the child listens, at every (re)start (e.g. provision an InfluxDB server)
    after_start: Callable[[], None] | None = None
    restarts: int = 0  # since its last healthy run
    died_at: float = 0.0
    started_at: float = 0.0

    def start(self, timeout: float = 60.0) -> None:
        self.proc.start()
        self.started_at = time.monotonic()
        if self.port is not None and self.host is not None:
            self.proc.wait_port(self.host, self.port, timeout)
        if self.after_start is not None:
            try:
                self.after_start()
            except StorageError as exc:  # reported like any other failed start
                raise RuntimeError(f"{self.proc.name} started, but: {exc}") from exc
        if self.ready_file is not None:
            deadline = time.monotonic() + timeout
            while not is_ready(self.ready_file, self.proc.pid):
                if not self.proc.alive():
                    raise RuntimeError(f"{self.proc.name} exited:\n{self.proc.log_tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.proc.name} not ready:\n{self.proc.log_tail()}")
                time.sleep(0.05)


def _hostport(url: str) -> tuple[str, int]:
    u = urlparse(url)
    return u.hostname or "127.0.0.1", u.port or 80


def ensure_admin_token(token_file: Path, digest_file: Path) -> str:
    """The API admin token: generated once into ``token_file`` (for the user) and kept; its
    SHA-256 is written to ``digest_file``, the only thing the API reads. Both mode 0600."""
    if not token_file.exists():
        token_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(token_file, secrets.token_urlsafe(32) + "\n")
    token = token_file.read_text(encoding="utf-8").strip()
    digest_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(digest_file, hashlib.sha256(token.encode()).hexdigest() + "\n")
    return token


def _reachable(host: str) -> str:
    """An address to reach a listener bound to ``host`` by (a wildcard: this machine)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104


class Stack:
    def __init__(self, config_path: Path, agent_paths: list[Path], state: Path) -> None:
        self.config_path = config_path
        self.config: VigilConfig = load_config(config_path)
        self.agents: list[tuple[Path, AgentConfig]] = [
            (p, load_agent_config(p)) for p in agent_paths
        ]
        self.state = state
        self.children: list[Child] = []
        self._stop = threading.Event()
        self._token = self._viewer_password = self._reader = ""
        self._influx_viewer = Credential(VIEWER_USER, "")
        self._influx_creds: ClusterCredentials | None = None
        self._local_names: set[str] = set()
        #: the prometheus executable, None when it is off or not installed
        self._prometheus = prometheus.binary() if self.config.prometheus.enabled else None
        if self.config.prometheus.enabled and self._prometheus is None:
            log.warning("prometheus is not installed (scripts/bootstrap installs it): skipped")

    # -- start ----------------------------------------------------------------------------
    def _check_ports_free(self) -> None:
        c = self.config
        wanted = [
            ("broker", c.broker.host, c.broker.port),
            *([("broker tls", "127.0.0.1", c.broker.tls.port)] if c.broker.tls.enabled else []),
            ("smtp", c.notifier.smtp.host, c.notifier.smtp.port),
            ("api", c.api.host, c.api.port),
            ("the cluster InfluxDB endpoint", c.api.host, c.api.influx_port),
        ]
        if self._prometheus is not None:
            wanted.append(("prometheus", c.prometheus.host, c.prometheus.port))
        wanted += [(n.name, *_hostport(n.url)) for n in c.storage.nodes]
        busy = [f"{name} port {port}" for name, host, port in wanted if port_open(host, port)]
        if busy:
            raise SystemExit(
                f"vigil run: {', '.join(busy)} already in use. Is another Vigil running? "
                "Stop it, or move ports with VIGIL__<SECTION>__<KEY> overrides."
            )

    def _child(self, name: str, cmd: list[str], **kw: Any) -> Child:
        child = Child(
            ManagedProcess(
                name, cmd, self.state / "logs" / f"{name}.log", env={"PYTHONUNBUFFERED": "1"}
            ),
            **kw,
        )
        self.children.append(child)
        child.start()
        log.info("started %s (pid %d)", name, child.proc.pid)
        return child

    def start(self) -> dict[str, Any]:
        c = self.config
        self._check_ports_free()
        self._check_tls()
        secrets_dir = self.state / "secrets"
        devices = sorted({d.id for d in c.devices} | {a.device_id for _, a in self.agents})
        files = provision(
            broker_dir=self.state / "broker",
            secrets_dir=secrets_dir,
            host=c.broker.host,
            port=c.broker.port,
            devices=devices,
            topics=c.broker.topics,
            tls=TlsListener.from_settings(c.broker.tls),
            allow_plain_remote=c.broker.allow_plain_remote,
        )
        assert c.api.admin_token_sha256_file is not None
        token = ensure_admin_token(secrets_dir / "admin.token", c.api.admin_token_sha256_file)
        if c.api.reader_token_sha256_file is not None:
            self._reader = ensure_admin_token(
                secrets_dir / "reader.token", c.api.reader_token_sha256_file
            )

        self._child("mosquitto", files.command(), host=c.broker.host, port=c.broker.port)
        influx = credentials(c.storage, secrets_dir)
        self._influx_creds = influx
        for node in c.storage.nodes:
            self._influxd(node)
        for extra in local_servers.requested(self.state):
            self._start_local(extra)
        smtp = c.notifier.smtp
        py = [sys.executable, "-m"]
        self._child(
            "mailsink",
            [
                *py,
                "stack.mailsink",
                "--dir",
                str(self.state / "mail"),
                "--host",
                smtp.host,
                "--port",
                str(smtp.port),
            ],
            host=smtp.host,
            port=smtp.port,
        )
        conf = ["--config", str(self.config_path)]
        members = c.ingest.members
        consumers: list[tuple[str, str, list[str]]] = [
            *(
                [("ingest", "ingest_service", [])]
                if members == 1
                else [
                    (f"ingest-{n}", "ingest_service", ["--member", str(n)])
                    for n in range(1, members + 1)
                ]
            ),
            ("alert-engine", "alert_engine", []),
            ("notifier", "notifier", []),
        ]
        for name, module, member_args in consumers:
            ready = self.state / "run" / f"{name}.ready.json"
            self._child(
                name,
                [*py, module, *conf, *member_args, "--ready-file", str(ready)],
                ready_file=ready,
            )
        self._child("api", [*py, "api", *conf], host=c.api.host, port=c.api.port)
        for path, agent in self.agents:
            self._child(f"agent-{agent.device_id}", [*py, "edge_agent", "--config", str(path)])

        self._token, self._viewer_password = token, files.creds["vigil-viewer"]
        self._influx_viewer = influx.viewer
        self._start_prometheus()
        self._follow_demo_symbols(token)
        return self.write_info()

    def _start_prometheus(self) -> None:
        """Prometheus on every process's metrics port, with the pipeline's rules."""
        p = self.config.prometheus
        if self._prometheus is None:
            return
        folder = self.state / "prometheus"
        targets = {name: ("127.0.0.1", port) for name, port in self._metrics_ports().items()}
        config = folder / "prometheus.yml"
        write_atomic(config, prometheus.config_text(targets, prometheus.RULES, p.scrape_interval_s))
        (folder / "data").mkdir(parents=True, exist_ok=True)
        self._child(
            "prometheus",
            prometheus.command(self._prometheus, config, folder / "data", p.host, p.port),
            host=p.host,
            port=p.port,
        )

    def _follow_demo_symbols(self, token: str) -> None:
        """On the first run, the admin follows DEMO_SYMBOLS, so the quote agents have
        something to fetch (later runs keep whatever the admin follows by then)."""
        done = self.state / "run" / "demo-symbols-followed"
        if done.exists() or not self.config.quote_agents:
            return
        c = self.config.api
        context = None
        if c.scheme == "https":
            context = client_context(self.config.broker.tls.ca_file)
        request = urllib.request.Request(  # noqa: S310 - http(s) URL of our API
            f"{c.scheme}://{c.host}:{c.port}/users/admin/subscriptions",
            data=json.dumps({"symbols": list(DEMO_SYMBOLS)}).encode(),
            method="PUT",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as resp:  # noqa: S310
                resp.read()
        except OSError as exc:
            log.warning("could not follow the demo symbols %s: %s", DEMO_SYMBOLS, exc)
            return
        write_atomic(done, b"")

    def _influxd(self, node: StorageNode) -> Child:
        host, port = _hostport(node.url)
        storage = self.config.storage
        creds = self._influx_creds
        assert creds is not None, "credentials are made before any server starts"
        data_dir = self.state / "influx" / node.name
        tls = None
        if node.url.startswith("https:"):  # a certificate from the local CA, for its host
            cert = self._local_cert(data_dir, "https", host)
            tls = (cert.cert, cert.key)
        return self._child(
            node.name,
            influxd_command(data_dir, port, free_port(host), host, tls),
            host=host,
            port=port,
            # At every (re)start, so a server that came back empty gets its users again.
            after_start=lambda: provision_node(node, storage, creds),
        )

    def _local_cert(self, folder: Path, stem: str, host: str) -> ServerCert:
        names = [*default_names(), host]
        return ensure_server_cert(self.config.broker.tls.ca_dir, folder, stem, names)

    def _check_tls(self) -> None:
        """HTTPS servers `vigil run` starts get certificates from the local CA: the clients
        must verify them against it (storage.ca_file), or nothing could connect."""
        c = self.config
        ca = c.broker.tls.ca_file
        https = [n.name for n in c.storage.nodes if n.url.startswith("https:")]
        if https and (c.storage.ca_file is None or c.storage.ca_file.resolve() != ca.resolve()):
            raise SystemExit(
                f"vigil run: storage servers {', '.join(https)} are https: their certificates "
                f"come from the local CA, so set storage.ca_file: {ca}"
            )
        api = c.api
        if api.tls_cert_file is not None and api.tls_key_file is not None:
            cert, key = api.tls_cert_file, api.tls_key_file
            # Missing, or ours (kept while right, else renewed); your own is left alone.
            if not cert.exists() or issued_by(cert, c.broker.tls.ca_dir):
                if key != cert.with_suffix(".key"):
                    raise SystemExit(
                        f"vigil run: api.tls_key_file must be {cert.with_suffix('.key')} for "
                        "a certificate vigil run issues from the local CA"
                    )
                self._local_cert(cert.parent, cert.stem, api.host)

    def _start_local(self, server: local_servers.LocalServer) -> None:
        """Start a server asked for by ``vigil storage add --local``, then say it is ready."""
        if any(ch.proc.name == server.name for ch in self.children):
            return
        try:
            self._influxd(StorageNode(name=server.name, url=server.url))
        except (RuntimeError, TimeoutError) as exc:
            log.error("starting the requested server %s failed: %s", server.name, exc)
            return
        local_servers.mark_ready(self.state, server)
        self._local_names.add(server.name)
        log.info("started requested storage server %s at %s", server.name, server.url)

    def _follow_local_requests(self) -> None:
        wanted = {s.name: s for s in local_servers.requested(self.state)}
        changed = False
        for server in wanted.values():
            if server.name not in self._local_names:
                self._start_local(server)
                changed = True
        for name in sorted(self._local_names - set(wanted)):
            child = next(ch for ch in self.children if ch.proc.name == name)
            child.proc.stop(timeout=15)
            self.children.remove(child)
            self._local_names.discard(name)
            log.info("stopped storage server %s: no longer requested", name)
            changed = True
        if changed:
            self.write_info()

    def write_info(self) -> dict[str, Any]:
        """Write ``stack.json`` (atomically: a reader never sees it half-written) with the
        current pids; called at start and after every restart of a child."""
        info = self.describe(self._token, self._viewer_password)
        write_atomic(self.state / "stack.json", json.dumps(info, indent=2) + "\n")
        return info

    def describe(self, token: str, viewer_password: str) -> dict[str, Any]:
        c = self.config
        api_url = f"{c.api.scheme}://{c.api.host}:{c.api.port}"
        cert = c.api.tls_cert_file
        local_api_ca = cert is not None and issued_by(cert, c.broker.tls.ca_dir)
        return {
            "broker": {
                "host": c.broker.host,
                "port": c.broker.port,
                "topic_root": c.broker.topic_root,
                "username": "vigil-viewer",
                "password": viewer_password,
                "device_credentials": str(self.state / "secrets" / "<device>.password"),
                **(
                    {
                        "tls_port": c.broker.tls.port,
                        # a name its certificate has (not a wildcard address)
                        "tls_url": f"mqtts://{_reachable(c.broker.tls.host)}:{c.broker.tls.port}",
                        **(
                            {"ca_file": str(c.broker.tls.ca_file.resolve())}
                            if c.broker.tls.cert_file is None
                            else {}
                        ),
                    }
                    if c.broker.tls.enabled
                    else {}
                ),
            },
            "api": {
                "url": f"{api_url}",
                "admin_token": token,
                # https: clients verify the API against the local CA
                **({"ca_file": str(c.broker.tls.ca_file.resolve())} if local_api_ca else {}),
            },
            "console": {"url": f"{api_url}/console/"},
            "influxdb": {
                "database": c.storage.database,
                # The whole cluster as one InfluxDB 1.x, with Vigil's users and tokens.
                "cluster_url": f"{c.api.scheme}://{c.api.host}:{c.api.influx_port}",
                # for dashboards: reads every device there, writes nothing
                **(
                    {"reader": {"username": "reader", "password": self._reader}}
                    if self._reader
                    else {}
                ),
                "servers": {
                    **{n.name: n.url for n in c.storage.nodes},
                    **{s.name: s.url for s in local_servers.requested(self.state)},
                },
                # Read-only: for looking at the data (influx -username ... -password ...).
                "username": self._influx_viewer.username,
                "password": self._influx_viewer.password,
            },
            "mail_folder": str((self.state / "mail").resolve()),
            "metrics": self._metrics_ports(),
            **(
                {"prometheus": {"url": f"http://{c.prometheus.host}:{c.prometheus.port}"}}
                if self._prometheus is not None
                else {}
            ),
            "logs": str((self.state / "logs").resolve()),
            "pids": {ch.proc.name: ch.proc.pid for ch in self.children},
        }

    def _metrics_ports(self) -> dict[str, int]:
        c = self.config
        return {
            **{name: p.metrics_port for name, p in c.ingest.processes().items()},
            "alert_engine": c.alert_engine.metrics_port,
            "notifier": c.notifier.metrics_port,
            "api": c.api.metrics_port,
            **{f"agent-{a.device_id}": a.metrics_port for _, a in self.agents},
        }

    # -- run and stop ---------------------------------------------------------------------
    def supervise(self) -> None:
        """Restart a child that died, at most once per RESTART_BACKOFF_S."""
        while not self._stop.wait(0.5):
            self._follow_local_requests()
            for ch in self.children:
                if ch.proc.alive() or self._stop.is_set():
                    continue
                now = time.monotonic()
                if not ch.died_at:
                    ch.died_at = now
                    log.error(
                        "%s exited with %s; restarting. Last lines of %s:\n%s",
                        ch.proc.name,
                        ch.proc.returncode(),
                        ch.proc.log_path,
                        ch.proc.log_tail(10),
                    )
                    ch.restarts = restarts_after(ch.restarts, ch.died_at - ch.started_at)
                if now - ch.died_at >= restart_delay(ch.restarts):
                    ch.restarts += 1
                    ch.died_at = 0.0
                    try:
                        ch.start()
                    except (RuntimeError, TimeoutError) as exc:
                        log.error("restarting %s failed: %s", ch.proc.name, exc)
                        ch.died_at = time.monotonic()
                    self.write_info()  # the restarted child has a new pid
                    log.info("restarted %s (pid %d)", ch.proc.name, ch.proc.pid)

    @property
    def stopping(self) -> threading.Event:
        return self._stop

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        for ch in reversed(self.children):
            ch.proc.stop(timeout=15)
        log.info("stopped %d processes", len(self.children))


def print_summary(info: dict[str, Any], state: Path) -> None:
    b, api = info["broker"], info["api"]
    lines = [
        "",
        "Vigil is running. Ctrl-C stops everything.",
        f"  MQTT broker    mqtt://{b['host']}:{b['port']}  (watch: user {b['username']}, "
        f"password in {state}/stack.json)",
        *(
            [f"  MQTT over TLS  {b['tls_url']}  (devices; CA: {b.get('ca_file', 'your own')})"]
            if "tls_url" in b
            else []
        ),
        f"  API            {api['url']}  (admin token in {state}/stack.json; "
        f"docs: {api['url']}/docs)",
        f"  Console        {info['console']['url']}  (log in with a token)",
        *(
            [f"  Prometheus     {info['prometheus']['url']}  (alert rules on the pipeline)"]
            if "prometheus" in info
            else []
        ),
        f"  InfluxDB       {info['influxdb']['cluster_url']}  the whole cluster as one "
        "(user admin, the admin token as password)",
        *[
            f"  InfluxDB       {name}: {url}  database {info['influxdb']['database']}"
            for name, url in info["influxdb"]["servers"].items()
        ],
        f"                 (authenticated: read-only user {info['influxdb']['username']}, "
        f"password in {state}/stack.json)",
        f"  Emails         {info['mail_folder']}",
        "  Metrics        " + ", ".join(f"{k}:{v}" for k, v in info["metrics"].items()),
        f"  Logs           {info['logs']}",
        f"  Everything     {state}/stack.json",
        "",
    ]
    print("\n".join(lines), flush=True)


class StatusPrinter:
    """The live terminal: every ``every_s`` a compact line from the processes' metrics
    (``stack/status_line.py``), until the stack stops."""

    def __init__(self, ports: dict[str, int], every_s: float, stop: threading.Event) -> None:
        self.ports, self.every_s, self._stop = ports, every_s, stop
        self._thread = threading.Thread(target=self._loop, name="status-line", daemon=True)

    def start(self) -> None:
        if self.every_s > 0:
            self._thread.start()

    def round(self) -> status_line.Totals:
        scrapes: dict[str, Scrape | None] = {}
        for name, port in self.ports.items():
            if not port:
                continue
            try:
                scrapes[name] = scrape_metrics(f"http://127.0.0.1:{port}/metrics", 1.0)
            except (OSError, ValueError):
                scrapes[name] = None  # restarting, or not up yet
        return status_line.summarize(scrapes, time.time())

    def _loop(self) -> None:
        before = None
        while not self._stop.wait(self.every_s):
            now = self.round()
            print(status_line.format_line(now, before), flush=True)
            before = now


def run(config_path: Path, agents_dir: Path, state: Path, status_every_s: float = 5.0) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s vigil %(message)s")
    agent_paths = sorted(agents_dir.glob("*.yaml")) if agents_dir.is_dir() else []
    stack = Stack(config_path, agent_paths, state)
    signal.signal(signal.SIGTERM, lambda *_: stack.request_stop())
    signal.signal(signal.SIGINT, lambda *_: stack.request_stop())
    os.umask(0o077)
    try:
        info = stack.start()
        print_summary(info, state)
        StatusPrinter(info["metrics"], status_every_s, stack.stopping).start()
        stack.supervise()
    except PluginBuildError as exc:  # names the Debian package to install
        print(f"vigil run: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()
    return 0
