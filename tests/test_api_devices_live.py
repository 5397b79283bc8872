"""Devices managed live (issue 8, point 4), against a real Mosquitto with its
dynamic-security plugin, a real ingest process and the real InfluxDB ring: a device added
through the API publishes and is stored without restarting anything; a disabled device is
disconnected at once and refused until enabled; a removed one is gone; a live configuration
reaches a running agent, which applies it or says why not on its status."""

from __future__ import annotations

import json
import threading
import time

import pytest
from support import NOT_AUTHORIZED, connack, wait_ready, wait_until, write_agent_config

from api import close_app, create_app
from edge_agent.agent import Agent
from storage_nodes import StorageCluster
from vigil.agent_settings import load_agent_config
from vigil.mqtt import MqttClient
from vigil.settings import MqttClientSettings

pytestmark = pytest.mark.integration


@pytest.fixture
def api(cloud_config):
    app = create_app(cloud_config.config, test_config={"TESTING": True})
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {cloud_config.admin_token}"
    wait_until(app.extensions["vigil"].mqtt.subscribed.is_set, 10, what="API subscribed")
    yield client
    close_app(app)


def add(api, device: str, tmp_path) -> MqttClientSettings:
    resp = api.post("/devices", json={"id": device, "description": "added live"})
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert resp.headers["Location"] == f"/devices/{device}"
    assert resp.headers["Cache-Control"] == "no-store"
    creds = body["credentials"]
    assert creds["username"] == creds["client_id"] == device and len(creds["password"]) >= 32
    assert body["added"] is True and body["configured"] is False and body["disabled"] is False
    pw = tmp_path / f"{device}.password"
    pw.write_text(creds["password"])
    pw.chmod(0o600)
    return MqttClientSettings(client_id=device, username=device, password_file=pw)


def run_agent(tmp_path, broker, device: str, ident: MqttClientSettings, **overrides):
    path = write_agent_config(
        tmp_path,
        broker,
        device,
        mqtt=ident.model_dump(mode="json", include={"client_id", "username", "password_file"}),
        quotes={"market_hours": False},  # the tests run at any hour
        **overrides,
    )
    agent = Agent(load_agent_config(path, environ={}))
    thread = threading.Thread(target=agent.run, name=device, daemon=True)
    thread.start()
    return agent, thread


def test_a_device_added_through_the_api_is_stored_without_a_restart(
    api, broker, cloud_config, run_service, tmp_path
):
    cluster = StorageCluster(cloud_config.config.storage, background=False)
    cluster.ensure_database()
    wait_ready(run_service("ingest_service", "--config", str(cloud_config.path)), 30)
    broker_pid = broker.proc.pid
    ident = add(api, "dev-new", tmp_path)
    # Its client id is reserved at once: nobody else may take it.
    assert connack(broker, "vigil-viewer", "dev-new")[0] == NOT_AUTHORIZED
    agent, thread = run_agent(tmp_path, broker, "dev-new", ident)
    try:
        wait_until(
            lambda: api.get("/devices/dev-new/metrics/temperature/latest").status_code == 200,
            30,
            what="a reading of the new device stored",
        )
        wait_until(lambda: agent.outbox.depth == 0 or None, 30, what="readings confirmed")
    finally:
        agent.stop()
        thread.join(15)
    listed = {d["id"]: d for d in api.get("/devices").get_json()["devices"]}
    assert listed["dev-new"]["added"] and listed["dev-new"]["description"] == "added live"
    assert broker.proc.pid == broker_pid and broker.proc.alive(), "the broker was not restarted"
    # Twice is a conflict, and so are configured devices and Vigil's own users.
    assert api.post("/devices", json={"id": "dev-new"}).status_code == 409
    assert api.post("/devices", json={"id": "dev-1"}).status_code == 409
    resp = api.post("/devices", json={"id": "vigil-ingest"})
    assert resp.status_code == 400 and "reserved" in resp.get_json()["detail"]
    resp = api.post("/devices", json={"id": "a b"})
    assert resp.status_code == 400 and resp.mimetype == "application/problem+json"
    cluster.close()


def test_a_disabled_device_is_refused_at_once_and_a_removed_one_is_gone(api, broker, tmp_path):
    ident = add(api, "dev-gone", tmp_path)
    device = MqttClient(broker.settings, ident)
    lost = threading.Event()
    device.on_disconnected.append(lost.set)
    device.start()
    try:
        assert device.wait_connected(10)
        t0 = time.monotonic()
        resp = api.post("/devices/dev-gone/disable")
        assert resp.status_code == 200 and resp.get_json()["disabled"] is True
        assert lost.wait(1.0), "the connected device was not disconnected within 1 s"
        assert time.monotonic() - t0 < 1.0 + 5.0  # the API answered within its timeout
    finally:
        device.stop()
    assert connack(broker, "dev-gone", "dev-gone", password=ident.password)[0] == NOT_AUTHORIZED
    # A configured device can be disabled too, and enabled again.
    assert api.post("/devices/dev-1/disable").get_json()["disabled"] is True
    assert connack(broker, "dev-1", "dev-1")[0] == NOT_AUTHORIZED
    assert api.post("/devices/dev-1/enable").get_json()["disabled"] is False
    assert connack(broker, "dev-1", "dev-1")[0] == 0
    assert api.post("/devices/dev-gone/enable").status_code == 200
    assert connack(broker, "dev-gone", "dev-gone", password=ident.password)[0] == 0
    # Removed: the credential is gone and the client id is free again.
    assert api.delete("/devices/dev-1").status_code == 409, "configured: remove it in the YAML"
    assert api.delete("/devices/dev-gone").status_code == 204
    assert connack(broker, "dev-gone", "dev-gone", password=ident.password)[0] == NOT_AUTHORIZED
    assert connack(broker, "vigil-viewer", "dev-gone")[0] == 0
    assert api.delete("/devices/dev-gone").status_code == 404
    assert api.post("/devices/dev-nope/disable").status_code == 404


