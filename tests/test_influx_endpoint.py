"""The storage cluster as one InfluxDB 1.x (api/influx_gateway.py), against three real
InfluxDB servers: the Debian ``influx`` CLI and raw HTTP as Grafana and Telegraf send it.
Queries see every series of the cluster, each from the fullest of its replicas; writes go
through Vigil's validation and storage; Vigil's users and tokens are in front."""

from __future__ import annotations

import base64
import gzip
import json
import shutil
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from test_api_users import make_user
from waitress import create_server

from api import INFLUX_EXTENSION
from stack.process import free_port
from vigil.messages import Reading

pytestmark = pytest.mark.integration

T0 = 1_765_000_000_000  # ms
DEVICES = {"dev-1": [1.0, 2.0, 3.0], "dev-2": [10.0, 20.0], "dev-3": [5.0]}


@pytest.fixture
def endpoint(app, cluster) -> Iterator[str]:
    readings = [
        Reading(100 * n + i + 1, device, T0 + i * 1000, "sensor", "temperature", v, "C")
        for n, (device, values) in enumerate(DEVICES.items())
        for i, v in enumerate(values)
    ]
    readings.append(Reading(999, "dev-1", T0, "sensor", "humidity", 55.0))
    assert cluster.write(readings) == []
    port = free_port()
    server = create_server(app.extensions[INFLUX_EXTENSION], host="127.0.0.1", port=port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.close()


def call(url: str, path: str, *, auth: tuple[str, str] | None, data: bytes | None = None,
         headers: dict[str, str] | None = None, **params: str) -> tuple[int, Any]:  # fmt: skip
    req = urllib.request.Request(
        f"{url}{path}?{urllib.parse.urlencode(params)}", data=data, headers=headers or {}
    )
    if auth is not None:
        creds = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {creds}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = resp.read()
            return resp.status, json.loads(body) if body else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def query(url: str, q: str, auth: tuple[str, str], **params: str) -> list[dict[str, Any]]:
    status, body = call(url, "/query", auth=auth, q=q, **params)
    assert status == 200, body
    return body["results"]


def test_the_influx_cli_sees_every_devices_series_of_the_whole_cluster(endpoint, cloud_config):
    influx = shutil.which("influx")
    assert influx is not None, "the influx CLI comes with Debian's influxdb package"
    port = endpoint.rsplit(":", 1)[1]
    out = subprocess.run(
        [influx, "-host", "127.0.0.1", "-port", port, "-username", "admin", "-password",
         cloud_config.admin_token, "-database", cloud_config.config.storage.database,
         "-format", "json", "-execute", "SELECT last(value) FROM temperature GROUP BY device"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    series = json.loads(out)["results"][0]["series"]
    got = {s["tags"]["device"]: s["values"][0][1] for s in series}
    assert got == {d: values[-1] for d, values in DEVICES.items()}


def test_grafana_queries_group_union_and_refuse_what_spans_replicas(endpoint, cloud_config):
    admin = ("admin", cloud_config.admin_token)
    window = f"time >= {T0}ms and time <= {T0 + 10_000}ms"
    (grouped,) = query(
        endpoint,
        f'SELECT mean("value") FROM "temperature" WHERE {window} '
        'GROUP BY time(1m), "device" fill(null)',
        admin,
        epoch="ms",
    )
    means = {
        s["tags"]["device"]: [v for _, v in s["values"] if v is not None] for s in grouped["series"]
    }
    assert means == {d: [sum(v) / len(v)] for d, v in DEVICES.items()}
    (one,) = query(endpoint, "SELECT count(value) FROM temperature WHERE device = 'dev-1'", admin)
    assert one["series"][0]["values"][0][1] == 3
    (across,) = query(endpoint, "SELECT count(value) FROM temperature", admin)
    assert "several devices" in across["error"] and "GROUP BY device" in across["error"]
    (raw,) = query(
        endpoint, f"SELECT value, device FROM temperature WHERE {window}", admin, epoch="ms"
    )
    rows = raw["series"][0]["values"]
    assert len(rows) == sum(len(v) for v in DEVICES.values())
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    (rfc,) = query(endpoint, "SELECT value FROM temperature WHERE device = 'dev-3'", admin)
    assert rfc["series"][0]["values"][0][0] == "2025-12-06T05:46:40.000000201Z"
    show, tags, dbs, rps = query(
        endpoint,
        'SHOW MEASUREMENTS; SHOW TAG VALUES FROM "temperature" WITH KEY = "device"; '
        "SHOW DATABASES; SHOW RETENTION POLICIES",
        admin,
    )
    assert {v[0] for v in show["series"][0]["values"]} >= {"temperature", "humidity"}
    assert [v[1] for v in tags["series"][0]["values"]] == sorted(DEVICES)
    assert dbs["series"][0]["values"] == [[cloud_config.config.storage.database]]
    assert rps["series"][0]["values"][0][0] == "autogen"
    status, body = call(endpoint, "/query", auth=admin, q="DROP MEASUREMENT temperature")
    assert status == 400 and "DELETE /storage" in body["error"]


def test_vigil_tokens_are_in_front_and_a_user_sees_only_their_devices(
    endpoint, client, cloud_config
):
    q = "SELECT last(value) FROM temperature GROUP BY device"
    assert call(endpoint, "/ping", auth=None) == (204, None)
    assert call(endpoint, "/query", auth=None, q=q)[0] == 401
    assert call(endpoint, "/query", auth=("admin", "not-a-token"), q=q)[0] == 401
    alice = make_user(client, "alice")
    (mine,) = query(endpoint, q, ("alice", alice))
    assert [s["tags"]["device"] for s in mine["series"]] == ["dev-1"]
    assert call(endpoint, "/query", auth=("bob", alice), q=q)[0] == 401  # not bob's token
    (tags,) = query(endpoint, 'SHOW TAG VALUES WITH KEY = "device"', ("alice", alice))
    assert {v[1] for s in tags["series"] for v in s["values"]} == {"dev-1"}
    line = f"temperature,device=dev-2 value=1 {T0 * 1_000_000}".encode()
    assert call(endpoint, "/write", auth=("alice", alice), data=line)[0] == 403


def test_the_reader_token_sees_every_device_and_writes_nothing(endpoint, client, cloud_config):
    reader = ("reader", cloud_config.reader_token)
    (every,) = query(endpoint, "SELECT last(value) FROM temperature GROUP BY device", reader)
    assert [s["tags"]["device"] for s in every["series"]] == sorted(DEVICES)
    (tags,) = query(endpoint, 'SHOW TAG VALUES WITH KEY = "device"', reader)
    assert {v[1] for s in tags["series"] for v in s["values"]} == set(DEVICES)
    line = f"temperature,device=dev-2 value=1 {T0 * 1_000_000}".encode()
    status, error = call(endpoint, "/write", auth=reader, data=line)
    assert status == 403 and "never writes" in error["error"]
    # only as "reader", and only here: the API itself does not know the token
    q = "SHOW MEASUREMENTS"
    assert call(endpoint, "/query", auth=("admin", cloud_config.reader_token), q=q)[0] == 401
    anon = client.application.test_client()
    auth = {"Authorization": f"Bearer {cloud_config.reader_token}"}
    assert anon.get("/devices", headers=auth).status_code == 401


def test_writes_go_through_vigils_validation_and_store_once(endpoint, cloud_config, cluster):
    admin = ("admin", cloud_config.admin_token)
    db = cloud_config.config.storage.database
    (created,) = query(endpoint, f'CREATE DATABASE "{db}"', admin)  # Telegraf, at start
    assert "error" not in created
    body = f"cpu,host=dev-4,core=0 usage_idle=97.5,value=3i {T0 // 1000}\n".encode()
    for _ in range(2):  # a retry stores nothing twice
        status, _ = call(endpoint, "/write", auth=admin, data=gzip.compress(body),
                         headers={"Content-Encoding": "gzip"}, db=db, precision="s")  # fmt: skip
        assert status == 204
    assert [p.value for p in cluster.points("dev-4", "cpu_usage_idle")] == [97.5]
    assert [p.value for p in cluster.points("dev-4", "cpu")] == [3.0]
    status, error = call(
        endpoint, "/write", auth=admin, data=b"cpu value=1 1\ncpu,device=dev-4 v=x 2"
    )
    assert status == 400 and "line 1" in error["error"]
    status, error = call(endpoint, "/write", auth=admin, data=body, db="telegraf")
    assert status == 404 and "database not found" in error["error"]


def test_an_aggregate_comes_from_the_fullest_replica(endpoint, cloud_config, cluster, influx_admin):
    """A replica that came back empty (or lost points) does not answer for the series."""
    db = cloud_config.config.storage.database
    emptied = cluster.replicas("dev-1", "temperature")[0].name
    influx_admin(emptied).query(
        'DELETE FROM "temperature" WHERE "device" = \'dev-1\'', db, method="POST"
    )
    assert cluster.count_on(emptied, "temperature", "dev-1") == 0
    q = "SELECT count(value), sum(value) FROM temperature WHERE device = 'dev-1'"
    (one,) = query(endpoint, q, ("admin", cloud_config.admin_token))
    assert one["series"][0]["values"][0][1:] == [3, 6.0]
