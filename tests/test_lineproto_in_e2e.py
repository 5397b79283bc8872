"""Telegraf's outputs.mqtt (data_format "influx") into a real ingest, Mosquitto and InfluxDB:
line protocol on a device's data topic is stored, each field a series of that device; the
same payload again stores nothing twice; a line that does not map is dead-lettered with its
line number and reason, and the device's later payloads are stored."""

from __future__ import annotations

import json

import pytest
from support import publish_all, wait_until
from test_hostile_payloads import ingesting

from storage_nodes.repair import query_ns

pytestmark = pytest.mark.integration

NS = 1_765_000_000_000_000_000


def test_telegraf_line_protocol_is_stored_once_and_what_does_not_map_is_dead_lettered(
    cloud_config, broker, run_service, probe
):
    dead, _ingest, cluster = ingesting(cloud_config, run_service, probe)
    payload = (
        f"cpu,cpu=cpu-total,host=box usage_idle=97.5,usage_user=2.5 {NS}\n"
        f"cpu,cpu=cpu-total,host=box usage_idle=96.0,usage_user=4.0 {NS + 10 * 10**9}\n"
    ).encode()
    bad = f'cpu,host=box usage_idle=1 {NS}\ncpu,host=box state="on" {NS}'.encode()
    later = f"mem,host=box used_percent=41.5 {NS}".encode()
    ident = broker.ident("dev-3")
    for message in (payload, payload, bad, later):  # the first one twice: a redelivery
        publish_all(broker.settings, ident, [("vigil/data/dev-3", message)])
    wait_until(lambda: cluster.latest("dev-3", "mem_used_percent"), 20, what="the later one")
    wait_until(lambda: dead.messages, 10, what="the dead letter")
    idle = cluster.points("dev-3", "cpu_usage_idle", limit=10)
    assert [(p.ts, p.value) for p in idle] == [(NS // 10**6 + 10_000, 96.0), (NS // 10**6, 97.5)]
    for node in cluster.replicas("dev-3", "cpu_usage_idle"):  # once on each replica
        rows = query_ns(node, "SELECT value, host, cpu FROM cpu_usage_idle", cluster.database)
        assert [r[1:] for s in rows for r in s["values"]] == [
            [97.5, "box", "cpu-total"],
            [96.0, "box", "cpu-total"],
        ]
    (letter,) = [json.loads(m.payload) for m in dead.messages]
    assert letter["topic"] == "vigil/data/dev-3"
    assert "line 2: field state: is a string: Vigil stores numbers" in letter["reason"]
    assert letter["payload"].encode() == bad  # nothing lost: the message whole
    assert cluster.latest("dev-3", "cpu_usage_idle").value == 96.0  # the bad one stored nothing
