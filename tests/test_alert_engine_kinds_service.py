"""Rule kinds through a real alert engine and a real Mosquitto: a for-duration with
hysteresis, no data from a device that never sent, a device offline from its last will (the
client SIGKILLed), and each alert's current state retained on vigil/firing/; after a restart
nothing fires twice."""

from __future__ import annotations

import signal
import subprocess
import threading

import pytest
from support import reading, wait_until
from test_alert_engine_service import client, publish_rules, send, start_engine

from vigil.messages import Alert, DeviceStatus, Rule

pytestmark = [pytest.mark.integration, pytest.mark.no_influx]

HOT = Rule.from_dict(
    {"id": "hot", "metric": "temperature", "device": "dev-1", "op": "above", "threshold": 30,
     "clear": 28, "for_s": 2}
)  # fmt: skip
SILENT = Rule.from_dict({"id": "silent", "kind": "nodata", "metric": "temperature",
                         "device": "dev-2", "for_s": 2})  # fmt: skip
GONE = Rule.from_dict({"id": "gone", "kind": "offline", "device": "dev-3"})


def transitions(watch, rule_id: str) -> list[tuple[str, str]]:
    out = []
    for m in watch.on("vigil/alerts/"):
        a = Alert.decode(m.payload)
        if a.rule_id == rule_id:
            out.append((a.state, a.device))
    return out


def killed_with_a_will(broker, device: str) -> None:
    """A client of ``device`` with the agent's last will, SIGKILLed once connected: it dies
    without a DISCONNECT, so the broker publishes the will (the offline status)."""
    will = DeviceStatus(device, "offline", None, "connection lost").encode().decode()
    s = broker.settings
    sub = subprocess.Popen(
        ["stdbuf", "-oL", "mosquitto_sub", "-d", "-h", s.host, "-p", str(s.port),
         "-i", device, "-u", device, "-P", broker.password(device),
         "-t", f"vigil/config/devices/{device}",
         "--will-topic", f"vigil/status/{device}", "--will-payload", will, "--will-retain",
         "--will-qos", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    subscribed = threading.Event()

    def read() -> None:
        assert sub.stdout is not None
        for line in sub.stdout:  # -d: the client says what it received (line-buffered)
            if "received SUBACK" in line:
                subscribed.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert subscribed.wait(10), f"mosquitto_sub as {device} did not subscribe"
    finally:
        sub.send_signal(signal.SIGKILL)
        sub.wait(5)


def test_kinds_fire_and_resolve_and_their_state_is_retained(
    broker, cloud_config, run_service, probe
):
    publish_rules(broker, [HOT, SILENT, GONE], 1)
    engine = start_engine(run_service, cloud_config)
    watch = probe("vigil/alerts/#", "vigil/firing/#")
    dev = client(broker, "dev-1")
    try:
        # 31 from n=0: the breach has lasted 2 s at n=2
        send(dev, "dev-1", reading(31, 0), reading(31, 1))
        send(dev, "dev-1", reading(31, 2))
        wait_until(lambda: ("firing", "dev-1") in transitions(watch, "hot"), 15, what="hot")
        # what a client subscribing now learns: the alert firing now
        late = probe("vigil/firing/#")
        current = wait_until(lambda: late.on("vigil/firing/dev-1/hot"), 10, what="retained")
        assert current[-1].retain and Alert.decode(current[-1].payload).state == "firing"
        # 29 is under the threshold but above the clear level: still firing; 27 clears it
        send(dev, "dev-1", reading(29, 3), reading(27, 4))
        wait_until(lambda: ("resolved", "dev-1") in transitions(watch, "hot"), 15, what="clear")
        assert transitions(watch, "hot") == [("firing", "dev-1"), ("resolved", "dev-1")]
        wait_until(
            lambda: watch.on("vigil/firing/dev-1/hot")[-1].payload == b"", 10, what="cleared"
        )
    finally:
        dev.stop()

    # dev-2 never sent anything: no data for 2 s
    wait_until(lambda: transitions(watch, "silent") == [("firing", "dev-2")], 15, what="nodata")
    # dev-3 crashes: its last will says offline
    killed_with_a_will(broker, "dev-3")
    wait_until(lambda: transitions(watch, "gone") == [("firing", "dev-3")], 15, what="offline")
    back = client(broker, "dev-3")
    try:
        back.publish_wait(
            "vigil/status/dev-3",
            DeviceStatus("dev-3", "online", 1_900_000_000_000).encode(),
            retain=True,
        )
    finally:
        back.stop()
    wait_until(lambda: ("resolved", "dev-3") in transitions(watch, "gone"), 15, what="online")

    # A stop lets the batch in hand finish (the resolve of gone, its retained state cleared,
    # then saved), and the restart resumes: dev-2's silence is still the same episode, dev-3
    # is still back.
    engine.stop()
    seen = len(watch.on("vigil/alerts/"))
    start_engine(run_service, cloud_config, name="alert_engine-2")
    dev = client(broker, "dev-1")
    try:  # a new episode of hot, as the sentinel: the restarted engine has ticked by then
        send(dev, "dev-1", reading(31, 10), reading(31, 11), reading(31, 12))
    finally:
        dev.stop()
    wait_until(lambda: len(watch.on("vigil/alerts/")) > seen, 15, what="the sentinel")
    new = [Alert.decode(m.payload) for m in watch.on("vigil/alerts/")[seen:]]
    assert [(a.rule_id, a.state) for a in new] == [("hot", "firing")]
    assert Alert.decode(watch.on("vigil/firing/dev-2/silent")[-1].payload).state == "firing"
