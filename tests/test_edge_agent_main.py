"""``python -m edge_agent``: config validation, and the agent as a real process: readings and
retained status on the broker, metrics, a clean stop on SIGTERM, the last will on SIGKILL."""

from __future__ import annotations

import json

import requests
import yaml
from support import outbox_ids, wait_until, write_agent_config

from edge_agent.__main__ import main
from stack.process import free_port
from vigil import __version__
from vigil.messages import DeviceStatus, parse_readings


def statuses(watch, device: str) -> list[DeviceStatus]:
    return [DeviceStatus.decode(m.payload) for m in watch.on(f"vigil/status/{device}")]


def test_validate_config_says_ok(broker, tmp_path, capsys):
    path = write_agent_config(tmp_path, broker, "dev-1")
    assert main(["--config", str(path), "--validate-config"]) == 0
    assert capsys.readouterr().out.strip() == "ok"


def test_a_bad_config_names_file_key_and_reason(broker, tmp_path, capsys, monkeypatch):
    path = write_agent_config(tmp_path, broker, "dev-1")
    data = yaml.safe_load(path.read_text())

    def check(expected: str, **changes) -> None:
        path.write_text(yaml.safe_dump({**data, **changes}))
        assert main(["--config", str(path), "--validate-config"]) == 2
        assert capsys.readouterr().err.strip() == f"{path}: {expected}"

    check(
        "sensors[0].noise: Input should be greater than or equal to 0",
        sensors=[{"metric": "t", "noise": -1}],
    )
    check("quotes.bogus: unknown key", quotes={"bogus": 1})
    check(
        "quotes.symbols[1]: '^=^' is not a ticker symbol",
        quotes={"symbols": ["AAPL", "^=^"]},
    )
    check(
        "mqtt.username: must be the device id 'dev-1': the broker lets a device publish "
        "only under its own username",
        mqtt={**data["mqtt"], "username": "dev-2"},
    )
    check(
        "broker.topic_root: invalid topic root 'a/+': one or more levels separated by /, "
        "each a name (1-64 of A-Z a-z 0-9 _ . -, starting with a letter or digit)",
        broker={**data["broker"], "topic_root": "a/+"},
    )
    path.write_text(yaml.safe_dump({**data, "mqtt": {**data["mqtt"], "password_file": "nope"}}))
    for extra in ([], ["--validate-config"]):  # checked at start and when validating
        assert main(["--config", str(path), *extra]) == 2
        assert capsys.readouterr().err.strip() == (
            f"{path}: mqtt.password_file: cannot read nope: No such file or directory"
        )
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("VIGIL_AGENT__INTERVAL_S", "-1")
    assert main(["--config", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"{path}: interval_s: Input should be greater than 0"
    )


def test_the_process_publishes_serves_metrics_and_stops_cleanly(
    broker, tmp_path, probe, run_service
):
    port = free_port()
    path = write_agent_config(tmp_path, broker, "dev-4", metrics_port=port)
    watch = probe("vigil/data/dev-4", "vigil/status/dev-4")
    proc = run_service("edge_agent", "--config", str(path))
    wait_until(lambda: len(watch.on("vigil/data/dev-4")) >= 3, timeout=15, what="readings")
    assert [s.state for s in statuses(watch, "dev-4")] == ["online"]
    readings = [r for m in watch.on("vigil/data/dev-4") for r in parse_readings(m.payload, "dev-4")]
    assert {r.metric for r in readings} == {"temperature", "humidity", "price"}

    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'vigil_outbox_depth{service="edge_agent"}' in text
    taken = [
        line
        for line in text.splitlines()
        if line.startswith('vigil_messages_in_total{service="edge_agent"}')
    ]
    assert taken and float(taken[0].split()[-1]) >= 3

    proc.stop()
    assert proc.returncode() == 0
    wait_until(lambda: len(statuses(watch, "dev-4")) == 2, timeout=10, what="offline status")
    last = statuses(watch, "dev-4")[-1]
    assert (last.device, last.state, last.reason) == ("dev-4", "offline", "stopped")
    # the readings still in the outbox are said on the way out (the gap check reads them)
    assert 0 < last.first_id <= last.settled_below


def test_the_last_will_marks_a_killed_agent_offline(broker, tmp_path, probe, run_service):
    path = write_agent_config(tmp_path, broker, "dev-5")
    watch = probe("vigil/status/dev-5")
    proc = run_service("edge_agent", "--config", str(path))
    wait_until(lambda: statuses(watch, "dev-5"), timeout=15, what="online status")
    proc.kill()
    wait_until(lambda: len(statuses(watch, "dev-5")) == 2, timeout=15, what="the last will")
    online, offline = statuses(watch, "dev-5")
    assert (online.state, offline.state, offline.reason) == ("online", "offline", "connection lost")
    late = probe("vigil/status/dev-5")  # the will is retained
    msg = wait_until(lambda: late.messages, timeout=10, what="the retained will")[0]
    assert msg.retain and DeviceStatus.decode(msg.payload).state == "offline"


def test_ticks_takes_that_many_rounds_and_exits_once_delivered(
    broker, tmp_path, probe, confirmer, run_service
):
    path = write_agent_config(tmp_path, broker, "dev-9", quotes={}, sensors=[{"metric": "t"}])
    watch = probe("vigil/data/dev-9")
    proc = run_service("edge_agent", "--config", str(path), "--ticks", "3")
    wait_until(lambda: proc.returncode() is not None, timeout=15, what="the agent to exit")
    assert proc.returncode() == 0
    # all three were confirmed stored before the agent exited; the probe may lag a little
    wait_until(
        lambda: sum(len(parse_readings(m.payload, "dev-9")) for m in watch.messages) >= 3,
        what="the three readings at the probe",
    )
    messages = list(watch.messages)
    batches = [parse_readings(m.payload, "dev-9") for m in messages]
    assert sum(len(b) for b in batches) == 3
    assert outbox_ids(tmp_path / "dev-9-outbox.sqlite3") == []
    # one reading per message once connected: the single shape
    singles = [json.loads(m.payload) for m, b in zip(messages, batches, strict=True) if len(b) == 1]
    assert singles and all(p["device"] == "dev-9" and "id" in p for p in singles)


def test_the_status_is_a_heartbeat_with_the_agents_metadata(broker, tmp_path, probe, run_service):
    path = write_agent_config(
        tmp_path, broker, "dev-7", status_interval_s=1, sources=[{"type": "host"}]
    )
    watch = probe("vigil/status/dev-7", "vigil/data/dev-7")
    run_service("edge_agent", "--config", str(path))
    wait_until(lambda: len(statuses(watch, "dev-7")) >= 3, timeout=15, what="heartbeats")
    beats = statuses(watch, "dev-7")
    assert {s.state for s in beats} == {"online"}
    assert len({s.ts for s in beats}) == len(beats)  # each one fresh
    last = beats[-1]
    assert (last.version, last.sources, last.heartbeat_s) == (__version__, ("host",), 1.0)
    assert last.breaker == "closed"  # simulated prices: the breaker never opened
    # nothing confirms them here: the readings stay in the outbox, published and waiting
    assert last.outbox_depth > 0 and last.unconfirmed > 0
    assert last.outbox_depth >= beats[0].outbox_depth
    readings = [r for m in watch.on("vigil/data/dev-7") for r in parse_readings(m.payload, "dev-7")]
    assert {"memory_used_percent", "disk_used_percent", "temperature"} <= {
        r.metric for r in readings
    }


def test_a_plugin_that_is_not_installed_stops_the_agent_with_the_key(broker, tmp_path, capsys):
    path = write_agent_config(
        tmp_path, broker, "dev-1", sources=[{"type": "plugin", "name": "x", "plugin": "nope"}]
    )
    assert main(["--config", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"{path}: sources[0].plugin: no plugin 'nope' in entry point group vigil.sources "
        "(installed: none)"
    )
