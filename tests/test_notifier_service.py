"""The notifier as a real process: alerts from a real Mosquitto, emails to a real aiosmtpd."""

from __future__ import annotations

import pytest
import yaml
from aiosmtpd.controller import Controller
from support import (
    alert,
    connected,
    counted,
    parsed,
    scrape,
    subjects,
    unique,
    wait_ready,
    wait_until,
)

from notifier.__main__ import main
from notifier.store import SentStore
from stack.mailsink import start_mailsink
from stack.process import free_port
from vigil.messages import Alert
from vigil.mqtt import MqttClient

pytestmark = [pytest.mark.integration, pytest.mark.no_influx]

DUPLICATES = "vigil_notifier_duplicates_total"


def alert_engine_client(broker) -> MqttClient:
    """Connected as the alert engine's user (the only one allowed on vigil/alerts/#)."""
    return connected(broker.settings, broker.ident("vigil-alert-engine", unique("ae-")))


def publish(client: MqttClient, *alerts: Alert) -> None:
    for a in alerts:
        client.publish_wait(f"vigil/alerts/{a.device}/{a.rule_id}", a.encode())


def start_notifier(run_service, cloud_config, name: str = "notifier", env=None):
    proc = run_service("notifier", "--config", str(cloud_config.path), name=name, env=env)
    wait_ready(proc, 20)
    return proc


def test_one_email_per_alert_transition_and_none_for_a_redelivery(
    broker, cloud_config, run_service, smtp_server
):
    notifier = start_notifier(run_service, cloud_config)
    port = cloud_config.config.notifier.metrics_port
    mail = smtp_server.sink.messages
    first = alert(alert_id="ep-1")
    ae = alert_engine_client(broker)
    try:
        publish(ae, first)
        wait_until(lambda: mail, 15, what="the first email")
        msg = parsed(mail[0])
        assert subjects(mail) == ["[FIRING critical] high-temp on dev-1: temperature 31.2 above 30"]
        assert msg["To"] == "ops@test.invalid" and msg["From"] == "vigil@test.invalid"
        text = msg.get_body(("plain",)).get_content()
        html = msg.get_body(("html",)).get_content()
        for body in (text, html):
            for fact in ("high-temp", "dev-1", "temperature", "31.2", "30", "ep-1"):
                assert fact in body

        publish(ae, first)  # redelivered / republished: same alert id and state
        ae.publish_wait("vigil/alerts/dev-1/high-temp", b"not an alert")
        publish(ae, alert("resolved", alert_id="ep-1", value=29.0))  # the episode resolving
        wait_until(lambda: len(mail) >= 2, 15, what="the resolved email")
        publish(ae, first)  # sentinel: already emailed
        counted(port, 5)
    finally:
        ae.stop()
    assert (
        "sent 1 message(s) to the dead-letter topic (first: vigil/alerts/dev-1/high-temp: "
        "alert message: payload is not JSON" in notifier.log_tail()
    )
    assert subjects(mail) == [
        "[FIRING critical] high-temp on dev-1: temperature 31.2 above 30",
        "[RESOLVED critical] high-temp on dev-1: temperature 29 no longer above 30",
    ]
    assert scrape(port, DUPLICATES) == 2

    # After a restart the sent-alert log still knows both; a new episode still gets through.
    notifier.stop()
    assert notifier.returncode() == 0
    start_notifier(run_service, cloud_config, name="notifier-restarted")
    second = alert(alert_id="ep-2", value=35.0)
    ae = alert_engine_client(broker)
    try:
        publish(ae, first, second)
        wait_until(lambda: len(mail) >= 3, 15, what="the second episode's email")
        publish(ae, second)  # sentinel: already emailed
        counted(port, 3)
    finally:
        ae.stop()
    assert len(mail) == 3 and "35" in subjects(mail)[2]


