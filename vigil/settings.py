"""Typed settings for every service, validated once at start.

Two YAML files: the cloud side (``config/vigil.yaml``: broker, storage, every service) and
one per edge agent (``config/agents/*.yaml``). A bad file raises :class:`ConfigError`
naming the file, the key and the reason. Environment variables override any key:
``VIGIL__INGEST__BATCH_MAX_MESSAGES=500`` sets ``ingest.batch_max_messages`` (values are
parsed as YAML scalars). Secrets are never in the YAML: ``password_file`` and
``admin_token_sha256_file`` keys point at files (kept under ``.vigil/secrets``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from vigil.names import NAME_RULE, is_name
from vigil.topics import TopicError, Topics

ENV_PREFIX = "VIGIL__"


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names file, key and reason."""

    def __init__(self, path: str, key: str, reason: str) -> None:
        super().__init__(f"{path}: {key}: {reason}" if key else f"{path}: {reason}")
        self.path, self.key, self.reason = path, key, reason


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _name(value: str) -> str:
    if not is_name(value):
        raise ValueError(f"{value!r} is not a valid name: {NAME_RULE}")
    return value


def read_secret(path: Path | None) -> str | None:
    """The stripped content of a secret file, or None when no file is configured."""
    if path is None:
        return None
    return path.read_text(encoding="utf-8").strip()


class BrokerSettings(Model):
    """Where the MQTT broker listens and the topic root every service uses."""

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    topic_root: str = "vigil"
    keepalive_s: int = Field(30, ge=5, le=3600)

    @field_validator("topic_root")
    @classmethod
    def _root(cls, v: str) -> str:
        try:
            Topics(v)
        except TopicError as exc:
            raise ValueError(str(exc)) from None
        return v

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_root)


class MqttClientSettings(Model):
    """One service's MQTT identity. The password comes from ``password_file``."""

    client_id: str
    username: str
    password_file: Path | None = None

    @field_validator("client_id", "username")
    @classmethod
    def _check(cls, v: str) -> str:
        return _name(v)

    @property
    def password(self) -> str | None:
        return read_secret(self.password_file)


class StorageNode(Model):
    name: str
    url: str = Field(pattern=r"^https?://[^/\s]+/?$", description="InfluxDB 1.x HTTP API base")

    @field_validator("name")
    @classmethod
    def _check(cls, v: str) -> str:
        return _name(v)


class StorageSettings(Model):
    """The InfluxDB servers of the ring and how readings are placed on them."""

    database: str = "vigil"
    replication_factor: int = Field(2, ge=1, le=5)
    vnodes: int = Field(256, ge=1, le=4096, description="virtual nodes per server on the ring")
    timeout_s: float = Field(10.0, gt=0)
    nodes: list[StorageNode] = Field(min_length=1)
    username: str = Field(
        "vigil-service", description="InfluxDB user of the services (ALL on the database)"
    )
    password_file: Path | None = Field(
        None, description="file holding that user's InfluxDB password"
    )

    @property
    def password(self) -> str | None:
        return read_secret(self.password_file)

    @field_validator("database")
    @classmethod
    def _check_db(cls, v: str) -> str:
        return _name(v)

    @field_validator("nodes")
    @classmethod
    def _unique(cls, v: list[StorageNode]) -> list[StorageNode]:
        names = [n.name for n in v]
        if len(set(names)) != len(names):
            raise ValueError("node names must be unique")
        return v

    @model_validator(mode="after")
    def _rf_fits(self) -> StorageSettings:
        if self.replication_factor > len(self.nodes):
            raise ValueError(
                f"replication_factor {self.replication_factor} exceeds the "
                f"{len(self.nodes)} configured nodes"
            )
        return self


class IngestSettings(Model):
    mqtt: MqttClientSettings
    batch_max_messages: int = Field(2000, ge=1, le=100_000)
    batch_linger_ms: int = Field(50, ge=0, le=60_000)
    dedupe_window: int = Field(200_000, ge=1, description="message ids remembered")
    receive_maximum: int = Field(5000, ge=1, le=65535, description="unacked QoS 1 in flight")
    metrics_port: int = Field(9101, ge=0, le=65535)
    metrics_host: str = Field("127.0.0.1", description="0.0.0.0 in containers")


class AlertEngineSettings(Model):
    mqtt: MqttClientSettings
    state_path: Path
    metrics_port: int = Field(9102, ge=0, le=65535)
    metrics_host: str = Field("127.0.0.1", description="0.0.0.0 in containers")


class SmtpSettings(Model):
    host: str = "127.0.0.1"
    port: int = Field(2525, ge=1, le=65535)
    sender: str = "vigil@localhost"
    starttls: bool = False
    use_tls: bool = False
    username: str | None = None
    password_file: Path | None = None
    timeout_s: float = Field(10.0, gt=0)


