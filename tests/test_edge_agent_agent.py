"""The agent against a real Mosquitto: one message per round on the device's data topic,
retained status, the outbox emptied on PUBACK, a backlog published first in batches."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import outbox_ids, sequence, wait_until, write_agent_config

from edge_agent.agent import Agent
from edge_agent.outbox import Outbox
from edge_agent.samples import Sample
from edge_agent.sensors import sensor_value
from vigil.agent_settings import load_agent_config
from vigil.messages import DeviceStatus, parse_readings

T0 = 1_700_000_000.0


class FakeClock:
    """Wall time starting at T0 that advances one second each time it is read."""

    def __init__(self) -> None:
        self.now = T0 - 1

    def __call__(self) -> float:
        self.now += 1
        return self.now


@pytest.fixture
def running(tmp_path: Path, broker) -> Iterator[Any]:
    """``running(device, clock=None, env=None, **config)`` starts an agent on a thread (``env``:
    VIGIL_AGENT__ overrides); stopped at the end."""
    started: list[tuple[Agent, threading.Thread]] = []

    def start(
        device: str, clock: Any = None, env: dict[str, str] | None = None, **overrides: Any
    ) -> Agent:
        config = load_agent_config(
            write_agent_config(tmp_path, broker, device, **overrides), environ=env or {}
        )
        agent = Agent(config, clock=clock) if clock else Agent(config)
        thread = threading.Thread(target=agent.run, name=f"agent-{device}", daemon=True)
        thread.start()
        started.append((agent, thread))
        return agent

    yield start
    for agent, thread in started:
        agent.stop()
        thread.join(10)
        assert not thread.is_alive(), "agent did not stop"


def test_each_round_is_one_message_of_valid_readings_and_status_is_retained(
    confirmer, running, probe, broker, tmp_path
):
    watch = probe("vigil/data/dev-1", "vigil/status/dev-1")
    clock = FakeClock()
    agent = running("dev-1", clock=clock)
    wait_until(lambda: len(watch.on("vigil/data/dev-1")) >= 3, timeout=10, what="three rounds")
    agent.stop()
    wait_until(
        lambda: any(
            DeviceStatus.decode(m.payload).state == "offline"
            for m in watch.on("vigil/status/dev-1")
        ),
        timeout=10,
        what="offline status on stop",
    )

    messages = watch.on("vigil/data/dev-1")
    assert all(m.qos == 1 for m in messages)
    batches = [parse_readings(m.payload, "dev-1") for m in messages]
    readings = [r for batch in batches for r in batch]
    ids = [r.id for r in readings]
    assert ids == list(range(int(T0 * 1e6), int(T0 * 1e6) + len(ids)))  # seeded by the clock
    rounds: dict[int, list[tuple[str, str, str]]] = {}  # the readings of each timestamp
    for r in readings:
        rounds.setdefault(r.ts, []).append((r.kind, r.metric, r.unit))
    sensors = [("sensor", "temperature", "C"), ("sensor", "humidity", "%")]
    assert list(rounds.values()) == [
        [*sensors, ("quote", "price", "USD")],
        *[sensors] * (len(rounds) - 1),
    ]
    assert list(rounds) == sorted(rounds) and min(rounds) > T0 * 1000  # the injected clock's
    # once connected, one message per round (rounds taken before may share the first one)
    assert all(len({r.ts for r in batch}) == 1 for batch in batches[1:])
    assert "readings" in json.loads(messages[0].payload)  # the batch shape
    specs = {s.metric: s for s in agent.config.sensors}
    assert all(r.value == sensor_value(specs[r.metric], 7, r.ts) for r in readings[:2])
    assert dict(readings[2].tags) == {"symbol": "AAPL", "source": "simulated"}

    statuses = [DeviceStatus.decode(m.payload) for m in watch.on("vigil/status/dev-1")]
    assert [s.state for s in statuses] == ["online", "offline"]
    assert statuses[1].reason == "stopped"
    # every reading confirmed before the agent stopped was deleted; the rest stay for next time
    left = set(outbox_ids(agent.config.outbox_path))
    assert confirmer.confirmed  # some were confirmed, so the check below has teeth
    assert not left & {i for _, i in confirmer.confirmed}


def test_online_status_is_retained_for_late_watchers(running, probe):
    running("dev-3")
    early = probe("vigil/data/dev-3")
    wait_until(lambda: early.messages, timeout=10, what="a reading")
    late = probe("vigil/status/dev-3")
    msg = wait_until(lambda: late.messages, timeout=10, what="the retained status")[0]
    assert msg.retain and DeviceStatus.decode(msg.payload).state == "online"


def test_a_backlog_left_by_an_earlier_run_is_published_first_in_batches(
    confirmer, running, probe, broker, tmp_path
):
    box = Outbox(tmp_path / "dev-2-outbox.sqlite3", "dev-2", now_us=int(T0 * 1e6))
    old = box.add(int(T0 * 1000), [Sample("sensor", "temperature", float(i)) for i in range(120)])
    box.close()
    watch = probe("vigil/data/dev-2")
    # readings from T0 (2023) would be past the default age bound: this test is not about it
    agent = running(
        "dev-2", batch_max=50, interval_s=3600, sensors=[], quotes={}, outbox_max_age_s=1e9
    )
    # the first round takes no reading (no sensors): only the backlog goes out
    wait_until(
        lambda: sum(len(parse_readings(m.payload, "dev-2")) for m in watch.messages) >= 120,
        timeout=10,
        what="the backlog",
    )
    sizes = [len(parse_readings(m.payload, "dev-2")) for m in watch.messages]
    got = [r.id for m in watch.messages for r in parse_readings(m.payload, "dev-2")]
    assert sizes == [50, 50, 20]
    assert got == [r.id for r in old]
    wait_until(lambda: agent.outbox.depth == 0, timeout=10, what="the outbox emptied")


def test_readings_stay_in_the_outbox_until_they_are_confirmed(confirmer, running, probe, broker):
    watch = probe("vigil/data/dev-8")
    agent = running("dev-8")
    wait_until(lambda: len(watch.messages) >= 2, timeout=10, what="first readings")
    os.kill(broker.proc.pid, signal.SIGSTOP)  # frozen: the connection stays up, no PUBACKs
    try:
        _, first_frozen = sequence(agent.config.outbox_path)  # published at once when taken...
        wait_until(lambda: agent.outbox.depth >= 8, timeout=10, what="unacknowledged readings")
        assert agent.client.connected
        unacked = set(outbox_ids(agent.config.outbox_path))
        assert first_frozen in unacked  # ...and kept all the same
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    wait_until(
        lambda: not unacked & set(outbox_ids(agent.config.outbox_path)),
        timeout=10,
        what="the readings deleted once confirmed",
    )
    wait_until(
        lambda: (
            unacked <= {r.id for m in watch.messages for r in parse_readings(m.payload, "dev-8")}
        ),
        timeout=10,
        what="the readings delivered",
    )


def test_readings_the_broker_refuses_are_kept_not_deleted(running, broker, caplog):
    """A refusing PUBACK is no delivery: the readings stay for the next start."""
    # A topic root the ACL grants no device: the broker refuses every publish (PUBACK 0x87).
    agent = running("dev-2", env={"VIGIL_AGENT__BROKER__TOPIC_ROOT": "elsewhere"})

    def refused() -> float:
        value = agent.metrics.registry.get_sample_value(
            "vigil_errors_total", {"service": "edge_agent", "kind": "refused"}
        )
        return value or 0.0

    wait_until(lambda: refused() >= 6, timeout=10, what="refused publishes")
    first, next_id = sequence(agent.config.outbox_path)
    assert set(range(first, next_id)) <= set(outbox_ids(agent.config.outbox_path))
    assert any(
        "refused" in r.getMessage() and "Not authorized" in r.getMessage() for r in caplog.records
    )