def test_managing_devices_needs_the_admin_token(api, cloud_config):
    from api.auth import hash_token
    from api.db import Store

    store = Store.open(cloud_config.config.api.database)
    store.add_user("alice", "user")
    store.add_token("alice", hash_token("alice-token"))
    store.close()
    alice = {"Authorization": "Bearer alice-token"}
    assert api.get("/devices", headers=alice).status_code == 200
    for method, url in [
        ("post", "/devices"),
        ("post", "/devices/dev-1/disable"),
        ("put", "/devices/dev-1/config"),
        ("delete", "/devices/dev-1"),
    ]:
        resp = getattr(api, method)(url, json={"id": "dev-x"}, headers=alice)
        assert resp.status_code == 403, (method, url)
        assert "admin token" in resp.get_json()["detail"]


def status_of(api, device: str):
    return (api.get(f"/devices/{device}").get_json() or {}).get("status") or {}


def test_a_live_configuration_is_applied_without_a_restart_or_rejected_with_a_reason(
    api, broker, confirmer, probe, tmp_path
):
    watch = probe("vigil/data/dev-2/#")
    agent, thread = run_agent(tmp_path, broker, "dev-2", broker.ident("dev-2"), interval_s=0.2)
    try:
        wait_until(lambda: status_of(api, "dev-2").get("state") == "online", 10, what="online")
        resp = api.put(
            "/devices/dev-2/config",
            json={
                "interval_s": 0.05,
                "batch_max": 5,
                "sensors": [{"metric": "pressure", "unit": "hPa", "base": 1013}],
                "tickers": ["MSFT"],
            },
        )
        assert resp.status_code == 200, resp.get_json()
        body = resp.get_json()
        assert body["pushed"] is True and resp.headers["Vigil-Config-Pushed"] == "true"
        version = body["version"]
        assert body["config"]["tickers"] == ["MSFT"]
        wait_until(
            lambda: status_of(api, "dev-2").get("config_version") == version,
            10,
            what="the agent reporting the version applied",
        )
        assert agent.config.interval_s == 0.05 and agent.config.batch_max == 5
        start = len(watch.messages)

        def metrics_since() -> set[str]:
            out = set()
            for m in watch.messages[start:]:
                for r in json.loads(m.payload).get("readings", []):
                    out.add(r["tags"]["symbol"] if r["kind"] == "quote" else r["metric"])
            return out

        wait_until(lambda: {"pressure", "MSFT"} <= metrics_since(), 10, what="the new readings")
        got = api.get("/devices/dev-2/config").get_json()
        assert got["version"] == got["applied_version"] == version and got["error"] is None

        # The agent's own check refuses what the API would not send: published by hand.
        api_client = MqttClient(broker.settings, broker.ident("vigil-api", "api-probe"))
        api_client.start()
        try:
            assert api_client.wait_connected(10)
            bad = {"device": "dev-2", "version": version + 1, "interval_s": -1}
            api_client.publish_wait(
                broker.topics.device_config("dev-2"), json.dumps(bad).encode(), retain=True
            )
            wait_until(
                lambda: "interval_s" in status_of(api, "dev-2").get("config_error", ""),
                10,
                what="the rejection on the status",
            )
            status = status_of(api, "dev-2")
            assert status["config_version"] == version, "the version in force stays"
            assert status["config_error"].startswith(f"version {version + 1} rejected")
            assert agent.config.interval_s == 0.05
        finally:
            api_client.stop()
        # The API refuses it before it is sent.
        resp = api.put("/devices/dev-2/config", json={"interval_s": -1})
        assert resp.status_code == 400 and "interval_s" in resp.get_json()["detail"]
        resp = api.put("/devices/dev-2/config", json={"tickers": ["A B"]})
        assert resp.status_code == 400 and "tickers[0]" in resp.get_json()["detail"]
        # Removed: back to the agent's own file.
        resp = api.delete("/devices/dev-2/config")
        assert resp.status_code == 200 and resp.get_json()["version"] is None
        wait_until(
            lambda: status_of(api, "dev-2").get("config_version") == 0, 10, what="back to file"
        )
        assert agent.config.interval_s == 0.2 and agent.config.batch_max == 50
        assert [s.metric for s in agent.config.sensors] == ["temperature", "humidity"]
    finally:
        agent.stop()
        thread.join(15)
