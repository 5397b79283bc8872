"""Client ids are bound to their users: the broker refuses a client id that belongs to another
user (Vigil's plugin, broker/plugin/vigil_clientid.c), so no credential can kick a service
off the broker or take over its session.

Without it, a device that connects with its own credential but the client id
``vigil-ingest`` closes the ingest service's connection and resumes or wipes its persistent
session; the two then fight over the id and readings the broker acknowledged are lost. Here
each service runs as a real process while a device credential attacks its id over and over
(MQTT 5 and 3.1.1, clean start true and false) as readings or alerts flow: every attack
connect is refused, the service keeps its one connection, and nothing is lost.

The rendering and the plugin build are tested in tests/test_broker_provision.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from support import (
    ALERT_T0,
    NOT_AUTHORIZED,
    alert,
    connack,
    connected,
    counted,
    parsed,
    unique,
    wait_subscribed,
    wait_until,
)

from broker.provision import provision
from stack.process import free_port
from vigil import dynsec
from vigil.atomic import write_atomic
from vigil.messages import Alert, Reading, Rule, encode_readings, encode_rules
from vigil.mqtt import MqttClient
from vigil.topics import Topics

pytestmark = pytest.mark.integration

#: (MQTT 5, clean start): every way of asking for a session
VARIANTS = [(True, True), (True, False), (False, True), (False, False)]
ATTACK_S = 2.0
ATTACKER = "dev-1"


# -- helpers -----------------------------------------------------------------------------
def refusals(broker, client_id: str, user: str) -> int:
    """How many connects the plugin logged refusing ``client_id`` to ``user``."""
    line = f'vigil_clientid: refused client id "{client_id}" to user "{user}" from 127.0.0.1:'
    return broker.files.log.read_text(errors="replace").count(line)


@dataclass
class Attack:
    client_id: str
    codes: list[int]


@contextmanager
def attacking(broker, client_id: str, user: str = ATTACKER) -> Iterator[Attack]:
    """While the block runs, connect as ``user`` with ``client_id`` again and again, cycling
    through MQTT 5 and 3.1.1 with clean start true and false; the block should last at least
    ATTACK_S. Records each CONNACK's reason code."""
    result = Attack(client_id, [])
    stop = threading.Event()

    def run() -> None:
        i = 0
        while not stop.is_set():
            mqtt5, clean = VARIANTS[i % len(VARIANTS)]
            result.codes.append(connack(broker, user, client_id, mqtt5=mqtt5, clean_start=clean)[0])
            i += 1
            stop.wait(0.02)

    thread = threading.Thread(target=run, name=f"attack-{client_id}")
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join(10)


def flowing(send: Callable[[int], None], seconds: float = ATTACK_S) -> int:
    """Call ``send(0)``, ``send(1)``... for ``seconds``; the number of calls made."""
    n, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        send(n)
        n += 1
        time.sleep(0.01)
    return n


def assert_repelled(broker, attack: Attack, user: str = ATTACKER) -> None:
    """Every attack connect was refused (and logged), and the broker never closed the
    connection that holds the id."""
    assert len(attack.codes) >= 4 * len(VARIANTS), f"only {len(attack.codes)} attack connects"
    assert set(attack.codes) == {NOT_AUTHORIZED}, attack.codes
    wait_until(
        lambda: refusals(broker, attack.client_id, user) == len(attack.codes),
        5,
        what=f"one refusal logged per attack connect ({len(attack.codes)})",
    )
    log = broker.files.log.read_text(errors="replace")
    assert f"Client {attack.client_id} already connected" not in log


def assert_kept_one_connection(proc, client_id: str) -> None:
    """The service connected once, with its own id, and never lost the connection."""
    log = proc.log_tail(2000)
    assert log.count("connected to broker 127.0.0.1:") == 1 and f"as {client_id} " in log, log
    assert "disconnected from broker" not in log, log


# -- the services under attack -------------------------------------------------------------
HOT = Rule(
    id="hot", name="hot", metric="temperature", op="above", threshold=30.0, severity="critical"
)


