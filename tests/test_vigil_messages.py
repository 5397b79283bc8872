"""The reading, rule and alert contract (pure)."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vigil.messages import (
    Alert,
    DeviceStatus,
    InvalidMessage,
    Reading,
    Rule,
    decode_rules,
    encode_dead_letter,
    encode_readings,
    encode_rules,
    parse_readings,
)

TS = 1_763_800_000_000


def r(i: int, **kw) -> Reading:
    base = dict(
        id=i,
        device="dev-1",
        ts=TS + i,
        kind="sensor",
        metric="temperature",
        value=20.5 + i,
        unit="C",
        tags={"room": "lab"},
    )
    base.update(kw)
    return Reading(**base)


def test_single_and_batch_shapes_round_trip():
    one = [r(1)]
    many = [r(1), r(2, metric="humidity", unit="%", tags={})]
    assert parse_readings(encode_readings("dev-1", one), "dev-1") == one
    assert parse_readings(encode_readings("dev-1", many), "dev-1") == many
    assert "readings" in json.loads(encode_readings("dev-1", many))


def test_the_documented_example_parses():
    payload = (
        b'{"id": 1732300000000001, "device": "dev-1", "ts": 1732300000000, '
        b'"kind": "sensor", "metric": "temperature", "value": 21.5, "unit": "C", '
        b'"tags": {"room": "lab"}}'
    )
    (reading,) = parse_readings(payload, "dev-1")
    assert reading.value == 21.5 and reading.tags == {"room": "lab"}
    assert reading.series_key == "dev-1/temperature"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{", "not JSON"),
        (b'"x"', "JSON object"),
        (
            b'{"id": 1, "ts": 1763800000000, "kind": "sensor", "metric": "t", "value": 1}',
            "missing required field 'device'",
        ),
        (json.dumps({**r(1).to_dict(), "value": None}).encode(), "value must be a number"),
        (json.dumps({**r(1).to_dict(), "ts": 1.5e12}).encode(), "must be an integer"),
        (json.dumps({**r(1).to_dict(), "tags": {"1x": "a"}}).encode(), "not a valid name"),
        (json.dumps({**r(1).to_dict(), "tags": {"a": ""}}).encode(), "must not be empty"),
        (json.dumps({**r(1).to_dict(), "tags": {"a": "b\nc"}}).encode(), "control characters"),
        (json.dumps({**r(1).to_dict(), "v": 2}).encode(), "unsupported message version"),
        (
            json.dumps({"device": "dev-1", "readings": [r(1).to_dict(), r(1).to_dict()]}).encode(),
            "repeats a reading id",
        ),
        (
            json.dumps(
                {"device": "dev-1", "readings": [{**r(1).to_dict(), "device": "dev-2"}]}
            ).encode(),
            "does not match",
        ),
        (b"x" * 300_000, "over"),
        (json.dumps({**r(1).to_dict(), "tags": {"path": "C:\\data"}}).encode(), "backslash"),
        (json.dumps({**r(1).to_dict(), "unit": "m\\"}).encode(), "backslash"),
    ],
)
def test_invalid_payloads_say_why(payload, reason):
    with pytest.raises(InvalidMessage) as err:
        parse_readings(payload, "dev-1")
    assert reason in err.value.reason


def test_device_must_match_the_topic():
    with pytest.raises(InvalidMessage, match="does not match the topic"):
        parse_readings(encode_readings("dev-1", [r(1)]), "dev-2")


@given(
    st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=1, max_size=20)
)
def test_any_finite_values_round_trip(values):
    readings = [r(i + 1, value=v) for i, v in enumerate(values)]
    assert parse_readings(encode_readings("dev-1", readings), "dev-1") == readings


def test_rules_validate_and_round_trip():
    rule = Rule.from_dict(
        {
            "id": "hot",
            "metric": "temperature",
            "op": "above",
            "threshold": 30,
            "device": "dev-1",
            "severity": "critical",
        }
    )
    version, rules = decode_rules(encode_rules([rule], 4, TS))
    assert (version, rules) == (4, [rule])
    for bad, why in [
        ({"id": "x", "metric": "t", "op": "over", "threshold": 1}, "op must be"),
        ({"id": "x", "metric": "t", "op": "above", "threshold": "1"}, "must be a number"),
        ({"id": "x y", "metric": "t", "op": "above", "threshold": 1}, "rule id"),
        ({"id": "x", "op": "above", "threshold": 1}, "'metric'"),
    ]:
        with pytest.raises(InvalidMessage, match=why):
            Rule.from_dict(bad)


def test_alert_round_trip():
    alert = Alert(
        "hot:dev-1:5",
        "hot",
        "hot",
        "dev-1",
        "temperature",
        31.0,
        30.0,
        "above",
        "firing",
        "critical",
        TS,
        TS,
        None,
        5,
    )
    assert Alert.decode(alert.encode()) == alert
    with pytest.raises(InvalidMessage):
        Alert.decode(b'{"state": "exploded"}')


def test_dead_letter_keeps_binary_payloads():
    letter = json.loads(
        encode_dead_letter(reason="r", topic="t", payload=b"\xff", received_at=1, service="ingest")
    )
    assert letter["encoding"] == "base64" and letter["payload"] == "/w=="


def test_a_status_carries_the_agents_heartbeat_metadata_and_round_trips():
    status = DeviceStatus(
        "dev-1",
        "online",
        1_763_000_000_000,
        version="0.1.0",
        sources=("host", "probe"),
        outbox_depth=12,
        unconfirmed=3,
        breaker="open",
        heartbeat_s=30.0,
    )
    assert DeviceStatus.decode(status.encode()) == status
    bare = DeviceStatus("dev-1", "offline", None, "stopped")
    assert set(json.loads(bare.encode())) == {"device", "state", "ts", "reason"}
    for bad, reason in [
        ({"breaker": "melted"}, "breaker must be one of"),
        ({"sources": ["ok", "no/slash"]}, "sources[1]"),
        ({"sources": "host"}, "sources must be a list"),
        ({"heartbeat_s": -1}, "heartbeat_s is outside"),
        ({"outbox_depth": -1}, "outbox_depth"),
        ({"version": "a\nb"}, "control characters"),
    ]:
        obj = {"device": "dev-1", "state": "online", "ts": 1, **bad}
        with pytest.raises(InvalidMessage, match=re.escape(reason)):
            DeviceStatus.decode(json.dumps(obj).encode())
