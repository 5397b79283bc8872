"""Every parser of outside input is total: any bytes give a value or the parser's own error,
never another exception (hypothesis). The same strategies feed tests/test_mqtt_fuzz.py."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage_nodes import LineProtocolError, reading_to_line
from vigil.jsonin import JsonInputError, loads
from vigil.messages import (
    RULE_KINDS,
    SILENCE_LABELS,
    Alert,
    DeviceStatus,
    InvalidMessage,
    Notification,
    Rule,
    Silence,
    decode_channels,
    decode_rule_set,
    decode_rules,
    parse_readings,
)
from vigil.names import InvalidName, check_name, is_name

TS = 1_763_800_000_000

leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(10**40), 10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
junk = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
names = st.sampled_from(["fz-a", "fz-b", "temperature"]) | st.text(max_size=70)
reading_body = st.fixed_dictionaries(
    {
        "ts": st.just(TS) | st.integers(TS - 10**6, TS + 10**6) | junk,
        "kind": st.sampled_from(["sensor", "quote"]) | junk,
        "metric": names | junk,
        "value": st.floats(allow_nan=False, allow_infinity=False)
        | st.integers(-(10**30), 10**30)
        | junk,
        "unit": st.sampled_from(["", "C", "%"]) | st.text(max_size=40) | junk,
        "tags": st.dictionaries(
            st.sampled_from(["room", "site"]) | st.text(max_size=12),
            st.text(max_size=12) | junk,
            max_size=3,
        )
        | junk,
    },
    optional={"extra": junk, "v": st.just(1) | junk},
)


def payloads(device: str = "dev-0") -> st.SearchStrategy[tuple[str, object, bytes]]:
    """(form, body, bytes): a single reading, a batch, or raw bytes, each often invalid. The
    id of a JSON form is left to the caller (``"id"`` is set to None here)."""
    single = reading_body.map(lambda b: ("single", {**b, "device": device, "id": None}))
    batch = st.lists(reading_body, min_size=1, max_size=4).map(
        lambda rs: ("batch", {"device": device, "readings": [{**r, "id": None} for r in rs]})
    )
    raw = st.binary(max_size=120).map(lambda b: ("raw", b))
    return st.one_of(single, batch, raw, junk.map(lambda j: ("raw", json.dumps(j).encode())))


def encode(form: str, body: object, next_id: object) -> bytes:
    """Bytes of a payload, giving each reading a fresh id from ``next_id()``."""
    if form == "raw":
        assert isinstance(body, bytes)
        return body
    assert isinstance(body, dict)
    if form == "single":
        body = {**body, "id": next_id()}  # type: ignore[operator]
    else:
        body = {**body, "readings": [{**r, "id": next_id()} for r in body["readings"]]}  # type: ignore[operator]
    return json.dumps(body, allow_nan=True).encode()


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=300) | junk.map(lambda j: json.dumps(j).encode()))
def test_json_loader_is_total(data: bytes) -> None:
    try:
        loads(data, max_bytes=1024)
    except JsonInputError as exc:
        assert exc.reason


@FUZZ
@given(payloads())
def test_readings_parse_or_give_a_reason_and_always_make_one_line(sample) -> None:
    counter = iter(range(1, 10**6))
    data = encode(*sample, lambda: next(counter))
    try:
        readings = parse_readings(data, "dev-0")
    except InvalidMessage as exc:
        assert exc.reason
        return
    for r in readings:
        try:
            line = reading_to_line(r)
        except LineProtocolError:
            continue  # refused as one dead letter, never split into lines
        assert "\n" not in line and "\r" not in line
        assert line.startswith(f"{r.metric},")


@FUZZ
@given(st.binary(max_size=200) | junk.map(lambda j: json.dumps(j, allow_nan=True).encode()))
def test_status_alert_and_rule_set_decoders_are_total(data: bytes) -> None:
    for decode in (
        DeviceStatus.decode,
        Alert.decode,
        decode_rules,
        decode_rule_set,
        Notification.decode,
        decode_channels,
    ):
        try:
            decode(data)
        except InvalidMessage as exc:
            assert exc.reason


SILENCE_KEYS = ["id", "owner", "matchers", "starts_at", "ends_at", "comment", "created_at"]
silence_values = (
    junk
    | names
    | st.sampled_from(["s-abcd", "s-0123456789abcdef", "alice", "admin"])
    | st.integers(min_value=-5, max_value=2**53)
    | st.dictionaries(
        st.sampled_from([*SILENCE_LABELS, "colour"]), junk | names | st.just("dev-*"), max_size=3
    )
)


@FUZZ
@given(st.dictionaries(st.sampled_from(SILENCE_KEYS), silence_values, max_size=8))
def test_silences_validate_totally_and_a_rule_set_carries_them(body) -> None:
    try:
        silence = Silence.from_dict(body)
    except InvalidMessage as exc:
        assert exc.reason
    else:
        assert Silence.from_dict(silence.to_dict()) == silence
        assert set(silence.matchers) <= set(SILENCE_LABELS)
    payload = json.dumps({"version": 1, "rules": [], "silences": [body]}).encode()
    try:
        decode_rule_set(payload)
    except InvalidMessage as exc:
        assert exc.reason


RULE_KEYS = [
    "id", "metric", "op", "threshold", "device", "severity", "name", "kind", "clear", "for_s",
    "low", "high", "percent", "window_s", "direction", "symbol", "enabled",
]  # fmt: skip
rule_values = (
    junk
    | names
    | st.sampled_from([*RULE_KINDS, "above", "below", "rise", "fall", "any", "dev-*", "AAPL"])
    | st.floats(min_value=-1e6, max_value=1e7)
)


@FUZZ
@given(st.dictionaries(st.sampled_from(RULE_KEYS), rule_values, max_size=10))
def test_rules_validate_totally(body) -> None:
    try:
        rule = Rule.from_dict(body)
    except InvalidMessage as exc:
        assert exc.reason
        return
    assert is_name(rule.id) and is_name(rule.metric) and rule.kind in RULE_KINDS
    assert Rule.from_dict(rule.to_dict()) == rule


@FUZZ
@given(st.text(max_size=80) | junk)
def test_names_are_whole_matches(value) -> None:
    try:
        name = check_name(value, "thing")
    except InvalidName as exc:
        assert "invalid thing" in str(exc)
        return
    assert isinstance(name, str) and 1 <= len(name) <= 64
    assert name.isascii() and name.isprintable() and name == name.strip()


def test_a_text_input_with_a_raw_lone_surrogate_is_refused() -> None:
    try:
        loads('{"unit": "\ud800"}', max_bytes=1024)
    except JsonInputError as exc:
        assert "surrogate" in exc.reason
    else:  # pragma: no cover
        raise AssertionError("a lone surrogate passed")


NOTIFICATION_KEYS = [
    "id", "owner", "channel", "target", "state", "attempts", "reason", "created_at",
    "updated_at", "repeat", "group", "alerts",
]  # fmt: skip
alert_entries = st.fixed_dictionaries(
    {},
    optional={
        "alert_id": junk | names,
        "rule_id": junk | names,
        "device": junk | names,
        "state": st.sampled_from(["firing", "resolved", "lost"]),
        "severity": junk | names,
        "summary": junk,
    },
)
notification_values = (
    junk
    | names
    | st.sampled_from(["n-1-2", "n-1763800000000-7", "email", "sent", "pending", True])
    | st.integers(min_value=-5, max_value=2**53)
    | st.lists(alert_entries, max_size=3)
)


@FUZZ
@given(st.dictionaries(st.sampled_from(NOTIFICATION_KEYS), notification_values, max_size=12))
def test_delivery_records_validate_totally(body) -> None:
    try:
        record = Notification.decode(json.dumps(body).encode())
    except InvalidMessage as exc:
        assert exc.reason
        return
    assert Notification.decode(record.encode()) == record
