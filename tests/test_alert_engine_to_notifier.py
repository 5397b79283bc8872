"""Engine and notifier together, as real processes: a reading crossing a threshold becomes one
alert message and one email; coming back inside, one resolved alert and one more email."""

from __future__ import annotations

import pytest
from support import ALERT_T0 as T0
from support import connected, counted, parsed, reading, scrape, unique, wait_ready, wait_until

from vigil.messages import Alert, Rule, encode_readings, encode_rules

pytestmark = [pytest.mark.integration, pytest.mark.no_influx]


def alerts(watch) -> list[Alert]:
    return [Alert.decode(m.payload) for m in watch.messages]


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
    api = connected(broker.settings, broker.ident("vigil-api", unique("api-")))
    try:
        api.publish_wait(broker.topics.rules, encode_rules([rule], 1, T0), retain=True)
    finally:
        api.stop()
    config = str(cloud_config.path)
    notifier = run_service("notifier", "--config", config)
    engine = run_service("alert_engine", "--config", config)
    wait_ready(notifier, 20)
    wait_until(lambda: "rule set version 1 applied" in engine.log_tail(), 20, what="the engine")
    watch = probe("vigil/alerts/#")
    mail = smtp_server.sink.messages

    dev = connected(broker.settings, broker.ident("dev-3"))

    def send(value: float, n: int) -> None:
        r = reading(value, n, "dev-3", "humidity")
        dev.publish_wait("vigil/data/dev-3", encode_readings("dev-3", [r]))

    try:
        for value, n in ((45.0, 1), (18.5, 2), (17.0, 3)):
            send(value, n)
        wait_until(lambda: mail, 20, what="the firing email")
        fired = wait_until(lambda: alerts(watch), 10, what="the firing alert on the probe")
        assert [(a.state, a.rule_id, a.device, a.value) for a in fired] == [
            ("firing", "dry-air", "dev-3", 18.5)
        ]
        msg = parsed(mail[0])
        assert msg["Subject"].strip() == (
            "[FIRING warning] Air too dry on dev-3: humidity 18.5 below 20"
        )
        assert fired[0].alert_id in msg.get_body(("plain",)).get_content()

        send(30.0, 4)
        wait_until(lambda: len(mail) >= 2, 20, what="the resolved email")
        wait_until(lambda: len(watch.messages) >= 2, 10, what="the resolved alert on the probe")
        # Sentinels, each handled only after everything before it: a reading still inside
        # for the engine, then the resolved alert again (already emailed) for the notifier.
        send(31.0, 5)
        counted(cloud_config.config.alert_engine.metrics_port, 5)
    finally:
        dev.stop()
    assert [a.state for a in alerts(watch)] == ["firing", "resolved"]
    ae = connected(broker.settings, broker.ident("vigil-alert-engine", unique("ae-")))
    try:
        ae.publish_wait(watch.messages[1].topic, watch.messages[1].payload)
    finally:
        ae.stop()
    counted(cloud_config.config.notifier.metrics_port, 3)
    assert scrape(cloud_config.config.notifier.metrics_port, "vigil_notifier_duplicates_total") == 1
    assert len(mail) == 2
    assert (
        parsed(mail[1])["Subject"].strip()
        == "[RESOLVED warning] Air too dry on dev-3: humidity 30 no longer below 20"
    )