def test_ingest_keeps_its_id_and_stores_every_reading_once(
    broker, cloud_config, cluster, run_service
):
    ingest = run_service("ingest_service", "--config", str(cloud_config.path))
    wait_subscribed(ingest, "vigil/data/+/#")
    device, metric = "dev-0", "temperature"
    sent: list[int] = []
    dev = connected(broker.settings, broker.ident(device))

    def send(i: int) -> None:
        r = Reading(
            id=5_000_000 + i,
            device=device,
            ts=ALERT_T0 + i,
            kind="sensor",
            metric=metric,
            value=float(i),
        )
        dev.publish_wait(f"vigil/data/{device}", encode_readings(device, [r]))
        sent.append(r.id)

    try:
        with attacking(broker, "vigil-ingest") as attack:
            flowing(send)
    finally:
        dev.stop()
    assert len(sent) >= 50, f"only {len(sent)} readings flowed during the attack"
    assert_repelled(broker, attack)

    replicas = {n.name for n in cluster.replicas(device, metric)}

    def ids_on(node: str) -> list[int]:
        series = cluster.nodes[node].query(
            f'SELECT id FROM "{metric}" WHERE device = $d', cluster.database, {"d": device}
        )
        return sorted(int(row[1]) for s in series for row in s["values"])

    wait_until(
        lambda: all(len(ids_on(n)) >= len(sent) for n in replicas),
        20,
        what=f"all {len(sent)} readings on both replicas",
    )
    for node in cluster.nodes:
        assert ids_on(node) == (sorted(sent) if node in replicas else []), node
    assert_kept_one_connection(ingest, "vigil-ingest")


@pytest.mark.no_influx
def test_alert_engine_keeps_its_id_and_emits_every_alert(broker, cloud_config, run_service, probe):
    api = connected(broker.settings, broker.ident("vigil-api", unique("api-")))
    try:
        api.publish_wait(broker.topics.rules, encode_rules([HOT], 1, ALERT_T0), retain=True)
    finally:
        api.stop()
    engine = run_service("alert_engine", "--config", str(cloud_config.path))
    wait_until(lambda: "rule set version 1" in engine.log_tail(200), 20, what="the rule set")
    watch = probe("vigil/alerts/#")
    device = "dev-0"
    sent: list[Reading] = []
    dev = connected(broker.settings, broker.ident(device))

    def send(i: int) -> None:
        # Above, below, above...: every reading is a transition, so every one is an alert.
        r = Reading(
            id=7_000 + i,
            device=device,
            ts=ALERT_T0 + 1_000 * i,
            kind="sensor",
            metric="temperature",
            value=35.0 if i % 2 == 0 else 25.0,
        )
        dev.publish_wait(f"vigil/data/{device}", encode_readings(device, [r]))
        sent.append(r)

    try:
        with attacking(broker, "vigil-alert-engine") as attack:
            flowing(send)
        # Sentinel: the same state as the last reading, so no alert. Once the engine counted
        # it, everything before it has been evaluated and published.
        last = sent[-1]
        sentinel = Reading(
            id=last.id + 1,
            device=device,
            ts=last.ts + 1_000,
            kind="sensor",
            metric="temperature",
            value=last.value,
        )
        dev.publish_wait(f"vigil/data/{device}", encode_readings(device, [sentinel]))
    finally:
        dev.stop()
    assert len(sent) >= 20, f"only {len(sent)} readings flowed during the attack"
    assert_repelled(broker, attack)
    wait_until(lambda: len(watch.on("vigil/alerts/")) >= len(sent), 10, what="every alert")
    counted(cloud_config.config.alert_engine.metrics_port, len(sent) + 1)
    alerts = [Alert.decode(m.payload) for m in watch.on("vigil/alerts/")]
    assert [(a.reading_id, a.state) for a in alerts] == [
        (r.id, "firing" if r.value > 30 else "resolved") for r in sent
    ]
    assert_kept_one_connection(engine, "vigil-alert-engine")


