"""Nothing lost from device to database (issue 8, point 2): a reading leaves the agent's
outbox only once ingest confirms it is stored. Real agents (on threads), a real Mosquitto
(SIGKILLed mid-stream), a real ingest process and three real InfluxDB servers; each test ends
with every reading the agents took stored exactly once on each of its replicas."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
from pathlib import Path

import pytest
from support import wait_ready, wait_until, write_agent_config

from edge_agent.agent import Agent
from storage_nodes import StorageCluster
from vigil.agent_settings import load_agent_config

DEVICES = ["dev-1", "dev-2", "dev-3"]
pytestmark = pytest.mark.integration


def taken(outbox: Path) -> range:
    """Every id the agent's outbox ever gave (its ids are consecutive)."""
    db = sqlite3.connect(outbox)
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    finally:
        db.close()
    return range(int(meta["first_id"]), int(meta["next_id"]))


class Agents:
    def __init__(self, tmp_path: Path, broker) -> None:
        self.agents: list[tuple[Agent, threading.Thread]] = []
        for device in DEVICES:
            path = write_agent_config(
                tmp_path, broker, device, interval_s=0.05, quotes={}, confirm_timeout_s=3
            )
            agent = Agent(load_agent_config(path, environ={}))
            thread = threading.Thread(target=agent.run, name=device, daemon=True)
            thread.start()
            self.agents.append((agent, thread))

    def pause_readings(self) -> None:
        """Stop taking readings, keep publishing and receiving confirmations."""
        for agent, _ in self.agents:
            agent.sensors.specs = []  # type: ignore[attr-defined]

    def depth(self) -> int:
        return sum(a.outbox.depth for a, _ in self.agents)

    def stop(self) -> dict[str, range]:
        ids = {}
        for agent, thread in self.agents:
            agent.stop()
            thread.join(15)
            ids[agent.device] = taken(agent.config.outbox_path)
        return ids


def assert_stored_once_per_replica(cluster: StorageCluster, ids: dict[str, range]) -> None:
    """Each series' ids on each of its replicas: no id twice, the replicas alike, none on
    another server; and every id an agent took is stored."""
    for device, want in ids.items():
        stored: set[int] = set()
        for metric in ("temperature", "humidity"):
            replicas = {n.name for n in cluster.replicas(device, metric)}
            copies = []
            for node in cluster.nodes:
                series = cluster.nodes[node].query(
                    f'SELECT id FROM "{metric}" WHERE device = $d', cluster.database, {"d": device}
                )
                got = [int(row[1]) for s in series for row in s["values"]]
                if node not in replicas:
                    assert got == [], f"{device}/{metric} on {node}, not one of its replicas"
                    continue
                assert len(got) == len(set(got)), f"{device}/{metric}: an id twice on {node}"
                copies.append(set(got))
            assert len(copies) == 2 and copies[0] == copies[1], f"{device}/{metric}: replicas"
            stored |= copies[0]
        missing = set(want) - stored
        assert not missing, f"{device}: {len(missing)} of {len(want)} readings lost"
        assert stored <= set(want)


def stored(cluster: StorageCluster) -> int:
    return sum(cluster.count_on(n, m) for n in cluster.nodes for m in ("temperature", "humidity"))


@pytest.fixture
def stack(cloud_config, broker, run_service, tmp_path):
    cluster = StorageCluster(cloud_config.config.storage, background=False)
    cluster.ensure_database()

    def start_ingest():
        ingest = run_service("ingest_service", "--config", str(cloud_config.path))
        wait_ready(ingest, 30)
        return ingest

    yield cluster, start_ingest
    cluster.close()


def test_broker_sigkilled_mid_stream_loses_no_reading(stack, broker, tmp_path):
    cluster, start_ingest = stack
    start_ingest()
    agents = Agents(tmp_path, broker)
    try:
        wait_until(lambda: stored(cluster) >= 30, 20, what="first readings stored")
        os.kill(broker.proc.pid, signal.SIGKILL)  # what it had not persisted is gone
        wait_until(lambda: not broker.proc.alive(), 10, what="the broker dead")
        broker.start()
        wait_until(lambda: sum(a.outbox.depth for a, _ in agents.agents) > 0, 10, what="backlog")
        agents.pause_readings()
        wait_until(lambda: agents.depth() == 0, 90, what="every outbox drained (all confirmed)")
    finally:
        ids = agents.stop()
    assert all(len(r) > 0 for r in ids.values())
    assert_stored_once_per_replica(cluster, ids)


def test_agents_started_before_ingest_ever_subscribed_lose_no_reading(stack, broker, tmp_path):
    cluster, start_ingest = stack
    agents = Agents(tmp_path, broker)  # no ingest session exists yet: nothing is routed
    try:
        wait_until(lambda: agents.depth() >= 30, 10, what="readings waiting in the outboxes")
        start_ingest()
        agents.pause_readings()
        wait_until(lambda: agents.depth() == 0, 90, what="every outbox drained (all confirmed)")
    finally:
        ids = agents.stop()
    assert_stored_once_per_replica(cluster, ids)
