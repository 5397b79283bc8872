"""The device status board fed by retained status messages (pure: no broker)."""

from __future__ import annotations

import paho.mqtt.client as paho

from api.db import DeviceRow
from api.status import StatusBoard, list_devices
from vigil.messages import DeviceStatus
from vigil.settings import DeviceEntry
from vigil.topics import Topics


def _msg(topic: str, payload: bytes) -> paho.MQTTMessage:
    msg = paho.MQTTMessage(topic=topic.encode())
    msg.payload = payload
    return msg


def test_a_status_message_sets_and_an_empty_one_clears_the_status():
    board = StatusBoard(Topics())
    board.on_message(
        _msg("vigil/status/dev-1", DeviceStatus("dev-1", "online", 1700000000000).encode())
    )
    assert board.get("dev-1") == DeviceStatus("dev-1", "online", 1700000000000)
    board.on_message(
        _msg("vigil/status/dev-1", DeviceStatus("dev-1", "offline", 1700000005000, "lost").encode())
    )
    assert board.get("dev-1") == DeviceStatus("dev-1", "offline", 1700000005000, "lost")
    board.on_message(_msg("vigil/status/dev-1", b""))
    assert board.get("dev-1") is None


def test_bad_or_mismatched_status_messages_are_ignored():
    board = StatusBoard(Topics())
    board.on_message(_msg("vigil/status/dev-1", b"not json"))
    board.on_message(_msg("vigil/status/dev-1", DeviceStatus("dev-2", "online").encode()))
    board.on_message(_msg("vigil/status/bad level", DeviceStatus("x", "online").encode()))
    assert board.all() == {}


def test_devices_list_merges_configured_added_and_seen_devices_sorted():
    configured = [DeviceEntry(id="b", description="bench"), DeviceEntry(id="a", owner="alice")]
    seen = {"c": DeviceStatus("c", "online", 5), "b": DeviceStatus("b", "offline", 7, "will")}
    rows = {
        "b": DeviceRow("b", "", False, True, 1, '{"interval_s": 2.0}', 42),
        "d": DeviceRow("d", "added live", True, False, 1, None, 0, "bob"),
    }
    none = {"added": False, "disabled": False, "config_version": None}
    assert list_devices(configured, seen, rows) == [
        {
            "id": "a",
            "description": "",
            "owner": "alice",
            "configured": True,
            **none,
            "status": None,
        },
        {
            "id": "b",
            "description": "bench",
            "owner": "admin",
            "configured": True,
            "added": False,
            "disabled": True,
            "config_version": 42,
            "status": {"state": "offline", "ts": 7, "reason": "will", "config_version": 0},
        },
        {
            "id": "c",
            "description": "",
            "owner": None,
            "configured": False,
            **none,
            "status": {"state": "online", "ts": 5, "reason": "", "config_version": 0},
        },
        {
            "id": "d",
            "description": "added live",
            "owner": "bob",
            "configured": False,
            "added": True,
            "disabled": False,
            "config_version": None,
            "status": None,
        },
    ]
    assert [d["id"] for d in list_devices(configured, seen)] == ["a", "b", "c"]
