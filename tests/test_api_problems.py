"""Every error is an RFC 9457 problem (application/problem+json) with a useful detail:
Flask's own 404/405/413/415, bad parameters (400 naming the parameter), unreachable storage
(503), and unexpected exceptions (500)."""

from __future__ import annotations

import pytest

from api import close_app, create_app
from stack.process import free_port
from vigil.settings import StorageNode, StorageSettings

PROBLEM_KEYS = {"type", "title", "status", "detail", "instance"}


def problem(resp, status):
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/problem+json"
    body = resp.get_json(force=True)
    assert set(body) >= PROBLEM_KEYS
    assert body["status"] == status and body["detail"]
    return body


def test_unknown_route_is_a_404_problem(client):
    body = problem(client.get("/nope/deeper"), 404)
    assert body["instance"] == "/nope/deeper" and body["title"] == "Not Found"
    assert body["type"] == "about:blank" and "/nope/deeper" in body["detail"]


def test_wrong_method_is_a_405_problem_listing_the_allowed_ones(client):
    resp = client.put("/rules", json={})
    body = problem(resp, 405)
    assert "PUT is not allowed on /rules" in body["detail"]
    assert "POST" in body["detail"] and "POST" in resp.headers["Allow"]


@pytest.mark.parametrize(
    ("url", "param"),
    [
        ("/devices/dev-1/metrics/temperature/mean?n=0", "n"),
        ("/devices/dev-1/metrics/temperature/mean?n=abc", "n"),
        ("/devices/dev-1/metrics/temperature/history?limit=10001", "limit"),
        ("/devices/dev-1/metrics/temperature/history?since=yesterday", "since"),
        ("/devices/dev-1/metrics/temperature/history?order=sideways", "order"),
        ("/devices/dev-1/metrics/temperature/history?since=5&until=4", "since"),
        ("/devices/dev-1/metrics/temperature/history?lmit=5", "lmit"),
        ("/devices/dev-1/metrics/temperature/latest?n=1", "n"),
        ('/devices/dev-1/metrics/temp";DROP/latest', "metric"),
        ("/devices/dev%201/metrics/temperature/latest", "device"),
        ("/devices/-dev/metrics/temperature/replicas", "device"),
        ("/devices/" + "d" * 65, "device"),
        ("/rules/bad%20id", "rule_id"),
        # issue 6: was a 502 (the name passed a "$" pattern and reached InfluxDB)
        ("/devices/dev-1/metrics/temperature%0A/latest", "metric"),
        ("/devices/dev-1%0A/metrics/temperature/history", "device"),
        ("/devices/dev-1/metrics/temperature/mean?n=5%0A", "n"),
        ("/devices/dev-1/metrics/temperature/mean?n=%D9%A5", "n"),
        ("/devices/dev-1/metrics/temperature/mean?n=1&n=2", "n"),
        ("/devices?x=1", "x"),
        ("/devices/dev-1?x=1", "x"),
        ("/ring?x=1", "x"),
        ("/devices/dev-1/metrics/temperature/replicas?x=1", "x"),
        ("/rules?x=1", "x"),
    ],
)
def test_bad_parameters_are_400_problems_naming_the_parameter(client, url, param):
    body = problem(client.get(url), 400)
    assert body["parameter"] == param
    assert body["type"] == "urn:vigil:problem:invalid-parameter"
    assert body["detail"].startswith(f"{param}: ")


def test_a_body_that_is_not_json_is_refused(client):
    body = problem(client.post("/rules", data="id=x", content_type="text/plain"), 415)
    assert "application/json" in body["detail"]
    body = problem(client.post("/rules", data="{nope", content_type="application/json"), 400)
    assert "not valid JSON" in body["detail"]


def test_an_oversized_body_is_a_413_problem(client):
    body = problem(client.post("/rules", data="x" * 70_000, content_type="application/json"), 413)
    assert "at most 65536 bytes" in body["detail"]


def test_the_instance_is_the_percent_encoded_path(client):
    body = problem(client.get("/devices/dev-1/metrics/temperature%0A/latest"), 400)
    assert body["instance"] == "/devices/dev-1/metrics/temperature%0A/latest"
    body = problem(client.get("/nope/%C3%A9%00"), 404)
    assert body["instance"] == "/nope/%C3%A9%00" and "\x00" not in body["detail"]
    body = problem(client.get("/nope/" + "x" * 5000), 404)
    assert len(body["detail"]) < 300 and len(body["instance"]) == 5006


def test_an_unexpected_exception_is_a_500_problem(cloud_config):
    app = create_app(cloud_config.config, test_config={"TESTING": True})
    try:

        def boom():
            """Fails on purpose."""
            raise RuntimeError("secret internals")

        app.add_url_rule("/boom", view_func=boom)
        resp = app.test_client().get(
            "/boom", headers={"Authorization": f"Bearer {cloud_config.admin_token}"}
        )
        body = problem(resp, 500)
        assert "RuntimeError" in body["detail"] and "secret internals" not in body["detail"]
    finally:
        close_app(app)


def test_unreachable_storage_is_a_503_problem(cloud_config):
    dead = StorageSettings(
        database="vigil",
        replication_factor=1,
        timeout_s=2,
        nodes=[StorageNode(name="dead", url=f"http://127.0.0.1:{free_port()}")],
    )
    config = cloud_config.config.model_copy(update={"storage": dead})
    app = create_app(config, test_config={"TESTING": True})
    try:
        client = app.test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {cloud_config.admin_token}"
        for url in (
            "/devices/dev-1/metrics/temperature/latest",
            "/devices/dev-1/metrics/temperature/mean",
            "/devices/dev-1/metrics/temperature/history",
        ):
            resp = client.get(url)
            body = problem(resp, 503)
            assert body["type"] == "urn:vigil:problem:storage-unavailable"
            assert "dead" in body["detail"] and resp.headers["Retry-After"] == "5"
            assert body["series"] == "dev-1/temperature" and body["servers"] == ["dead"]
        health = client.get("/health").get_json()
        assert health["status"] == "degraded"
        assert health["storage"] == [{"name": "dead", "url": dead.nodes[0].url, "up": False}]
    finally:
        close_app(app)
