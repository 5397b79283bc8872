"""Configuration: the committed files validate; a bad file names file, key and reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from vigil.agent_settings import load_agent_config
from vigil.cli import check_secret_files
from vigil.config_core import (
    INGEST_MEMBER_USERS,
    RESERVED_USERS,
    SERVICE_USERS,
    SERVICES,
    VIEWER_USER,
    ConfigError,
    SecretFile,
    secret_problem,
)
from vigil.settings import load_config, service_secret_files

ROOT = Path(__file__).resolve().parent.parent


def test_committed_configs_validate():
    config = load_config(ROOT / "config/vigil.yaml", environ={})
    assert config.storage.replication_factor == 2 and len(config.storage.nodes) == 3
    agents = sorted((ROOT / "config/agents").glob("*.yaml"))
    assert [p.stem for p in agents] == ["demo-1", "demo-2", "demo-3"]
    for path in agents:
        assert load_agent_config(path, environ={}).device_id == path.stem


@pytest.mark.parametrize(
    ("edit", "key", "reason"),
    [
        (
            ("batch_max_messages: 2000", "batch_max_messages: -1"),
            "ingest.batch_max_messages",
            "greater than or equal to 1",
        ),
        (
            ("replication_factor: 2", "replication_factor: 2\n  colour: red"),
            "storage.colour",
            "unknown key",
        ),
        (("  database: vigil\n", "  database: 'no spaces'\n"), "storage.database", "1-64"),
        (
            ("recipients: [ops@example.com]", "recipients: [nobody]"),
            "notifier.recipients",
            "not an email address",
        ),
        (
            ("replication_factor: 2", "replication_factor: 4"),
            "storage.replication_factor",
            "exceeds the 3",
        ),
        (("port: 1883", "port: [1883"), "line", "invalid YAML"),
    ],
)
def test_errors_name_file_key_and_reason(tmp_path, edit, key, reason):
    text = (ROOT / "config/vigil.yaml").read_text()
    assert edit[0] in text
    bad = tmp_path / "vigil.yaml"
    bad.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(ConfigError) as err:
        load_config(bad, environ={})
    message = str(err.value)
    assert message.startswith(f"{bad}: {key}"), message
    assert reason in message


def test_environment_overrides_any_key():
    config = load_config(
        ROOT / "config/vigil.yaml",
        environ={
            "VIGIL__INGEST__BATCH_MAX_MESSAGES": "77",
            "VIGIL__BROKER__HOST": "mqtt.example",
            "VIGIL__BROKER__ALLOW_PLAIN_REMOTE": "true",
        },
    )
    assert config.ingest.batch_max_messages == 77 and config.broker.host == "mqtt.example"


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_the_deploy_configs_validate():
    deploy = ROOT / "deploy/config"
    assert load_config(deploy / "vigil.yaml", environ={}).broker.host == "mosquitto"
    for path in sorted((deploy / "agents").glob("*.yaml")):
        assert load_agent_config(path, environ={}).device_id == path.stem


def test_the_reserved_names_are_the_brokers_service_users():
    from broker.provision import SERVICE_ACCESS

    assert set(SERVICE_ACCESS) == RESERVED_USERS
    assert set(SERVICE_USERS.values()) | set(INGEST_MEMBER_USERS) | {VIEWER_USER} == RESERVED_USERS
    assert tuple(SERVICE_USERS) == SERVICES


# -- the whole file, rule by rule: each case edits the committed config/vigil.yaml ---------
def cloud_data() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "config/vigil.yaml").read_text())


def agent_data() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "config/agents/demo-1.yaml").read_text())


def error_of(tmp_path: Path, data: Any, loader: Any = load_config, **env: str) -> str:
    """The message loading ``data`` gives, without the file name (which it must start with)."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError) as err:
        loader(path, environ=env)
    message = str(err.value)
    assert message.startswith(f"{path}: {err.value.key}: "), message
    return message.removeprefix(f"{path}: ")


