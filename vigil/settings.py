"""Typed settings for the cloud services, validated once at start, as a whole.

The cloud side's YAML file (``config/vigil.yaml``: broker, storage, every service); an edge
agent's (``config/agents/*.yaml``) is validated by :mod:`vigil.agent_settings`, with msgspec,
so that a device does without pydantic. A bad file raises :class:`ConfigError`
naming the file, the key and the reason, whatever the file holds: bytes that are not UTF-8,
YAML that does not parse, nesting or aliases past the bounds, keys that are not strings,
values of the wrong type (no ``true`` for a port), and settings that contradict each other
(the cross-field rules in the models' ``_whole`` validators: TLS modes, unique storage
servers, device ids, broker users and listening ports, reserved names).

Environment variables override any key: ``VIGIL__INGEST__BATCH_MAX_MESSAGES=500`` sets
``ingest.batch_max_messages`` (values are parsed as YAML scalars, so ``500`` is an integer and
``'500'`` a string; a number in a list is addressed by its index,
``VIGIL__NOTIFIER__RECIPIENTS__0``). Secrets are never in the YAML: ``password_file`` and
``admin_token_sha256_file`` keys point at files (kept under ``.vigil/secrets``);
:func:`service_secret_files` says which files each service reads.

Reading a file (its bounds, YAML, overrides) and the errors are in :mod:`vigil.config_core`,
which needs no pydantic; this module holds the models and turns pydantic's errors into keys.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from vigil.config_core import (
    ENV_PREFIX,
    MAX_INGEST_MEMBERS,
    MEMBER_PORT_STEP,
    RESERVED_USERS,
    SERVICE_USERS,
    SERVICES,
    ConfigError,
    KeyedError,
    SecretFile,
    SecretKind,
    check_device_id,
    check_file_path,
    check_host,
    check_name,
    first_repeat,
    ingest_member_user,
    is_loopback_host,
    key_path,
    read_config_data,
    read_secret,
)
from vigil.names import ADMIN_USER
from vigil.text import shown
from vigil.topics import TopicError, Topics

_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})  # noqa: S104 - names, not binds
_URL = re.compile(
    r"(?P<scheme>https?)://(?P<host>\[[0-9A-Fa-f:.]+\]|[^/\s:@?#\[\]]+)(?::\d{1,5})?/?"
)


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


#: a name (device, metric, source, group): NAME_RULE
Name = Annotated[str, AfterValidator(check_name)]


def _email(value: str) -> str:
    local, at, domain = value.partition("@")
    if not (at and local and domain) or any(c.isspace() or ord(c) < 32 for c in value):
        raise ValueError(f"{shown(value)} is not an email address")
    return value


# Strict scalars: YAML already gives ints, floats and booleans their own types, so a value of
# another type is a mistake to report, not to coerce (``port: true`` is not port 1,
# ``starttls: "no"`` is not False). An int is accepted for a float.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
Port = Annotated[int, Strict(), Field(ge=1, le=65535)]
#: A listening port; 0 lets the system pick one (or switches the listener off).
ListenPort = Annotated[int, Strict(), Field(ge=0, le=65535)]
Host = Annotated[str, AfterValidator(check_host)]
FilePath = Annotated[Path, AfterValidator(check_file_path)]
Email = Annotated[str, AfterValidator(_email)]


def _norm_host(host: str) -> str:
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return "127.0.0.1"
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


def url_endpoint(url: str) -> tuple[str, int]:
    """``(host, port)`` of a validated storage URL, the host normalised (``localhost`` is
    127.0.0.1) and the port the scheme's default when the URL names none."""
    parts = urlsplit(url)
    return _norm_host(parts.hostname or ""), parts.port or (443 if parts.scheme == "https" else 80)


def _check_pair(model: BaseModel, cert: str, key: str) -> None:
    """A certificate and its key are given together or not at all."""
    have_cert, have_key = getattr(model, cert) is not None, getattr(model, key) is not None
    if have_cert != have_key:
        raise KeyedError(
            cert if have_key else key, f"{cert} and {key} go together: give both or neither"
        )


