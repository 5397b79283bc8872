"""InfluxDB line protocol in: what Telegraf's ``outputs.mqtt`` publishes with
``data_format = "influx"``, read as readings (pure, total: any bytes give readings or an
InvalidMessage naming the line and the reason).

Each field of a line is one reading:

- metric ``<measurement>`` for a field named ``value``, ``<measurement>_<field>`` otherwise
  (``cpu usage_idle=98`` is ``cpu_usage_idle``); it must be a Vigil name;
- the device is the topic's: a ``device`` tag, if any, must name it (a device cannot write
  for another); every other tag is a reading tag;
- numbers (``1.5``, ``3i``, ``3u``) and booleans (1 or 0) are values; a string field does not
  map to a number and is refused;
- the timestamp (nanoseconds, required: a redelivery must be the same points) gives ``ts`` in
  milliseconds;
- the id is derived from the metric, the tags and the timestamp, so the same line sent
  again is the same reading (ingest drops it, storage rewrites the same point).

A message that holds a line that does not map is dead-lettered whole, with the line's
number and why: nothing of it is stored, nothing is lost.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

from vigil.messages import (
    MAX_BATCH,
    MAX_ID,
    MAX_TAGS,
    MAX_TS_MS,
    MIN_TS_MS,
    RESERVED_TAGS,
    InvalidMessage,
    Reading,
)
from vigil.names import NAME_RULE, is_name, is_tag_key
from vigil.rollups import is_rollup_metric
from vigil.text import shown

NS_PER_MS = 1_000_000
MAX_TAG_VALUE = 128
#: Most readings (fields) in one /write body: Telegraf sends 1000 metrics a batch.
MAX_WRITE_READINGS = 50_000
_TRUE = frozenset({"t", "T", "true", "True", "TRUE"})
_FALSE = frozenset({"f", "F", "false", "False", "FALSE"})


def _split(s: str, seps: str, *, quotes: bool = False, limit: int = -1) -> list[str]:
    """``s`` split at each unescaped character of ``seps`` (outside double quotes when
    ``quotes``), at most ``limit`` times; the parts keep their escapes."""
    parts: list[str] = []
    start, i, quoted = 0, 0, False
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if quotes and c == '"':
            quoted = not quoted
        elif not quoted and c in seps and (limit < 0 or len(parts) < limit):
            parts.append(s[start:i])
            start = i + 1
        i += 1
    if quoted:
        raise ValueError("a string field is not closed")
    parts.append(s[start:])
    return parts


def _unescape(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s) and s[i + 1] in ',= \\"':
            out.append(s[i + 1])
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def _value(raw: str) -> float:
    if raw.startswith('"'):
        raise ValueError("is a string: Vigil stores numbers")
    if raw in _TRUE:
        return 1.0
    if raw in _FALSE:
        return 0.0
    if raw[-1:] in ("i", "u"):
        digits = raw[:-1]
        if not digits.lstrip("-").isdigit() or (raw[-1] == "u" and digits.startswith("-")):
            raise ValueError(f"{shown(raw, 40)} is not an integer")
        return float(int(digits))
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{shown(raw, 40)} is not a number") from None
    if not math.isfinite(value) or raw.lower().lstrip("+-") in ("nan", "inf", "infinity"):
        raise ValueError(f"{shown(raw, 40)} is not a finite number")
    return value


def _reading_id(metric: str, tags: dict[str, str], ts_ns: int) -> int:
    key = "\x00".join([metric, *(f"{k}={v}" for k, v in sorted(tags.items())), str(ts_ns)])
    digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
    return digest % MAX_ID + 1


def _line(text: str, device: str) -> list[Reading]:
    parts = _split(text, " ", quotes=True)
    parts = [p for p in parts if p != ""] if len(parts) > 3 else parts
    if len(parts) != 3:
        raise ValueError(
            "needs 'measurement[,tags] fields timestamp' (the timestamp, in ns, is required)"
        )
    key, fields_text, ts_text = parts
    if not ts_text.lstrip("-").isdigit():
        raise ValueError(f"timestamp {shown(ts_text, 40)} is not an integer of nanoseconds")
    ts_ns = int(ts_text)
    ts = ts_ns // NS_PER_MS
    if not MIN_TS_MS <= ts <= MAX_TS_MS:
        raise ValueError(f"timestamp {ts_ns} is not nanoseconds between 2001 and 2100")
    key_parts = _split(key, ",")
    measurement = _unescape(key_parts[0])
    if not measurement:
        raise ValueError("the measurement is empty")
    tags: dict[str, str] = {}
    for item in key_parts[1:]:
        name_value = _split(item, "=", limit=1)
        if len(name_value) != 2:
            raise ValueError(f"tag {shown(_unescape(item), 40)} has no '='")
        name, value = (_unescape(p) for p in name_value)
        if name == "device":
            if value != device:
                raise ValueError(f"tag device={shown(value, 40)} is not the topic's {device!r}")
            continue
        if not is_tag_key(name) or name in RESERVED_TAGS:
            raise ValueError(f"tag key {shown(name, 40)} is not a usable tag key ({NAME_RULE})")
        if not value or len(value) > MAX_TAG_VALUE or any(ord(c) < 32 for c in value):
            raise ValueError(f"tag {name}: the value must be 1-{MAX_TAG_VALUE} characters")
        tags[name] = value
    if len(tags) > MAX_TAGS:
        raise ValueError(f"more than {MAX_TAGS} tags")
    out = []
    for item in _split(fields_text, ",", quotes=True):
        name_value = _split(item, "=", quotes=True, limit=1)
        if len(name_value) != 2 or not name_value[1]:
            raise ValueError(f"field {shown(_unescape(item), 40)} has no value")
        field = _unescape(name_value[0])
        metric = measurement if field == "value" else f"{measurement}_{field}"
        if not is_name(metric) or is_rollup_metric(metric):
            raise ValueError(f"metric {shown(metric, 70)} (from the field) is not a valid name")
        try:
            number = _value(name_value[1])
        except ValueError as exc:
            raise ValueError(f"field {field}: {exc}") from None
        rid = _reading_id(metric, tags, ts_ns)
        out.append(Reading(rid, device, ts, "sensor", metric, number, "", dict(tags)))
    return out


def _lines(
    payload: bytes, read: Callable[[str], list[Reading]], what: str, max_readings: int
) -> list[Reading]:
    """Every reading of ``payload``'s lines, each line read by ``read``; InvalidMessage
    naming the line, or when there are none or over ``max_readings`` (``what``: the
    payload, as the reasons name it)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidMessage(f"{what} is not UTF-8") from None
    readings: list[Reading] = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r").strip(" \t")  # noqa: PLW2901
        if not line or line.startswith("#"):
            continue
        try:
            readings += read(line)
        except ValueError as exc:
            raise InvalidMessage(f"{what}: line {number}: {exc}") from None
        if len(readings) > max_readings:
            raise InvalidMessage(f"{what} has over {max_readings} fields")
    if not readings:
        raise InvalidMessage(f"{what} holds no line")
    keys = [(r.device, r.id) for r in readings]
    if len(set(keys)) != len(keys):
        raise InvalidMessage(f"{what} repeats a field of a line (same device and time)")
    return readings