def edited(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """``data`` with the key ``a.b[1].c`` set to ``value``."""
    node: Any = data
    parts = [
        int(p) if p.isdigit() else p for p in dotted.replace("[", ".").replace("]", "").split(".")
    ]
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value
    return data


SERVICE_CASES = [
    pytest.param(
        {"notifier.smtp.starttls": True, "notifier.smtp.use_tls": True},
        "notifier.smtp.starttls: cannot be combined with use_tls: use_tls is TLS from the first "
        "byte (port 465), starttls upgrades a plain connection (port 587); choose one",
        id="starttls-and-implicit-tls",
    ),
    pytest.param(
        {"notifier.smtp.username": "mailer"},
        "notifier.smtp.password_file: required with username: SMTP login needs both",
        id="smtp-user-without-password",
    ),
    pytest.param(
        {"notifier.smtp.password_file": "/run/smtp.password"},
        "notifier.smtp.username: required with password_file: a password is only sent with a user",
        id="smtp-password-without-user",
    ),
    pytest.param(
        {"storage.nodes[1].url": "http://127.0.0.1:8086/"},
        "storage.nodes[1].url: 'http://127.0.0.1:8086/' is the same server as nodes[0].url: "
        "each node must be its own InfluxDB server, or replicas would share it",
        id="same-url-with-a-slash",
    ),
    pytest.param(
        {"storage.nodes[2].url": "http://LOCALHOST:8087"},
        "storage.nodes[2].url: 'http://LOCALHOST:8087' is the same server as nodes[1].url: "
        "each node must be its own InfluxDB server, or replicas would share it",
        id="same-server-by-another-name",
    ),
    pytest.param(
        {"storage.nodes[1].name": "influx-1"},
        "storage.nodes[1].name: 'influx-1' is also the name of nodes[0]: node names must be unique",
        id="same-node-name",
    ),
    pytest.param(
        {"storage.replication_factor": 4},
        "storage.replication_factor: replication_factor 4 exceeds the 3 configured nodes",
        id="rf-above-nodes",
    ),
    pytest.param(
        {"storage.nodes[0].url": "http://127.0.0.1:8086/query"},
        "storage.nodes[0].url: 'http://127.0.0.1:8086/query' is not an InfluxDB base URL: "
        "http:// or https://, a host, an optional port, no path",
        id="url-with-a-path",
    ),
    pytest.param(
        {"storage.nodes[0].url": "http://127.0.0.1:99999"},
        "storage.nodes[0].url: 'http://127.0.0.1:99999': the port must be 1-65535",
        id="url-port-out-of-range",
    ),
    pytest.param(
        {"devices[1].id": "demo-1"},
        "devices[1].id: 'demo-1' is also devices[0].id: device ids must be unique",
        id="duplicate-device",
    ),
    pytest.param(
        {"devices[0].id": "demo-1\n"},
        "devices[0].id: 'demo-1\\n' is not a valid name: use 1-64 characters from "
        "A-Z a-z 0-9 _ . -, starting with a letter or digit",
        id="device-id-with-a-newline",
    ),
    pytest.param(
        {"ingest.mqtt.client_id": "ingest-2"},
        "ingest.mqtt.client_id: must be the username 'vigil-ingest': the broker reserves each "
        "client id for the user of the same name",
        id="client-id-not-username",
    ),
    pytest.param(
        {"api.mqtt.client_id": "vigil-viewer", "api.mqtt.username": "vigil-viewer"},
        "api.mqtt.username: 'vigil-viewer' is the broker user of another part of Vigil; this "
        "service's is 'vigil-api'",
        id="service-as-the-viewer",
    ),
    pytest.param(
        {
            "ingest.mqtt.client_id": "cloud",
            "ingest.mqtt.username": "cloud",
            "notifier.mqtt.client_id": "cloud",
            "notifier.mqtt.username": "cloud",
        },
        "notifier.mqtt.username: 'cloud' is also ingest.mqtt.username: each service needs its "
        "own broker user",
        id="two-services-one-user",
    ),
    pytest.param(
        {"api.mqtt.client_id": "demo-2", "api.mqtt.username": "demo-2"},
        "devices[1].id: 'demo-2' is the broker user of api: a device needs a user of its own",
        id="device-as-a-custom-service-user",
    ),
    pytest.param(
        {"api.metrics_port": 9101},
        "api.metrics_port: port 9101 on 127.0.0.1 is also ingest.metrics_port: two servers "
        "cannot listen on one host and port (0 picks a free one)",
        id="two-services-one-metrics-port",
    ),
    pytest.param(
        {"api.port": 9102, "api.host": "0.0.0.0"},
        "api.port: port 9102 on 0.0.0.0 is also alert_engine.metrics_port: two servers cannot "
        "listen on one host and port (0 picks a free one)",
        id="wildcard-overlaps-loopback",
    ),
    pytest.param(
        {"notifier.metrics_port": 1883},
        "notifier.metrics_port: port 1883 on 127.0.0.1 is also broker.port: two servers "
        "cannot listen on one host and port (0 picks a free one)",
        id="metrics-on-the-broker-port",
    ),
    pytest.param(
        {"api.port": 8089, "api.host": "localhost"},
        "api.port: port 8089 on 127.0.0.1 is also storage.nodes[2].url: two servers cannot "
        "listen on one host and port (0 picks a free one)",
        id="api-on-an-influxdb-port",
    ),
    pytest.param(
        {"notifier.state_path": ".vigil/alert_engine/../alert_engine/state.sqlite3"},
        "notifier.state_path: '.vigil/alert_engine/../alert_engine/state.sqlite3' is also "
        "alert_engine.state_path: each needs its own file",
        id="two-services-one-state-file",
    ),
    pytest.param(
        {"broker.host": ""},
        "broker.host: '' is not a host name or IP address",
        id="empty-host",
    ),
    pytest.param(
        {"notifier.smtp.sender": "vigil"},
        "notifier.smtp.sender: 'vigil' is not an email address",
        id="sender-not-an-address",
    ),
    pytest.param(
        {"api.database": "a\x00b"},
        "api.database: 'a\\x00b' is not a file path",
        id="nul-in-a-path",
    ),
]


@pytest.mark.parametrize(("edits", "expected"), SERVICE_CASES)
def test_cross_field_rules_of_the_cloud_file(tmp_path, edits, expected):
    data = cloud_data()
    for key, value in edits.items():
        edited(data, key, value)
    assert error_of(tmp_path, data) == expected


@pytest.mark.parametrize("reserved", sorted(RESERVED_USERS))
def test_no_device_takes_a_reserved_name(tmp_path, reserved):
    data = edited(cloud_data(), "devices[2].id", reserved)
    assert error_of(tmp_path, data) == (
        f"devices[2].id: {reserved!r} is reserved for Vigil's own broker users"
    )
    agent = agent_data()
    agent.update(device_id=reserved, mqtt={"client_id": reserved, "username": reserved})
    assert error_of(tmp_path, agent, load_agent_config) == (
        f"device_id: {reserved!r} is reserved for Vigil's own broker users"
    )


def test_what_may_repeat_or_differ_is_accepted(tmp_path):
    data = cloud_data()
    for section in ("ingest", "alert_engine", "notifier", "api"):
        data[section]["metrics_port"] = 0  # any free port: may repeat
    data["api"]["port"] = 0
    data["notifier"]["metrics_host"] = "127.0.0.2"  # another address, same port is fine
    data["notifier"]["metrics_port"] = 9101
    data["ingest"]["metrics_port"] = 9101
    data["notifier"]["smtp"].update(use_tls=True, username="mailer", password_file="/x")
    data["storage"]["nodes"][1]["url"] = "https://127.0.0.1"  # port 443
    data["storage"]["nodes"][2]["url"] = "http://127.0.0.1/"  # port 80
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_config(path, environ={})
    assert config.notifier.smtp.use_tls and config.api.port == 0


AGENT_CASES = [
    pytest.param(
        {"mqtt": {"client_id": "vigil-ingest", "username": "demo-1"}},
        "mqtt.client_id: must be the device id 'demo-1': the broker reserves each client id "
        "for the user of the same name",
        id="agent-with-a-service-client-id",
    ),
    pytest.param(
        {"mqtt": {"client_id": "demo-1", "username": "demo-2"}},
        "mqtt.username: must be the device id 'demo-1': the broker lets a device publish only "
        "under its own username",
        id="agent-under-another-user",
    ),
    pytest.param(
        {"sensors": [{"metric": "t"}, {"metric": "t"}]},
        "sensors[1].metric: 't' is also sensors[0].metric: one sensor per metric",
        id="two-sensors-one-metric",
    ),
    pytest.param(
        {"quotes": {"symbols": ["AAPL", "aapl"]}},
        "quotes.symbols[1]: 'aapl' is also symbols[0]",
        id="one-symbol-twice",
    ),
    pytest.param(
        {"sensors": [{"metric": "t", "unit": "x" * 33}]},
        "sensors[0].unit: String should have at most 32 characters",
        id="unit-longer-than-a-reading-takes",
    ),
    pytest.param(
        {"sensors": [{"metric": "t", "base": float("nan")}]},
        "sensors[0].base: Input should be a finite number",
        id="nan-base",
    ),
    pytest.param(
        {"metrics_host": "a b"},
        "metrics_host: 'a b' is not a host name or IP address",
        id="host-with-a-space",
    ),
]


@pytest.mark.parametrize(("changes", "expected"), AGENT_CASES)
def test_cross_field_rules_of_an_agent_file(tmp_path, changes, expected):
    assert error_of(tmp_path, {**agent_data(), **changes}, load_agent_config) == expected


STRICT_CASES = [
    ("api.port", True, "api.port: Input should be a valid integer, not a boolean"),
    ("broker.port", "1883", "broker.port: Input should be a valid integer, not a string"),
    (
        "ingest.metrics_port",
        9101.0,
        "ingest.metrics_port: Input should be a valid integer, not a number",
    ),
    (
        "ingest.batch_max_messages",
        False,
        "ingest.batch_max_messages: Input should be a valid integer, not a boolean",
    ),
    (
        "storage.replication_factor",
        "2",
        "storage.replication_factor: Input should be a valid integer, not a string",
    ),
    (
        "notifier.smtp.starttls",
        "yes",
        "notifier.smtp.starttls: Input should be a valid boolean, not a string",
    ),
    (
        "notifier.smtp.use_tls",
        1,
        "notifier.smtp.use_tls: Input should be a valid boolean, not an integer",
    ),
    ("storage.timeout_s", True, "storage.timeout_s: Input should be a valid number, not a boolean"),
    ("storage.timeout_s", "10", "storage.timeout_s: Input should be a valid number, not a string"),
    ("storage.timeout_s", float("inf"), "storage.timeout_s: Input should be a finite number"),
    ("broker.host", 127, "broker.host: Input should be a valid string, not an integer"),
]


@pytest.mark.parametrize(("key", "value", "expected"), STRICT_CASES)
def test_scalars_are_not_coerced(tmp_path, key, value, expected):
    assert error_of(tmp_path, edited(cloud_data(), key, value)) == expected


def test_an_int_is_a_float_and_paths_load_from_strings(tmp_path):
    data = edited(cloud_data(), "storage.timeout_s", 3)
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_config(path, environ={})
    assert config.storage.timeout_s == 3.0 and isinstance(config.api.database, Path)


# -- any content: a ConfigError with a position or key, never a traceback -------------------
LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n"
    for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)
