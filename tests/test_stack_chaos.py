"""`vigil run` under SIGKILL: one of the two ingest members, then Mosquitto, killed while the
three demo agents publish. The launcher restarts both; once the agents' outboxes have let go
of every reading taken before the cut, each of those readings is stored exactly once on each
of its replicas and nowhere else."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from support import outbox_ids, sequence, wait_until
from test_stack import ROOT, alive, stack_env, start_stack, stop_stack, wait_stack_json

from stack.process import free_port
from storage_nodes import HashRing, InfluxNode

DEVICES = ("demo-1", "demo-2", "demo-3")


def first_id(outbox: Path) -> int | None:
    """The outbox's first id, once its agent has created it (the file may exist before
    its tables do)."""
    try:
        return sequence(outbox)[0] if outbox.exists() else None
    except sqlite3.OperationalError:
        return None


def restarted(stack_json: Path, name: str, old: int) -> int:
    """Wait until stack.json names a new, live pid for ``name``."""

    def new_pid() -> int | None:
        pid = json.loads(stack_json.read_text())["pids"][name]
        return pid if pid != old and alive(pid) else None

    return wait_until(new_pid, timeout=60, what=f"{name} restarted")


@pytest.mark.integration
def test_killing_an_ingest_member_and_the_broker_loses_and_doubles_nothing(tmp_path):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    influx = [free_port() for _ in range(3)]
    # confirm_timeout_s: what the broker held in memory when killed comes again after 3 s
    env = stack_env(
        free_port(), free_port(), free_port(), influx, interval_s="0.2", confirm_timeout_s="3"
    )
    proc = start_stack(tmp_path, env)
    stack_json = tmp_path / ".vigil" / "stack.json"
    outboxes = {d: tmp_path / ".vigil" / "agents" / d / "outbox.sqlite3" for d in DEVICES}
    pids: list[int] = []
    try:
        info = wait_stack_json(tmp_path)
        assert {"ingest-1", "ingest-2"} <= set(info["pids"])
        first = {
            d: wait_until(
                lambda d=d: first_id(outboxes[d]),
                timeout=30,
                what=f"{d}'s outbox",
            )
            for d in DEVICES
        }
        time.sleep(3)

        os.kill(info["pids"]["ingest-1"], signal.SIGKILL)
        restarted(stack_json, "ingest-1", info["pids"]["ingest-1"])
        time.sleep(2)
        os.kill(info["pids"]["mosquitto"], signal.SIGKILL)
        restarted(stack_json, "mosquitto", info["pids"]["mosquitto"])
        time.sleep(2)

        # The cut: every id an agent has taken so far must end up stored.
        cut = {d: sequence(outboxes[d])[1] for d in DEVICES}
        assert all(cut[d] - first[d] >= 20 for d in DEVICES), (first, cut)  # a real stream
        for d in DEVICES:
            wait_until(
                lambda d=d: not [i for i in outbox_ids(outboxes[d]) if i < cut[d]],
                timeout=90,
                what=f"{d}'s outbox to let go of every reading before the cut",
            )

        influx = info["influxdb"]
        servers = {
            name: InfluxNode(name, url, username=influx["username"], password=influx["password"])
            for name, url in influx["servers"].items()
        }
        ring = HashRing(sorted(servers), 256, 2)
        for d in DEVICES:
            where = {"device": d, "lo": first[d], "hi": cut[d]}
            # its readings, and the quotes it fetched (stored under quote.<SYMBOL>)
            q = (
                "SELECT id FROM /.*/ WHERE (device = $device OR agent = $device) "
                'AND id >= $lo AND id < $hi GROUP BY "device"'
            )
            held: dict[str, dict[str, list[int]]] = {}  # server -> series -> ids
            for name, node in servers.items():
                held[name] = {
                    f"{s['tags']['device']}/{s['name']}": [int(row[1]) for row in s["values"]]
                    for s in node.query(q, influx["database"], where)
                }
            metrics = {m for by_metric in held.values() for m in by_metric}
            stored: set[int] = set()
            for m in metrics:
                replicas = set(ring.replicas(m))
                copies = {name: held[name].get(m, []) for name in servers}
                for name, ids in copies.items():
                    if name not in replicas:
                        assert ids == [], f"{m} ({d}) on {name}, not one of its replicas"
                    else:
                        assert len(ids) == len(set(ids)), f"{m} ({d}) stored twice on {name}"
                a, b = (sorted(copies[name]) for name in sorted(replicas))
                assert a == b, f"{m} ({d}): its replicas differ"
                stored |= set(a)
            assert stored == set(range(first[d], cut[d])), (
                f"{d}: missing {sorted(set(range(first[d], cut[d])) - stored)[:20]}"
            )
        pids = list(json.loads(stack_json.read_text())["pids"].values())
    finally:
        if not pids and stack_json.exists():
            pids = list(json.loads(stack_json.read_text())["pids"].values())
        stop_stack(proc, pids)
