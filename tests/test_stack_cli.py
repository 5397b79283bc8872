"""``vigil validate-config``: the whole system's configuration, checked as each service
checks its own at start (secret files included), every agent file, and what only the files
together show. Errors are ``vigil: <file>: <key>: <reason>`` with exit status 2."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from stack.cli import main
from vigil.config_core import ConfigError
from vigil.localca import ensure_ca

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Layout:
    config: Path
    agents: Path
    secrets: Path

    def cloud(self) -> dict[str, Any]:
        return yaml.safe_load(self.config.read_text())

    def write_cloud(self, data: dict[str, Any]) -> None:
        self.config.write_text(yaml.safe_dump(data, sort_keys=False))

    def agent(self, name: str) -> dict[str, Any]:
        return yaml.safe_load((self.agents / f"{name}.yaml").read_text())

    def write_agent(self, name: str, data: dict[str, Any]) -> Path:
        path = self.agents / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def validate(self, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
        rc = main(["validate-config", "--config", str(self.config), "--agents", str(self.agents)])
        out = capsys.readouterr()
        return rc, (out.out + out.err).strip()


def make_layout(tmp_path: Path, source: Path) -> Layout:
    """``source``'s vigil.yaml and agents/*.yaml, their secret files under tmp_path (all
    present and well formed)."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()

    def secret(name: str, content: str = "s3cret\n") -> str:
        path = secrets / name
        path.write_text(content)
        return str(path)

    data = yaml.safe_load((source / "vigil.yaml").read_text())
    for section in ("ingest", "alert_engine", "notifier", "api"):
        user = data[section]["mqtt"]["username"]
        data[section]["mqtt"]["password_file"] = secret(f"{user}.password")
    data["storage"]["password_file"] = secret("influxdb.password")
    data["storage"]["layout_path"] = str(tmp_path / "layout.json")  # no running stack's
    data["api"]["admin_token_sha256_file"] = secret(
        "admin.token.sha256", hashlib.sha256(b"token").hexdigest() + "\n"
    )
    data["api"]["reader_token_sha256_file"] = secret(
        "reader.token.sha256", hashlib.sha256(b"reader").hexdigest() + "\n"
    )
    found = Layout(tmp_path / "vigil.yaml", tmp_path / "agents", secrets)
    found.write_cloud(data)
    found.agents.mkdir()
    for path in sorted((source / "agents").glob("*.yaml")):
        agent = yaml.safe_load(path.read_text())
        agent["mqtt"]["password_file"] = secret(f"{path.stem}.password")
        if "ca_file" in agent["broker"]:  # devices verify the broker: a real CA certificate
            agent["broker"]["ca_file"] = str(ensure_ca(secrets / "tls"))
        found.write_agent(path.stem, agent)
    return found


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    """The committed config/, secrets in place."""
    return make_layout(tmp_path, ROOT / "config")


def test_a_complete_configuration_is_ok(layout, capsys):
    assert layout.validate(capsys) == (0, "ok")


@pytest.mark.parametrize(
    ("key", "service"),
    [
        ("ingest.mqtt.password_file", "ingest"),
        ("alert_engine.mqtt.password_file", "alert_engine"),
        ("notifier.mqtt.password_file", "notifier"),
        ("api.mqtt.password_file", "api"),
        ("storage.password_file", "ingest and api"),
        ("api.admin_token_sha256_file", "api"),
    ],
)
def test_every_services_secret_files_are_checked(layout, capsys, key, service):
    data = layout.cloud()
    section, *rest = key.split(".")
    node = data[section]
    for part in rest[:-1]:
        node = node[part]
    missing = layout.secrets / "missing"
    node[rest[-1]] = str(missing)
    layout.write_cloud(data)
    assert layout.validate(capsys) == (
        2,
        f"vigil: {layout.config}: {key}: cannot read {missing}: No such file or directory",
    )


def test_the_secret_files_contents_are_checked(layout, capsys):
    (layout.secrets / "admin.token.sha256").write_text("plaintext-token\n")
    digest = layout.secrets / "admin.token.sha256"
    assert layout.validate(capsys) == (
        2,
        f"vigil: {layout.config}: api.admin_token_sha256_file: {digest} must hold a SHA-256 "
        "hex digest (64 hex characters)",
    )
    digest.write_text(hashlib.sha256(b"t").hexdigest())
    (layout.secrets / "vigil-notifier.password").write_text("")
    assert layout.validate(capsys) == (
        2,
        f"vigil: {layout.config}: notifier.mqtt.password_file: "
        f"{layout.secrets / 'vigil-notifier.password'} is empty",
    )