FILE_CASES = [
    pytest.param(
        b"broker:\n  host: caf\xe9\n", "line 2, column 12: not UTF-8 text (byte 0xe9)", id="latin-1"
    ),
    pytest.param(
        b"\x89PNG\r\n\x1a\n\x00\x00", "line 1, column 1: not UTF-8 text (byte 0x89)", id="binary"
    ),
    pytest.param(
        b"broker: \x00\n",
        "line 1, column 9: invalid YAML: character U+0000 is not allowed",
        id="nul",
    ),
    pytest.param(
        b"a: " + b"[" * 10_000,
        "line 1, column 35: invalid YAML: nested deeper than 32 levels",
        id="deep",
    ),
    pytest.param(
        LAUGHS.encode(),
        "line 5, column 4: invalid YAML: holds more than 50000 values once aliases are expanded",
        id="billion-laughs",
    ),
    pytest.param(
        b"a: &a [*a]\n",
        "line 1, column 4: invalid YAML: an alias refers to a value that holds it",
        id="self-alias",
    ),
    pytest.param(
        b"a: 2001-13-45\n",
        "line 1, column 4: invalid YAML: cannot read this value (ValueError: month must be "
        "in 1..12)",
        id="bad-date",
    ),
    pytest.param(
        b"a: !!timestamp soon\n",
        "line 1, column 4: invalid YAML: cannot read this value (AttributeError: 'NoneType' "
        "object has no attribute 'groupdict')",
        id="bad-timestamp-tag",
    ),
    pytest.param(
        b"a: !!python/object:os.system x\n",
        "line 1, column 4: invalid YAML: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object:os.system'",
        id="python-tag",
    ),
    pytest.param(
        b"? [a]\n: b\n",
        "line 1, column 3: invalid YAML: while constructing a mapping; found unhashable key",
        id="unhashable-key",
    ),
    pytest.param(
        b"a: 1\n---\nb: 2\n",
        "line 2, column 1: invalid YAML: expected a single document in the stream; but found "
        "another document",
        id="two-documents",
    ),
    pytest.param(
        b"- a\n- b\n", "(top level): must be a mapping of keys to values, not list", id="a-list"
    ),
    pytest.param(
        b"false\n", "(top level): must be a mapping of keys to values, not bool", id="false"
    ),
    pytest.param(b"1: a\n", "(top level): key 1 is not a string", id="int-key"),
    pytest.param(b"broker: {null: 1}\n", "broker: key None is not a string", id="null-key"),
    pytest.param(
        b"#" * (1024 * 1024 + 1),
        "(top level): larger than 1024 KiB: not a configuration",
        id="too-large",
    ),
]


