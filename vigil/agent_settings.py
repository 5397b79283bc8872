"""An edge agent's typed settings (``config/agents/<device>.yaml``), validated with msgspec.

The cloud's models (:mod:`vigil.settings`) use pydantic; an agent must fit a device, and
pydantic alone costs about 9 MB of resident memory where msgspec costs about 2
(docs/agent.md, Memory). So this module, and everything the agent imports, needs no pydantic.
The rules are the cloud's: strict scalars (no ``true`` for an integer; an integer is accepted
for a number), finite numbers, no unknown keys, and errors that name the key, worded as
:mod:`vigil.settings` words them: "<file>: <key>: <reason>".

Structs are validated by :func:`convert` (and by :func:`load_agent_config`); constructing one
directly runs its cross-field checks (``__post_init__``) but not the type checks, as for any
msgspec Struct, so code builds them from values it already trusts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

from vigil.config_core import (
    AGENT_ENV_PREFIX,
    ConfigError,
    KeyedError,
    SecretFile,
    check_device_id,
    check_file_path,
    check_host,
    check_name,
    check_unit,
    first_repeat,
    key_path,
    read_config_data,
    read_secret,
)
from vigil.symbols import is_symbol
from vigil.text import shown
from vigil.topics import TopicError, Topics

#: Separates the key from the reason in the message of an error raised inside a Struct's
#: checks, so that it survives msgspec's wrapping (which adds only the Struct's path).
_MARK = "\x1e"


class _Invalid(KeyedError):
    """A failed check inside a Struct: ``key`` relative to that Struct."""

    def __str__(self) -> str:
        return f"{_MARK}{self.key}{_MARK}{self.reason}"


# Subclasses restate frozen=True, kw_only=True: mypy (dataclass_transform) reads them per class.
class Spec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The base of every agent setting: numbers finite, then the Struct's own checks."""

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise _Invalid(name, "Input should be a finite number")
        try:
            self._check()
        except KeyedError as exc:
            raise _Invalid(exc.key, exc.reason) from None

    def _check(self) -> None:
        """Raise KeyedError (key relative to this Struct) for a value that is not allowed."""


def _field(name: str, check: Callable[[Any], object], value: Any) -> None:
    """Apply a single-value check (which raises ValueError) to field ``name``."""
    try:
        check(value)
    except ValueError as exc:
        raise KeyedError(name, str(exc)) from None


# -- turning msgspec's errors into keys and reasons ---------------------------------------
_AT = re.compile(r"(?s)(?P<msg>.*) - at `\$(?P<path>(?:\.[A-Za-z_]\w*|\[\d+\])*)`")
_PART = re.compile(r"\.([A-Za-z_]\w*)|\[(\d+)\]")
_TYPE = {
    "int": "a valid integer",
    "float": "a valid number",
    "str": "a valid string",
    "bool": "a valid boolean",
    "array": "a valid list",
    "object": "a valid mapping",
}
_GIVEN = {
    "bool": "a boolean",
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}
_COMPARE = {
    ">=": "greater than or equal to",
    ">": "greater than",
    "<=": "less than or equal to",
    "<": "less than",
}


def _number(text: str) -> str:
    return text.removesuffix(".0") if re.fullmatch(r"-?\d+\.0", text) else text


def _reason(msg: str) -> tuple[str, str]:
    """(key below the path, reason) of one of msgspec's messages."""
    if m := re.fullmatch(r"(?s)Object contains unknown field `(.*)`", msg):
        return key_path([m[1]]), "unknown key"
    if m := re.fullmatch(r"(?s)Object missing required field `(.*)`", msg):
        return key_path([m[1]]), "required key is missing"
    if m := re.fullmatch(r"Expected `([\w |]+)`, got `(\w+)`", msg):
        wanted = " or ".join(_TYPE.get(t, t) for t in m[1].split(" | ") if t != "null")
        return "", f"Input should be {wanted}, not {_GIVEN.get(m[2], m[2])}"
    if m := re.fullmatch(r"Expected `(int|float)` (>=|>|<=|<) (\S+)", msg):
        return "", f"Input should be {_COMPARE[m[2]]} {_number(m[3])}"
    if m := re.fullmatch(r"Expected `(str|array|object)` of length (>=|<=) (\d+)", msg):
        what = {"str": "String", "array": "List", "object": "Mapping"}[m[1]]
        unit = "character" if m[1] == "str" else "item"
        plural = "" if m[3] == "1" else "s"
        most = "at least" if m[2] == ">=" else "at most"
        return "", f"{what} should have {most} {m[3]} {unit}{plural}"
    if m := re.fullmatch(r"(?s)Invalid (?:enum )?value (.*)", msg):
        return "", f"{shown(m[1], 40)} is not one of the allowed values"
    return "", msg


