"""POST /ingest: readings over HTTP into the real InfluxDB ring, validated as on MQTT,
stored once however often they are retried; refusals are precise problems."""

from __future__ import annotations

import json

import pytest
from support import STORED_T0 as T0
from test_api_users import bearer, make_user

pytestmark = pytest.mark.integration


def batch(device: str = "dev-4", ids=(1, 2)) -> dict:
    return {
        "device": device,
        "readings": [
            {"id": i, "ts": T0 + i * 1000, "kind": "sensor", "metric": "energy", "value": i * 1.5}
            for i in ids
        ],
    }


def test_readings_are_stored_once_however_often_sent(client, cluster):
    for _ in range(2):  # a retry stores nothing twice
        resp = client.post("/ingest", json=batch())
        assert resp.status_code == 200, resp.get_json()
        assert resp.get_json() == {"device": "dev-4", "stored": 2, "ids": [1, 2]}
    for node in cluster.replicas("dev-4", "energy"):
        assert cluster.count_on(node.name, "energy", "dev-4") == 2
    latest = client.get("/devices/dev-4/metrics/energy/latest").get_json()
    assert latest["value"] == 3.0 and latest["id"] == 2
    single = {"device": "dev-4", "id": 3, "ts": T0 + 3000, "kind": "sensor", "metric": "energy",
              "value": 9.0}  # fmt: skip
    assert client.post("/ingest", json=single).get_json()["stored"] == 1


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (b"{not json", 400, "payload is not valid JSON"),
        (json.dumps({"readings": []}).encode(), 400, "device None is missing"),
        (json.dumps(batch("nobody")).encode(), 404, "neither configured nor added"),
        (json.dumps({**batch(), "readings": [{"id": 1}]}).encode(), 400, "reading"),
        (json.dumps({**batch(), "extra": 1}).encode(), 400, "unknown field"),
    ],
)
def test_bad_input_gets_a_precise_problem(client, body, status, detail):
    resp = client.post("/ingest", data=body, content_type="application/json")
    assert resp.status_code == status and resp.mimetype == "application/problem+json"
    assert detail in resp.get_json()["detail"], resp.get_json()


def test_a_user_writes_for_their_own_devices_and_a_disabled_device_is_refused(client):
    alice = make_user(client, "alice")  # dev-1 is alice's, dev-4 the admin's
    anon = client.application.test_client()
    for device in ("dev-4", "dev-404"):  # another's, and none: the same 404
        resp = anon.post("/ingest", json=batch(device), headers=bearer(alice))
        assert resp.status_code == 404 and resp.get_json()["detail"] == f"no device {device!r}"
    resp = anon.post("/ingest", json=batch("dev-1"), headers=bearer(alice))
    assert resp.status_code == 200, resp.get_json()
    assert anon.post("/ingest", json=batch()).status_code == 401
    assert client.post("/devices/dev-5/disable").status_code == 200
    resp = client.post("/ingest", json=batch("dev-5"))
    assert resp.status_code == 403 and "is disabled" in resp.get_json()["detail"]
    assert client.post("/ingest", data="x", content_type="text/plain").status_code == 415
