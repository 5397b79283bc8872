"""The live device configuration contract (vigil.device_config) and the dynamic-security
helpers (vigil.dynsec): pure, so tested directly; their parsers are fuzzed for totality. And
the agent's handling of a configuration message, without a broker (the agent is built but
never started)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.agent import Agent
from vigil import dynsec
from vigil.agent_settings import AgentConfig, convert
from vigil.device_config import DeviceConfig, DeviceSettings, decode_device_config
from vigil.messages import DeviceStatus, InvalidMessage

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(["device", "version", "interval_s", "batch_max", "sensors", "tickers", "x"])


# -- the contract ---------------------------------------------------------------------------
def test_a_configuration_round_trips_and_leaves_out_what_it_does_not_set():
    live = DeviceConfig(device="dev-1", version=7, interval_s=2.0, tickers=["AAPL"])
    assert json.loads(live.encode()) == {
        "device": "dev-1",
        "version": 7,
        "interval_s": 2.0,
        "tickers": ["AAPL"],
    }
    assert decode_device_config(live.encode()) == live
    assert live.settings == DeviceSettings(interval_s=2.0, tickers=["AAPL"])


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "device config: "),
        (b"[]", "must be a JSON object"),
        (b'{"device": "dev-1"}', "version"),
        (b'{"device": "dev-1", "version": 0}', "version"),
        (b'{"device": "a b", "version": 1}', "device"),
        (b'{"device": "d", "version": 1, "interval_s": 0}', "interval_s"),
        (b'{"device": "d", "version": 1, "batch_max": 1001}', "batch_max"),
        (b'{"device": "d", "version": 1, "tickers": ["A", "a"]}', "tickers[1]"),
        (b'{"device": "d", "version": 1, "tickers": ["$x"]}', "tickers[0]"),
        (
            b'{"device": "d", "version": 1, "sensors": [{"metric": "t"}, {"metric": "t"}]}',
            "sensors[1]",
        ),
        (
            b'{"device": "d", "version": 1, "sensors": [{"metric": "t", "x": 1}]}',
            "sensors[0].x: unknown key",
        ),
        (b'{"device": "d", "version": 1, "outbox_path": "/etc/passwd"}', "outbox_path"),
        (b'{"device": "d", "version": true}', "version"),
    ],
)
def test_a_bad_configuration_is_an_invalid_message_naming_the_key(payload, reason):
    with pytest.raises(InvalidMessage) as exc:
        decode_device_config(payload)
    assert reason in exc.value.reason


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=200)
    | st.dictionaries(KEYS, JSONISH, max_size=6).map(lambda d: json.dumps(d).encode())
)
def test_any_bytes_give_a_configuration_or_an_invalid_message(payload):
    try:
        decode_device_config(payload)
    except InvalidMessage as exc:
        assert exc.reason.startswith("device config")


# -- dynamic security -------------------------------------------------------------------------
def test_a_client_entry_verifies_its_password_and_only_it():
    entry = dynsec.client_entry("dev-1", "s3cret", salt=b"\x01" * 12)
    assert entry["clientid"] == "dev-1" and entry["roles"] == []
    assert dynsec.verifies(entry, "s3cret") and not dynsec.verifies(entry, "other")
    assert not dynsec.verifies({**entry, "salt": "%%"}, "s3cret")
    assert not dynsec.verifies({**entry, "iterations": 0}, "s3cret")
    assert not dynsec.verifies({"username": "dev-1"}, "s3cret")


def test_seeding_keeps_live_clients_and_disabled_flags_and_rehashes_a_changed_password():
    live = dynsec.client_entry("dev-live", "pw")
    first = dynsec.config_with_devices(None, {"dev-1": "a"})
    first["clients"][0]["disabled"] = True
    first["clients"].append(live)
    again = dynsec.config_with_devices(first, {"dev-1": "a", "dev-2": "b"})
    by_name = {c["username"]: c for c in again["clients"]}
    assert dynsec.client_names(again) == ["dev-1", "dev-2", "dev-live"]
    assert by_name["dev-1"]["disabled"] is True and by_name["dev-live"] == live
    changed = dynsec.config_with_devices(again, {"dev-1": "new"})
    entry = next(c for c in changed["clients"] if c["username"] == "dev-1")
    assert dynsec.verifies(entry, "new") and entry["disabled"] is True
    assert again["defaultACLAccess"] == dynsec.DEFAULT_ACL_ACCESS
    with pytest.raises(dynsec.DynsecError):
        dynsec.config_with_devices({"clients": {"x": 1}}, {})


def test_responses_are_parsed_totally():
    payload = json.dumps(
        {
            "responses": [
                {"command": "createClient", "correlationData": "c1"},
                {"command": "deleteClient", "error": "Client not found", "correlationData": "c2"},
            ]
        }
    ).encode()
    done, failed = dynsec.parse_responses(payload)
    assert (done.command, done.correlation, done.error) == ("createClient", "c1", None)
    assert failed.error == "Client not found"
    for bad in (b"", b"[]", b'{"responses": 1}', b'{"responses": [1]}', b"\xff"):
        with pytest.raises(dynsec.DynsecError):
            dynsec.parse_responses(bad)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120) | JSONISH.map(lambda v: json.dumps({"responses": v}).encode()))
def test_any_response_bytes_give_responses_or_a_dynsec_error(payload):
    with contextlib.suppress(dynsec.DynsecError):
        responses = dynsec.parse_responses(payload)
        assert all(isinstance(r, dynsec.Response) for r in responses)


def test_the_owners_file_reserves_each_device_its_own_id():
    text = dynsec.render_owners(["dev-b", "dev-a", "dev-a"])
    assert [line for line in text.splitlines() if not line.startswith("#")] == [
        "dev-a dev-a",
        "dev-b dev-b",
    ]
    with pytest.raises(ValueError, match="cannot be a client id"):
        dynsec.render_owners(["a b"])


# -- the agent's handling, without a broker ----------------------------------------------------
@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    pw = tmp_path / "pw"
    pw.write_text("x")
    config = convert(
        AgentConfig,
        {
            "device_id": "dev-1",
            "mqtt": {"client_id": "dev-1", "username": "dev-1", "password_file": str(pw)},
            "outbox_path": str(tmp_path / "outbox.sqlite3"),
            "interval_s": 1.0,
            "sensors": [{"metric": "temperature"}],
            "quotes": {"symbols": ["AAPL"], "source": "simulated"},
        },
    )
    a = Agent(config)
    yield a
    a.outbox.close()


def test_the_agent_applies_a_newer_version_ignores_older_and_rejects_bad(agent):
    live = DeviceConfig(
        device="dev-1", version=5, interval_s=0.5, batch_max=3, tickers=["MSFT", "IBM"]
    )
    assert agent.apply_config(live.encode())
    assert (agent.config.interval_s, agent.config.batch_max) == (0.5, 3)
    assert agent.quotes.symbols == ["MSFT", "IBM"] and agent.config_version == 5
    assert [s.metric for s in agent.sensors.specs] == ["temperature"], "sensors left as in the file"
    assert not agent.apply_config(live.encode()), "the same version again changes nothing"
    older = DeviceConfig(device="dev-1", version=4, interval_s=9.0)
    assert not agent.apply_config(older.encode()) and agent.config.interval_s == 0.5
    assert agent.apply_config(DeviceConfig(device="dev-2", version=6).encode())
    assert agent.config_error == "version 6 rejected: it is for device 'dev-2'"
    assert agent.apply_config(b"not json")
    assert agent.config_error.startswith("config rejected: device config")
    status = DeviceStatus.decode(agent._status("online").encode())
    assert (status.config_version, status.config_error) == (5, agent.config_error)
    new = DeviceConfig(device="dev-1", version=7, sensors=[])
    assert agent.apply_config(new.encode()) and agent.config_error == ""
    assert agent.sensors.specs == [] and agent.config.interval_s == 1.0, "7 does not set it"
    assert agent.apply_config(b"") and agent.config_version == 0
    assert agent.config == agent.base_config and agent.quotes.symbols == ["AAPL"]
    assert not agent.apply_config(b"")
