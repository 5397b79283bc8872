"""Each user's alerts reach only that user: users, rules and recipients made through the API,
a real alert engine and notifier, a real SMTP server. alice's alert is emailed to alice's
address, the admin's to the configured list, and bob, who has no address, gets nothing (his
transition is recorded as skipped with the reason)."""

from __future__ import annotations

import pytest
from support import parsed, reading, wait_ready, wait_until
from test_alert_engine_service import client as mqtt_client
from test_alert_engine_service import send
from test_api_users import bearer, make_user

from notifier.store import SentStore

pytestmark = pytest.mark.integration


def rule(rule_id: str, threshold: float) -> dict:
    return {"id": rule_id, "metric": "temperature", "op": "above", "threshold": threshold}


def test_alerts_go_to_their_owners_recipients_only(
    client, cloud_config, broker, run_service, smtp_server
):
    anon_client = client.application.test_client()  # sends each user's own token
    alice, bob = make_user(client, "alice"), make_user(client, "bob")
    resp = anon_client.put(
        "/users/alice/recipients", json={"emails": ["alice@test.invalid"]}, headers=bearer(alice)
    )
    assert resp.status_code == 200 and resp.get_json()["emails"] == ["alice@test.invalid"]
    # bob cannot see or set alice's recipients: the 404 of a user that does not exist
    assert anon_client.get("/users/alice/recipients", headers=bearer(bob)).status_code == 404
    bad = anon_client.put(
        "/users/bob/recipients", json={"emails": ["not an address"]}, headers=bearer(bob)
    )
    assert bad.status_code == 400 and "is not an email address" in bad.get_json()["detail"]

    for token, body in ((alice, rule("a-hot", 30)), (bob, rule("b-hot", 31))):
        assert anon_client.post("/rules", json=body, headers=bearer(token)).status_code == 201
    assert client.post("/rules", json=rule("ops-hot", 32)).status_code == 201
    version = client.get("/rules").get_json()["version"]

    config = str(cloud_config.path)
    notifier = run_service("notifier", "--config", config)
    engine = run_service("alert_engine", "--config", config)
    wait_ready(notifier, 20)
    wait_ready(engine, 20)
    wait_until(lambda: f"rule set version {version}" in engine.log_tail(200), 20, what="rules")

    # each user's rule watches only their own device: dev-1 is alice's, dev-2 bob's
    for device in ("dev-1", "dev-2"):
        dev = mqtt_client(broker, device)
        try:
            send(dev, device, reading(40, 1, device))
        finally:
            dev.stop()
    mail = smtp_server.sink.messages
    wait_until(lambda: len(mail) >= 3, 20, what="alice's and the admin's emails")
    wait_until(lambda: "not emailing" in notifier.log_tail(), 10, what="bob's skipped")
    to = {
        (str(parsed(m)["X-Vigil-Rule"]), str(parsed(m)["X-Vigil-Device"])): str(parsed(m)["To"])
        for m in mail
    }
    assert to == {
        ("a-hot", "dev-1"): "alice@test.invalid",
        ("ops-hot", "dev-1"): "ops@test.invalid",  # the admin's rule watches every device
        ("ops-hot", "dev-2"): "ops@test.invalid",
    }
    assert "user bob has no email recipients" in notifier.log_tail()

    notifier.stop()
    store = SentStore(cloud_config.config.notifier.state_path)
    try:
        assert store.outcome("b-hot:dev-2:1001", "firing") == (
            "skipped",
            1,
            "user bob has no email recipients",
        )
    finally:
        store.close()
