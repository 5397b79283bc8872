"""Fixtures that start real servers on free local ports: Mosquitto (with the project's own
generated auth, ACL and persistence), three InfluxDB 1.x servers, and an aiosmtpd server.
Each test gets its own broker, its own database on the shared InfluxDB servers, and its own
mail folder."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient
from support import (
    CONSUMERS,
    STORED_T0,
    STORED_VALUES,
    Confirmer,
    MqttProbe,
    ready_path,
    unique,
    wait_until,
)

from api import close_app, create_app
from broker.provision import BrokerFiles, TlsListener, provision
from stack.mailsink import MailSink, start_mailsink
from stack.process import ManagedProcess, free_port
from storage_nodes import (
    ADMIN_USER,
    SERVICE_USER,
    VIEWER_USER,
    Credential,
    InfluxNode,
    StorageCluster,
    admin_node,
    grant_database,
    provision_server,
)
from storage_nodes.server import influxd_command
from vigil.atomic import load_or_create_secret
from vigil.messages import Reading
from vigil.settings import (
    BrokerSettings,
    ConsumerMqttSettings,
    StorageNode,
    StorageSettings,
    VigilConfig,
    load_config,
)
from vigil.topics import Topics

ROOT = Path(__file__).resolve().parent.parent
TEST_DEVICES = [f"dev-{i}" for i in range(10)]
#: the test configuration's quote agents (devices[].quotes)
QUOTE_AGENTS = ("dev-8", "dev-9")
#: the test configuration's devices of users (the others are the admin's)
DEVICE_OWNERS = {"dev-1": "alice", "dev-2": "bob"}


def device_entry(device: str) -> dict[str, object]:
    entry: dict[str, object] = {"id": device}
    if device in QUOTE_AGENTS:
        entry["quotes"] = True
    if device in DEVICE_OWNERS:
        entry["owner"] = DEVICE_OWNERS[device]
    return entry


def _need(binary: str) -> None:
    if shutil.which(binary) is None and not Path(binary).exists():
        pytest.fail(f"{binary} is not installed: run `make test` (scripts/bootstrap installs it)")


# -- Mosquitto ---------------------------------------------------------------------------
@dataclass
class BrokerHandle:
    files: BrokerFiles
    proc: ManagedProcess
    topics: Topics = field(default_factory=Topics)

    @property
    def settings(self) -> BrokerSettings:
        return BrokerSettings(
            host=self.files.host, port=self.files.port, topic_root=self.topics.root, keepalive_s=5
        )

    def tls_settings(self, host: str = "127.0.0.1") -> BrokerSettings:
        """The broker's TLS listener as a client reaches it, verifying against the local CA."""
        assert self.files.tls is not None
        return BrokerSettings(
            host=host,
            port=self.files.tls.port,
            topic_root=self.topics.root,
            keepalive_s=5,
            ca_file=self.files.tls.ca_dir / "ca.crt",
        )

    def ident(self, user: str, client_id: str | None = None) -> ConsumerMqttSettings:
        """Credentials of a provisioned user (a service user or a device). A consumer given
        them receives with VIGIL_TEST_TRANSPORT (fast unless set to paho)."""
        return ConsumerMqttSettings(
            client_id=client_id or user,
            username=user,
            password_file=self.files.password_file(user),
            transport=os.environ.get("VIGIL_TEST_TRANSPORT", "fast"),
        )

    def password(self, user: str) -> str:
        return self.files.creds[user]

    def start(self) -> None:
        self.proc.start()
        self.proc.wait_port(self.files.host, self.files.port, 15)

    def stop(self) -> None:
        """Graceful stop (SIGTERM): Mosquitto saves its persistence file."""
        self.proc.stop()

    def kill(self) -> None:
        self.proc.kill()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerHandle]:
    _need("/usr/sbin/mosquitto")
    port = free_port()
    files = provision(
        broker_dir=tmp_path / "broker",
        secrets_dir=tmp_path / "secrets",
        host="127.0.0.1",
        port=port,
        devices=TEST_DEVICES,
        topics=Topics(),
        tls=TlsListener(host="127.0.0.1", port=free_port(), ca_dir=tmp_path / "tls"),
    )
    handle = BrokerHandle(
        files, ManagedProcess("mosquitto", files.command(), tmp_path / "broker" / "stdout.log")
    )
    handle.start()
    yield handle
    handle.stop()


# -- InfluxDB ----------------------------------------------------------------------------
@dataclass
class InfluxServerHandle:
    name: str
    url: str
    proc: ManagedProcess
    admin: Credential

    def as_admin(self) -> InfluxNode:
        """A client of this server with the admin credential (drop databases, forge...)."""
        return admin_node(self.name, self.url, self.admin)


@dataclass
class InfluxCredentials:
    admin: Credential
    service: Credential
    viewer: Credential
    service_password_file: Path


