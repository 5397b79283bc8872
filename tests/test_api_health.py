"""GET /health is public: everyone sees the status, the broker and each storage server's name
and whether it answers; only a caller with a valid token also sees the servers' URLs."""

from __future__ import annotations

import sqlite3

import pytest

from api import close_app, create_app
from stack.process import free_port
from vigil.settings import StorageNode, StorageSettings

NODES = ["influx-1", "influx-2", "influx-3"]


def test_the_public_view_names_the_servers_but_not_where_they_are(app, anon_client):
    resp = anon_client.get("/health")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    body = resp.get_json()
    assert body == {
        "status": "ok",
        "broker": True,
        "storage": [{"name": n, "up": True} for n in NODES],
    }
    assert "127.0.0.1" not in resp.get_data(as_text=True)


def test_a_valid_token_also_sees_the_urls(client, cloud_config):
    body = client.get("/health").get_json()
    urls = {n.name: n.url for n in cloud_config.config.storage.nodes}
    assert body["status"] == "ok"
    assert body["storage"] == [{"name": n, "url": urls[n], "up": True} for n in NODES]


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer not-a-token",
        "Bearer two words",
        "Basic dXNlcjpwdw==",
        "Bearer " + "a" * 10_000,
        "Bearer tok\x00",
        "Bearer \xff\xfe",
        "",
    ],
    ids=["unknown", "malformed", "other-scheme", "huge", "nul", "latin-1", "empty"],
)
def test_a_bad_token_gets_the_public_view_not_a_401(anon_client, authorization):
    """A probe with a stale credential must neither fail nor learn the URLs."""
    resp = anon_client.get("/health", headers={"Authorization": authorization})
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["status"] == "ok" and all(set(n) == {"name", "up"} for n in body["storage"])


def test_query_parameters_are_ignored(anon_client):
    assert anon_client.get("/health?ts=123&x").status_code == 200


def test_a_server_that_is_down_makes_it_degraded(cloud_config):
    nodes = [
        *cloud_config.config.storage.nodes,
        StorageNode(name="gone", url=f"http://127.0.0.1:{free_port()}"),
    ]
    storage = cloud_config.config.storage.model_copy(update={"nodes": nodes, "timeout_s": 2})
    assert isinstance(storage, StorageSettings)
    config = cloud_config.config.model_copy(update={"storage": storage})
    app = create_app(config, test_config={"TESTING": True})
    try:
        assert app.extensions["vigil"].mqtt.wait_connected(10)
        body = app.test_client().get("/health").get_json()
        assert body["status"] == "degraded" and body["broker"] is True
        assert body["storage"][-1] == {"name": "gone", "up": False}
        assert [n["up"] for n in body["storage"][:3]] == [True, True, True]
    finally:
        close_app(app)


def test_health_answers_when_the_token_database_is_down(anon_client, cloud_config, monkeypatch):
    def down():
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr("api.health.request_caller", down)
    resp = anon_client.get(
        "/health", headers={"Authorization": f"Bearer {cloud_config.admin_token}"}
    )
    assert resp.status_code == 200
    assert all(set(n) == {"name", "up"} for n in resp.get_json()["storage"])
