"""Engine and notifier together, as real processes: a reading crossing a threshold becomes one
alert message and one email; coming back inside, one resolved alert and one more email."""

from __future__ import annotations

from email import message_from_bytes
from email.policy import default as default_policy

import pytest
from support import unique, wait_until

from vigil.messages import Alert, Reading, Rule, encode_readings, encode_rules
from vigil.mqtt import MqttClient
from vigil.settings import StorageNode, StorageSettings

pytestmark = pytest.mark.integration

T0 = 1_732_300_000_000


@pytest.fixture
def storage_settings() -> StorageSettings:
    """Neither service talks to InfluxDB: a placeholder instead of the real cluster."""
    return StorageSettings(
        replication_factor=1, nodes=[StorageNode(name="unused", url="http://127.0.0.1:9")]
    )


def client(broker, user: str) -> MqttClient:
    c = MqttClient(broker.settings, broker.ident(user, unique(f"{user}-")))
    c.start()
    assert c.wait_connected(10)
    return c


def reading(n: int, value: float) -> Reading:
    return Reading(
        id=n,
        device="dev-3",
        ts=T0 + n * 1000,
        kind="sensor",
        metric="humidity",
        value=value,
        unit="%",
    )


def test_a_crossing_reading_becomes_one_alert_and_one_email(
    broker, cloud_config, run_service, smtp_server, probe
):
    rule = Rule(
        id="dry-air",
        name="Air too dry",
        metric="humidity",
        op="below",
        threshold=20.0,
        severity="warning",
    )
    api = client(broker, "vigil-api")
    api.publish_wait(broker.topics.rules, encode_rules([rule], 1, T0), retain=True)
    api.stop()
    config = str(cloud_config.path)
    notifier = run_service("notifier", "--config", config)
    engine = run_service("alert_engine", "--config", config)
    wait_until(
        lambda: "subscribed to vigil/alerts/#" in notifier.log_tail(), 20, what="the notifier"
    )
    wait_until(lambda: "rule set version 1 applied" in engine.log_tail(), 20, what="the engine")
    watch = probe("vigil/alerts/#")
    mail = smtp_server.sink.messages

    dev = client(broker, "dev-3")
    try:
        for r in (reading(1, 45.0), reading(2, 18.5), reading(3, 17.0)):
            dev.publish_wait("vigil/data/dev-3", encode_readings("dev-3", [r]))
        wait_until(lambda: mail, 20, what="the firing email")
        fired = [Alert.decode(m.payload) for m in watch.messages]
        assert [(a.state, a.rule_id, a.device, a.value) for a in fired] == [
            ("firing", "dry-air", "dev-3", 18.5)
        ]
        msg = message_from_bytes(mail[0].as_bytes(), policy=default_policy)
        assert msg["Subject"].strip() == (
            "[FIRING warning] Air too dry on dev-3: humidity 18.5 below 20"
        )
        assert fired[0].alert_id in msg.get_body(("plain",)).get_content()

        dev.publish_wait("vigil/data/dev-3", encode_readings("dev-3", [reading(4, 30.0)]))
        wait_until(lambda: len(mail) >= 2, 20, what="the resolved email")
    finally:
        dev.stop()
    assert [Alert.decode(m.payload).state for m in watch.messages] == ["firing", "resolved"]
    assert len(mail) == 2
    assert (
        str(message_from_bytes(mail[1].as_bytes(), policy=default_policy)["Subject"]).strip()
        == "[RESOLVED warning] Air too dry on dev-3: humidity 30 no longer below 20"
    )