def test_emails_wait_for_the_smtp_server_and_none_is_lost(
    broker, cloud_config, run_service, tmp_path
):
    port = free_port()  # nothing listens here yet
    notifier = start_notifier(
        run_service, cloud_config, env={"VIGIL__NOTIFIER__SMTP__PORT": str(port)}
    )
    down_1 = alert(alert_id="down-1")
    down_2 = alert(alert_id="down-2", rule_id="low-batt", rule="low-batt")
    ae = alert_engine_client(broker)
    controller = None
    try:
        publish(ae, down_1, down_2)
        wait_until(lambda: "cannot email" in notifier.log_tail(), 15, what="a failed send attempt")
        controller, sink = start_mailsink(tmp_path / "late-mail", "127.0.0.1", port)
        wait_until(lambda: len(sink.messages) >= 2, 20, what="both emails once SMTP is up")
        publish(ae, down_1)  # sentinel: already emailed
        counted(cloud_config.config.notifier.metrics_port, 3)
        assert sorted(subjects(sink.messages)) == [
            "[FIRING critical] high-temp on dev-1: temperature 31.2 above 30",
            "[FIRING critical] low-batt on dev-1: temperature 31.2 above 30",
        ]
        assert "failed attempt(s)" in notifier.log_tail()
    finally:
        ae.stop()
        if controller is not None:
            controller.stop()


def test_a_stored_alert_survives_sigkill_and_a_broker_restart_and_is_emailed_once(
    broker, cloud_config, run_service, tmp_path
):
    """An alert is acknowledged once stored, before it is emailed: with the SMTP server
    away, the notifier holds it as a pending notification. SIGKILL the notifier and restart
    the broker: the restarted notifier emails it once the SMTP server is up, and the broker
    has nothing to redeliver."""
    port = free_port()  # no SMTP server yet
    metrics_port = cloud_config.config.notifier.metrics_port
    env = {"VIGIL__NOTIFIER__SMTP__PORT": str(port)}
    notifier = start_notifier(run_service, cloud_config, env=env)
    ae = alert_engine_client(broker)
    try:
        publish(ae, alert(alert_id="held-1"))
    finally:
        ae.stop()
    wait_until(lambda: "cannot email" in notifier.log_tail(), 15, what="a failed send attempt")
    notifier.kill()
    broker.stop()
    broker.start()
    restarted = start_notifier(run_service, cloud_config, name="notifier-restarted", env=env)
    assert "1 notifications to deliver" in restarted.log_tail()
    controller, sink = start_mailsink(tmp_path / "late-mail", "127.0.0.1", port)
    try:
        wait_until(lambda: sink.messages, 30, what="the email once SMTP is up")
        after = alert(alert_id="after-1", rule_id="low-batt", rule="low-batt")
        ae = alert_engine_client(broker)
        try:
            publish(ae, after)
            wait_until(lambda: len(sink.messages) >= 2, 20, what="the next alert's email")
            publish(ae, after)  # sentinel: already received
            counted(metrics_port, 2)
        finally:
            ae.stop()
        assert scrape(metrics_port, DUPLICATES) == 1  # the sentinel only: held-1 never came again
        assert subjects(sink.messages) == [
            "[FIRING critical] high-temp on dev-1: temperature 31.2 above 30",
            "[FIRING critical] low-batt on dev-1: temperature 31.2 above 30",
        ]
    finally:
        controller.stop()
    restarted.stop()
    store = SentStore(cloud_config.config.notifier.state_path)
    try:
        (held,) = (n for n in store.notifications() if n.alerts[0].alert_id == "held-1")
        assert held.state == "sent" and held.attempts >= 2 and held.channel == "email"
        assert store.outcome("held-1", "firing") == ("sent", held.attempts, None)
    finally:
        store.close()