def error_key(exc: msgspec.ValidationError) -> tuple[str, str]:
    """(key, reason) of a validation error, the key a path like ``sources[0].command``."""
    text = str(exc)
    path, msg = "", text
    if m := _AT.fullmatch(text):
        parts = [p or int(i) for p, i in _PART.findall(m["path"])]
        path, msg = key_path(parts), m["msg"]
    if msg.startswith(_MARK):
        sub, _, reason = msg[1:].partition(_MARK)
    else:
        sub, reason = _reason(msg)
    sep = "" if not path or not sub or sub.startswith("[") else "."
    return (f"{path}{sep}{sub}" or "(top level)"), reason


def _dec_hook(kind: type, value: Any) -> Any:
    if kind is Path:
        if isinstance(value, str):
            return check_file_path(Path(value))
        raise TypeError(f"Expected `str`, got `{_json_kind(value)}`")
    raise TypeError(f"unsupported type {kind!r}")


def _json_kind(value: Any) -> str:
    for kind, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str")):
        if isinstance(value, kind):
            return name
    return "array" if isinstance(value, list) else "object" if isinstance(value, dict) else "null"


S = TypeVar("S")


def convert(model: type[S], data: Any) -> S:
    """``data`` (parsed YAML or JSON) validated as ``model``. Raises KeyedError (key, reason)
    for anything it may hold."""
    try:
        return msgspec.convert(data, model, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise KeyedError(*error_key(exc)) from None


# -- the settings -------------------------------------------------------------------------
Port = Annotated[int, Meta(ge=1, le=65535)]
#: A listening port; 0 lets the system pick one.
ListenPort = Annotated[int, Meta(ge=0, le=65535)]
#: a reading's unit: short, printable, no backslash (InfluxDB stores it as a tag)
Unit = Annotated[str, Meta(max_length=32)]


class BrokerSettings(Spec, frozen=True, kw_only=True):
    """Where the MQTT broker listens and the topic root (the cloud's ``broker`` section)."""

    host: str = "127.0.0.1"
    port: Port = 1883
    topic_root: str = "vigil"
    keepalive_s: Annotated[int, Meta(ge=5, le=3600)] = 30
    #: set: MQTT over TLS, the broker verified against this CA (the cloud's tls/ca.crt)
    ca_file: Path | None = None

    def _check(self) -> None:
        _field("host", check_host, self.host)
        try:
            Topics(self.topic_root)
        except TopicError as exc:
            raise KeyedError("topic_root", str(exc)) from None

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_root)


class MqttClientSettings(Spec, frozen=True, kw_only=True):
    """The agent's MQTT identity. The password comes from ``password_file``."""

    client_id: str
    username: str
    password_file: Path | None = None

    def _check(self) -> None:
        _field("client_id", check_name, self.client_id)
        _field("username", check_name, self.username)

    @property
    def password(self) -> str | None:
        return read_secret(self.password_file)


class SensorSpec(Spec, frozen=True, kw_only=True):
    """A simulated sensor: ``base + amplitude*sin(2πt/period) + noise``, seeded."""

    metric: str
    unit: Unit = ""
    base: float = 0.0
    amplitude: float = 1.0
    period_s: Annotated[float, Meta(gt=0)] = 300.0
    noise: Annotated[float, Meta(ge=0)] = 0.1

    def _check(self) -> None:
        _field("metric", check_name, self.metric)
        _field("unit", check_unit, self.unit)


class BreakerSettings(Spec, frozen=True, kw_only=True):
    fail_max: Annotated[int, Meta(ge=1, le=1000)] = 3
    reset_timeout_s: Annotated[float, Meta(gt=0)] = 60.0


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"(?:[01]\d|2[0-3]):[0-5]\d|24:00")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def minutes_of(hhmm: str) -> int:
    """``"09:30"`` → 570 (``"24:00"`` → 1440)."""
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


