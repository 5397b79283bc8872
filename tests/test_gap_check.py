"""Loss made visible (issue 8, point 5): the gap check compares what a device's status says
has left its outbox with what storage holds. Pure set logic (vigil.gaps, against a set
oracle), and the API's checker against real InfluxDB servers and a real Mosquitto."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import STORED_T0, wait_until

from api import close_app, create_app
from storage_nodes import StorageCluster
from vigil import gaps
from vigil.messages import DeviceStatus, Reading
from vigil.mqtt import MqttClient

RANGES = st.lists(
    st.tuples(st.integers(0, 60), st.integers(0, 8)).map(lambda t: (t[0], t[0] + t[1])),
    max_size=8,
)


def ids(ranges) -> set[int]:
    return {i for a, b in ranges for i in range(a, b + 1)}


@settings(max_examples=300, deadline=None)
@given(RANGES, RANGES)
def test_subtract_is_set_difference(a, b):
    got = gaps.subtract(a, b)
    assert ids(got) == ids(a) - ids(b)
    assert got == sorted(got) and all(x[1] + 1 < y[0] for x, y in itertools.pairwise(got))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 30), st.integers(0, 40), st.sets(st.integers(0, 80)), RANGES)
def test_unexplained_is_what_is_neither_stored_nor_dropped(lo, n, stored, dropped):
    got = gaps.unexplained(lo, lo + n, stored, dropped)
    assert ids(got) == set(range(lo, lo + n)) - stored - ids(dropped)
    assert gaps.count(got) == len(ids(got))


@pytest.mark.integration
def test_the_check_reports_what_is_neither_stored_nor_dropped(
    broker, cloud_config, probe, tmp_path
):
    cluster = StorageCluster(cloud_config.config.storage, background=False)
    cluster.ensure_database()
    stored = [i for i in range(1, 101) if i not in {10, 11, 12, 50, 51}]
    # two metrics: the check reads every measurement of the device
    cluster.write(
        [
            Reading(i, "dev-1", STORED_T0 + i, "sensor", "temperature" if i % 2 else "rh", 1.0)
            for i in stored
        ]
    )
    events = probe("vigil/events/#")
    device = MqttClient(broker.settings, broker.ident("dev-1"))
    device.start()
    assert device.wait_connected(10)
    # 10-12 were dropped (the status says so); 50-51 were not; 101-104 are still in the outbox
    status = DeviceStatus(
        "dev-1", "online", STORED_T0, dropped=3, dropped_ids=((10, 12),), first_id=1,
        settled_below=101,
    )  # fmt: skip
    device.publish_wait(broker.topics.status("dev-1"), status.encode(), retain=True)
    config = cloud_config.config.model_copy(
        update={
            "api": cloud_config.config.api.model_copy(
                update={"gap_check_interval_s": 0, "metrics_port": 0}
            )
        }
    )
    app = create_app(config, test_config={"TESTING": True})
    try:
        res = app.extensions["vigil"]
        wait_until(lambda: res.status.get("dev-1") == status, 10, what="the status seen")
        checker = res.gap_check
        checker.run_once()
        report = checker.report("dev-1")
        assert report["gaps"] == [[50, 51]] and report["missing"] == 2
        assert report["verified_below"] == 101
        wait_until(lambda: events.on("vigil/events/dev-1"), 10, what="the gap event")
        event = json.loads(events.on("vigil/events/dev-1")[0].payload)
        assert event == {**event, "kind": "gap", "device": "dev-1", "ids": [[50, 51]], "count": 2}
        text = res.metrics.registry
        assert (
            text.get_sample_value("vigil_reading_gaps", {"service": "api", "device": "dev-1"}) == 2
        )
        # Found again next round, but not a new event; once stored, it is gone.
        checker.run_once()
        assert len(events.on("vigil/events/dev-1")) == 1
        cluster.write([Reading(i, "dev-1", STORED_T0 + i, "sensor", "rh", 1.0) for i in (50, 51)])
        checker.run_once()
        assert checker.report("dev-1")["gaps"] == []
        client = app.test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {cloud_config.admin_token}"
        body = client.get("/devices/dev-1/gaps").get_json()
        assert body["check"]["missing"] == 0 and body["check"]["verified_below"] == 101
        assert client.get("/devices/dev-2/gaps").get_json()["check"] is None
    finally:
        close_app(app)
        device.stop()
        cluster.close()
