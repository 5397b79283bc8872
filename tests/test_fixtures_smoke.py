"""The fixtures start real servers, and the broker enforces the generated ACL."""

from __future__ import annotations

import subprocess

from support import wait_until

from storage_nodes.client import InfluxNode


def test_broker_confines_a_device_to_its_own_subtree(broker, probe):
    watch = probe("vigil/#")
    pw = broker.password("dev-1")
    base = [
        "mosquitto_pub",
        "-h",
        broker.files.host,
        "-p",
        str(broker.files.port),
        "-u",
        "dev-1",
        "-i",
        "dev-1",  # a device's credential is bound to its own client id
        "-P",
        pw,
        "-q",
        "1",
    ]
    subprocess.run([*base, "-t", "vigil/data/dev-2", "-m", "spoofed"], check=True)
    subprocess.run([*base, "-t", "vigil/alerts/dev-1/x", "-m", "forged"], check=True)
    subprocess.run([*base, "-t", "vigil/data/dev-1", "-m", "own"], check=True)
    wait_until(lambda: watch.on("vigil/data/dev-1"), what="the device's own message")
    assert [m.payload for m in watch.messages] == [b"own"]


def test_broker_refuses_anonymous_and_wrong_passwords(broker):
    base = [
        "mosquitto_pub",
        "-h",
        broker.files.host,
        "-p",
        str(broker.files.port),
        "-t",
        "vigil/data/dev-1",
        "-m",
        "x",
        "-q",
        "1",
    ]
    anon = subprocess.run(base, capture_output=True, text=True)
    wrong = subprocess.run([*base, "-u", "dev-1", "-P", "nope"], capture_output=True, text=True)
    assert anon.returncode != 0 and "not authorised" in (anon.stderr + anon.stdout).lower()
    assert wrong.returncode != 0


def test_influx_servers_answer(influx_cluster):
    for s in influx_cluster:
        assert InfluxNode(s.name, s.url).ping()


def test_a_publish_the_acl_refuses_is_an_error_not_a_delivery(broker):
    import pytest

    from vigil.mqtt import MqttClient, PublishError

    client = MqttClient(broker.settings, broker.ident("vigil-api"))
    refused = []
    client.on_refused.append(lambda mid, why: refused.append(why))
    client.start()
    try:
        assert client.wait_connected(10)
        with pytest.raises(PublishError, match="refused by the broker"):
            client.publish_wait("vigil/data/dev-1", b"{}", timeout=10)
        client.publish_wait("vigil/config/rules", b"{}", timeout=10)  # allowed: no error
    finally:
        client.stop()
    assert len(refused) == 1 and "authori" in refused[0].lower()
