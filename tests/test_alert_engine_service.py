"""The alert engine as a real process against a real Mosquitto: rule sets in, readings in,
alert transitions out, exactly once, across a crash; and its publishing step, in process,
across a broker outage."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
import yaml
from support import ALERT_T0 as T0
from support import alert, connected, counted, reading, scrape, unique, wait_ready, wait_until

from alert_engine.__main__ import main
from alert_engine.service import AlertEngine
from vigil.messages import Alert, Reading, Rule, encode_readings, encode_rules, now_ms
from vigil.mqtt import MqttClient
from vigil.settings import AlertEngineSettings

pytestmark = [pytest.mark.integration, pytest.mark.no_influx]

HIGH = Rule(
    id="high-temp",
    metric="temperature",
    op="above",
    threshold=30.0,
    severity="critical",
    name="high-temp",
)
ALERTS = "vigil/alerts/dev-1/high-temp"


def client(broker, user: str) -> MqttClient:
    """A connected client of a provisioned user (stop it when done). A device's credential
    is bound to its own client id; a service's own id stays free for the service."""
    client_id = None if user.startswith("dev-") else unique(f"{user}-")
    return connected(broker.settings, broker.ident(user, client_id))


def publish_rules(broker, rules: list[Rule], version: int) -> None:
    """What the API does: a retained rule-set snapshot on vigil/config/rules."""
    api = client(broker, "vigil-api")
    try:
        api.publish_wait(broker.topics.rules, encode_rules(rules, version, T0), retain=True)
    finally:
        api.stop()


def send(client: MqttClient, device: str, *readings: Reading) -> None:
    for r in readings:
        client.publish_wait(f"vigil/data/{device}", encode_readings(device, [r]))


def start_engine(run_service, cloud_config, name: str = "alert_engine", version: int = 1):
    proc = run_service("alert_engine", "--config", str(cloud_config.path), name=name)
    wait_until(
        lambda: f"rule set version {version}" in proc.log_tail(200) or not proc.alive(),
        20,
        what="the engine to load the rule set",
    )
    assert proc.alive(), proc.log_tail()
    return proc


def alerts(watch) -> list[Alert]:
    return [Alert.decode(m.payload) for m in watch.on(ALERTS)]


def test_one_firing_and_one_resolved_alert_per_episode(broker, cloud_config, run_service, probe):
    publish_rules(broker, [HIGH], 1)
    engine = start_engine(run_service, cloud_config)
    port = cloud_config.config.alert_engine.metrics_port
    watch = probe("vigil/alerts/#")
    dev = client(broker, "dev-1")
    try:
        first_above = reading(31.2, 2)
        # inside, crossing, the same reading again, still above, back inside
        series = [reading(25.0, 1), first_above, first_above, reading(33.0, 3), reading(29.0, 4)]
        send(dev, "dev-1", *series)
        wait_until(lambda: len(alerts(watch)) >= 2, 15, what="a firing and a resolved alert")
        firing, resolved = alerts(watch)
        assert (firing.state, resolved.state) == ("firing", "resolved")
        assert firing.alert_id == resolved.alert_id
        assert (
            firing.rule_id,
            firing.device,
            firing.metric,
            firing.value,
            firing.threshold,
            firing.op,
            firing.severity,
            firing.started_at,
            firing.reading_id,
        ) == (
            "high-temp",
            "dev-1",
            "temperature",
            31.2,
            30.0,
            "above",
            "critical",
            first_above.ts,
            first_above.id,
        )
        assert (resolved.value, resolved.started_at, resolved.resolved_at) == (
            29.0,
            first_above.ts,
            reading(0, 4).ts,
        )
        # A late resend of the crossing reading changes nothing: the next alert to arrive
        # is the one the next crossing causes.
        send(dev, "dev-1", first_above, reading(40.0, 5))
        wait_until(lambda: len(alerts(watch)) >= 3, 15, what="the second episode")
        send(dev, "dev-1", reading(41.0, 6))  # sentinel: still above, no alert
        counted(port, 8)
    finally:
        dev.stop()
    third = alerts(watch)[2]
    assert (third.state, third.value) == ("firing", 40.0)
    assert third.alert_id != firing.alert_id
    assert [m.topic for m in watch.messages] == [ALERTS] * 3
    assert "FIRING high-temp: temperature on dev-1 is 31.2, above 30" in engine.log_tail(200)