class NotifierSettings(Model):
    mqtt: MqttClientSettings
    smtp: SmtpSettings = SmtpSettings()
    recipients: list[str] = Field(min_length=1)
    state_path: Path
    metrics_port: int = Field(9103, ge=0, le=65535)
    metrics_host: str = Field("127.0.0.1", description="0.0.0.0 in containers")

    @field_validator("recipients")
    @classmethod
    def _emails(cls, v: list[str]) -> list[str]:
        for addr in v:
            if "@" not in addr or any(c.isspace() for c in addr):
                raise ValueError(f"{addr!r} is not an email address")
        return v


class ApiSettings(Model):
    mqtt: MqttClientSettings
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    database: Path
    admin_token_sha256_file: Path | None = Field(
        None, description="file holding the SHA-256 hex digest of the admin bearer token"
    )
    metrics_port: int = Field(9104, ge=0, le=65535)
    metrics_host: str = Field("127.0.0.1", description="0.0.0.0 in containers")


class DeviceEntry(Model):
    id: str
    description: str = ""

    @field_validator("id")
    @classmethod
    def _check(cls, v: str) -> str:
        return _name(v)


class VigilConfig(Model):
    """The cloud side: ``config/vigil.yaml``."""

    broker: BrokerSettings = BrokerSettings()
    storage: StorageSettings
    ingest: IngestSettings
    alert_engine: AlertEngineSettings
    notifier: NotifierSettings
    api: ApiSettings
    devices: list[DeviceEntry] = []


class SensorSpec(Model):
    """A simulated sensor: ``base + amplitude*sin(2πt/period) + noise``, seeded."""

    metric: str
    unit: str = ""
    base: float = 0.0
    amplitude: float = 1.0
    period_s: float = Field(300.0, gt=0)
    noise: float = Field(0.1, ge=0)

    @field_validator("metric")
    @classmethod
    def _check(cls, v: str) -> str:
        return _name(v)


class BreakerSettings(Model):
    fail_max: int = Field(3, ge=1)
    reset_timeout_s: float = Field(60.0, gt=0)


class QuoteSettings(Model):
    symbols: list[str] = []
    interval_s: float = Field(30.0, gt=0)
    source: Literal["yfinance", "simulated"] = "yfinance"
    breaker: BreakerSettings = BreakerSettings()


class AgentConfig(Model):
    """One edge agent: ``config/agents/<device>.yaml``."""

    device_id: str
    broker: BrokerSettings = BrokerSettings()
    mqtt: MqttClientSettings
    outbox_path: Path
    interval_s: float = Field(1.0, gt=0)
    batch_max: int = Field(50, ge=1, le=1000, description="readings per message at most")
    seed: int = 0
    sensors: list[SensorSpec] = []
    quotes: QuoteSettings = QuoteSettings()
    metrics_port: int = Field(9110, ge=0, le=65535)
    metrics_host: str = Field("127.0.0.1", description="0.0.0.0 in containers")

    @field_validator("device_id")
    @classmethod
    def _check(cls, v: str) -> str:
        return _name(v)


M = TypeVar("M", bound=BaseModel)


def _set_path(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    node = tree
    for key in keys[:-1]:
        nxt = node.get(key)
        if not isinstance(nxt, dict):
            nxt = {}
            node[key] = nxt
        node = nxt
    node[keys[-1]] = value


def apply_env_overrides(
    data: dict[str, Any], environ: Mapping[str, str], prefix: str = ENV_PREFIX
) -> list[str]:
    """Apply ``VIGIL__A__B=value`` overrides to ``data`` in place; returns the keys set."""
    applied = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(prefix) or len(name) == len(prefix):
            continue
        keys = [k.lower() for k in name[len(prefix) :].split("__")]
        try:
            value = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError:
            value = raw
        _set_path(data, keys, value)
        applied.append(".".join(keys))
    return applied


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_model(
    model: type[M],
    path: str | Path,
    *,
    environ: Mapping[str, str] | None = None,
    prefix: str = ENV_PREFIX,
) -> M:
    """Load ``path`` as ``model``: YAML, then environment overrides, then validation.

    Raises ConfigError("<file>: <key>: <reason>").
    """
    spath = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(spath, "", f"cannot read: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError(spath, where, f"invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(spath, "", "top level must be a mapping")
    apply_env_overrides(data, os.environ if environ is None else environ, prefix)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = _loc(err["loc"]) or "(top level)"
        reason = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            reason = "unknown key"
        elif err["type"] == "missing":
            reason = "required key is missing"
        more = len(exc.errors()) - 1
        if more:
            reason += f" (and {more} more error{'s' if more > 1 else ''})"
        raise ConfigError(spath, key, reason) from None


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> VigilConfig:
    return load_model(VigilConfig, path, environ=environ)


def load_agent_config(path: str | Path, environ: Mapping[str, str] | None = None) -> AgentConfig:
    return load_model(AgentConfig, path, environ=environ, prefix="VIGIL_AGENT__")