class BrokerTlsSettings(Model):
    """The broker's TLS listener, for devices: a certificate from Vigil's local CA
    (generated into ``ca_dir`` on first run, kept afterwards) unless ``cert_file`` and
    ``key_file`` name your own."""

    port: ListenPort = Field(8883, description="TLS listener port (0: no TLS listener)")
    host: Host = Field("0.0.0.0", description="address the TLS listener binds")  # noqa: S104
    ca_dir: Path = Field(
        Path(".vigil/tls"),
        description="the local CA (ca.crt for devices, ca.key kept 0600); generated once",
    )
    names: list[Host] = Field(
        [],
        description="more names or addresses devices reach the broker by (its certificate "
        "always names localhost, loopback and this machine's host names)",
    )
    cert_file: FilePath | None = None
    key_file: FilePath | None = None

    @model_validator(mode="after")
    def _own_pair(self) -> BrokerTlsSettings:
        _check_pair(self, "cert_file", "key_file")
        return self

    @property
    def enabled(self) -> bool:
        return self.port != 0

    @property
    def ca_file(self) -> Path:
        """What devices verify the broker against (the local CA's, or beside your own)."""
        return self.ca_dir / "ca.crt"


class BrokerSettings(Model):
    """Where the MQTT broker listens and the topic root every service uses. ``host`` and
    ``port`` are the plain listener the cloud services use; devices use the TLS listener."""

    host: Host = "127.0.0.1"
    port: Port = 1883
    topic_root: str = "vigil"
    keepalive_s: Int = Field(30, ge=5, le=3600)
    tls: BrokerTlsSettings = Field(default_factory=BrokerTlsSettings)
    allow_plain_remote: Bool = Field(
        False,
        description="let the plain listener (host) be a non-loopback address; only inside a "
        "private network such as compose's, where no password crosses a wire in the clear",
    )
    ca_file: FilePath | None = Field(
        None,
        description="the services connect over TLS, verifying the broker against this CA "
        "(port must then be a TLS listener); unset: plain MQTT",
    )

    @model_validator(mode="after")
    def _plain_stays_local(self) -> BrokerSettings:
        remote = not is_loopback_host(self.host)
        if remote and self.ca_file is None and not self.allow_plain_remote:
            raise KeyedError(
                "host",
                f"{self.host!r} is not a loopback address: the plain listener would carry "
                "passwords in the clear. Keep it on 127.0.0.1 and let devices use the TLS "
                "listener (broker.tls.port), or set broker.allow_plain_remote: true inside a "
                "private network",
            )
        return self

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
    """One MQTT identity. The password comes from ``password_file``."""

    client_id: str
    username: str
    password_file: FilePath | None = None

    @field_validator("client_id", "username")
    @classmethod
    def _check(cls, v: str) -> str:
        return check_name(v)

    @property
    def password(self) -> str | None:
        return read_secret(self.password_file)


class ConsumerMqttSettings(MqttClientSettings):
    """The MQTT identity of a consuming service (ingest, alert engine, notifier), and the
    client it receives with."""

    transport: Literal["fast", "paho"] = Field(
        "fast",
        description="fast: vigil.fastmqtt (many packets per read, a batch's PUBACKs in one "
        "write); paho: paho-mqtt, the reference implementation",
    )
    read_coalesce_ms: float = Field(
        2.0,
        ge=0,
        le=50,
        description="fast transport: after a read of only a few messages, wait this long "
        "before the next, so a moderate stream is read a few messages at a time instead of "
        "one (less CPU per message; at most this much latency); 0: read at once",
    )


class StorageNode(Model):
    name: str
    url: str = Field(description="InfluxDB 1.x HTTP API base, e.g. http://127.0.0.1:8086")

    @field_validator("name")
    @classmethod
    def _check(cls, v: str) -> str:
        return check_name(v)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        m = _URL.fullmatch(v)
        if m is None:
            raise ValueError(
                f"{shown(v)} is not an InfluxDB base URL: http:// or https://, a host, an "
                "optional port, no path"
            )
        check_host(m.group("host").strip("[]"))
        try:
            port = urlsplit(v).port
        except ValueError:
            port = 0
        if port == 0:
            raise ValueError(f"{shown(v)}: the port must be 1-65535")
        return v


