"""Line protocol in (Telegraf's outputs.mqtt, data_format "influx"), pure: each field a
reading named after its measurement, the topic's device, tags, the timestamp, ids stable
across redeliveries; what does not map is refused naming the line; any bytes give readings
or that error (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vigil.lineproto_in import parse_line_protocol, parse_line_protocol_write
from vigil.messages import InvalidMessage, looks_like_line_protocol, parse_readings

NS = 1_765_000_000_123_456_789  # 2025-12-06, in ns
TELEGRAF = (
    f"cpu,cpu=cpu-total,host=box usage_idle=98.5,usage_user=1.25 {NS}\n"
    f"mem,host=box available=1024i,used_percent=37.5 {NS}\n"
    f"temperature,room=lab\\ 2 value=21.5 {NS + 1_000_000}\n"
    f"disk,device=dev-1,path=/ inodes_free=12u,writable=true {NS}\n"
).encode()


def test_each_field_of_a_telegraf_payload_is_a_reading_of_the_topics_device():
    readings = parse_line_protocol(TELEGRAF, "dev-1")
    got = [(r.metric, r.value, r.ts, dict(r.tags)) for r in readings]
    assert got == [
        ("cpu_usage_idle", 98.5, NS // 10**6, {"cpu": "cpu-total", "host": "box"}),
        ("cpu_usage_user", 1.25, NS // 10**6, {"cpu": "cpu-total", "host": "box"}),
        ("mem_available", 1024.0, NS // 10**6, {"host": "box"}),
        ("mem_used_percent", 37.5, NS // 10**6, {"host": "box"}),
        ("temperature", 21.5, NS // 10**6 + 1, {"room": "lab 2"}),  # field "value"
        ("disk_inodes_free", 12.0, NS // 10**6, {"path": "/"}),
        ("disk_writable", 1.0, NS // 10**6, {"path": "/"}),
    ]
    assert all(r.device == "dev-1" and r.kind == "sensor" for r in readings)
    assert len({r.id for r in readings}) == len(readings)
    # the same payload again is the same readings: ingest drops the redelivery
    assert [r.id for r in parse_line_protocol(TELEGRAF, "dev-1")] == [r.id for r in readings]
    # and through the one parser of the data topics
    assert parse_readings(TELEGRAF, "dev-1") == readings
    assert looks_like_line_protocol(b"  cpu x=1 1") and looks_like_line_protocol(b"t x=1 1")
    for json_value in (b' {"a"', b'"x"', b"[1]", b"5", b"-1", b"true", b"null "):
        assert not looks_like_line_protocol(json_value)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (f"cpu,device=dev-2 x=1 {NS}", "line 1: tag device='dev-2' is not the topic's 'dev-1'"),
        (f"cpu x=1 {NS}\ncpu y=2", "line 2: needs 'measurement[,tags] fields"),
        (f'cpu status="ok" {NS}', "line 1: field status: is a string: Vigil stores numbers"),
        (f"cpu x=abc {NS}", "line 1: field x: 'abc' is not a number"),
        (f"cpu x=NaN {NS}", "field x: 'NaN' is not a finite number"),
        ("cpu x=1 soon", "timestamp 'soon' is not an integer of nanoseconds"),
        ("cpu x=1 1700000000000", "is not nanoseconds between 2001 and 2100"),  # ms, not ns
        (f"cp\\ u x=1 {NS}", "metric 'cp u_x' (from the field) is not a valid name"),
        (f"cpu,kind=quote x=1 {NS}", "tag key 'kind' is not a usable tag key"),
        (f"cpu.1h value=1 {NS}", "metric 'cpu.1h' (from the field) is not a valid name"),
        (f"cpu x=1,x=2 {NS}", "repeats a field of a line"),
        ("# only a comment\n\n", "holds no line"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_what_does_not_map_is_refused_naming_the_line(payload, reason):
    raw = payload if isinstance(payload, bytes) else payload.encode()
    with pytest.raises(InvalidMessage) as caught:
        parse_readings(raw, "dev-1")
    assert reason in caught.value.reason


@given(st.binary(max_size=300))
def test_any_bytes_give_readings_or_the_reason(payload):
    try:
        readings = parse_readings(payload, "dev-1")
    except InvalidMessage as exc:
        assert exc.reason
    else:
        assert all(r.device == "dev-1" for r in readings)


LINE = st.builds(
    lambda m, tags, fields, ts: f"{m}{tags} {fields} {ts}",
    st.sampled_from(["cpu", "mem", "temp\\ x", "a,b"]),
    st.sampled_from(["", ",host=box", ",a=1,b=2", ",device=dev-1", ",k=v\\,w", ",x"]),
    st.sampled_from(["value=1", "a=1i,b=2u", 's="x y"', "b=t", "x=1e3", "x=", "=1"]),
    st.sampled_from([str(NS), "", "-1", "1e9"]),
)


@given(st.lists(LINE, min_size=1, max_size=5))
def test_almost_line_protocol_gives_readings_or_the_reason(lines):
    try:
        parse_readings("\n".join(lines).encode(), "dev-1")
    except InvalidMessage as exc:
        assert "line" in exc.reason


@given(st.one_of(st.binary(max_size=300), st.lists(LINE, min_size=1, max_size=5).map(
    lambda lines: "\n".join(lines).encode())), st.sampled_from([1, 1000, 10**9]))  # fmt: skip
def test_a_write_body_gives_readings_of_the_devices_it_names_or_the_reason(body, scale):
    """InfluxDB /write (api/influx_gateway.py): each line's device from tag device or host."""
    try:
        readings = parse_line_protocol_write(body, scale)
    except InvalidMessage as exc:
        assert exc.reason
    else:
        for r in readings:
            assert r.tags.get("host") == r.device or r.device in body.decode()


def test_a_write_line_names_its_device_and_is_scaled_by_the_precision():
    (a, b) = parse_line_protocol_write(b"cpu,host=box-1 value=2,idle=3 1765000000", 10**9)
    assert (a.device, a.metric, a.value, a.ts) == ("box-1", "cpu", 2.0, 1_765_000_000_000)
    assert (b.metric, b.tags) == ("cpu_idle", {"host": "box-1"})
    (c,) = parse_line_protocol_write(b"t,device=d-2,host=h value=1 1765000000000", 1_000_000)
    assert c.device == "d-2" and c.tags == {"host": "h"}
    with pytest.raises(InvalidMessage, match="line 2: the device comes from tag"):
        parse_line_protocol_write(b"t,host=h value=1 1765000000000000000\nt value=1 1", 1)