@pytest.mark.parametrize(("content", "expected"), FILE_CASES)
def test_any_file_content_gives_a_config_error(tmp_path, content, expected):
    path = tmp_path / "vigil.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert str(err.value) == f"{path}: {expected}"


def test_aliases_within_bounds_still_work(tmp_path):
    text = (ROOT / "config/vigil.yaml").read_text()
    text = text.replace("  smtp: {host: 127.0.0.1", "  smtp: &smtp {host: 127.0.0.1")
    path = tmp_path / "vigil.yaml"
    path.write_text(text)
    assert load_config(path, environ={}).notifier.smtp.port == 2525


ENV_CASES = [
    ({"VIGIL__API__PORT": "true"}, "api.port: Input should be a valid integer, not a boolean"),
    ({"VIGIL__API__PORT": "'8000'"}, "api.port: Input should be a valid integer, not a string"),
    ({"VIGIL__API__PORT": "[8000"}, "api.port: Input should be a valid integer, not a string"),
    (
        {"VIGIL__INGEST____PORT": "1"},
        "VIGIL__INGEST____PORT: environment override with an empty key (a stray __)",
    ),
    (
        {"VIGIL__STORAGE__NODES__1__URL": "http://127.0.0.1:8086"},
        "storage.nodes[1].url: 'http://127.0.0.1:8086' is the same server as nodes[0].url: "
        "each node must be its own InfluxDB server, or replicas would share it",
    ),
    (
        {"VIGIL__STORAGE__NODES__3__URL": "http://h"},
        "storage.nodes: VIGIL__STORAGE__NODES__3__URL: '3' is not an index of this list of 3",
    ),
    (
        {"VIGIL__BROKER": "5"},
        "broker: Input should be a valid dictionary or instance of BrokerSettings, not an integer",
    ),
    ({"VIGIL__BROKER__COLOUR": "red"}, "broker.colour: unknown key"),
]