def test_a_firing_rule_deleted_resolves_its_alert(broker, cloud_config, run_service, probe):
    """Issue 9: deleting a firing rule left its alert open forever."""
    publish_rules(broker, [HIGH], 1)
    engine = start_engine(run_service, cloud_config)
    watch = probe("vigil/alerts/#")
    dev = client(broker, "dev-1")
    try:
        send(dev, "dev-1", reading(31.0, 1), reading(34.0, 2))
        wait_until(lambda: alerts(watch), 15, what="the firing alert")
        counted(cloud_config.config.alert_engine.metrics_port, 2)
    finally:
        dev.stop()
    other = Rule(id="other", metric="humidity", op="above", threshold=90.0)
    publish_rules(broker, [other], 2)
    wait_until(lambda: len(alerts(watch)) >= 2, 15, what="the resolution")
    firing, resolved = alerts(watch)
    assert (resolved.state, resolved.alert_id, resolved.reason) == (
        "resolved",
        firing.alert_id,
        "rule deleted",
    )
    assert resolved.value == 34.0 and resolved.resolved_at is not None
    state = cloud_config.config.alert_engine.state_path
    wait_until(lambda: firing_rows(state) == [], 15, what="the state saved without the episode")
    assert "resolves: rule deleted" in engine.log_tail(200)


def firing_rows(path) -> list[tuple]:
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT rule_id, device, alert_id FROM series WHERE alert_id IS NOT NULL"
        ).fetchall()


def test_a_killed_and_restarted_engine_does_not_fire_again(
    broker, cloud_config, run_service, probe
):
    publish_rules(broker, [HIGH], 1)
    engine = start_engine(run_service, cloud_config)
    watch = probe("vigil/alerts/#")
    state_path = cloud_config.config.alert_engine.state_path
    dev = client(broker, "dev-1")
    try:
        send(dev, "dev-1", reading(35.0, 1))
        wait_until(lambda: alerts(watch), 15, what="the firing alert")
        wait_until(lambda: firing_rows(state_path), 10, what="the firing state to be saved")
        engine.kill()
        # While it is down: still above (must not fire again), then back inside.
        send(dev, "dev-1", reading(36.0, 2), reading(20.0, 3))
        start_engine(run_service, cloud_config, name="alert_engine-restarted")
        wait_until(lambda: len(alerts(watch)) >= 2, 15, what="the resolved alert")
        # Sentinel: an invalid message. (How many readings the restarted engine counts
        # depends on whether the kill came before the first one was acknowledged.)
        dev.publish_wait("vigil/data/dev-1", b"{not json")
        counted(
            cloud_config.config.alert_engine.metrics_port,
            1,
            "vigil_errors_total",
            kind="invalid_message",
        )
    finally:
        dev.stop()
    firing, resolved = alerts(watch)
    assert (firing.state, resolved.state) == ("firing", "resolved")
    assert resolved.alert_id == firing.alert_id and resolved.value == 20.0
    # The state is saved right after the alert is confirmed by the broker.
    wait_until(lambda: firing_rows(state_path) == [], 10, what="the resolved state to be saved")


def test_invalid_readings_are_skipped_and_a_newer_rule_set_takes_over(
    broker, cloud_config, run_service, probe
):
    publish_rules(broker, [HIGH], 1)
    engine = start_engine(run_service, cloud_config)
    port = cloud_config.config.alert_engine.metrics_port
    watch = probe("vigil/alerts/#")
    dev = client(broker, "dev-1")
    try:
        dev.publish_wait("vigil/data/dev-1", b"{not json")
        dev.publish_wait("vigil/data/dev-1", json.dumps({"device": "dev-1", "id": 1}).encode())
        send(dev, "dev-1", reading(31.0, 1))
        wait_until(lambda: alerts(watch), 15, what="the firing alert after bad messages")
        assert scrape(port, "vigil_errors_total", kind="invalid_message") == 2
        wait_until(lambda: scrape(port, "vigil_alerts_firing") == 1, 5, what="firing gauge")
        assert scrape(port, "vigil_alert_rules") == 1

        # Version 2 raises the threshold: 31.5 is inside now, so the episode resolves.
        publish_rules(broker, [replace(HIGH, threshold=32.0)], 2)
        wait_until(
            lambda: "rule set version 2 applied" in engine.log_tail(200), 10, what="version 2"
        )
        send(dev, "dev-1", reading(31.5, 2))
        wait_until(lambda: len(alerts(watch)) >= 2, 15, what="the resolved alert")
        send(dev, "dev-1", reading(31.8, 3))  # sentinel: inside under version 2, no alert
        counted(port, 5)
    finally:
        dev.stop()
    firing, resolved = alerts(watch)
    assert (resolved.state, resolved.alert_id, resolved.threshold) == (
        "resolved",
        firing.alert_id,
        32.0,
    )


