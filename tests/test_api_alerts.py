"""``GET /alerts`` end to end: rules made through the API, a real alert engine firing on real
MQTT readings, the retained states on vigil/firing/# back in the API. A user sees the alerts
of their own rules only; filters and pages; resolved alerts leave the list."""

from __future__ import annotations

import pytest
from support import reading, wait_ready, wait_until
from test_alert_engine_service import client as mqtt_client
from test_alert_engine_service import send
from test_api_users import bearer, make_user

pytestmark = pytest.mark.integration
PROBLEM = "application/problem+json"


def firing(client, query: str = "", headers=None) -> dict:
    resp = client.get(f"/alerts{query}", headers=headers)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def test_firing_alerts_are_listed_to_their_owners(
    client, anon_client, cloud_config, broker, run_service
):
    alice = make_user(client, "alice")
    mine = {"id": "a-hot", "metric": "temperature", "op": "above", "threshold": 30}
    assert anon_client.post("/rules", json=mine, headers=bearer(alice)).status_code == 201
    admins = {"id": "hot", "metric": "temperature", "op": "above", "threshold": 20,
              "severity": "critical"}  # fmt: skip
    assert client.post("/rules", json=admins).status_code == 201
    version = client.get("/rules").get_json()["version"]
    engine = run_service("alert_engine", "--config", str(cloud_config.path))
    wait_ready(engine, 20)
    wait_until(lambda: f"rule set version {version}" in engine.log_tail(200), 20, what="rules")

    dev = mqtt_client(broker, "dev-1")
    other = mqtt_client(broker, "dev-2")
    try:
        send(dev, "dev-1", reading(31, 1))  # both rules fire on dev-1
        send(other, "dev-2", reading(25, 1, "dev-2"))  # only the admin's on dev-2
        wait_until(lambda: firing(client)["total"] == 3, 20, what="three alerts firing")
        everything = firing(client)
        assert {(a["rule_id"], a["device"], a["owner"]) for a in everything["alerts"]} == {
            ("a-hot", "dev-1", "alice"),
            ("hot", "dev-1", "admin"),
            ("hot", "dev-2", "admin"),
        }
        theirs = firing(anon_client, headers=bearer(alice))
        assert [(a["rule_id"], a["device"]) for a in theirs["alerts"]] == [("a-hot", "dev-1")]
        assert theirs["alerts"][0]["detail"] == "temperature on dev-1 is 31, above 30"

        # filters and pages
        assert firing(client, "?device=dev-2")["total"] == 1
        assert firing(client, "?severity=critical&device=dev-1")["alerts"][0]["rule_id"] == "hot"
        first = firing(client, "?limit=2")
        assert len(first["alerts"]) == 2 and first["next_offset"] == 2
        last = firing(client, "?limit=2&offset=2")
        assert len(last["alerts"]) == 1 and last["next_offset"] is None
        seen = {a["alert_id"] for a in first["alerts"] + last["alerts"]}
        assert seen == {a["alert_id"] for a in everything["alerts"]}

        # back inside: the alerts resolve and leave the list
        send(dev, "dev-1", reading(10, 2))
        wait_until(lambda: firing(client)["total"] == 1, 20, what="dev-1's alerts resolved")
        assert firing(anon_client, headers=bearer(alice))["alerts"] == []
    finally:
        dev.stop()
        other.stop()


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("?severity=loud", "severity"),
        ("?kind=sometimes", "kind"),
        ("?device=a%20b", "device"),
        ("?limit=0", "limit"),
        ("?colour=red", "colour"),
    ],
)
def test_bad_alert_queries_are_precise_400s(client, query, parameter):
    resp = client.get(f"/alerts{query}")
    assert resp.status_code == 400 and resp.mimetype == PROBLEM
    assert parameter in resp.get_json()["detail"]


def test_alerts_need_a_token(anon_client):
    resp = anon_client.get("/alerts")
    assert resp.status_code == 401 and resp.mimetype == PROBLEM
