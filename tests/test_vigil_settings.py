"""Configuration: the committed files validate; a bad file names file, key and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.settings import ConfigError, load_agent_config, load_config

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
        (("replication_factor: 2", "replication_factor: 4"), "storage", "exceeds the 3"),
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
        environ={"VIGIL__INGEST__BATCH_MAX_MESSAGES": "77", "VIGIL__BROKER__HOST": "mqtt.example"},
    )
    assert config.ingest.batch_max_messages == 77 and config.broker.host == "mqtt.example"


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_config(tmp_path / "nope.yaml")
