"""Message formats exchanged over MQTT, with strict, pure validation.

Reading (``{root}/data/{device}``), one of two shapes::

    {"id": 1732300000000001, "device": "dev-1", "ts": 1732300000000, "kind": "sensor",
     "metric": "temperature", "value": 21.5, "unit": "C", "tags": {"room": "lab"}}

    {"device": "dev-1", "readings": [{"id": ..., "ts": ..., "kind": ..., "metric": ...,
     "value": ..., "unit": ..., "tags": {...}}, ...]}

``id`` is a positive integer unique per device and stable across resends (the edge agent
uses a persisted sequence seeded from the clock in microseconds). The storage layer folds
``id mod 10**6`` into the nanoseconds of the stored timestamp, so distinct readings of a
series never share a point even within one millisecond, and re-writing a reading lands on
the same point.

Every parse error raises :class:`InvalidMessage` with a reason a person can act on; the
ingest service puts that reason on the dead-letter topic.
"""

from __future__ import annotations

import base64
import dataclasses
import fnmatch
import json
import math
import re
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from vigil.jsonin import JsonInputError, loads
from vigil.names import ADMIN_USER, NAME_RULE, is_name, is_tag_key
from vigil.rollups import is_rollup_metric
from vigil.symbols import (
    PRICE_METRIC,
    QUOTE_SOURCES,
    InvalidSymbol,
    check_symbol,
    series_device,
)
from vigil.text import shown

KINDS = ("sensor", "quote")
MAX_PAYLOAD_BYTES = 256 * 1024
#: a status with every field at its longest is under 6 KiB
MAX_STATUS_BYTES = 16 * 1024
#: id ranges of dropped readings a status carries at most (the latest)
MAX_STATUS_RANGES = 50
MAX_ALERT_BYTES = 16 * 1024
MAX_RULESET_BYTES = 4 * 1024 * 1024
MAX_BATCH = 1000
MAX_TAGS = 16
MAX_ID = 2**53 - 1  # exact in every JSON implementation
#: 2001-09-09 .. 2100-01-01 in milliseconds: catches seconds or microseconds sent by mistake.
MIN_TS_MS = 1_000_000_000_000
MAX_TS_MS = 4_102_444_800_000
#: tag keys a reading may not set; ``agent`` is the stored tag naming a quote's agent
RESERVED_TAGS = frozenset({"device", "kind", "unit", "metric", "id", "value", "time", "agent"})
READING_KEYS = frozenset({"id", "ts", "kind", "metric", "value", "unit", "tags"})
SINGLE_KEYS = READING_KEYS | {"device", "v"}
BATCH_READING_KEYS = READING_KEYS | {"device"}
#: what a stored string must not hold: control characters, and backslashes (InfluxDB tags)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\]")
BATCH_KEYS = frozenset({"device", "readings", "v"})

SEVERITIES = ("info", "warning", "critical")
ALERT_STATES = ("firing", "resolved")
RULE_OPS = ("above", "below")

#: ``rollup``: a downsampled series the API computes (vigil/rollups.py); never from a device
Kind = Literal["sensor", "quote", "rollup"]


def now_ms() -> int:
    """The current time in epoch milliseconds, the unit of every timestamp in messages."""
    return time.time_ns() // 1_000_000


class InvalidMessage(ValueError):
    """A message that breaks the contract; ``reason`` says how, for the dead-letter topic."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Reading:
    """One measurement of one metric of one device."""

    id: int
    device: str
    ts: int  # epoch milliseconds
    kind: Kind
    metric: str
    value: float
    unit: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def stored_device(self) -> str:
        """The device the reading is stored (and evaluated) under: its own, or for a quote
        its symbol's pseudo-device, ``quote.AAPL`` (:mod:`vigil.symbols`)."""
        symbol = self.tags.get("symbol") if self.kind == "quote" else None
        return series_device(symbol) if symbol else self.device

    @property
    def series_key(self) -> str:
        """What ring placement hashes: one series per (stored) device and metric."""
        return f"{self.stored_device}/{self.metric}"

    def as_stored(self) -> Reading:
        """This reading under its :attr:`stored_device` (itself unless it is a quote)."""
        device = self.stored_device
        return self if device == self.device else dataclasses.replace(self, device=device)

    def to_dict(self, *, with_device: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "ts": self.ts,
            "kind": self.kind,
            "metric": self.metric,
            "value": self.value,
            "unit": self.unit,
            "tags": dict(self.tags),
        }
        if with_device:
            d = {"device": self.device, **d}
        return d


def encode_readings(device: str, readings: list[Reading]) -> bytes:
    """The payload for one reading (single shape) or several (batch shape)."""
    if len(readings) == 1:
        return json.dumps(readings[0].to_dict(), separators=(",", ":")).encode()
    body = {"device": device, "readings": [r.to_dict(with_device=False) for r in readings]}
    return json.dumps(body, separators=(",", ":")).encode()


def _show(value: object) -> str:
    return shown(value, 70)


def _json(payload: bytes, what: str, max_bytes: int = MAX_PAYLOAD_BYTES) -> Any:
    try:
        return loads(payload, max_bytes=max_bytes)
    except JsonInputError as exc:
        raise InvalidMessage(exc.reason if what == "payload" else f"{what}: {exc.reason}") from None


