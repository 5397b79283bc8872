"""Fuzzing the MQTT boundary on real servers: hypothesis-made payloads from one device, to the
ingest service and the alert engine (real processes, real Mosquitto, three real InfluxDB).

Each message is stored exactly (each reading on its replicas, with its value) or
dead-lettered with a reason; no point appears that was not sent; neither service stops or
restarts; the alert engine dead-letters nothing (it only skips invalid readings: nothing
raised) and still fires on an honest reading sent last.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import ALERT_T0, connected, publish_all, unique, wait_subscribed, wait_until
from test_parsers_fuzz import encode, payloads

from storage_nodes import LineProtocolError, StorageCluster, reading_to_line
from vigil.messages import (
    InvalidMessage,
    Reading,
    Rule,
    encode_readings,
    encode_rules,
    parse_readings,
)

pytestmark = pytest.mark.integration

MESSAGES_PER_EXAMPLE = 40


@pytest.mark.integration
def test_fuzzed_payloads_are_stored_exactly_or_dead_lettered(
    cloud_config, broker, run_service, probe
):
    dead = probe("vigil/deadletter/#")
    alerts = probe("vigil/alerts/#")
    api = connected(broker.settings, broker.ident("vigil-api", unique("api-")))
    hot = Rule("hot", "honest", "above", 30.0, device="dev-1", severity="critical")
    api.publish_wait(broker.topics.rules, encode_rules([hot], 1, ALERT_T0), retain=True)
    api.stop()
    ingest = run_service("ingest_service", "--config", str(cloud_config.path))
    engine = run_service("alert_engine", "--config", str(cloud_config.path))
    wait_subscribed(ingest, "vigil/data/+/#")
    wait_until(lambda: "rule set version 1" in engine.log_tail(200), 20, what="the rule set")
    pids = (ingest.pid, engine.pid)
    cluster = StorageCluster(cloud_config.config.storage)
    ids = itertools.count(1)
    accepted: list[Reading] = []
    refused_messages = 0

    @settings(
        max_examples=6,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(st.lists(payloads(), min_size=MESSAGES_PER_EXAMPLE, max_size=MESSAGES_PER_EXAMPLE))
    def run(samples) -> None:
        nonlocal refused_messages
        batch = [encode(*s, lambda: next(ids)) for s in samples]
        publish_all(
            broker.settings, broker.ident("dev-0"), [("vigil/data/dev-0", b) for b in batch]
        )
        for payload in batch:
            try:
                readings = parse_readings(payload, "dev-0")
            except InvalidMessage:
                refused_messages += 1
                continue
            accepted.extend(readings)

    run()
    # The honest reading last: once it fired, the engine has been through everything.
    honest = Reading(10**9, "dev-1", ALERT_T0, "sensor", "honest", 35.0)
    publish_all(
        broker.settings,
        broker.ident("dev-1"),
        [("vigil/data/dev-1", encode_readings("dev-1", [honest]))],
    )
    lines_ok = []
    for r in accepted:
        try:
            reading_to_line(r)
            lines_ok.append(r)
        except LineProtocolError:
            pass
    unwritable = len(accepted) - len(lines_ok)

    def letters() -> list[dict]:
        return [json.loads(m.payload) for m in dead.messages]

    def stored_total() -> int:
        total = 0
        for name, node in cluster.nodes.items():
            for s in node.query("SHOW MEASUREMENTS", cluster.database):
                for (measurement,) in s["values"]:
                    total += cluster.count_on(name, measurement)
        return total

    want_stored = 2 * len(lines_ok) + 2  # two replicas each, and the honest reading
    wait_until(
        lambda: (
            alerts.messages
            and len(letters()) >= refused_messages + unwritable
            and stored_total() >= want_stored - 2 * sum(1 for x in letters() if "reading_id" in x)
        ),
        timeout=60,
        what="every message stored or dead-lettered, and the alert",
    )
    assert (ingest.pid, engine.pid) == pids and ingest.alive() and engine.alive()
    got = letters()
    by_service = Counter(x["service"] for x in got)
    assert by_service["alert_engine"] == 0, [x for x in got if x["service"] != "ingest"]
    whole = [x for x in got if "reading_id" not in x]
    per_reading = {x["reading_id"] for x in got if "reading_id" in x}
    assert len(whole) == refused_messages + unwritable, got
    assert per_reading <= {r.id for r in lines_ok}  # a reading InfluxDB refused, by itself
    assert all(x["reason"] for x in got)

    # Stored exactly: each accepted reading on its replicas with its value; nothing else.
    assert stored_total() == 2 * (len(lines_ok) - len(per_reading)) + 2
    for r in lines_ok:
        if r.id in per_reading:
            continue
        for node in cluster.replicas(r.device, r.metric):
            series = node.query(
                f'SELECT value FROM "{r.metric}" WHERE device = $d AND id = $i',
                cluster.database,
                {"d": r.device, "i": r.id},
            )
            assert series and series[0]["values"][0][1] == pytest.approx(r.value), (r, node)
    assert json.loads(alerts.messages[0].payload)["device"] == "dev-1"