class HintSettings(Model):
    """Hinted handoff: the writes for a server that is down, queued on the writer's disk."""

    max_bytes: Int = Field(
        1024**3, ge=1024 * 1024, description="per server; beyond it the oldest hints are dropped"
    )
    max_age_s: Float = Field(
        7 * 24 * 3600.0, gt=0, description="hints older than this are dropped (repair fixes them)"
    )
    replay_points_per_s: Float = Field(
        200_000.0, gt=0, description="rate limit of replay, so live ingest keeps going"
    )
    replay_batch_points: Int = Field(20_000, ge=1, le=1_000_000)


Consistency = Literal["one", "quorum", "all"]


class DownsampleSettings(Model):
    """Downsampled long-term series (vigil/rollups.py), computed once by the API."""

    bucket_s: Int = Field(
        3600, ge=60, le=7 * 86_400, description="one point per statistic per bucket (whole minutes)"
    )
    every_s: Float = Field(300.0, ge=0, le=86_400, description="how often (0: never)")
    lookback_s: Float = Field(
        86_400.0,
        gt=0,
        description="buckets computed again on each run, for readings that arrive late",
    )
    settle_s: Float = Field(
        120.0, ge=0, description="a bucket is computed once it ended this long ago"
    )
    retention_s: Float | None = Field(
        None, gt=0, description="rollups older than this are deleted; unset: kept forever"
    )

    @field_validator("bucket_s")
    @classmethod
    def _whole_minutes(cls, v: int) -> int:
        if v % 60:
            raise ValueError("must be a whole number of minutes")
        return v


class StorageSettings(Model):
    """The InfluxDB servers of the ring and how readings are placed on them."""

    database: str = "vigil"
    replication_factor: Int = Field(2, ge=1, le=5)
    vnodes: Int = Field(256, ge=1, le=4096, description="virtual nodes per server on the ring")
    consistency: Consistency = Field(
        "one",
        description="replicas that must store a batch before it is acknowledged; the others "
        "get a durable hint (docs/architecture.md, Guarantees)",
    )
    timeout_s: Float = Field(10.0, gt=0, le=3600, description="of one request to a server")
    straggler_s: Float = Field(
        2.0,
        gt=0,
        le=3600,
        description="once enough replicas answered, how long a slower one is waited for "
        "before its writes become hints (reads: before its answer is left out)",
    )
    probe_interval_s: Float = Field(1.0, gt=0, le=3600, description="health checks of servers")
    probe_timeout_s: Float = Field(1.0, gt=0, le=60)
    hints: HintSettings = Field(default_factory=HintSettings)
    downsample: DownsampleSettings = Field(default_factory=DownsampleSettings)
    retention_s: Float | None = Field(
        None,
        gt=0,
        description="points older than this are deleted by the API's maintenance (every "
        "repair_interval_s) and never brought back by hints or repair; unset: kept forever",
    )
    repair_interval_s: Float = Field(
        300.0,
        ge=0,
        description="automatic anti-entropy repair, run by the API (0: only on demand)",
    )
    repair_points_per_s: Float = Field(
        100_000.0, gt=0, description="rate limit of automatic repair"
    )
    layout_path: FilePath | None = Field(
        None,
        description="the cluster layout every service watches; once written (by `vigil "
        "storage`), it wins over `nodes` and `replication_factor` here, which seed it. "
        "Unset: the layout is this file's, fixed",
    )
    nodes: list[StorageNode] = Field(min_length=1)
    username: str = Field(
        "vigil-service", description="InfluxDB user of the services (ALL on the database)"
    )
    password_file: FilePath | None = Field(
        None, description="file holding that user's InfluxDB password"
    )
    ca_file: FilePath | None = Field(
        None,
        description="https:// servers are verified against this CA (e.g. .vigil/tls/ca.crt, "
        "the local CA `vigil run` issues its servers' certificates from); unset: the "
        "system's CAs",
    )

    @property
    def password(self) -> str | None:
        return read_secret(self.password_file)

    @field_validator("database", "username")
    @classmethod
    def _check_name(cls, v: str) -> str:
        return check_name(v)

    @model_validator(mode="after")
    def _whole(self) -> StorageSettings:
        if repeat := first_repeat(n.name for n in self.nodes):
            i, j = repeat
            raise KeyedError(
                f"nodes[{i}].name",
                f"{self.nodes[i].name!r} is also the name of nodes[{j}]: node names must be unique",
            )
        if repeat := first_repeat(url_endpoint(n.url) for n in self.nodes):
            i, j = repeat
            raise KeyedError(
                f"nodes[{i}].url",
                f"{shown(self.nodes[i].url)} is the same server as nodes[{j}].url: "
                "each node must be its own InfluxDB server, or replicas would share it",
            )
        if self.replication_factor > len(self.nodes):
            raise KeyedError(
                "replication_factor",
                f"replication_factor {self.replication_factor} exceeds the "
                f"{len(self.nodes)} configured nodes",
            )
        return self


