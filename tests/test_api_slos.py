"""SLOs through the API: an admin defines and removes them, every user reads them with their
state, invalid definitions and other users' writes are refused with problem+json."""

from __future__ import annotations

import pytest
from test_api_users import bearer, make_user

pytestmark = pytest.mark.integration

LAG = {"id": "fresh", "kind": "ingest_lag", "target": 0.99, "threshold_s": 1.0}


def test_an_admin_defines_an_slo_and_every_user_reads_its_state(client):
    anon = client.application.test_client()
    alice = make_user(client, "alice")
    resp = client.post("/slos", json={**LAG, "description": "stored within a second"})
    assert resp.status_code == 201, resp.get_json()
    assert resp.headers["Location"] == "/slos/fresh"
    made = resp.get_json()
    assert made["window_s"] == 300 and made["state"] == "no_data" and made["violations"] == 0
    assert client.post("/slos", json=LAG).status_code == 409

    # one evaluation: the services of this test's configuration are not running
    client.application.extensions["vigil"].slo.step(1000.0)
    seen = anon.get("/slos/fresh", headers=bearer(alice)).get_json()
    assert seen["state"] == "no_data" and seen["evaluated_at"] == 1_000_000
    assert seen["errors"] and all("/metrics" in e for e in seen["errors"])
    listed = anon.get("/slos", headers=bearer(alice)).get_json()
    assert [s["id"] for s in listed["slos"]] == ["fresh"]

    # alice may read, not define or remove
    for resp in (
        anon.post("/slos", json={**LAG, "id": "mine"}, headers=bearer(alice)),
        anon.delete("/slos/fresh", headers=bearer(alice)),
    ):
        assert resp.status_code == 403 and resp.mimetype == "application/problem+json"
    assert anon.get("/slos").status_code == 401

    assert client.delete("/slos/fresh").status_code == 204
    for resp in (client.get("/slos/fresh"), client.delete("/slos/fresh")):
        assert resp.status_code == 404 and "no SLO 'fresh'" in resp.get_json()["detail"]
    assert client.get("/slos").get_json() == {"slos": []}


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({**LAG, "threshold_s": 0.3}, "threshold_s: one of"),
        ({**LAG, "kind": "uptime"}, "kind: must be one of"),
        ({**LAG, "target": 2}, "target:"),
    ],
)
def test_an_invalid_slo_is_a_problem_naming_the_field(client, body, detail):
    resp = client.post("/slos", json=body)
    assert resp.status_code == 400 and resp.mimetype == "application/problem+json"
    problem = resp.get_json()
    assert problem["type"].endswith("invalid-slo") and detail in problem["detail"]