class MarketSpec(Spec, frozen=True, kw_only=True):
    """When a market trades: symbols ending in one of ``suffixes`` are fetched only on its
    ``days`` between ``open`` and ``close``, local time in ``timezone``, except ``holidays``."""

    name: str
    timezone: Annotated[str, Meta(description="an IANA zone: America/New_York")] = "UTC"
    open: Annotated[str, Meta(description="HH:MM, local time")] = "00:00"
    close: Annotated[str, Meta(description="HH:MM, local time; 24:00 for midnight")] = "24:00"
    days: list[Weekday] = msgspec.field(default_factory=lambda: list(WEEKDAYS[:5]))
    suffixes: Annotated[
        list[str], Meta(description='symbol endings it trades ("" for symbols without one)')
    ] = []
    currency: Annotated[str, Meta(max_length=8)] = "USD"
    holidays: Annotated[list[str], Meta(description="YYYY-MM-DD, local dates closed")] = []

    def _check(self) -> None:
        _field("name", check_name, self.name)
        try:
            import zoneinfo  # noqa: PLC0415 - only markets need it

            zoneinfo.ZoneInfo(self.timezone)
        except (ValueError, zoneinfo.ZoneInfoNotFoundError):
            raise KeyedError("timezone", f"{shown(self.timezone)} is not a time zone") from None
        for key in ("open", "close"):
            if not _HHMM.fullmatch(getattr(self, key)):
                raise KeyedError(key, f"{shown(getattr(self, key))} is not a time (HH:MM)")
        if minutes_of(self.open) >= minutes_of(self.close):
            raise KeyedError("close", f"must be after open ({self.open})")
        for i, day in enumerate(self.holidays):
            if not _DATE.fullmatch(day):
                raise KeyedError(f"holidays[{i}]", f"{shown(day)} is not a date (YYYY-MM-DD)")


#: NYSE/Nasdaq (symbols without a suffix), Milan, London, Xetra, and round the clock for
#: crypto (``BTC-USD``) and currencies (``EURUSD=X``). Holidays are not listed: add them.
DEFAULT_MARKETS: tuple[MarketSpec, ...] = (
    MarketSpec(name="XNYS", timezone="America/New_York", open="09:30", close="16:00",
               suffixes=[""], currency="USD"),
    MarketSpec(name="XMIL", timezone="Europe/Rome", open="09:00", close="17:30",
               suffixes=[".MI"], currency="EUR"),
    MarketSpec(name="XLON", timezone="Europe/London", open="08:00", close="16:30",
               suffixes=[".L"], currency="GBP"),
    MarketSpec(name="XETR", timezone="Europe/Berlin", open="09:00", close="17:30",
               suffixes=[".DE"], currency="EUR"),
    MarketSpec(name="24x7", days=list(WEEKDAYS), suffixes=["-USD", "=X"], currency="USD"),
)  # fmt: skip


class QuoteSettings(Spec, frozen=True, kw_only=True):
    symbols: Annotated[
        list[str], Meta(description="symbols fetched until the API assigns this agent its own")
    ] = []
    interval_s: Annotated[
        float, Meta(gt=0, description="how often quotes are fetched while their market is open")
    ] = 30.0
    source: Literal["yfinance", "simulated"] = "yfinance"
    breaker: BreakerSettings = BreakerSettings()
    market_hours: Annotated[
        bool, Meta(description="fetch only while a symbol's market is open (false: always)")
    ] = True
    markets: list[MarketSpec] = msgspec.field(default_factory=lambda: list(DEFAULT_MARKETS))

    def _check(self) -> None:
        for i, symbol in enumerate(self.symbols):
            if not is_symbol(symbol):
                raise KeyedError(f"symbols[{i}]", f"{shown(symbol)} is not a ticker symbol")
        if repeat := first_repeat(s.upper() for s in self.symbols):
            i, j = repeat
            raise KeyedError(f"symbols[{i}]", f"{shown(self.symbols[i])} is also symbols[{j}]")
        if repeat := first_repeat(m.name for m in self.markets):
            i, j = repeat
            raise KeyedError(f"markets[{i}].name", f"is also markets[{j}].name")


HostReading = Literal["cpu", "memory", "disk", "thermal", "load"]


class HostSourceSpec(Spec, tag_field="type", tag="host", frozen=True, kw_only=True):
    """Readings of the Linux host the agent runs on, from /proc and /sys."""

    name: str = "host"
    readings: Annotated[
        list[HostReading],
        Meta(
            description="cpu_percent, memory_used_percent, disk_used_percent{path}, "
            "thermal_celsius{zone}, load_1m"
        ),
    ] = msgspec.field(default_factory=lambda: ["cpu", "memory", "disk", "thermal"])
    disks: Annotated[list[str], Meta(description="mount points for disk_used_percent")] = (
        msgspec.field(default_factory=lambda: ["/"])
    )
    proc_root: Path = Path("/proc")
    sys_root: Path = Path("/sys")

    def _check(self) -> None:
        _field("name", check_name, self.name)


class CommandSourceSpec(Spec, tag_field="type", tag="command", frozen=True, kw_only=True):
    """Run a command every tick and read numbers from what it prints: ``name=value``,
    ``name: value`` or ``name value`` lines, or one bare number (then ``metric`` names it)."""

    name: str
    command: Annotated[list[str], Meta(min_length=1, description="argv, run without a shell")]
    timeout_s: Annotated[float, Meta(gt=0, le=60)] = 5.0
    metric: str | None = None
    unit: Unit = ""

    def _check(self) -> None:
        _field("name", check_name, self.name)
        if self.metric is not None:
            _field("metric", check_name, self.metric)
        _field("unit", check_unit, self.unit)