class IngestSettings(Model):
    mqtt: ConsumerMqttSettings
    batch_max_messages: Int = Field(2000, ge=1, le=100_000)
    batch_linger_ms: Int = Field(50, ge=0, le=60_000)
    dedupe_window: Int = Field(200_000, ge=1, le=10_000_000, description="message ids remembered")
    receive_maximum: Int = Field(5000, ge=1, le=65535, description="unacked QoS 1 in flight")
    hints_dir: FilePath | None = Field(
        None,
        description="this process's hint queues, one folder per storage server. Unset: no "
        "hints, so a batch waits until every replica stores it",
    )
    metrics_port: ListenPort = 9101
    metrics_host: Host = Field("127.0.0.1", description="0.0.0.0 in containers")
    members: Int = Field(
        1,
        ge=1,
        le=MAX_INGEST_MEMBERS,
        description="ingest processes on one MQTT 5 shared subscription; above 1, member N "
        "is broker user vigil-ingest-N, with hints in hints_dir/member-N and metrics on "
        f"metrics_port + {MEMBER_PORT_STEP} x (N - 1)",
    )
    share_group: Name = Field("ingest", description="the shared subscription's group")

    @model_validator(mode="after")
    def _members_fit(self) -> IngestSettings:
        last = self.metrics_port + MEMBER_PORT_STEP * (self.members - 1)
        if self.metrics_port and last > 65535:
            raise KeyedError("members", f"member {self.members}'s metrics port {last} > 65535")
        return self

    def subscription(self, data_filter: str) -> str:
        """What ingest subscribes to: the data filter, shared when there are members."""
        return f"$share/{self.share_group}/{data_filter}" if self.members > 1 else data_filter

    def member(self, n: int) -> IngestSettings:
        """The settings of member ``n`` (1-based) of ``members`` > 1: its own broker user
        (password file beside the configured one), hint folder and metrics port."""
        if not 1 <= n <= self.members:
            raise ValueError(f"ingest member {n} is not one of 1..{self.members}")
        user = ingest_member_user(n)
        secret = self.mqtt.password_file
        mqtt = self.mqtt.model_copy(
            update={
                "username": user,
                "client_id": user,
                "password_file": None if secret is None else secret.with_name(f"{user}.password"),
            }
        )
        return self.model_copy(
            update={
                "mqtt": mqtt,
                "hints_dir": None if self.hints_dir is None else self.hints_dir / f"member-{n}",
                "metrics_port": self.metrics_port + MEMBER_PORT_STEP * (n - 1)
                if self.metrics_port
                else 0,
            }
        )

    def former(self, n: int | None) -> IngestSettings:
        """The identity of an ingest process that may no longer be configured (what
        ``--leave`` retires): member ``n`` of up to MAX_INGEST_MEMBERS, or with None the
        single process's own user and hint folder."""
        if n is None:
            return self.model_copy(update={"members": 1})
        if not 1 <= n <= MAX_INGEST_MEMBERS:
            raise ValueError(f"ingest member {n} is not one of 1..{MAX_INGEST_MEMBERS}")
        # a member's subscription was shared: at least two members
        return self.model_copy(update={"members": max(self.members, n, 2)}).member(n)

    def processes(self) -> dict[str, IngestSettings]:
        """``{process name: its settings}``: ``ingest`` alone, or ``ingest-1`` ..
        ``ingest-N`` for members on a shared subscription."""
        if self.members == 1:
            return {"ingest": self}
        return {f"ingest-{n}": self.member(n) for n in range(1, self.members + 1)}

    def hint_dirs(self) -> list[Path]:
        """The hint folders of every ingest process (what the storage operations read)."""
        return [p.hints_dir for p in self.processes().values() if p.hints_dir is not None]