def _check_number(value: object, where: str) -> float:
    """A finite JSON number as a float (integers are bounded by the JSON loader, so the
    conversion cannot overflow)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidMessage(f"{where} must be a number, got {type(value).__name__}")
    if isinstance(value, int) and abs(value) > 2**63:
        raise InvalidMessage(f"{where} is out of range")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidMessage(f"{where} must be finite")
    return number


def _check_str(value: object, where: str, max_len: int) -> str:
    if not isinstance(value, str):
        raise InvalidMessage(f"{where} must be a string, got {type(value).__name__}")
    if len(value) > max_len:
        raise InvalidMessage(f"{where} is longer than {max_len} characters")
    if value and _UNSAFE.search(value):  # one scan for the common case: nothing wrong
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise InvalidMessage(f"{where} contains control characters")
        raise InvalidMessage(f"{where} contains a backslash, which InfluxDB tags cannot store")
    return value


def _check_int(value: object, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidMessage(f"{where} must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise InvalidMessage(f"{where} {value} is outside [{lo}, {hi}]")
    return value


def _check_ranges(value: object, where: str, max_n: int) -> list[tuple[int, int]]:
    """A JSON list of inclusive reading-id ranges ``[[first, last], ...]``."""
    if not isinstance(value, list) or len(value) > max_n:
        raise InvalidMessage(f"{where} must be a list of at most {max_n} [first, last]")
    ranges = []
    for n, pair in enumerate(value):
        if not isinstance(pair, list) or len(pair) != 2:
            raise InvalidMessage(f"{where}[{n}] must be [first, last]")
        lo = _check_int(pair[0], f"{where}[{n}][0]", 1, MAX_ID)
        ranges.append((lo, _check_int(pair[1], f"{where}[{n}][1]", lo, MAX_ID)))
    return ranges


def _parse_reading(obj: object, device: str, where: str) -> Reading:
    if not isinstance(obj, dict):
        raise InvalidMessage(f"{where} must be a JSON object")
    allowed = SINGLE_KEYS if where == "message" else BATCH_READING_KEYS
    if not allowed.issuperset(obj):
        unknown = sorted(str(k) for k in set(obj) - allowed)
        raise InvalidMessage(f"{where} has unknown field(s): {', '.join(unknown)}")
    if obj.get("device", device) != device:
        raise InvalidMessage(f"{where}.device {_show(obj['device'])} does not match {device!r}")
    for key in ("id", "ts", "kind", "metric", "value"):
        if key not in obj:
            raise InvalidMessage(f"{where} is missing required field '{key}'")
    rid = _check_int(obj["id"], f"{where}.id", 1, MAX_ID)
    ts = _check_int(obj["ts"], f"{where}.ts (epoch milliseconds)", MIN_TS_MS, MAX_TS_MS)
    kind = obj["kind"]
    if not isinstance(kind, str) or kind not in KINDS:
        raise InvalidMessage(f"{where}.kind must be one of {', '.join(KINDS)}, got {_show(kind)}")
    metric = obj["metric"]
    if not is_name(metric):
        raise InvalidMessage(f"{where}.metric {_show(metric)} is not a valid name: {NAME_RULE}")
    if is_rollup_metric(metric):
        raise InvalidMessage(
            f"{where}.metric {metric!r} ends like a downsampled series (.<n>m, .<n>h, .<n>d): "
            "those names are Vigil's"
        )
    value = _check_number(obj["value"], f"{where}.value")
    unit = _check_str(obj.get("unit", ""), f"{where}.unit", 32)
    raw_tags = obj.get("tags", {})
    if not isinstance(raw_tags, dict):
        raise InvalidMessage(f"{where}.tags must be an object of strings")
    if len(raw_tags) > MAX_TAGS:
        raise InvalidMessage(f"{where}.tags has more than {MAX_TAGS} entries")
    tags: dict[str, str] = {}
    for key, val in raw_tags.items():
        if not is_tag_key(key):
            raise InvalidMessage(
                f"{where}.tags key {_show(key)} is not a valid name: {NAME_RULE}, "
                "starting with a letter"
            )
        if key in RESERVED_TAGS:
            raise InvalidMessage(f"{where}.tags key {key!r} is reserved")
        sval = _check_str(val, f"{where}.tags.{key}", 128)
        if not sval:
            raise InvalidMessage(f"{where}.tags.{key} must not be empty")
        tags[key] = sval
    if kind == "quote":
        _check_quote(metric, tags, where)
    return Reading(rid, device, ts, cast(Kind, kind), metric, value, unit, tags)


def _check_quote(metric: str, tags: dict[str, str], where: str) -> None:
    """A quote is metric ``price`` with tags ``symbol`` (upper-cased here) and ``source``."""
    if metric != PRICE_METRIC:
        raise InvalidMessage(f"{where}.metric of a quote must be {PRICE_METRIC!r}, got {metric!r}")
    try:
        tags["symbol"] = check_symbol(tags.get("symbol"), f"{where}.tags.symbol of a quote")
    except InvalidSymbol as exc:
        raise InvalidMessage(str(exc)) from None
    if tags.get("source") not in QUOTE_SOURCES:
        raise InvalidMessage(
            f"{where}.tags.source of a quote must be one of {', '.join(QUOTE_SOURCES)}, "
            f"got {_show(tags.get('source'))}"
        )


_JSON_START = frozenset(b'{["-0123456789')
_JSON_WORDS = (b"true", b"false", b"null")


def looks_like_line_protocol(payload: bytes) -> bool:
    """Whether a data-topic payload is line protocol rather than JSON: it does not start
    like a JSON value (``{ [ "``, a number, ``true``, ``false``, ``null``); so a measurement
    may not start with a digit."""
    stripped = payload.strip()
    return bool(stripped) and stripped[0] not in _JSON_START and stripped not in _JSON_WORDS


def parse_readings(
    payload: bytes, topic_device: str, quote_agents: Collection[str] | None = None
) -> list[Reading]:
    """Validate one data-topic payload published under ``topic_device``'s topic.

    Returns the readings in message order; raises InvalidMessage with the reason. A payload
    that is not JSON is read as InfluxDB line protocol (:mod:`vigil.lineproto_in`). Given
    ``quote_agents`` (the devices configured to fetch quotes), a quote from any other device
    is refused: prices are shared by every follower, so a sensor device cannot forge one.
    """
    if looks_like_line_protocol(payload):  # Telegraf's outputs.mqtt, data_format "influx"
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise InvalidMessage(f"payload is over {MAX_PAYLOAD_BYTES} bytes")
        from vigil.lineproto_in import parse_line_protocol  # noqa: PLC0415 - it builds on this module

        readings = parse_line_protocol(payload, topic_device)
    else:
        readings = _parse_payload(payload, topic_device)
    if quote_agents is not None and topic_device not in quote_agents:
        for r in readings:
            if r.kind == "quote":
                raise InvalidMessage(
                    f"device {topic_device!r} is not a quote agent (devices[].quotes in "
                    f"vigil.yaml): its quote of {r.tags['symbol']} is refused"
                )
    return readings


def _parse_payload(payload: bytes, topic_device: str) -> list[Reading]:
    obj = _json(payload, "payload")
    if not isinstance(obj, dict):
        raise InvalidMessage("payload must be a JSON object")
    version = obj.get("v", 1)
    if isinstance(version, bool) or version != 1:
        raise InvalidMessage(f"unsupported message version {_show(version)}")
    device = obj.get("device")
    if device is None:
        raise InvalidMessage("message is missing required field 'device'")
    if device != topic_device:
        raise InvalidMessage(f"device {_show(device)} does not match the topic's {topic_device!r}")
    if "readings" in obj:
        unknown = sorted(set(obj) - BATCH_KEYS)
        if unknown:
            raise InvalidMessage(f"batch has unknown field(s): {', '.join(unknown)}")
        items = obj["readings"]
        if not isinstance(items, list) or not items:
            raise InvalidMessage("readings must be a non-empty array")
        if len(items) > MAX_BATCH:
            raise InvalidMessage(f"batch has {len(items)} readings, over {MAX_BATCH}")
        readings = [_parse_reading(it, device, f"readings[{i}]") for i, it in enumerate(items)]
        ids = [r.id for r in readings]
        if len(set(ids)) != len(ids):
            raise InvalidMessage("batch repeats a reading id")
        return readings
    return [_parse_reading(obj, device, "message")]


# -- status ------------------------------------------------------------------------------
#: Longest reason a status gives for a rejected live configuration.
MAX_CONFIG_ERROR = 500
MAX_VERSION = 64
MAX_STATUS_SOURCES = 32
BREAKER_STATES = ("", "closed", "open", "half-open")
MAX_CONFIG_VERSION = 2**53


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """Retained on ``{root}/status/{device}``; the last will publishes state offline.
    ``dropped``: readings the agent's outbox dropped unsent (full, or too old), in all;
    ``dropped_ids``: the id ranges of the latest of them (at most ``MAX_STATUS_RANGES``)."""

    device: str
    state: Literal["online", "offline"]
    ts: int | None = None
    reason: str = ""
    dropped: int = 0
    dropped_ids: tuple[tuple[int, int], ...] = ()
    #: the live configuration version applied (0: the agent's own file)
    config_version: int = 0
    #: why the latest live configuration was rejected ("" if it was not)
    config_error: str = ""
    #: the outbox's first id, and the lowest id still in it (its next id when empty):
    #: every id in between has left it, confirmed stored or dropped (vigil.gaps)
    first_id: int = 0
    settled_below: int = 0
    #: metadata of a running agent (its heartbeat, every ``heartbeat_s``): its version, its
    #: sources, readings in its outbox and waiting for a confirmation, the quote breaker
    version: str = ""
    sources: tuple[str, ...] = ()
    outbox_depth: int = 0
    unconfirmed: int = 0
    breaker: Literal["", "closed", "open", "half-open"] = ""
    heartbeat_s: float = 0.0

    def encode(self) -> bytes:
        obj: dict[str, Any] = {
            "device": self.device,
            "state": self.state,
            "ts": self.ts,
            "reason": self.reason,
        }
        if self.dropped:
            obj["dropped"] = self.dropped
            obj["dropped_ids"] = [list(r) for r in self.dropped_ids[-MAX_STATUS_RANGES:]]
        if self.config_version:
            obj["config_version"] = self.config_version
        if self.config_error:
            obj["config_error"] = self.config_error[:MAX_CONFIG_ERROR]
        if self.first_id:
            obj["first_id"] = self.first_id
            obj["settled_below"] = self.settled_below
        if self.version:
            obj["version"] = self.version[:MAX_VERSION]
        if self.sources:
            obj["sources"] = list(self.sources[:MAX_STATUS_SOURCES])
        if self.outbox_depth:
            obj["outbox_depth"] = self.outbox_depth
        if self.unconfirmed:
            obj["unconfirmed"] = self.unconfirmed
        if self.breaker:
            obj["breaker"] = self.breaker
        if self.heartbeat_s:
            obj["heartbeat_s"] = self.heartbeat_s
        return json.dumps(obj, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, payload: bytes) -> DeviceStatus:
        """Validate a status message; InvalidMessage says what is wrong."""
        obj = _json(payload, "status message", MAX_STATUS_BYTES)
        if not isinstance(obj, dict):
            raise InvalidMessage("status message must be a JSON object")
        device, state, ts = obj.get("device"), obj.get("state"), obj.get("ts")
        if not is_name(device):
            raise InvalidMessage(f"status message device {_show(device)} is not a valid name")
        if state not in ("online", "offline"):
            raise InvalidMessage(
                f"status message state must be online or offline, got {_show(state)}"
            )
        if ts is not None:
            ts = _check_int(ts, "status message ts", 0, MAX_TS_MS)
        reason = _check_str(obj.get("reason", "") or "", "status message reason", 200)
        dropped = _check_int(obj.get("dropped", 0), "status message dropped", 0, MAX_ID)
        ranges = _check_ranges(
            obj.get("dropped_ids", []), "status message dropped_ids", MAX_STATUS_RANGES
        )
        config_version = _check_int(
            obj.get("config_version", 0), "status message config_version", 0, MAX_CONFIG_VERSION
        )
        config_error = _check_str(
            obj.get("config_error", "") or "", "status message config_error", MAX_CONFIG_ERROR
        )
        first_id = _check_int(obj.get("first_id", 0), "status message first_id", 0, MAX_ID)
        settled = _check_int(
            obj.get("settled_below", first_id), "status message settled_below", first_id, MAX_ID + 1
        )
        version = _check_str(obj.get("version", ""), "status message version", MAX_VERSION)
        sources = obj.get("sources", [])
        if not isinstance(sources, list) or len(sources) > MAX_STATUS_SOURCES:
            raise InvalidMessage(
                f"status message sources must be a list of at most {MAX_STATUS_SOURCES} names"
            )
        for n, name in enumerate(sources):
            if not is_name(name):
                raise InvalidMessage(f"status message sources[{n}] {_show(name)} is not a name")
        depth = _check_int(obj.get("outbox_depth", 0), "status message outbox_depth", 0, MAX_ID)
        unconfirmed = _check_int(obj.get("unconfirmed", 0), "status message unconfirmed", 0, MAX_ID)
        breaker = obj.get("breaker", "")
        if breaker not in BREAKER_STATES:
            raise InvalidMessage(
                f"status message breaker must be one of closed, open, half-open, got "
                f"{_show(breaker)}"
            )
        heartbeat = _check_number(obj.get("heartbeat_s", 0.0), "status message heartbeat_s")
        if not 0 <= heartbeat <= 86_400:
            raise InvalidMessage("status message heartbeat_s is outside [0, 86400]")
        return cls(
            str(device),
            state,
            ts,
            reason,
            dropped,
            tuple(ranges),
            config_version,
            config_error,
            first_id,
            settled,
            version,
            tuple(str(n) for n in sources),
            depth,
            unconfirmed,
            breaker,
            float(heartbeat),
        )


# -- storage confirmations ----------------------------------------------------------------
#: Most id ranges one confirmation carries (a batch of readings of one device, usually one).
MAX_CONFIRM_RANGES = 10_000
MAX_CONFIRM_BYTES = 512 * 1024


def id_ranges(ids: Iterable[int]) -> list[tuple[int, int]]:
    """``ids`` as sorted, merged, inclusive ranges: ``[1, 2, 3, 7]`` -> ``[(1, 3), (7, 7)]``."""
    return id_ranges_of((i, i) for i in ids)


@dataclass(frozen=True, slots=True)
class Confirmation:
    """On ``{root}/ack/{device}``, ingest -> device: these of the device's readings are
    stored at the configured consistency (or were refused for good and dead-lettered), so
    the agent may drop them from its outbox. Inclusive id ranges, sorted and disjoint."""

    device: str
    ranges: tuple[tuple[int, int], ...]

    def encode(self) -> bytes:
        return json.dumps(
            {"v": 1, "device": self.device, "ids": [list(r) for r in self.ranges]},
            separators=(",", ":"),
        ).encode()

    @classmethod
    def of(cls, device: str, ids: Iterable[int]) -> Confirmation:
        return cls(device, tuple(id_ranges(ids)))

    def __contains__(self, rid: object) -> bool:
        return isinstance(rid, int) and any(lo <= rid <= hi for lo, hi in self.ranges)

    @classmethod
    def decode(cls, payload: bytes) -> Confirmation:
        """Validate a confirmation; InvalidMessage says what is wrong."""
        obj = _json(payload, "confirmation", MAX_CONFIRM_BYTES)
        if not isinstance(obj, dict):
            raise InvalidMessage("confirmation must be a JSON object")
        version = obj.get("v")
        if isinstance(version, bool) or version != 1:
            raise InvalidMessage(f"unsupported confirmation version {_show(version)}")
        device, ids = obj.get("device"), obj.get("ids")
        if not is_name(device):
            raise InvalidMessage(f"confirmation device {_show(device)} is not a valid name")
        ranges = _check_ranges(ids, "confirmation ids", MAX_CONFIRM_RANGES)
        return cls(str(device), tuple(id_ranges_of(ranges)))


def id_ranges_of(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Inclusive ranges sorted and merged (overlapping or adjacent ones become one)."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


# -- rules -------------------------------------------------------------------------------
RULE_KINDS = ("threshold", "band", "change", "nodata", "offline")
RuleKind = Literal["threshold", "band", "change", "nodata", "offline"]
CHANGE_DIRECTIONS = ("rise", "fall", "any")
#: the metric of the ``offline`` rules (a ``symbol`` rule watches PRICE_METRIC)
STATUS_METRIC = "status"
#: the longest for-duration, no-data duration or change window: 30 days
MAX_RULE_SECONDS = 30 * 86400.0
#: what a device pattern may hold: a name with ``*`` and ``?`` wildcards
_DEVICE_PATTERN = re.compile(r"[A-Za-z0-9_.\-*?]{1,64}")
RULE_COMMON_FIELDS = frozenset(
    {"id", "name", "kind", "metric", "device", "symbol", "severity", "enabled"}
)
#: the fields each kind takes besides the common ones
RULE_FIELDS: dict[str, frozenset[str]] = {
    "threshold": frozenset({"op", "threshold", "clear", "for_s"}),
    "band": frozenset({"low", "high", "for_s"}),
    "change": frozenset({"percent", "window_s", "direction"}),
    "nodata": frozenset({"for_s"}),
    "offline": frozenset({"for_s"}),
}


def is_device_pattern(value: object) -> bool:
    """A device id, or a pattern of device ids with ``*`` (any run) and ``?`` (one
    character) wildcards: ``greenhouse-*``."""
    return (
        isinstance(value, str)
        and _DEVICE_PATTERN.fullmatch(value) is not None
        and (is_name(value) or any(c in value for c in "*?"))
    )


@dataclass(frozen=True, slots=True)
class Rule:
    """An alert rule: what it watches (``metric`` of ``device`` — an id, a ``*``/``?``
    pattern, or None for every device — or the quotes of ``symbol``) and, by ``kind``, when
    it fires:

    - ``threshold``: the value is strictly ``op`` (above/below) ``threshold`` for at least
      ``for_s`` seconds; it resolves once the value is back past ``clear`` (hysteresis; by
      default the threshold itself);
    - ``band``: the value is outside ``low``..``high`` for at least ``for_s`` seconds;
    - ``change``: the value moved by at least ``percent`` % (``direction`` rise, fall or
      any) from the oldest value within the last ``window_s`` seconds;
    - ``nodata``: no reading of the metric for ``for_s`` seconds;
    - ``offline``: the device's status says offline (its last will) for ``for_s`` seconds.
    """

    id: str
    metric: str
    op: Literal["above", "below"] = "above"
    threshold: float = 0.0
    device: str | None = None
    severity: str = "warning"
    name: str = ""
    #: a disabled rule is kept but evaluates nothing (its firing alerts resolve)
    enabled: bool = True
    kind: RuleKind = "threshold"
    clear: float | None = None
    for_s: float = 0.0
    low: float = 0.0
    high: float = 0.0
    percent: float = 0.0
    window_s: float = 0.0
    direction: Literal["rise", "fall", "any"] = "any"
    symbol: str | None = None
    #: the user the rule belongs to (set by the API in the snapshot; its alerts go to them)
    owner: str = ""
    #: the devices a user's rule may watch: its owner's (set by the API in the snapshot);
    #: None for the admin's, which watch every device. A symbol rule is not scoped.
    scope: frozenset[str] | None = None

    @property
    def is_pattern(self) -> bool:
        return self.device is not None and not is_name(self.device)

    def to_dict(self) -> dict[str, Any]:
        common: dict[str, Any] = {
            "id": self.id,
            "name": self.name or self.id,
            "kind": self.kind,
            "metric": self.metric,
            "device": self.device,
        }
        common["symbol"] = self.symbol
        specific: dict[str, Any]
        if self.kind == "threshold":
            specific = {
                "op": self.op,
                "threshold": self.threshold,
                "clear": self.clear,
                "for_s": self.for_s,
            }
        elif self.kind == "band":
            specific = {"low": self.low, "high": self.high, "for_s": self.for_s}
        elif self.kind == "change":
            specific = {
                "percent": self.percent,
                "window_s": self.window_s,
                "direction": self.direction,
            }
        else:
            specific = {"for_s": self.for_s}
        out = {**common, **specific, "severity": self.severity, "enabled": self.enabled}
        if self.owner:
            out["owner"] = self.owner
        if self.scope is not None:
            out["scope"] = sorted(self.scope)
        return out

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Rule:
        """Validate a rule; raises InvalidMessage naming the bad field."""
        if not isinstance(obj, Mapping):
            raise InvalidMessage("rule must be a JSON object")
        kind = obj.get("kind", "threshold")
        if not isinstance(kind, str) or kind not in RULE_KINDS:
            raise InvalidMessage(f"kind must be one of {', '.join(RULE_KINDS)}, got {_show(kind)}")
        allowed = RULE_COMMON_FIELDS | RULE_FIELDS[kind] | {"owner", "scope"}
        unknown = sorted(set(obj) - allowed)
        if unknown:
            others = [k for k in unknown if any(k in f for f in RULE_FIELDS.values())]
            if others:
                raise InvalidMessage(
                    f"field(s) {', '.join(others)} do not apply to a {kind} rule (it takes "
                    f"{', '.join(sorted(RULE_FIELDS[kind]))})"
                )
            raise InvalidMessage(f"rule has unknown field(s): {', '.join(unknown)}")
        if "id" not in obj:
            raise InvalidMessage("rule is missing required field 'id'")
        rid, device, symbol = obj["id"], obj.get("device"), obj.get("symbol")
        if not is_name(rid):
            raise InvalidMessage(f"rule id {_show(rid)} is not a valid name: {NAME_RULE}")
        if device is not None and not is_device_pattern(device):
            raise InvalidMessage(
                f"device {_show(device)} is not a valid device id or pattern: {NAME_RULE}, "
                "with * and ? as wildcards in a pattern"
            )
        if symbol is not None:
            try:
                symbol = check_symbol(symbol)
            except InvalidSymbol as exc:
                raise InvalidMessage(str(exc)) from None
            if kind == "offline":
                raise InvalidMessage(
                    "symbol does not apply to an offline rule (it watches a device)"
                )
            if device is not None:
                raise InvalidMessage(
                    "device does not apply to a symbol rule: quotes are stored per symbol, "
                    "whichever agent fetched them"
                )
        default_metric = (
            STATUS_METRIC if kind == "offline" else PRICE_METRIC if symbol is not None else None
        )
        metric = obj.get("metric", default_metric)
        if metric is None:
            raise InvalidMessage("rule is missing required field 'metric'")
        if not is_name(metric):
            raise InvalidMessage(f"metric {_show(metric)} is not a valid name: {NAME_RULE}")
        if symbol is not None and metric != PRICE_METRIC:
            raise InvalidMessage(
                f"a symbol rule watches the quotes' {PRICE_METRIC!r}: leave out metric "
                f"(not {_show(metric)})"
            )
        if kind == "offline" and metric != STATUS_METRIC:
            raise InvalidMessage(
                f"an offline rule watches the device status: leave out metric (not {_show(metric)})"
            )
        severity = obj.get("severity", "warning")
        if not isinstance(severity, str) or severity not in SEVERITIES:
            raise InvalidMessage(f"severity must be one of {', '.join(SEVERITIES)}")
        name = _check_str(obj.get("name", "") or "", "name", 200)
        enabled = obj.get("enabled", True)
        if not isinstance(enabled, bool):
            raise InvalidMessage(f"enabled must be true or false, got {_show(enabled)}")
        owner = obj.get("owner", "") or ""
        if owner and not is_name(owner):
            raise InvalidMessage(f"owner {_show(owner)} is not a valid user name: {NAME_RULE}")
        fields: dict[str, Any] = {"kind": kind, "owner": owner, "scope": _scope(obj)}
        if kind == "threshold":
            fields.update(_threshold_fields(obj))
        elif kind == "band":
            low, high = (_required_number(obj, k, kind) for k in ("low", "high"))
            if not low < high:
                raise InvalidMessage(f"low ({low:g}) must be below high ({high:g})")
            fields.update(low=low, high=high, for_s=_seconds(obj, "for_s", 0.0))
        elif kind == "change":
            percent = _required_number(obj, "percent", kind)
            if not 0 < percent <= 10_000:
                raise InvalidMessage(f"percent must be in (0, 10000], got {percent:g}")
            if "window_s" not in obj:
                raise InvalidMessage("a change rule is missing required field 'window_s'")
            window = _seconds(obj, "window_s", 1.0)
            direction = obj.get("direction", "any")
            if not isinstance(direction, str) or direction not in CHANGE_DIRECTIONS:
                raise InvalidMessage(
                    f"direction must be one of {', '.join(CHANGE_DIRECTIONS)}, "
                    f"got {_show(direction)}"
                )
            fields.update(percent=percent, window_s=window, direction=direction)
        elif kind == "nodata":
            if "for_s" not in obj:
                raise InvalidMessage("a nodata rule is missing required field 'for_s'")
            fields.update(for_s=_seconds(obj, "for_s", 1.0))
        else:
            fields.update(for_s=_seconds(obj, "for_s", 0.0))
        return cls(
            id=rid,
            metric=metric,
            device=device,
            severity=severity,
            name=name or rid,
            enabled=enabled,
            symbol=symbol,
            **fields,
        )


#: most devices a rule's scope names
MAX_SCOPE = 20_000


def _scope(obj: Mapping[str, Any]) -> frozenset[str] | None:
    raw = obj.get("scope")
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) > MAX_SCOPE or not all(map(is_name, raw)):
        raise InvalidMessage(f"scope must be a list of at most {MAX_SCOPE} device ids")
    return frozenset(raw)


def _required_number(obj: Mapping[str, Any], key: str, kind: str) -> float:
    if key not in obj:
        raise InvalidMessage(f"a {kind} rule is missing required field '{key}'")
    return _check_number(obj[key], key)


def _seconds(obj: Mapping[str, Any], key: str, least: float) -> float:
    """A duration in seconds, ``least``..30 days (0 when absent and ``least`` is 0)."""
    value = obj.get(key, 0.0)
    seconds = _check_number(value, key)
    if not least <= seconds <= MAX_RULE_SECONDS:
        raise InvalidMessage(
            f"{key} must be {least:g}..{MAX_RULE_SECONDS:.0f} seconds, got {seconds:g}"
        )
    return seconds


def _threshold_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    for key in ("op", "threshold"):
        if key not in obj:
            raise InvalidMessage(f"rule is missing required field '{key}'")
    if not isinstance(obj["op"], str) or obj["op"] not in RULE_OPS:
        raise InvalidMessage(f"op must be one of {', '.join(RULE_OPS)}, got {_show(obj['op'])}")
    op = cast(Literal["above", "below"], obj["op"])
    threshold = _check_number(obj["threshold"], "threshold")
    clear = obj.get("clear")
    if clear is not None:
        clear = _check_number(clear, "clear")
        if op == "above" and clear > threshold:
            raise InvalidMessage(
                f"clear ({clear:g}) must be at or below the threshold ({threshold:g}) of an "
                "above rule: the alert resolves once the value is below it"
            )
        if op == "below" and clear < threshold:
            raise InvalidMessage(
                f"clear ({clear:g}) must be at or above the threshold ({threshold:g}) of a "
                "below rule: the alert resolves once the value is above it"
            )
    return {"op": op, "threshold": threshold, "clear": clear, "for_s": _seconds(obj, "for_s", 0.0)}


#: most addresses one user has, and the longest address
MAX_RECIPIENTS = 20
MAX_EMAIL = 254
_EMAIL = re.compile(
    r"[^@\s\x00-\x1f\x7f<>,;\"]+@[^@\s\x00-\x1f\x7f<>,;\"]+\.[^@\s\x00-\x1f\x7f<>,;\".]+"
)


def check_email(value: object, where: str = "email") -> str:
    """An email address (``local@domain.tld``, no spaces, quotes or list separators)."""
    if not isinstance(value, str) or len(value) > MAX_EMAIL or not _EMAIL.fullmatch(value):
        raise InvalidMessage(f"{where} {_show(value)} is not an email address (name@example.org)")
    return value


def check_recipients(value: object, where: str = "recipients") -> dict[str, tuple[str, ...]]:
    """``{user: [address, ...]}``: each user's email addresses (at most MAX_RECIPIENTS)."""
    if not isinstance(value, dict):
        raise InvalidMessage(f"{where} must be an object of user -> addresses")
    out: dict[str, tuple[str, ...]] = {}
    for user, emails in value.items():
        if not is_name(user):
            raise InvalidMessage(f"{where}: {_show(user)} is not a valid user name")
        if not isinstance(emails, list) or len(emails) > MAX_RECIPIENTS:
            raise InvalidMessage(f"{where}[{user}] must be a list of at most {MAX_RECIPIENTS}")
        out[user] = tuple(check_email(e, f"{where}[{user}]") for e in emails)
    return out


# -- silences ----------------------------------------------------------------------------
#: what a silence can match an alert on; values are fnmatch patterns (``dev-*``)
SILENCE_LABELS = ("device", "rule_id", "severity", "kind", "symbol", "metric")
MAX_SILENCES = 1000
MAX_SILENCE_COMMENT = 500
SILENCE_ID = re.compile(r"s-[0-9a-f]{4,32}")


@dataclass(frozen=True, slots=True)
class Silence:
    """Mutes the alerts its ``matchers`` all match between ``starts_at`` and ``ends_at``
    (epoch ms). A user's silence mutes that user's alerts; the admin's, everyone's."""

    id: str
    owner: str
    matchers: Mapping[str, str]
    starts_at: int
    ends_at: int
    comment: str = ""
    created_at: int = 0

    def active(self, now: int) -> bool:
        return self.starts_at <= now < self.ends_at

    def state(self, now: int) -> Literal["pending", "active", "expired"]:
        if now >= self.ends_at:
            return "expired"
        return "active" if now >= self.starts_at else "pending"

    def applies_to(self, owner: str) -> bool:
        return self.owner in (owner, ADMIN_USER)

    def matches(self, alert: Alert) -> bool:
        for name, pattern in self.matchers.items():
            value = getattr(alert, name)
            if not fnmatch.fnmatchcase("" if value is None else str(value), pattern):
                return False
        return True

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "owner": self.owner,
            "matchers": dict(self.matchers),
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "comment": self.comment,
            "created_at": self.created_at,
        }

    @classmethod
    def from_dict(cls, obj: object, where: str = "silence") -> Silence:
        """Validate a stored or published silence; InvalidMessage names the bad part."""
        if not isinstance(obj, dict):
            raise InvalidMessage(f"{where} must be an object")
        sid = obj.get("id")
        if not isinstance(sid, str) or not SILENCE_ID.fullmatch(sid):
            raise InvalidMessage(f"{where} id {_show(sid)} is not a silence id")
        owner = obj.get("owner")
        if not is_name(owner):
            raise InvalidMessage(f"{where} owner {_show(owner)} is not a valid user name")
        starts = _check_int(obj.get("starts_at"), f"{where} starts_at", 0, MAX_TS_MS)
        ends = _check_int(obj.get("ends_at"), f"{where} ends_at", 0, MAX_TS_MS)
        return cls(
            id=sid,
            owner=str(owner),
            matchers=check_matchers(obj.get("matchers"), f"{where} matchers"),
            starts_at=starts,
            ends_at=ends,
            comment=_check_str(obj.get("comment", ""), f"{where} comment", MAX_SILENCE_COMMENT),
            created_at=_check_int(obj.get("created_at", 0), f"{where} created_at", 0, MAX_TS_MS),
        )


def check_matchers(value: object, where: str = "matchers") -> dict[str, str]:
    """``{label: pattern}``: at least one, labels from SILENCE_LABELS, patterns of at most
    200 characters on one line."""
    if not isinstance(value, dict) or not value:
        raise InvalidMessage(
            f"{where} must be a non-empty object of label -> pattern (labels: "
            f"{', '.join(SILENCE_LABELS)})"
        )
    out: dict[str, str] = {}
    for name, pattern in value.items():
        if name not in SILENCE_LABELS:
            raise InvalidMessage(
                f"{where}: {_show(name)} is not a label a silence can match (one of "
                f"{', '.join(SILENCE_LABELS)})"
            )
        text = _check_str(pattern, f"{where}[{name}]", 200)
        if not text:
            raise InvalidMessage(f"{where}[{name}] must be a non-empty pattern")
        out[name] = text
    return out


def muting_silence(
    silences: Iterable[Silence], alert: Alert, owner: str, now: int
) -> Silence | None:
    """The first silence that mutes ``alert`` of ``owner`` at ``now``, or None."""
    for silence in silences:
        if silence.active(now) and silence.applies_to(owner) and silence.matches(alert):
            return silence
    return None


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The retained snapshot on ``{root}/config/rules``: the rules (each with its owner),
    where each user's alerts go (None: a snapshot from before recipients were kept) and the
    silences not yet expired."""

    version: int
    rules: list[Rule]
    recipients: Mapping[str, tuple[str, ...]] | None = None
    silences: tuple[Silence, ...] = ()


def encode_rules(
    rules: list[Rule],
    version: int,
    ts: int,
    recipients: Mapping[str, Iterable[str]] | None = None,
    silences: Iterable[Silence] = (),
) -> bytes:
    """The retained rule-set snapshot on ``{root}/config/rules``."""
    body: dict[str, Any] = {"version": version, "ts": ts, "rules": [r.to_dict() for r in rules]}
    if recipients is not None:
        body["recipients"] = {u: list(e) for u, e in sorted(recipients.items())}
    listed = [s.to_dict() for s in silences]
    if listed:
        body["silences"] = listed
    return json.dumps(body, separators=(",", ":")).encode()


def decode_rule_set(payload: bytes) -> RuleSet:
    """Validate a rule-set snapshot with its recipients and silences; InvalidMessage names
    the bad part."""
    version, rules = decode_rules(payload)
    obj = json.loads(payload)  # decode_rules has validated it as JSON
    recipients = obj.get("recipients")
    raw = obj.get("silences", [])
    if not isinstance(raw, list) or len(raw) > MAX_SILENCES:
        raise InvalidMessage(f"rule set 'silences' must be an array of at most {MAX_SILENCES}")
    silences = tuple(Silence.from_dict(x, f"rule set silences[{i}]") for i, x in enumerate(raw))
    return RuleSet(
        version,
        rules,
        None if recipients is None else check_recipients(recipients),
        silences,
    )


def decode_rules(payload: bytes) -> tuple[int, list[Rule]]:
    """Validate a rule-set snapshot; InvalidMessage names the bad part."""
    obj = _json(payload, "rule set", MAX_RULESET_BYTES)
    if not isinstance(obj, dict):
        raise InvalidMessage("rule set must be a JSON object")
    version = _check_int(obj.get("version"), "rule set version", 0, MAX_ID * 1024)
    rules = obj.get("rules")
    if not isinstance(rules, list):
        raise InvalidMessage("rule set 'rules' must be an array")
    out = []
    for i, r in enumerate(rules):
        try:
            out.append(Rule.from_dict(r))
        except InvalidMessage as exc:
            raise InvalidMessage(f"rule set rules[{i}]: {exc.reason}") from None
    return version, out


# -- alerts ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Alert:
    """An alert transition on ``{root}/alerts/{device}/{rule_id}``.

    ``alert_id`` names one firing episode: the resolved message repeats the firing one's id.
    """

    alert_id: str
    rule_id: str
    rule: str
    device: str
    metric: str
    value: float
    threshold: float
    op: str
    state: Literal["firing", "resolved"]
    severity: str
    started_at: int  # epoch ms of the reading that started the episode
    ts: int  # epoch ms of the reading behind this transition
    resolved_at: int | None = None
    reading_id: int | None = None
    #: why it resolved when no reading resolved it ("rule deleted", ...); None otherwise
    reason: str | None = None
    #: the rule's kind, and a sentence saying what is (or no longer is) wrong
    kind: str = "threshold"
    detail: str = ""
    #: the share symbol of a ``symbol`` rule
    symbol: str | None = None
    #: the rule's owner: who is notified ("" for a rule from before owners)
    owner: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "kind": self.kind,
            "detail": self.detail,
            "symbol": self.symbol,
            "owner": self.owner,
            "rule_id": self.rule_id,
            "rule": self.rule,
            "device": self.device,
            "metric": self.metric,
            "value": self.value,
            "threshold": self.threshold,
            "op": self.op,
            "state": self.state,
            "severity": self.severity,
            "started_at": self.started_at,
            "resolved_at": self.resolved_at,
            "ts": self.ts,
            "reading_id": self.reading_id,
            "reason": self.reason,
        }

    def encode(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, payload: bytes) -> Alert:
        """Validate an alert message; InvalidMessage names the bad field."""
        obj = _json(payload, "alert message", MAX_ALERT_BYTES)
        if not isinstance(obj, dict):
            raise InvalidMessage("alert message must be a JSON object")
        for key in (
            "alert_id", "rule_id", "device", "metric", "value", "threshold", "op", "state",
            "severity", "started_at", "ts",
        ):  # fmt: skip
            if key not in obj:
                raise InvalidMessage(f"alert message is missing required field '{key}'")
        if obj["state"] not in ALERT_STATES:
            raise InvalidMessage(
                f"alert state must be firing or resolved, got {_show(obj['state'])}"
            )

        def name(key: str) -> str:
            if not is_name(obj[key]):
                raise InvalidMessage(f"alert {key} {_show(obj[key])} is not a valid name")
            return str(obj[key])

        def opt_int(key: str) -> int | None:
            value = obj.get(key)
            return None if value is None else _check_int(value, f"alert {key}", 0, 2**63 - 1)

        def opt_str(key: str) -> str | None:
            value = obj.get(key)
            return None if value is None else _check_str(value, f"alert {key}", 200)

        rule_id = name("rule_id")
        return cls(
            alert_id=_check_str(obj["alert_id"], "alert alert_id", 200),
            rule_id=rule_id,
            rule=_check_str(obj.get("rule", rule_id), "alert rule", 200),
            device=name("device"),
            metric=name("metric"),
            value=_check_number(obj["value"], "alert value"),
            threshold=_check_number(obj["threshold"], "alert threshold"),
            op=_check_str(obj["op"], "alert op", 32),
            state=obj["state"],
            severity=_check_str(obj["severity"], "alert severity", 32),
            started_at=_check_int(obj["started_at"], "alert started_at", 0, 2**63 - 1),
            ts=_check_int(obj["ts"], "alert ts", 0, 2**63 - 1),
            resolved_at=opt_int("resolved_at"),
            reading_id=opt_int("reading_id"),
            reason=None
            if obj.get("reason") is None
            else _check_str(obj["reason"], "alert reason", 200),
            kind=_check_alert_kind(obj.get("kind", "threshold")),
            detail=_check_str(obj.get("detail", "") or "", "alert detail", MAX_DETAIL),
            symbol=opt_str("symbol"),
            owner=_check_owner(obj.get("owner", "") or ""),
        )


def _check_owner(owner: object) -> str:
    if owner and not is_name(owner):
        raise InvalidMessage(f"alert owner {_show(owner)} is not a valid user name")
    return str(owner)


MAX_DETAIL = 500


def _check_alert_kind(kind: object) -> str:
    if not isinstance(kind, str) or kind not in RULE_KINDS:
        raise InvalidMessage(
            f"alert kind must be one of {', '.join(RULE_KINDS)}, got {_show(kind)}"
        )
    return kind


# -- dead letters ------------------------------------------------------------------------
def encode_dead_letter(
    *,
    reason: str,
    topic: str,
    payload: bytes,
    received_at: int,
    service: str,
    reading_id: int | None = None,
) -> bytes:
    """A dead letter: the reason, the original topic and the original payload (as text when
    it is UTF-8, else base64), so nothing of the rejected message is lost; ``reading_id``
    when only that reading of the message was refused."""
    try:
        text, encoding = payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(payload).decode("ascii"), "base64"
    body = {
        "reason": reason,
        "topic": topic,
        "payload": text,
        "encoding": encoding,
        "received_at": received_at,
        "service": service,
    }
    if reading_id is not None:  # one reading of a batch was refused, the rest were stored
        body["reading_id"] = reading_id
    return json.dumps(body, separators=(",", ":")).encode()


# -- notifications -----------------------------------------------------------------------
NOTIFICATION_STATES = ("pending", "sent", "failed", "skipped")
CHANNELS = ("email", "webhook", "telegram")
MAX_NOTIFIED_ALERTS = 200
MAX_NOTIFICATION_BYTES = 256 * 1024
NOTIFICATION_ID = re.compile(r"n-[0-9]{1,19}-[0-9]{1,16}")


@dataclass(frozen=True, slots=True)
class NotifiedAlert:
    """One alert transition a notification carried (or, in a repeat, an alert still
    firing), with the sentence the notification said about it."""

    alert_id: str
    rule_id: str
    device: str
    state: Literal["firing", "resolved"]
    severity: str
    summary: str

    @classmethod
    def of(cls, alert: Alert, summary: str) -> NotifiedAlert:
        return cls(
            alert.alert_id, alert.rule_id, alert.device, alert.state, alert.severity, summary
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "rule_id": self.rule_id,
            "device": self.device,
            "state": self.state,
            "severity": self.severity,
            "summary": self.summary,
        }


@dataclass(frozen=True, slots=True)
class Notification:
    """A delivery record, retained on ``{root}/notifications/{owner}/{id}`` by the notifier
    and updated as its delivery goes (pending -> sent | failed; skipped: nowhere to send)."""

    id: str
    owner: str
    channel: str
    target: str
    state: str
    attempts: int
    reason: str | None
    created_at: int
    updated_at: int
    repeat: bool
    group: str
    alerts: tuple[NotifiedAlert, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "owner": self.owner,
            "channel": self.channel,
            "target": self.target,
            "state": self.state,
            "attempts": self.attempts,
            "reason": self.reason,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "repeat": self.repeat,
            "group": self.group,
            "alerts": [a.to_dict() for a in self.alerts],
        }

    def encode(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, payload: bytes) -> Notification:
        """Validate a delivery record; InvalidMessage names the bad field."""
        obj = _json(payload, "notification", MAX_NOTIFICATION_BYTES)
        if not isinstance(obj, dict):
            raise InvalidMessage("notification must be a JSON object")
        nid = obj.get("id")
        if not isinstance(nid, str) or not NOTIFICATION_ID.fullmatch(nid):
            raise InvalidMessage(f"notification id {_show(nid)} is not a notification id")
        owner = obj.get("owner")
        if not is_name(owner):
            raise InvalidMessage(f"notification owner {_show(owner)} is not a valid user name")
        channel, state = obj.get("channel"), obj.get("state")
        if channel not in CHANNELS:
            raise InvalidMessage(
                f"notification channel must be one of {', '.join(CHANNELS)}, got {_show(channel)}"
            )
        if state not in NOTIFICATION_STATES:
            raise InvalidMessage(
                f"notification state must be one of {', '.join(NOTIFICATION_STATES)}, got "
                f"{_show(state)}"
            )
        repeat = obj.get("repeat", False)
        if not isinstance(repeat, bool):
            raise InvalidMessage("notification repeat must be true or false")
        reason = obj.get("reason")
        raw = obj.get("alerts")
        if not isinstance(raw, list) or len(raw) > MAX_NOTIFIED_ALERTS:
            raise InvalidMessage(
                f"notification alerts must be an array of at most {MAX_NOTIFIED_ALERTS}"
            )
        return cls(
            id=nid,
            owner=str(owner),
            channel=str(channel),
            target=_check_str(obj.get("target", ""), "notification target", 2000),
            state=str(state),
            attempts=_check_int(obj.get("attempts", 0), "notification attempts", 0, MAX_ID),
            reason=None if reason is None else _check_str(reason, "notification reason", 1000),
            created_at=_check_int(obj.get("created_at"), "notification created_at", 0, MAX_TS_MS),
            updated_at=_check_int(obj.get("updated_at"), "notification updated_at", 0, MAX_TS_MS),
            repeat=repeat,
            group=_check_str(obj.get("group", ""), "notification group", 1000),
            alerts=tuple(_notified(a, f"notification alerts[{i}]") for i, a in enumerate(raw)),
        )


def _notified(obj: object, where: str) -> NotifiedAlert:
    if not isinstance(obj, dict):
        raise InvalidMessage(f"{where} must be an object")
    for key in ("rule_id", "device"):
        if not is_name(obj.get(key)):
            raise InvalidMessage(f"{where} {key} {_show(obj.get(key))} is not a valid name")
    state = obj.get("state")
    if state not in ALERT_STATES:
        raise InvalidMessage(f"{where} state must be firing or resolved, got {_show(state)}")
    return NotifiedAlert(
        alert_id=_check_str(obj.get("alert_id"), f"{where} alert_id", 200),
        rule_id=str(obj["rule_id"]),
        device=str(obj["device"]),
        state=state,
        severity=_check_str(obj.get("severity"), f"{where} severity", 32),
        summary=_check_str(obj.get("summary", ""), f"{where} summary", 1000),
    )


# -- channels ----------------------------------------------------------------------------
MAX_WEBHOOKS = 10
MIN_SECRET_CHARS = 16
MAX_SECRET_CHARS = 200
MAX_URL_CHARS = 2000


@dataclass(frozen=True, slots=True)
class Webhook:
    """Where a user's notifications are POSTed as JSON, signed with ``secret`` (HMAC-SHA256)."""

    name: str
    url: str
    secret: str


def check_url(value: object, where: str = "url") -> str:
    """An http(s) URL with a host, on one line."""
    text = _check_str(value, where, MAX_URL_CHARS)
    scheme, sep, rest = text.partition("://")
    host = rest.split("/", 1)[0].rpartition("@")[2]
    if not sep or scheme.lower() not in ("http", "https") or not host or " " in text:
        raise InvalidMessage(f"{where} {_show(text)} is not an http:// or https:// URL")
    return text


def check_webhook(obj: object, where: str = "webhook") -> Webhook:
    if not isinstance(obj, dict):
        raise InvalidMessage(f"{where} must be an object with name, url and secret")
    name = obj.get("name")
    if not is_name(name):
        raise InvalidMessage(f"{where} name {_show(name)} is not a valid name ({NAME_RULE})")
    secret = _check_str(obj.get("secret"), f"{where} secret", MAX_SECRET_CHARS)
    if len(secret) < MIN_SECRET_CHARS:
        raise InvalidMessage(f"{where} secret must be at least {MIN_SECRET_CHARS} characters")
    return Webhook(str(name), check_url(obj.get("url"), f"{where} url"), secret)


CHAT_ID = re.compile(r"-?[0-9]{1,20}|@[A-Za-z][A-Za-z0-9_]{4,31}")


def check_chat_id(value: object, where: str = "chat_id") -> str:
    """A Telegram chat: its number (``-100123``) or a public channel's ``@name``."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not CHAT_ID.fullmatch(text):
        raise InvalidMessage(
            f"{where} {_show(value)} is not a Telegram chat id (a number, or @channelname)"
        )
    return text


@dataclass(frozen=True, slots=True)
class ChannelSet:
    """The retained snapshot on ``{root}/config/channels`` (the API's, read by the notifier
    only: it holds the signing secrets): each user's webhooks and Telegram chat."""

    version: int
    webhooks: Mapping[str, tuple[Webhook, ...]]
    telegram: Mapping[str, str] = field(default_factory=dict)
    #: each user's own email templates (vigil.usertemplates: checked by their users)
    templates: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


def encode_channels(
    version: int,
    webhooks: Mapping[str, Iterable[Webhook]],
    telegram: Mapping[str, str] | None = None,
    templates: Mapping[str, Mapping[str, str]] | None = None,
) -> bytes:
    body = {
        "version": version,
        "webhooks": {
            user: [{"name": w.name, "url": w.url, "secret": w.secret} for w in hooks]
            for user, hooks in sorted(webhooks.items())
        },
        "telegram": dict(sorted((telegram or {}).items())),
        "templates": {u: dict(t) for u, t in sorted((templates or {}).items())},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def decode_channels(payload: bytes) -> ChannelSet:
    """Validate a channel snapshot; InvalidMessage names the bad part."""
    obj = _json(payload, "channel set", MAX_RULESET_BYTES)
    if not isinstance(obj, dict):
        raise InvalidMessage("channel set must be a JSON object")
    version = _check_int(obj.get("version"), "channel set version", 0, MAX_ID * 1024)
    raw = obj.get("webhooks", {})
    if not isinstance(raw, dict):
        raise InvalidMessage("channel set webhooks must be an object of user -> webhooks")
    webhooks: dict[str, tuple[Webhook, ...]] = {}
    for user, hooks in raw.items():
        if not is_name(user):
            raise InvalidMessage(f"channel set webhooks: {_show(user)} is not a user name")
        if not isinstance(hooks, list) or len(hooks) > MAX_WEBHOOKS:
            raise InvalidMessage(f"channel set webhooks[{user}] must be a list of at most 10")
        webhooks[user] = tuple(
            check_webhook(h, f"channel set webhooks[{user}][{i}]") for i, h in enumerate(hooks)
        )
    chats = obj.get("telegram", {})
    if not isinstance(chats, dict):
        raise InvalidMessage("channel set telegram must be an object of user -> chat id")
    telegram: dict[str, str] = {}
    for user, chat in chats.items():
        if not is_name(user):
            raise InvalidMessage(f"channel set telegram: {_show(user)} is not a user name")
        telegram[user] = check_chat_id(chat, f"channel set telegram[{user}]")
    raw_templates = obj.get("templates", {})
    if not isinstance(raw_templates, dict):
        raise InvalidMessage("channel set templates must be an object of user -> templates")
    templates: dict[str, dict[str, str]] = {}
    for user, parts in raw_templates.items():
        if not is_name(user) or not isinstance(parts, dict):
            raise InvalidMessage(f"channel set templates: bad entry for {_show(user)}")
        for key, source in parts.items():
            if key not in ("subject", "text", "html") or not isinstance(source, str):
                raise InvalidMessage(f"channel set templates[{user}]: bad template {_show(key)}")
            if len(source) > 50_000:
                raise InvalidMessage(f"channel set templates[{user}][{key}] is too long")
        templates[user] = dict(parts)
    return ChannelSet(version, webhooks, telegram, templates)