@pytest.mark.no_influx
def test_notifier_keeps_its_id_and_sends_every_email(
    broker, cloud_config, run_service, smtp_server
):
    notifier = run_service("notifier", "--config", str(cloud_config.path))
    wait_subscribed(notifier, "vigil/alerts/#")
    mail = smtp_server.sink.messages
    sent: list[str] = []
    ae = connected(broker.settings, broker.ident("vigil-alert-engine", unique("ae-")))

    def send(i: int) -> None:
        a = alert(alert_id=f"attack-{i}", ts=ALERT_T0 + i)
        ae.publish_wait(f"vigil/alerts/{a.device}/{a.rule_id}", a.encode())
        sent.append(a.alert_id)

    try:
        with attacking(broker, "vigil-notifier") as attack:
            flowing(send)
        first = alert(alert_id=sent[0], ts=ALERT_T0)
        ae.publish_wait(f"vigil/alerts/{first.device}/{first.rule_id}", first.encode())  # sentinel
    finally:
        ae.stop()
    assert len(sent) >= 20, f"only {len(sent)} alerts flowed during the attack"
    assert_repelled(broker, attack)
    wait_until(lambda: len(mail) >= len(sent), 10, what="every email")
    counted(cloud_config.config.notifier.metrics_port, len(sent) + 1)
    assert sorted(str(parsed(m)["X-Vigil-Alert-Id"]) for m in mail) == sorted(sent)
    assert_kept_one_connection(notifier, "vigil-notifier")


# -- who may use which id ------------------------------------------------------------------
SERVICE_IDS = ["vigil-ingest", "vigil-alert-engine", "vigil-notifier", "vigil-api"]


def test_the_api_keeps_its_id_against_a_device_and_the_viewer(broker):
    """The API's connection (in process, as the API makes it) holds its id through attacks
    by a device and by the shared viewer credential."""
    lost: list[bool] = []
    api = MqttClient(broker.settings, broker.ident("vigil-api"), persistent_session=True)
    api.on_disconnected.append(lambda: lost.append(True))
    api.start()
    try:
        assert api.wait_connected(10)
        for user in (ATTACKER, "vigil-viewer"):
            with attacking(broker, "vigil-api", user) as attack:
                time.sleep(1.0)
            assert_repelled(broker, attack, user)
        assert api.connected and api.connection == 1 and not lost
    finally:
        api.stop()


@pytest.mark.parametrize("client_id", SERVICE_IDS)
def test_the_viewer_cannot_take_a_service_id(broker, client_id):
    for mqtt5, clean in VARIANTS:
        rc, _ = connack(broker, "vigil-viewer", client_id, mqtt5=mqtt5, clean_start=clean)
        assert rc == NOT_AUTHORIZED, (mqtt5, clean)
    wait_until(lambda: refusals(broker, client_id, "vigil-viewer") == len(VARIANTS), 5)
    log = broker.files.log.read_text()
    assert (
        f'refused client id "{client_id}" to user "vigil-viewer" from 127.0.0.1: '
        f'it belongs to user "{client_id}"' in log
    )


#: (user, client id, CONNACK reason) for every MQTT version and clean start
WHO_GETS_WHICH_ID = [
    ("dev-1", "dev-1", 0),  # a device with its own id
    ("vigil-ingest", "vigil-ingest", 0),  # a service with its own id
    ("dev-1", "dev-2", NOT_AUTHORIZED),  # another device's id
    ("vigil-api", "vigil-ingest", NOT_AUTHORIZED),  # another service's, by a service
    (None, "vigil-ingest", NOT_AUTHORIZED),  # by a client without username
]