def test_validate_config_reports_a_missing_smtp_password_file(cloud_config, tmp_path, capsys):
    assert main(["--config", str(cloud_config.path), "--validate-config"]) == 0
    assert capsys.readouterr().out.strip() == "ok"
    bad = tmp_path / "bad.yaml"
    missing = tmp_path / "nope.password"
    data = yaml.safe_load(cloud_config.path.read_text())
    data["notifier"]["smtp"].update(username="u", password_file=str(missing))
    bad.write_text(yaml.safe_dump(data))
    assert main(["--config", str(bad), "--validate-config"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: notifier.smtp.password_file: cannot read {missing}" in err


class RefusingSink:
    """An aiosmtpd handler that refuses for good (554) the email of rule ``bad`` and accepts
    every other one."""

    def __init__(self) -> None:
        self.accepted: list[bytes] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        if b"X-Vigil-Rule: bad" in envelope.content:
            return "554 5.7.1 message refused by policy"
        self.accepted.append(envelope.content)
        return "250 OK"


def test_an_email_refused_for_good_is_recorded_failed_and_does_not_block_the_next(
    broker, cloud_config, run_service
):
    sink = RefusingSink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    notifier = start_notifier(
        run_service, cloud_config, env={"VIGIL__NOTIFIER__SMTP__PORT": str(port)}
    )
    ae = alert_engine_client(broker)
    try:
        refused = alert(alert_id="bad-1", rule_id="bad", rule="bad")
        publish(ae, refused, alert(alert_id="fine-1"))
        wait_until(lambda: sink.accepted, 20, what="the email after the refused one")
        assert len(sink.accepted) == 1 and b"X-Vigil-Alert-Id: fine-1" in sink.accepted[0]
        metrics = cloud_config.config.notifier.metrics_port
        assert scrape(metrics, "vigil_notifications_failed_total") == 1
        assert "refused '[FIRING critical] bad on dev-1" in notifier.log_tail()
        publish(ae, refused)  # a redelivery of the failed one: not tried again
        counted(metrics, 3)
        assert scrape(metrics, "vigil_notifications_failed_total") == 1
    finally:
        ae.stop()
        controller.stop()
    notifier.stop()
    store = SentStore(cloud_config.config.notifier.state_path)
    try:
        outcome = store.outcome("bad-1", "firing")
        assert outcome is not None and outcome[0] == "failed" and "554" in (outcome[2] or "")
        assert store.outcome("fine-1", "firing") == ("sent", 1, None)
    finally:
        store.close()


def test_alerts_of_one_rule_go_out_together_then_at_the_group_interval_then_repeat(
    broker, cloud_config, run_service, smtp_server
):
    """group_wait 1 s gathers two devices' alerts into one email; a change after that waits
    for the group interval and carries only that transition; a group still firing is
    notified again after the repeat interval."""
    env = {
        "VIGIL__NOTIFIER__GROUPING__GROUP_WAIT_S": "1",
        "VIGIL__NOTIFIER__GROUPING__GROUP_INTERVAL_S": "2",
        "VIGIL__NOTIFIER__GROUPING__REPEAT_INTERVAL_S": "4",
    }
    start_notifier(run_service, cloud_config, env=env)
    mail = smtp_server.sink.messages
    ae = alert_engine_client(broker)
    try:
        publish(ae, alert(alert_id="g-1"), alert(alert_id="g-2", device="dev-2"))
        wait_until(lambda: mail, 15, what="the group's first email")
        first = parsed(mail[0])
        assert first["Subject"] == "[FIRING:2] high-temp on 2 devices"
        assert first["X-Vigil-Alert-Id"] == "g-1, g-2"
        text = first.get_body(("plain",)).get_content()
        assert "high-temp on dev-1" in text and "high-temp on dev-2" in text

        publish(ae, alert("resolved", alert_id="g-1", value=29.0))
        wait_until(lambda: len(mail) >= 2, 15, what="the resolution, at the group interval")
        second = parsed(mail[1])
        assert second["X-Vigil-Alert-Id"] == "g-1"  # the one transition, not g-2 again
        text = second.get_body(("plain",)).get_content()
        assert "Still firing:" in text and "high-temp on dev-2" in text

        wait_until(lambda: len(mail) >= 3, 15, what="the repeat of what still fires")
        third = parsed(mail[2])
        assert third["Subject"] == "[STILL FIRING:1] high-temp on dev-2"
        assert third["X-Vigil-State"] == "repeat"
    finally:
        ae.stop()
    store = SentStore(cloud_config.config.notifier.state_path)
    try:
        sent = [n for n in store.notifications() if n.state == "sent"]
        assert [n.repeat for n in sent[:3]] == [False, False, True]
        assert sent[1].created_at - sent[0].created_at >= 2000  # the group interval
        assert sent[2].created_at - sent[1].created_at >= 4000  # the repeat interval
    finally:
        store.close()