def test_readings_are_acknowledged_once_processed_also_after_a_broker_restart(
    broker, cloud_config, run_service, probe
):
    publish_rules(broker, [HIGH], 1)
    engine = start_engine(run_service, cloud_config)
    port = cloud_config.config.alert_engine.metrics_port
    broker.stop()
    restarted = now_ms()
    broker.start()  # the engine's next connection: acks must follow it
    wait_ready(engine, 20, after_ms=restarted)
    watch = probe("vigil/alerts/#")
    dev = client(broker, "dev-1")
    try:
        send(dev, "dev-1", reading(35.0, 1), reading(20.0, 2))
        # The resolved alert is confirmed, then saved and acknowledged at once.
        wait_until(lambda: len(alerts(watch)) >= 2, 15, what="a firing and a resolved alert")
        engine.stop()
        assert engine.returncode() == 0
        start_engine(run_service, cloud_config, name="alert_engine-restarted")
        send(dev, "dev-1", reading(40.0, 3))
        wait_until(lambda: len(alerts(watch)) >= 3, 15, what="the next episode")
        send(dev, "dev-1", reading(41.0, 4))  # sentinel: still above, no alert
        # Only the new reading and the sentinel reached the restarted engine: the others
        # were acknowledged.
        counted(port, 2)
    finally:
        dev.stop()
    assert [a.state for a in alerts(watch)] == ["firing", "resolved", "firing"]


def test_validate_config(cloud_config, tmp_path, capsys):
    assert main(["--config", str(cloud_config.path), "--validate-config"]) == 0
    assert capsys.readouterr().out.strip() == "ok"
    bad = tmp_path / "bad.yaml"
    data = yaml.safe_load(cloud_config.path.read_text())
    data["alert_engine"]["metrics_port"] = 70000
    bad.write_text(yaml.safe_dump(data))
    assert main(["--config", str(bad), "--validate-config"]) == 2
    assert capsys.readouterr().err.startswith(f"{bad}: alert_engine.metrics_port: ")


def test_engine_stops_cleanly_on_sigterm(cloud_config, run_service):
    proc = run_service("alert_engine", "--config", str(cloud_config.path))
    wait_until(lambda: "connected to broker" in proc.log_tail(), 15, what="the engine")
    started = time.monotonic()
    proc.stop()
    assert proc.returncode() == 0 and time.monotonic() - started < 5


# -- publishing across a broker outage (in process) ------------------------------------------
@pytest.fixture
def engine(broker, tmp_path) -> Iterator[AlertEngine]:
    settings = AlertEngineSettings(
        mqtt=broker.ident("vigil-alert-engine"),
        state_path=tmp_path / "alert_engine" / "state.sqlite3",
        metrics_port=0,
    )
    engine = AlertEngine(broker.settings, settings)
    yield engine
    engine.stop()


def test_an_alert_published_while_the_broker_is_down_arrives_once_when_it_is_back(broker, engine):
    # A persistent watcher, so that what is published after the restart is queued for it.
    got: list[bytes] = []
    watcher = connected(
        broker.settings, broker.ident("vigil-viewer", unique("watch-")), persistent_session=True
    )
    before, during_1 = alert(alert_id="before"), alert(alert_id="during-1")
    during_2, after = alert(alert_id="during-2", device="dev-2"), alert(alert_id="after")
    try:
        watcher.subscribe("vigil/alerts/#", lambda m: got.append(m.payload))
        engine.start()
        assert engine.mqtt.wait_connected(10)
        assert watcher.subscribed.wait(10), "the watcher could not subscribe"
        assert engine.publish_alerts([before])
        wait_until(lambda: got == [before.encode()], 10, what="the watcher to get the first alert")

        broker.stop()
        wait_until(lambda: not engine.mqtt.connected, 10, what="the engine to notice")
        result: list[bool] = []
        worker = threading.Thread(
            target=lambda: result.append(engine.publish_alerts([during_1, during_2]))
        )
        worker.start()
        worker.join(1.5)
        assert worker.is_alive(), "publish_alerts returned while the broker was down"

        broker.start()
        worker.join(20)
        assert result == [True]
        # A sentinel published after both were confirmed: once it is in, so is any copy.
        assert engine.publish_alerts([after])
        wait_until(lambda: after.encode() in got, 15, what="the alerts published after the outage")
        assert sorted(got) == sorted(a.encode() for a in (before, during_1, during_2, after))
    finally:
        watcher.stop()


def test_publish_alerts_gives_up_only_when_the_engine_stops(broker, engine):
    broker.stop()
    engine.start()
    stopper = threading.Timer(0.5, engine.stop)
    stopper.start()
    started = time.monotonic()
    try:
        assert engine.publish_alerts([alert()]) is False
        assert time.monotonic() - started >= 0.4
    finally:
        stopper.join(20)  # before the fixture stops the engine again