class PluginSourceSpec(Spec, tag_field="type", tag="plugin", frozen=True, kw_only=True):
    """A source from an installed package: the entry point ``plugin`` of group
    ``vigil.sources``, called with ``options``; it returns an object whose
    ``sample(ts_ms)`` gives ``edge_agent.samples.Sample`` values."""

    name: str
    plugin: Annotated[str, Meta(min_length=1, max_length=200)]
    options: dict[str, Any] = {}

    def _check(self) -> None:
        _field("name", check_name, self.name)


SourceSpec = HostSourceSpec | CommandSourceSpec | PluginSourceSpec


class AgentConfig(Spec, frozen=True, kw_only=True):
    """One edge agent: ``config/agents/<device>.yaml``."""

    device_id: str
    mqtt: MqttClientSettings
    outbox_path: Path
    broker: BrokerSettings = BrokerSettings()
    interval_s: Annotated[float, Meta(gt=0)] = 1.0
    batch_max: Annotated[int, Meta(ge=1, le=1000, description="readings per message at most")] = 50
    outbox_max_bytes: Annotated[
        int,
        Meta(
            ge=64 * 1024,
            description="when the outbox holds more, its oldest readings are dropped (counted)",
        ),
    ] = 256 * 1024 * 1024
    outbox_max_age_s: Annotated[
        float,
        Meta(ge=60, description="readings older than this are dropped from the outbox (counted)"),
    ] = 7 * 86_400.0
    confirm_timeout_s: Annotated[
        float,
        Meta(
            ge=1,
            le=86_400,
            description="a reading published but not confirmed stored this long is published again",
        ),
    ] = 30.0
    replay_max_per_s: Annotated[
        float,
        Meta(
            gt=0,
            description="readings per second at most that the agent publishes (its backlog "
            "after an outage, and re-sends), so the broker's queue stays shallow",
        ),
    ] = 2000.0
    status_interval_s: Annotated[
        float,
        Meta(ge=1, le=86_400, description="how often the retained status is published again"),
    ] = 30.0
    seed: int = 0
    sensors: list[SensorSpec] = []
    sources: Annotated[
        list[SourceSpec],
        Meta(description="readings beside the simulated sensors: host, command, plugin"),
    ] = []
    quotes: QuoteSettings = QuoteSettings()
    metrics_port: ListenPort = 9110
    metrics_host: Annotated[str, Meta(description="0.0.0.0 in containers")] = "127.0.0.1"

    def _check(self) -> None:
        _field("device_id", check_device_id, self.device_id)
        _field("metrics_host", check_host, self.metrics_host)
        if self.mqtt.username != self.device_id:
            raise KeyedError(
                "mqtt.username",
                f"must be the device id {self.device_id!r}: the broker "
                "lets a device publish only under its own username",
            )
        if self.mqtt.client_id != self.device_id:
            raise KeyedError(
                "mqtt.client_id",
                f"must be the device id {self.device_id!r}: the broker reserves each client "
                "id for the user of the same name",
            )
        if repeat := first_repeat(sensor.metric for sensor in self.sensors):
            i, j = repeat
            raise KeyedError(
                f"sensors[{i}].metric",
                f"{self.sensors[i].metric!r} is also sensors[{j}].metric: one sensor per metric",
            )
        if repeat := first_repeat(source.name for source in self.sources):
            i, j = repeat
            raise KeyedError(
                f"sources[{i}].name", f"{self.sources[i].name!r} is also sources[{j}].name"
            )


def agent_secret_files(config: AgentConfig) -> list[SecretFile]:
    """The secret files an edge agent reads (and the CA it verifies the broker with)."""
    files = []
    if config.mqtt.password_file is not None:
        files.append(SecretFile("mqtt.password_file", config.mqtt.password_file))
    if config.broker.ca_file is not None:
        files.append(SecretFile("broker.ca_file", config.broker.ca_file, "certificate"))
    return files


def load_agent_config(path: str | Path, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Load an agent's file: YAML, then ``VIGIL_AGENT__`` overrides, then validation.
    Raises ConfigError("<file>: <key>: <reason>") for anything the file may hold."""
    data = read_config_data(path, environ, AGENT_ENV_PREFIX)
    try:
        return convert(AgentConfig, data)
    except KeyedError as exc:
        raise ConfigError(str(path), exc.key, exc.reason) from None