@pytest.fixture(scope="session")
def influx_credentials(tmp_path_factory: pytest.TempPathFactory) -> InfluxCredentials:
    """Generated like the launcher's: one file per user."""
    secrets_dir = tmp_path_factory.mktemp("influx-secrets")

    def cred(user: str) -> Credential:
        return Credential(user, load_or_create_secret(secrets_dir / f"influxdb-{user}.password"))

    return InfluxCredentials(
        cred(ADMIN_USER),
        cred(SERVICE_USER),
        cred(VIEWER_USER),
        secrets_dir / f"influxdb-{SERVICE_USER}.password",
    )


@pytest.fixture(scope="session")
def influx_cluster(
    tmp_path_factory: pytest.TempPathFactory, influx_credentials: InfluxCredentials
) -> Iterator[list[InfluxServerHandle]]:
    """Three InfluxDB servers with authentication, shared by the session; tests isolate by
    database (see ``storage_settings``)."""
    _need("influxd")
    base = tmp_path_factory.mktemp("influx")
    creds = influx_credentials
    servers = []
    for i in range(1, 4):
        http, rpc = free_port(), free_port()
        proc = ManagedProcess(
            f"influx-{i}", influxd_command(base / f"n{i}", http, rpc), base / f"n{i}.log"
        ).start()
        servers.append(
            InfluxServerHandle(f"influx-{i}", f"http://127.0.0.1:{http}", proc, creds.admin)
        )
    for s in servers:
        host, port = s.url.removeprefix("http://").split(":")
        s.proc.wait_port(host, int(port), 60)
        provision_server(
            s.url,
            name=s.name,
            admin=creds.admin,
            database="vigil",
            service=creds.service,
            viewer=creds.viewer,
        )
    yield servers
    for s in servers:
        s.proc.stop()


@pytest.fixture
def influx_admin(influx_cluster: list[InfluxServerHandle]) -> Iterator[Callable[[str], InfluxNode]]:
    """``influx_admin(name)``: a client of server ``name`` with the admin credential."""
    made: list[InfluxNode] = []

    def get(name: str) -> InfluxNode:
        node = next(s for s in influx_cluster if s.name == name).as_admin()
        made.append(node)
        return node

    yield get
    for node in made:
        node.close()


@pytest.fixture
def storage_settings(request: pytest.FixtureRequest) -> StorageSettings:
    """A fresh database on the three servers, replication factor 2; for a test marked
    ``no_influx`` (services that never talk to InfluxDB) a placeholder, and no server starts."""
    if request.node.get_closest_marker("no_influx"):
        return StorageSettings(
            replication_factor=1, nodes=[StorageNode(name="unused", url="http://127.0.0.1:9")]
        )
    cluster: list[InfluxServerHandle] = request.getfixturevalue("influx_cluster")
    creds: InfluxCredentials = request.getfixturevalue("influx_credentials")
    database = unique("db")
    for s in cluster:
        admin = s.as_admin()
        grant_database(admin, database, creds.service.username, creds.viewer.username)
        admin.close()
    return StorageSettings(
        database=database,
        replication_factor=2,
        vnodes=256,
        timeout_s=10,
        nodes=[StorageNode(name=s.name, url=s.url) for s in cluster],
        username=creds.service.username,
        password_file=creds.service_password_file,
        # Per test: absent until a node operation writes it (the seed is the list above).
        layout_path=request.getfixturevalue("tmp_path") / "storage" / "layout.json",
    )


# -- SMTP --------------------------------------------------------------------------------
@dataclass
class SmtpHandle:
    host: str
    port: int
    folder: Path
    sink: MailSink


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[SmtpHandle]:
    port = free_port()
    controller, sink = start_mailsink(tmp_path / "mail", "127.0.0.1", port)
    yield SmtpHandle("127.0.0.1", port, tmp_path / "mail", sink)
    controller.stop()


# -- the cloud-side configuration --------------------------------------------------------
@dataclass
class CloudConfig:
    path: Path
    config: VigilConfig
    admin_token: str
    #: the dashboards' token for the InfluxDB endpoint (user "reader"): reads all, writes none
    reader_token: str = ""