@pytest.mark.parametrize(("env", "expected"), ENV_CASES)
def test_environment_overrides_are_validated_like_the_file(env, expected):
    path = ROOT / "config/vigil.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(path, environ=env)
    assert str(err.value) == f"{path}: {expected}"


def test_an_override_can_set_one_item_of_a_list():
    config = load_config(
        ROOT / "config/vigil.yaml",
        environ={"VIGIL__NOTIFIER__RECIPIENTS__0": "me@example.com", "VIGIL__API__PORT": "0"},
    )
    assert config.notifier.recipients == ["me@example.com"] and config.api.port == 0


# -- secret files --------------------------------------------------------------------------
def test_each_service_names_the_secret_files_it_reads():
    config = load_config(ROOT / "config/vigil.yaml", environ={})
    keys = {s: [f.key for f in service_secret_files(config, s)] for s in SERVICES}
    assert keys == {
        "ingest": ["ingest.mqtt.password_file", "storage.password_file"],
        "alert_engine": ["alert_engine.mqtt.password_file"],
        "notifier": ["notifier.mqtt.password_file"],
        "api": [
            "api.mqtt.password_file",
            "storage.password_file",
            "api.admin_token_sha256_file",
            "api.reader_token_sha256_file",
        ],
    }
    assert [f.kind for f in service_secret_files(config, "api")][-1] == "sha256"
    with pytest.raises(ValueError, match="unknown service"):
        service_secret_files(config, "viewer")


@pytest.mark.parametrize(
    ("content", "kind", "problem"),
    [
        (None, "password", "cannot read {p}: No such file or directory"),
        (b"", "password", "{p} is empty"),
        (b" \n", "password", "{p} is empty"),
        (b"\xff\xfe", "password", "{p} is not UTF-8 text"),
        (b"x" * (64 * 1024 + 1), "password", "{p} is larger than 64 KiB: not a secret"),
        (b"plaintext-token\n", "sha256", "{p} must hold a SHA-256 hex digest (64 hex characters)"),
        (b"s3cret\n", "password", None),
        (b"AB" * 32 + b"\n", "sha256", None),
    ],
)
def test_a_secret_file_must_hold_a_secret(tmp_path, content, kind, problem):
    p = tmp_path / "secret"
    if content is not None:
        p.write_bytes(content)
    got = secret_problem(SecretFile("k", p, kind))
    assert got == (problem.format(p=p) if problem else None)
    if problem:
        with pytest.raises(ConfigError) as err:
            check_secret_files("f.yaml", [SecretFile("api.x", p, kind)])
        assert str(err.value) == f"f.yaml: api.x: {problem.format(p=p)}"