class AlertEngineSettings(Model):
    mqtt: ConsumerMqttSettings
    state_path: FilePath
    metrics_port: ListenPort = 9102
    metrics_host: Host = Field("127.0.0.1", description="0.0.0.0 in containers")


class SmtpSettings(Model):
    host: Host = "127.0.0.1"
    port: Port = 2525
    sender: Email = "vigil@localhost"
    starttls: Bool = Field(False, description="upgrade a plain connection (port 587)")
    use_tls: Bool = Field(False, description="TLS from the first byte (port 465)")
    username: str | None = None
    password_file: FilePath | None = None
    timeout_s: Float = Field(10.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _whole(self) -> SmtpSettings:
        if self.starttls and self.use_tls:
            raise KeyedError(
                "starttls",
                "cannot be combined with use_tls: use_tls is TLS from the first byte "
                "(port 465), starttls upgrades a plain connection (port 587); choose one",
            )
        if self.username and self.password_file is None:
            raise KeyedError("password_file", "required with username: SMTP login needs both")
        if self.password_file is not None and not self.username:
            raise KeyedError(
                "username", "required with password_file: a password is only sent with a user"
            )
        return self


#: What an alert's group may be keyed by (besides its owner).
GroupLabel = Literal["rule_id", "device", "severity", "kind", "symbol"]


def _by_rule() -> list[GroupLabel]:
    return ["rule_id"]


class GroupingSettings(Model):
    """How alert transitions become notifications (Alertmanager's model): the transitions of
    one owner's group (same values of ``group_by``) go out together."""

    group_by: list[GroupLabel] = Field(
        default_factory=_by_rule,
        max_length=5,
        description="the labels that make a group, besides the owner ([]: one group per owner)",
    )
    group_wait_s: Float = Field(
        10.0,
        ge=0,
        le=86_400,
        description="how long a new group waits for more alerts before its first notification",
    )
    group_interval_s: Float = Field(
        60.0,
        ge=0,
        le=86_400,
        description="after a group's notification, how long its next changes wait to go out "
        "together",
    )
    repeat_interval_s: Float = Field(
        14_400.0,
        ge=0,
        le=30 * 86_400,
        description="how often a group still firing is notified again without a change (0: never)",
    )

    @field_validator("group_by")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("names a label twice")
        return v


class WebhookSettings(Model):
    timeout_s: Float = Field(10.0, gt=0, le=300, description="one POST's connect + read")
    max_attempts: Int = Field(
        10,
        ge=1,
        le=1000,
        description="tries of one notification while the receiver is away or answers 5xx, "
        "408 or 429, before it is recorded as failed (a 4xx is failed at once)",
    )
    allow_private_networks: Bool = Field(
        False,
        description="let webhooks reach loopback, private and link-local addresses (off: a "
        "user cannot point the notifier at the services beside it)",
    )


class TelegramSettings(Model):
    base_url: str = Field(
        "https://api.telegram.org",
        description="the Bot API's base URL (a local stand-in in tests and offline demos)",
    )
    bot_token_file: FilePath | None = Field(
        None, description="file holding the bot's token (unset: Telegram is off)"
    )
    timeout_s: Float = Field(10.0, gt=0, le=300)
    max_attempts: Int = Field(10, ge=1, le=1000)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{shown(v)} is not an http:// or https:// URL")
        return v.rstrip("/")

    @property
    def bot_token(self) -> str | None:
        return read_secret(self.bot_token_file)


class NotifierSettings(Model):
    mqtt: ConsumerMqttSettings
    smtp: SmtpSettings = SmtpSettings()
    grouping: GroupingSettings = GroupingSettings()
    webhooks: WebhookSettings = WebhookSettings()
    telegram: TelegramSettings = TelegramSettings()
    recipients: list[Email] = Field(min_length=1)
    state_path: FilePath
    metrics_port: ListenPort = 9103
    metrics_host: Host = Field("127.0.0.1", description="0.0.0.0 in containers")


class ApiSettings(Model):
    mqtt: MqttClientSettings
    host: Host = "127.0.0.1"
    port: ListenPort = 8000
    database: FilePath
    admin_token_sha256_file: FilePath | None = Field(
        None, description="file holding the SHA-256 hex digest of the admin bearer token"
    )
    reader_token_sha256_file: FilePath | None = Field(
        None,
        description="SHA-256 of the token dashboards (Grafana) read with, user `reader`: every "
        "device's series through the InfluxDB endpoint, no writes, nothing else of the API",
    )
    metrics_port: ListenPort = 9104
    metrics_host: Host = Field("127.0.0.1", description="0.0.0.0 in containers")
    influx_port: ListenPort = Field(
        8186,
        description="the cluster as one InfluxDB 1.x (/ping, /query, /write) for Grafana, "
        "Chronograf, the influx CLI and Telegraf, on api.host (0: off)",
    )
    gap_check_interval_s: Float = Field(
        300.0,
        ge=0,
        le=86_400,
        description="how often stored readings are compared with what devices sent (0: off)",
    )
    ticker_sync_interval_s: Float = Field(
        30.0,
        gt=0,
        le=3600,
        description="how often the followed symbols are assigned to the quote agents again "
        "(besides at once on each change)",
    )
    slo_interval_s: Float = Field(
        15.0,
        ge=0,
        le=3600,
        description="how often the SLOs are evaluated from the services' metrics (0: off)",
    )
    broker_owners_file: FilePath | None = Field(
        None,
        description="the broker's live owners file (clientids.devices in the broker folder): "
        "set, devices can be added and removed through the API while the broker runs",
    )
    tls_cert_file: FilePath | None = Field(
        None,
        description="set with tls_key_file: the API, the console and the InfluxDB endpoint "
        "over HTTPS only. `vigil run` issues a missing one from the local CA "
        "(broker.tls.ca_dir)",
    )
    tls_key_file: FilePath | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> ApiSettings:
        _check_pair(self, "tls_cert_file", "tls_key_file")
        return self

    @property
    def scheme(self) -> str:
        return "http" if self.tls_cert_file is None else "https"


class DeviceEntry(Model):
    id: str
    description: str = Field("", max_length=1000)
    owner: str = Field(
        ADMIN_USER,
        description="the user it belongs to: they see its data and their rules watch it "
        "(an admin sees every device)",
    )
    quotes: bool = Field(
        False,
        description="a quote agent: the API assigns it followed share symbols to fetch, and "
        "only quote agents may publish quotes",
    )

    @field_validator("id")
    @classmethod
    def _check(cls, v: str) -> str:
        return check_device_id(v)

    @field_validator("owner")
    @classmethod
    def _check_owner(cls, v: str) -> str:
        return check_name(v)


@dataclass(frozen=True)
class _Socket:
    key: str  # the setting that names the port
    host: str  # normalised
    port: int
    listens: bool  # a Vigil service binds it (else: a server Vigil connects to)

    def clashes(self, other: _Socket) -> bool:
        if self.port != other.port or self.port == 0:
            return False
        if self.host == other.host:
            return True
        if self.listens and other.listens:
            return self.host in _WILDCARD_HOSTS or other.host in _WILDCARD_HOSTS
        bind, server = (self, other) if self.listens else (other, self)
        return bind.listens and bind.host in _WILDCARD_HOSTS and is_loopback_host(server.host)


class PrometheusSettings(Model):
    """The Prometheus ``vigil run`` starts (Debian's package), scraping every process."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Int = Field(9090, ge=1, le=65535)
    scrape_interval_s: Float = Field(5.0, ge=1, le=300)


class VigilConfig(Model):
    """The cloud side: ``config/vigil.yaml``."""

    broker: BrokerSettings = BrokerSettings()
    storage: StorageSettings
    ingest: IngestSettings
    alert_engine: AlertEngineSettings
    notifier: NotifierSettings
    api: ApiSettings
    prometheus: PrometheusSettings = Field(default_factory=PrometheusSettings)
    devices: list[DeviceEntry] = []

    @property
    def quote_agents(self) -> frozenset[str]:
        """The devices that may fetch and publish quotes (``devices[].quotes``)."""
        return frozenset(d.id for d in self.devices if d.quotes)

    def service_mqtt(self, service: str) -> MqttClientSettings:
        """The MQTT identity of a cloud service, by section name (see SERVICES)."""
        mqtt: MqttClientSettings = getattr(self, service).mqtt
        return mqtt

    def sockets(self) -> Iterator[_Socket]:
        """Every host:port the system uses: the servers Vigil connects to (broker, SMTP,
        storage), then the services' own listeners, in file order."""
        broker = self.broker
        yield _Socket("broker.port", _norm_host(broker.host), broker.port, False)
        if broker.tls.enabled:
            yield _Socket("broker.tls.port", _norm_host(broker.tls.host), broker.tls.port, True)
        smtp = self.notifier.smtp
        yield _Socket("notifier.smtp.port", _norm_host(smtp.host), smtp.port, False)
        for i, node in enumerate(self.storage.nodes):
            yield _Socket(f"storage.nodes[{i}].url", *url_endpoint(node.url), False)
        ingest, engine, notifier, api = self.ingest, self.alert_engine, self.notifier, self.api
        for n in range(2, ingest.members + 1):
            port = ingest.member(n).metrics_port
            yield _Socket(
                f"ingest.members (member {n})", _norm_host(ingest.metrics_host), port, True
            )
        for key, host, port in (
            ("ingest.metrics_port", ingest.metrics_host, ingest.metrics_port),
            ("alert_engine.metrics_port", engine.metrics_host, engine.metrics_port),
            ("notifier.metrics_port", notifier.metrics_host, notifier.metrics_port),
            ("api.port", api.host, api.port),
            ("api.metrics_port", api.metrics_host, api.metrics_port),
            ("api.influx_port", api.host, api.influx_port),
        ):
            yield _Socket(key, _norm_host(host), port, True)

    @model_validator(mode="after")
    def _whole(self) -> VigilConfig:
        users: dict[str, str] = {}
        for service in SERVICES:
            mqtt = self.service_mqtt(service)
            if self.broker.ca_file is not None and getattr(mqtt, "transport", "") == "fast":
                raise KeyedError(
                    f"{service}.mqtt.transport",
                    "fast has no TLS, and broker.ca_file says the broker is reached over TLS: "
                    "set transport: paho",
                )
            if mqtt.client_id != mqtt.username:
                raise KeyedError(
                    f"{service}.mqtt.client_id",
                    f"must be the username {mqtt.username!r}: the broker reserves each client "
                    "id for the user of the same name",
                )
            own = SERVICE_USERS[service]
            if mqtt.username in RESERVED_USERS and mqtt.username != own:
                raise KeyedError(
                    f"{service}.mqtt.username",
                    f"{mqtt.username!r} is the broker user of another part of Vigil; "
                    f"this service's is {own!r}",
                )
            if mqtt.username in users:
                raise KeyedError(
                    f"{service}.mqtt.username",
                    f"{mqtt.username!r} is also {users[mqtt.username]}.mqtt.username: each "
                    "service needs its own broker user",
                )
            users[mqtt.username] = service
        if repeat := first_repeat(d.id for d in self.devices):
            i, j = repeat
            raise KeyedError(
                f"devices[{i}].id",
                f"{self.devices[i].id!r} is also devices[{j}].id: device ids must be unique",
            )
        for i, device in enumerate(self.devices):
            if device.id in users:
                raise KeyedError(
                    f"devices[{i}].id",
                    f"{device.id!r} is the broker user of {users[device.id]}: a device "
                    "needs a user of its own",
                )
        seen: list[_Socket] = []
        for socket in self.sockets():
            for other in seen:
                if socket.clashes(other):
                    raise KeyedError(
                        socket.key,
                        f"port {socket.port} on {socket.host} is also {other.key}: two "
                        "servers cannot listen on one host and port (0 picks a free one)",
                    )
            seen.append(socket)
        files: dict[str, str] = {}
        for key, path in (
            ("alert_engine.state_path", self.alert_engine.state_path),
            ("notifier.state_path", self.notifier.state_path),
            ("api.database", self.api.database),
            ("ingest.hints_dir", self.ingest.hints_dir),
            ("storage.layout_path", self.storage.layout_path),
        ):
            if path is None:
                continue
            norm = os.path.normpath(path)
            if norm in files:
                raise KeyedError(
                    key, f"{shown(str(path))} is also {files[norm]}: each needs its own file"
                )
            files[norm] = key
        return self


def service_secret_files(config: VigilConfig, service: str) -> list[SecretFile]:
    """The secret files the cloud service ``service`` (a section name, see SERVICES) reads:
    the ones its ``--validate-config`` checks and ``vigil validate-config`` checks for it."""
    if service not in SERVICE_USERS:
        raise ValueError(f"unknown service {service!r}: one of {', '.join(SERVICES)}")
    section = getattr(config, service)
    files: list[tuple[str, Path | None, SecretKind]] = [
        (f"{service}.mqtt.password_file", section.mqtt.password_file, "password")
    ]
    if service in ("ingest", "api"):
        files.append(("storage.password_file", config.storage.password_file, "password"))
        files.append(("storage.ca_file", config.storage.ca_file, "certificate"))
    if service == "notifier":
        files.append(
            ("notifier.smtp.password_file", config.notifier.smtp.password_file, "password")
        )
        files.append(
            (
                "notifier.telegram.bot_token_file",
                config.notifier.telegram.bot_token_file,
                "password",
            )
        )
    if service == "api":
        files.append(("api.admin_token_sha256_file", config.api.admin_token_sha256_file, "sha256"))
        files.append(
            ("api.reader_token_sha256_file", config.api.reader_token_sha256_file, "sha256")
        )
    files.append(("broker.ca_file", config.broker.ca_file, "certificate"))
    return [SecretFile(key, path, kind) for key, path, kind in files if path is not None]


# -- loading -----------------------------------------------------------------------------
M = TypeVar("M", bound=BaseModel)


def _reason(err: Mapping[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    reason = str(err["msg"]).removeprefix("Value error, ")
    given = err.get("input")
    kind = {bool: "a boolean", str: "a string", int: "an integer", float: "a number"}
    if str(err["type"]).endswith("_type") and type(given) in kind:
        reason += f", not {kind[type(given)]}"
    return reason


def _error_key(err: Mapping[str, Any]) -> tuple[str, str]:
    """(key, reason) of a pydantic error, a cross-field rule's own key included."""
    key = key_path(tuple(err["loc"]))
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, KeyedError):
        sep = "" if not key or cause.key.startswith("[") else "."
        return f"{key}{sep}{cause.key}", cause.reason
    return key or "(top level)", _reason(err)


def load_model(
    model: type[M],
    path: str | Path,
    *,
    environ: Mapping[str, str] | None = None,
    prefix: str = ENV_PREFIX,
) -> M:
    """Load ``path`` as ``model``: YAML, then environment overrides, then validation.

    Raises ConfigError("<file>: <key>: <reason>") for anything the file may hold.
    """
    data = read_config_data(path, environ, prefix)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(str(path), *validation_error(exc)) from None


def validation_error(exc: ValidationError) -> tuple[str, str]:
    """(key, reason) of the first error, with how many more there are."""
    errors = exc.errors()
    key, reason = _error_key(errors[0])
    if len(errors) > 1:
        more = len(errors) - 1
        reason += f" (and {more} more error{'s' if more > 1 else ''})"
    return key, reason


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> VigilConfig:
    return load_model(VigilConfig, path, environ=environ)