@pytest.fixture
def cloud_config(
    tmp_path: Path, broker: BrokerHandle, storage_settings: StorageSettings, smtp_server: SmtpHandle
) -> CloudConfig:
    """A config/vigil.yaml for this test's servers, every port free, state under tmp_path."""
    import hashlib

    token = unique("token-")
    token_hash = tmp_path / "secrets" / "admin.token.sha256"
    token_hash.write_text(hashlib.sha256(token.encode()).hexdigest() + "\n")
    reader = unique("reader-")
    reader_hash = tmp_path / "secrets" / "reader.token.sha256"
    reader_hash.write_text(hashlib.sha256(reader.encode()).hexdigest() + "\n")

    def mqtt(user: str) -> dict[str, str]:
        return {
            "client_id": user,
            "username": user,
            "password_file": str(broker.files.password_file(user)),
        }

    data = {
        "broker": broker.settings.model_dump(mode="json"),
        "storage": storage_settings.model_dump(mode="json"),
        "ingest": {
            "mqtt": mqtt("vigil-ingest"),
            "batch_max_messages": 500,
            "batch_linger_ms": 20,
            "hints_dir": str(tmp_path / "ingest" / "hints"),
            "metrics_port": free_port(),
        },
        "alert_engine": {
            "mqtt": mqtt("vigil-alert-engine"),
            "state_path": str(tmp_path / "alert_engine" / "state.sqlite3"),
            "metrics_port": free_port(),
        },
        "notifier": {
            "mqtt": mqtt("vigil-notifier"),
            "smtp": {
                "host": smtp_server.host,
                "port": smtp_server.port,
                "sender": "vigil@test.invalid",
            },
            "recipients": ["ops@test.invalid"],
            # each transition on its own at once, as most tests expect; the grouping tests
            # set their own
            "grouping": {"group_wait_s": 0, "group_interval_s": 0, "repeat_interval_s": 0},
            # the tests' webhook receivers listen on 127.0.0.1
            "webhooks": {"allow_private_networks": True, "max_attempts": 3},
            "state_path": str(tmp_path / "notifier" / "state.sqlite3"),
            "metrics_port": free_port(),
        },
        "api": {
            "mqtt": mqtt("vigil-api"),
            "host": "127.0.0.1",
            "port": free_port(),
            "influx_port": free_port(),
            "database": str(tmp_path / "api" / "api.sqlite3"),
            "admin_token_sha256_file": str(token_hash),
            "reader_token_sha256_file": str(reader_hash),
            "metrics_port": free_port(),
            "broker_owners_file": str(broker.files.live_client_ids),
        },
        "devices": [device_entry(d) for d in TEST_DEVICES],
    }
    path = tmp_path / "vigil.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return CloudConfig(path, load_config(path, environ={}), token, reader)


# -- services as real processes ----------------------------------------------------------
ServiceRunner = Callable[..., ManagedProcess]


@pytest.fixture
def run_service(tmp_path: Path) -> Iterator[ServiceRunner]:
    """Start ``python -m <module> <args>`` as a child process; all are stopped at the end
    and their log tails printed (pytest shows them when the test fails)."""
    started: list[ManagedProcess] = []

    def run(
        module: str, *args: str, name: str | None = None, env: dict[str, str] | None = None
    ) -> ManagedProcess:
        label = name or module
        if module in CONSUMERS and "--ready-file" not in args:
            args = (*args, "--ready-file", str(ready_path(tmp_path / "logs" / f"{label}.log")))
        proc = ManagedProcess(
            label,
            [sys.executable, "-m", module, *args],
            tmp_path / "logs" / f"{label}.log",
            env={"PYTHONUNBUFFERED": "1", **(env or {})},
            cwd=ROOT,
        )
        started.append(proc.start())
        return proc

    yield run
    for proc in started:
        proc.stop()
    for proc in started:
        print(f"----- {proc.name} log -----\n{proc.log_tail(60)}")


@pytest.fixture
def confirmer(broker: BrokerHandle) -> Iterator[Confirmer]:
    """Confirms every reading on the data topics, as ingest does once they are stored."""
    c = Confirmer.start(broker.settings, broker.ident("vigil-ingest", unique("confirmer-")))
    yield c
    c.stop()


@pytest.fixture
def probe(broker: BrokerHandle) -> Iterator[Callable[..., MqttProbe]]:
    """``probe(filter, ...)``: a viewer client recording every message on those filters."""
    probes: list[MqttProbe] = []

    def make(*filters: str) -> MqttProbe:
        p = MqttProbe.start(
            broker.settings, broker.ident("vigil-viewer", unique("probe-")), *filters
        )
        probes.append(p)
        return p

    yield make
    for p in probes:
        p.stop()


# -- the API in-process (Flask test client) -----------------------------------------------
@pytest.fixture
def cluster(cloud_config: CloudConfig) -> Iterator[StorageCluster]:
    """The storage cluster of this test's database, created on every server."""
    c = StorageCluster(cloud_config.config.storage)
    c.ensure_database()
    yield c
    c.close()


@pytest.fixture
def stored(cluster: StorageCluster) -> list[Reading]:
    """Five temperature readings of dev-1 one second apart (STORED_T0, STORED_VALUES), and a
    decoy of dev-2, written to the cluster."""
    readings = [
        Reading(i + 1, "dev-1", STORED_T0 + i * 1000, "sensor", "temperature", v, "C")
        for i, v in enumerate(STORED_VALUES)
    ]
    readings.append(Reading(99, "dev-2", STORED_T0 + 9000, "sensor", "temperature", 1000.0, "C"))
    cluster.write(readings)
    return readings


@pytest.fixture
def app(cloud_config: CloudConfig, cluster: StorageCluster) -> Iterator[Flask]:
    """The API app for this test's servers, connected to the broker."""
    app = create_app(cloud_config.config, test_config={"TESTING": True})
    assert app.extensions["vigil"].mqtt.wait_connected(10)
    yield app
    close_app(app)


@pytest.fixture
def client(app: Flask, cloud_config: CloudConfig) -> FlaskClient:
    """A test client sending the admin token."""
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {cloud_config.admin_token}"
    return c


@pytest.fixture
def anon_client(app: Flask) -> FlaskClient:
    """A test client sending no token."""
    return app.test_client()


__all__ = ["BrokerHandle", "CloudConfig", "wait_until"]