def test_the_smtp_password_file_is_checked(layout, capsys):
    data = layout.cloud()
    data["notifier"]["smtp"].update(username="mailer", password_file="/nonexistent/smtp")
    layout.write_cloud(data)
    assert layout.validate(capsys) == (
        2,
        f"vigil: {layout.config}: notifier.smtp.password_file: cannot read /nonexistent/smtp: "
        "No such file or directory",
    )


def test_a_bad_cloud_file_is_named_with_its_key(layout, capsys):
    layout.config.write_bytes(b"broker: {host: caf\xe9}\n")
    assert layout.validate(capsys) == (
        2,
        f"vigil: {layout.config}: line 1, column 19: not UTF-8 text (byte 0xe9)",
    )


def test_each_agent_is_checked_as_the_agent_checks_itself(layout, capsys):
    agent = layout.agent("demo-2")
    agent["mqtt"]["password_file"] = str(layout.secrets / "nope")
    path = layout.write_agent("demo-2", agent)
    assert layout.validate(capsys) == (
        2,
        f"vigil: {path}: mqtt.password_file: cannot read {layout.secrets / 'nope'}: "
        "No such file or directory",
    )
    agent = layout.agent("demo-3")
    layout.write_agent(
        "demo-2",
        {
            **agent,
            "device_id": "demo-2",
            "mqtt": {**agent["mqtt"], "client_id": "demo-2", "username": "demo-2"},
        },
    )
    agent["quotes"]["symbols"] = ["^=^"]
    path = layout.write_agent("demo-3", agent)
    assert layout.validate(capsys) == (
        2,
        f"vigil: {path}: quotes.symbols[0]: '^=^' is not a ticker symbol",
    )


def test_two_agents_for_one_device_are_refused(layout, capsys):
    path = layout.write_agent("zz-copy", layout.agent("demo-1"))
    assert layout.validate(capsys) == (
        2,
        f"vigil: {path}: device_id: 'demo-1' is also the device of "
        f"{layout.agents / 'demo-1.yaml'}: one agent per device",
    )


def test_an_agent_cannot_be_a_services_broker_user(layout, capsys):
    data = layout.cloud()
    data["ingest"]["mqtt"].update(client_id="cloud-ingest", username="cloud-ingest")
    layout.write_cloud(data)
    agent = layout.agent("demo-1")
    agent.update(device_id="cloud-ingest")
    agent["mqtt"].update(client_id="cloud-ingest", username="cloud-ingest")
    path = layout.write_agent("demo-1", agent)
    assert layout.validate(capsys) == (
        2,
        f"vigil: {path}: device_id: 'cloud-ingest' is the broker user of ingest in {layout.config}",
    )


def test_an_agent_under_another_topic_root_is_refused(layout, capsys):
    agent = layout.agent("demo-1")
    agent["broker"]["topic_root"] = "elsewhere"
    path = layout.write_agent("demo-1", agent)
    assert layout.validate(capsys) == (
        2,
        f"vigil: {path}: broker.topic_root: 'elsewhere' is not 'vigil', the topic root of "
        f"{layout.config}: the services would never see this agent's readings",
    )


def test_the_deploy_configuration_is_ok_with_its_secrets(tmp_path, capsys):
    deploy = make_layout(tmp_path, ROOT / "deploy/config")
    assert deploy.validate(capsys) == (0, "ok")


SECRET_KEYS = [
    "ingest.mqtt.password_file",
    "alert_engine.mqtt.password_file",
    "notifier.mqtt.password_file",
    "api.mqtt.password_file",
    "storage.password_file",
    "api.admin_token_sha256_file",
    "api.reader_token_sha256_file",
]
READS = {
    "ingest_service": {"ingest.mqtt.password_file", "storage.password_file"},
    "alert_engine": {"alert_engine.mqtt.password_file"},
    "notifier": {"notifier.mqtt.password_file"},
    "api": {
        "api.mqtt.password_file",
        "storage.password_file",
        "api.admin_token_sha256_file",
        "api.reader_token_sha256_file",
    },
}


@pytest.mark.parametrize("module", sorted(READS))
@pytest.mark.parametrize("key", SECRET_KEYS)
def test_each_services_own_check_covers_the_files_it_reads(layout, module, key):
    import importlib

    load = importlib.import_module(f"{module}.__main__").load
    data = layout.cloud()
    section, *rest = key.split(".")
    node = data[section]
    for part in rest[:-1]:
        node = node[part]
    node[rest[-1]] = str(layout.secrets / "missing")
    layout.write_cloud(data)
    if key in READS[module]:
        with pytest.raises(ConfigError) as err:
            load(str(layout.config))
        assert err.value.key == key
    else:
        load(str(layout.config))