def parse_line_protocol(payload: bytes, device: str) -> list[Reading]:
    """The readings of a line-protocol payload published under ``device``'s topic; raises
    InvalidMessage naming the line."""
    return _lines(
        payload,
        lambda line: _line(line, device),
        "payload read as line protocol (it is not JSON)",
        MAX_BATCH,
    )


def _line_device(text: str) -> str:
    """The device a ``/write`` line names: its ``device`` tag, else its ``host`` tag."""
    key = _split(_split(text, " ", quotes=True)[0], ",")
    tags = dict(
        (_unescape(p[0]), _unescape(p[1]))
        for p in (_split(item, "=", limit=1) for item in key[1:])
        if len(p) == 2
    )
    device = tags.get("device") or tags.get("host")
    if not is_name(device):
        raise ValueError(
            f"the device comes from tag 'device' (or 'host'): {shown(device, 40)} is not a "
            f"device id ({NAME_RULE})"
        )
    assert device is not None
    return device


def parse_line_protocol_write(payload: bytes, scale_ns: int = 1) -> list[Reading]:
    """The readings of an InfluxDB ``/write`` body: as :func:`parse_line_protocol`, but
    each line names its device (tag ``device``, else ``host``) and timestamps are in units
    of ``scale_ns`` nanoseconds (the ``precision``); raises InvalidMessage naming the line."""

    def read(line: str) -> list[Reading]:
        parts = _split(line, " ", quotes=True)
        if scale_ns != 1 and len(parts) > 1 and parts[-1].lstrip("-").isdigit():
            parts[-1] = str(int(parts[-1]) * scale_ns)
            line = " ".join(parts)
        return _line(line, _line_device(line))

    return _lines(payload, read, "the body", MAX_WRITE_READINGS)