def test_owners_keep_their_ids_and_nobody_else_gets_them(broker):
    for user, client_id, want in WHO_GETS_WHICH_ID:
        for mqtt5, clean in VARIANTS:
            got = connack(broker, user, client_id, mqtt5=mqtt5, clean_start=clean)[0]
            assert got == want, (user, client_id, mqtt5, clean)
    # ids nobody owns are free to any user (the viewer's watchers, the tests' probes)
    assert connack(broker, "vigil-viewer", unique("watch-"))[0] == 0
    assert connack(broker, "vigil-viewer", unique("watch-"), mqtt5=False)[0] == 0
    # a device's credential is bound to its own id (the dynamic-security plugin): a hostile
    # device cannot open sessions under other ids either
    assert connack(broker, "dev-1", unique("dev-1-"), mqtt5=False)[0] == NOT_AUTHORIZED
    assert connack(broker, "dev-1", unique("dev-1-"))[0] == NOT_AUTHORIZED
    # an empty id gets one from the broker before the check (MQTT 5 says which); 3.1.1
    # allows it with clean start only
    rc, assigned = connack(broker, "vigil-viewer", "")
    assert rc == 0 and assigned and assigned.startswith("auto-")
    assert connack(broker, "vigil-viewer", "", mqtt5=False)[0] == 0
    assert connack(broker, "dev-1", "")[0] == NOT_AUTHORIZED
    # the plugin never makes a wrong password right
    assert connack(broker, "dev-1", "dev-1", password="wrong")[0] == NOT_AUTHORIZED
    log = broker.files.log.read_text()
    assert 'refused client id "vigil-ingest" to a client without username from 127.0.0.1' in log
    assert 'refused client id "dev-2" to user "dev-1" from 127.0.0.1' in log
    assert 'refused client id "auto-' not in log and 'refused client id "dev-1"' not in log


def test_the_owners_file_is_read_again_on_sighup(broker):
    assert connack(broker, "vigil-viewer", "spare-id")[0] == 0
    owners = broker.files.client_ids
    owners.write_text(owners.read_text() + "spare-id vigil-api\n")
    os.kill(broker.proc.pid, signal.SIGHUP)
    wait_until(
        lambda: connack(broker, "vigil-viewer", "spare-id")[0] == NOT_AUTHORIZED,
        5,
        what="the reload",
    )
    assert connack(broker, "vigil-api", "spare-id")[0] == 0
    # A broken file on reload keeps the table in force.
    owners.write_text("not-two-fields\n")
    os.kill(broker.proc.pid, signal.SIGHUP)
    wait_until(lambda: "keeping the previous" in broker.files.log.read_text(), 5)
    assert connack(broker, "vigil-viewer", "spare-id")[0] == NOT_AUTHORIZED
    assert connack(broker, "vigil-viewer", "vigil-ingest")[0] == NOT_AUTHORIZED
    assert connack(broker, "dev-1", "dev-1")[0] == 0


def test_the_live_owners_file_applies_on_the_next_connect_without_a_signal(broker):
    """What the API writes when it adds a device: no reload, no restart."""
    live = broker.files.live_client_ids
    assert connack(broker, "vigil-viewer", "dev-live")[0] == 0
    write_atomic(live, dynsec.render_owners(["dev-live"]), mode=0o644)
    assert connack(broker, "vigil-viewer", "dev-live")[0] == NOT_AUTHORIZED
    # A broken version keeps the table in force, and says so once.
    write_atomic(live, "one-field\n", mode=0o644)
    for _ in range(3):
        assert connack(broker, "vigil-viewer", "dev-live")[0] == NOT_AUTHORIZED
    log = broker.files.log.read_text()
    assert log.count("keeping the previous") == 1, log
    # Gone: nothing is reserved live any more; the static table still is.
    live.unlink()
    assert connack(broker, "vigil-viewer", "dev-live")[0] == 0
    assert connack(broker, "vigil-viewer", "vigil-ingest")[0] == NOT_AUTHORIZED


@pytest.mark.parametrize(
    ("owners", "error"),
    [
        ("vigil-ingest\n", 'clientids:1: expected "<client id> <username>"'),
        ("a b\na c\n", 'client id "a" is listed twice'),
        (None, "cannot read"),
    ],
)
def test_a_broker_with_a_bad_owners_file_does_not_start(tmp_path, owners, error):
    """Refusing nothing would be silent: the broker stops instead."""
    files = provision(
        broker_dir=tmp_path / "b",
        secrets_dir=tmp_path / "s",
        host="127.0.0.1",
        port=free_port(),
        devices=["dev-1"],
        topics=Topics(),
    )
    if owners is None:
        files.client_ids.unlink()
    else:
        files.client_ids.write_text(owners)
    done = subprocess.run(files.command(), capture_output=True, text=True, timeout=10)
    assert done.returncode != 0
    assert error in files.log.read_text() + done.stderr
