"""Acceptance across every service, each a real process: a rule created through the API
fires on a reading stored by the pipeline, yields one alert and one email, and resolves; the
API answers from the stored data and names the replicas."""

from __future__ import annotations

import json
import time

import pytest
import requests
from support import publish_all, scrape, wait_subscribed, wait_until

from storage_nodes import StorageCluster
from vigil.messages import Reading, encode_readings

T0 = int(time.time() * 1000)


def reading(i: int, value: float) -> Reading:
    return Reading(
        id=7_000 + i,
        device="dev-1",
        ts=T0 + i * 1000,
        kind="sensor",
        metric="temperature",
        value=value,
        unit="C",
    )


@pytest.mark.integration
def test_rule_from_the_api_to_an_email_and_queries_from_stored_data(
    cloud_config, broker, run_service, probe, smtp_server
):
    conf = ("--config", str(cloud_config.path))
    ingest = run_service("ingest_service", *conf)
    engine = run_service("alert_engine", *conf)
    notifier = run_service("notifier", *conf)
    run_service("api", *conf)
    api = f"http://127.0.0.1:{cloud_config.config.api.port}"
    auth = {"Authorization": f"Bearer {cloud_config.admin_token}"}
    wait_subscribed(ingest, "vigil/data/+/#")
    wait_subscribed(engine, "vigil/data/+/#")
    wait_subscribed(notifier, "vigil/alerts/#")
    wait_until(lambda: _health(f"{api}/health").get("broker"), what="the API's broker link")
    alerts = probe("vigil/alerts/#")

    resp = requests.post(
        f"{api}/rules",
        headers=auth,
        timeout=10,
        json={
            "id": "too-hot",
            "metric": "temperature",
            "device": "dev-1",
            "op": "above",
            "threshold": 30,
            "severity": "critical",
        },
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["pushed"] is True
    wait_until(
        lambda: "too-hot" in engine.log_tail(200) or "1 rule(s)" in engine.log_tail(200),
        what="the alert engine to apply the rule",
    )

    device = broker.ident("dev-1")
    publish_all(
        broker.settings,
        device,
        [("vigil/data/dev-1", encode_readings("dev-1", [reading(1, 21.0)]))],
    )
    publish_all(
        broker.settings,
        device,
        [("vigil/data/dev-1", encode_readings("dev-1", [reading(2, 35.5)]))],
    )
    wait_until(lambda: alerts.messages, what="a firing alert")
    wait_until(lambda: smtp_server.sink.messages, what="an email")
    publish_all(
        broker.settings,
        device,
        [("vigil/data/dev-1", encode_readings("dev-1", [reading(3, 36.0)]))],
    )
    publish_all(
        broker.settings,
        device,
        [("vigil/data/dev-1", encode_readings("dev-1", [reading(4, 22.5)]))],
    )
    wait_until(lambda: len(alerts.messages) >= 2, what="a resolved alert")
    wait_until(lambda: len(smtp_server.sink.messages) >= 2, what="the resolved email")
    # A sentinel no rule watches: once the engine has taken it (five data messages in all),
    # any repeat of an earlier transition would already have been published, and once the
    # notifier has taken every alert that was published, any extra email would be sent.
    publish_all(
        broker.settings,
        device,
        [
            (
                "vigil/data/dev-1",
                encode_readings(
                    "dev-1", [Reading(7_100, "dev-1", T0, "sensor", "humidity", 40.0, "%")]
                ),
            )
        ],
    )
    c = cloud_config.config
    wait_until(
        lambda: scrape(c.alert_engine.metrics_port, "vigil_messages_in_total") == 5,
        what="the alert engine to take the sentinel",
    )
    wait_until(
        lambda: scrape(c.notifier.metrics_port, "vigil_messages_in_total") == len(alerts.messages),
        what="the notifier to take every alert",
    )

    states = [json.loads(m.payload) for m in alerts.messages]
    assert [(a["state"], a["rule_id"], a["device"], a["value"]) for a in states] == [
        ("firing", "too-hot", "dev-1", 35.5),
        ("resolved", "too-hot", "dev-1", 22.5),
    ]
    assert states[0]["alert_id"] == states[1]["alert_id"]
    assert {m.topic for m in alerts.messages} == {"vigil/alerts/dev-1/too-hot"}
    mails = smtp_server.sink.messages
    assert len(mails) == 2
    assert "too-hot" in mails[0]["Subject"] and "dev-1" in mails[0]["Subject"]
    assert mails[0]["To"] == "ops@test.invalid"
    assert list(smtp_server.folder.glob("*.eml")), "the mail sink keeps each email as a file"

    # The API answers from what the pipeline stored.
    base = f"{api}/devices/dev-1/metrics/temperature"
    wait_until(
        lambda: _get(f"{base}/latest", auth).get("value") == 22.5,
        what="the latest reading to be queryable",
    )
    mean = _get(f"{base}/mean?n=2", auth)
    assert mean["mean"] == pytest.approx((36.0 + 22.5) / 2) and mean["count"] == 2
    history = _get(f"{base}/history?order=asc", auth)["points"]
    assert [p["value"] for p in history] == [21.0, 35.5, 36.0, 22.5]
    assert [p["ts"] for p in history] == [reading(i, 0).ts for i in range(1, 5)]
    replicas = [r["name"] for r in _get(f"{base}/replicas", auth)["replicas"]]
    cluster = StorageCluster(cloud_config.config.storage)
    assert replicas == [n.name for n in cluster.replicas("dev-1", "temperature")]
    counts = {n: cluster.count_on(n, "temperature", "dev-1") for n in cluster.nodes}
    assert counts == {n: (4 if n in replicas else 0) for n in cluster.nodes}


def _health(url: str) -> dict:
    try:
        return requests.get(url, timeout=2).json()
    except (requests.RequestException, ValueError):
        return {}


def _get(url: str, headers: dict[str, str]) -> dict:
    resp = requests.get(url, headers=headers, timeout=10)
    return resp.json() if resp.status_code == 200 else {}
