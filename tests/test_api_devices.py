"""Devices with their status from retained MQTT status messages, and queries answered from
readings stored in the real InfluxDB ring."""

from __future__ import annotations

import pytest
from support import STORED_T0 as T0
from support import STORED_VALUES as VALUES
from support import wait_until

from api import close_app, create_app
from vigil.messages import DeviceStatus, Reading
from vigil.mqtt import MqttClient
from vigil.settings import DeviceEntry


def test_latest_is_the_newest_reading(client, stored):
    resp = client.get("/devices/dev-1/metrics/temperature/latest")
    assert resp.status_code == 200
    assert resp.get_json() == {
        "device": "dev-1",
        "metric": "temperature",
        "ts": T0 + 4000,
        "value": 10.0,
        "id": 5,
    }


def test_mean_of_the_last_n_values(client, stored):
    body = client.get("/devices/dev-1/metrics/temperature/mean?n=2").get_json()
    assert body == {"device": "dev-1", "metric": "temperature", "mean": 7.25, "count": 2, "n": 2}
    body = client.get("/devices/dev-1/metrics/temperature/mean").get_json()
    assert (body["mean"], body["count"], body["n"]) == (pytest.approx(4.4), 5, 10)


def test_history_in_both_orders_with_a_time_window_and_a_limit(client, stored):
    body = client.get("/devices/dev-1/metrics/temperature/history").get_json()
    assert body["order"] == "desc" and body["limit"] == 100
    assert body["points"] == [
        {"ts": T0 + i * 1000, "value": VALUES[i], "id": i + 1} for i in reversed(range(5))
    ]
    url = (
        f"/devices/dev-1/metrics/temperature/history?since={T0 + 1000}&until={T0 + 3000}&order=asc"
    )
    assert [p["id"] for p in client.get(url).get_json()["points"]] == [2, 3, 4]
    url = "/devices/dev-1/metrics/temperature/history?limit=2"
    assert [p["value"] for p in client.get(url).get_json()["points"]] == [10.0, 4.5]


def test_a_series_without_data(client, stored):
    for what in ("latest", "mean"):
        resp = client.get(f"/devices/dev-1/metrics/humidity/{what}")
        assert resp.status_code == 404 and resp.mimetype == "application/problem+json"
        assert "no readings of 'humidity' stored for device 'dev-1'" in resp.get_json()["detail"]
    body = client.get("/devices/dev-1/metrics/humidity/history").get_json()
    assert body["points"] == []


def test_identifiers_are_quoted_not_pasted(client, stored, cluster):
    """A metric that is an InfluxQL keyword still works, as an identifier."""
    cluster.write([Reading(7, "dev-1", T0, "sensor", "select", 3.25)])
    body = client.get("/devices/dev-1/metrics/select/latest").get_json()
    assert body["value"] == 3.25 and body["id"] == 7


def test_devices_show_the_status_a_device_retained(broker, cloud_config, cluster):
    config = cloud_config.config.model_copy(
        update={"devices": [DeviceEntry(id="dev-0", description="bench")]}
    )
    device = MqttClient(broker.settings, broker.ident("dev-1"))
    device.start()
    assert device.wait_connected(10)
    topic = broker.topics.status("dev-1")
    device.publish_wait(topic, DeviceStatus("dev-1", "online", T0).encode(), retain=True)

    app = create_app(config, test_config={"TESTING": True})  # subscribes after the publish
    try:
        client = app.test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {cloud_config.admin_token}"

        def listed():
            body = client.get("/devices").get_json()
            return body if len(body["devices"]) == 2 else None

        body = wait_until(listed, 10, what="dev-1 in the device list")
        assert body["devices"] == [
            {
                "id": "dev-0",
                "description": "bench",
                "owner": "admin",
                "configured": True,
                "added": False,
                "disabled": False,
                "config_version": None,
                "status": None,
            },
            {
                "id": "dev-1",
                "description": "",
                "owner": None,  # only seen: nobody's, so only an admin sees it
                "configured": False,
                "added": False,
                "disabled": False,
                "config_version": None,
                "status": {"state": "online", "ts": T0, "reason": "", "config_version": 0},
            },
        ]
        device.publish_wait(
            topic, DeviceStatus("dev-1", "offline", T0 + 5, "bye").encode(), retain=True
        )
        wait_until(
            lambda: client.get("/devices/dev-1").get_json()["status"]["state"] == "offline",
            10,
            what="dev-1 offline",
        )
        assert client.get("/devices/dev-1").get_json()["status"] == {
            "state": "offline",
            "ts": T0 + 5,
            "reason": "bye",
            "config_version": 0,
        }
        assert client.get("/devices/dev-0").get_json()["status"] is None
        resp = client.get("/devices/dev-5")
        assert resp.status_code == 404 and "dev-5" in resp.get_json()["detail"]
    finally:
        close_app(app)
        device.stop()


def test_a_devices_metrics_are_discovered_across_the_servers(client, cluster, stored):
    cluster.write(
        [
            Reading(101, "dev-1", T0, "sensor", "humidity", 40.0, "%"),
            Reading(102, "dev-3", T0, "sensor", "pressure", 1000.0, "hPa"),
        ]
    )
    resp = client.get("/devices/dev-1/metrics")
    assert resp.status_code == 200
    assert resp.get_json() == {
        "device": "dev-1",
        "metrics": ["humidity", "temperature"],
        "unreachable": [],
    }
    assert client.get("/devices/dev-3/metrics").get_json()["metrics"] == ["pressure"]
    none = client.get("/devices/dev-7/metrics")
    assert none.status_code == 404 and none.mimetype == "application/problem+json"
    assert client.get("/devices/bad%20id/metrics").status_code == 400
    assert client.get("/devices/dev-1/metrics?x=1").status_code == 400
