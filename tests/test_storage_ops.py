"""Node operations through ``vigil storage`` and the API's ``/storage`` routes, against the
real servers: status, fail and recover (followed live by a writer), replicas, repair."""

from __future__ import annotations

import io
import json

import pytest
from support import wait_until

from stack.storage_cli import main as storage_cli
from storage_nodes import StorageCluster
from storage_nodes.hints import HintStore
from storage_nodes.lineproto import reading_to_line
from storage_nodes.ops import StorageOps
from vigil.messages import Reading

pytestmark = pytest.mark.integration
T0 = 1_750_000_000_000


def readings(n: int, device: str = "dev-1") -> list[Reading]:
    return [
        Reading(i, device, T0 + i, "sensor", "temperature", float(i), "C") for i in range(1, n + 1)
    ]


def cli(cloud_config, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = storage_cli(["--config", str(cloud_config.path), *args], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_status_is_a_table_and_json(cloud_config):
    code, out, _ = cli(cloud_config, "status")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("layout version 0, strategy consistent, replication factor 2")
    assert lines[1].split()[:3] == ["SERVER", "URL", "STATE"]
    assert [line.split()[0] for line in lines[2:]] == ["influx-1", "influx-2", "influx-3"]
    assert all(line.split()[2] == "up" for line in lines[2:])
    code, out, _ = cli(cloud_config, "--json", "status")
    body = json.loads(out)
    assert code == 0 and body["layout_version"] == 0 and not body["moving"]
    assert sum(s["share"] for s in body["servers"]) == pytest.approx(1.0, abs=1e-3)


def test_replicas_agree_with_the_cluster(cloud_config, cluster):
    code, out, _ = cli(cloud_config, "--json", "replicas", "dev-1", "temperature")
    assert code == 0
    assert json.loads(out)["replicas"] == [n.name for n in cluster.replicas("dev-1", "temperature")]
    code, _, err = cli(cloud_config, "replicas", "dev 1", "temperature")
    assert code == 1 and "valid names" in err


def test_fail_drains_a_server_live_and_recover_replays_its_hints(cloud_config, tmp_path):
    settings = cloud_config.config.storage.model_copy(update={"probe_interval_s": 0.2})
    writer = StorageCluster(
        settings, hints=HintStore(tmp_path / "hints", max_bytes=2**30, max_age_s=3600)
    )
    try:
        primary = writer.replicas("dev-1", "temperature")[0].name
        code, out, _ = cli(cloud_config, "fail", primary)
        assert code == 0 and f"{primary}: failed (layout 1)" in out
        wait_until(lambda: writer.health.get(primary).state == "failed", 10, what="follow")
        writer.write(readings(50))  # stored on the other replica, hinted for the drained one
        assert writer.count_on(primary, "temperature", "dev-1") == 0
        assert writer.hints.queue(primary).stats().points == 50
        assert len(writer.points("dev-1", "temperature", limit=100)) == 50  # reads avoid it
        probed = writer.health.get(primary).last_seen or 0.0
        wait_until(lambda: (writer.health.get(primary).last_seen or 0) > probed, 5, what="probe")
        assert writer.health.get(primary).state == "failed"  # probes do not undo a drain
        code, out, _ = cli(cloud_config, "recover", primary)
        assert code == 0 and "active (layout 2)" in out
        wait_until(lambda: writer.hints.queue(primary).stats().points == 0, 10, what="replay")
        assert writer.count_on(primary, "temperature", "dev-1") == 50
        code, _, err = cli(cloud_config, "fail", "nope")
        assert code == 1 and "no server 'nope'" in err
    finally:
        writer.close()


def test_repair_restores_what_a_replica_lost_and_says_what_it_did(
    cloud_config, cluster, influx_admin
):
    cluster.write(readings(300) + readings(20, "dev-2"))
    primary = cluster.replicas("dev-1", "temperature")[0].name
    influx_admin(primary).query(
        f"DELETE FROM \"temperature\" WHERE device = 'dev-1' AND time < {(T0 + 101) * 10**6}",
        cluster.database,
        method="POST",
    )
    assert cluster.count_on(primary, "temperature", "dev-1") == 200
    code, out, err = cli(cloud_config, "--json", "repair")
    assert code == 0, err
    report = json.loads(out)
    assert report["points_copied"][primary] == 100 and report["errors"] == []
    for name in cluster.nodes:
        want = 300 if name in [n.name for n in cluster.replicas("dev-1", "temperature")] else 0
        assert cluster.count_on(name, "temperature", "dev-1") == want
    code, out, _ = cli(cloud_config, "repair")
    assert code == 0 and "0 point(s) copied" in out


def test_the_api_runs_the_same_operations(client, cluster):
    body = client.get("/storage").get_json()
    assert body["layout_version"] == 0 and len(body["servers"]) == 3
    name = body["servers"][0]["name"]
    resp = client.post(f"/storage/servers/{name}/fail")
    assert resp.status_code == 200 and resp.get_json()["state"] == "failed"
    assert client.get("/storage").get_json()["layout_version"] == 1
    assert client.post(f"/storage/servers/{name}/recover").get_json()["state"] == "active"
    resp = client.post("/storage/servers/nope/fail")
    assert resp.status_code == 409 and resp.mimetype == "application/problem+json"
    assert "no server 'nope'" in resp.get_json()["detail"]
    resp = client.put("/storage/strategy", json={"strategy": "ring"})
    assert resp.status_code == 400 and "consistent, full" in resp.get_json()["detail"]
    cluster.write(readings(10))
    resp = client.post("/storage/repair")
    assert resp.status_code == 202
    job_url = resp.headers["Location"]
    job = wait_until(lambda: (j := client.get(job_url).get_json())["state"] != "running" and j, 30)
    assert job["state"] == "done" and job["result"]["errors"] == []
    assert client.get("/storage/jobs/999").status_code == 404
    replicas = client.get("/storage/replicas/dev-1/temperature").get_json()
    assert replicas["replicas"] == [n.name for n in cluster.replicas("dev-1", "temperature")]


def test_validate_config_says_when_the_layout_file_wins(cloud_config, capsys):
    from stack.cli import main as vigil

    layout_path = cloud_config.config.storage.layout_path
    assert cli(cloud_config, "fail", "influx-3")[0] == 0
    assert layout_path.exists()
    assert (
        vigil(["validate-config", "--config", str(cloud_config.path), "--agents", "/nonexistent"])
        == 0
    )
    out = capsys.readouterr().out
    assert f"the cluster layout {layout_path} (version 1" in out and "wins over" in out


def test_a_deleted_series_comes_back_from_neither_hints_nor_repair_nor_reads(
    cloud_config, cluster, tmp_path
):
    """Delete while a replica is drained with the series' points in its hint queue, and
    while it still holds points of its own: recovering it replays no deleted point, repair
    copies none, and reads leave out the ones it kept."""
    settings = cloud_config.config.storage.model_copy(update={"probe_interval_s": 0.2})
    writer = StorageCluster(
        settings, hints=HintStore(tmp_path / "hints", max_bytes=2**30, max_age_s=3600)
    )
    try:
        primary, secondary = (n.name for n in writer.replicas("dev-1", "temperature"))
        writer.write(readings(20))  # on both
        assert cli(cloud_config, "fail", primary)[0] == 0
        wait_until(lambda: writer.health.get(primary).state == "failed", 10)
        writer.write(readings(40)[20:])  # 21..40: on the secondary, hinted for the primary
        assert writer.hints.queue(primary).stats().points == 20
        cut_ms = T0 + 31
        code, out, err = cli(
            cloud_config, "delete", "dev-1", "temperature", "--before", str(cut_ms)
        )
        assert code == 0, err
        assert "will not come back" in out
        wait_until(lambda: writer.layout.tombstones, 10, what="the writer follows")
        assert writer.count_on(secondary, "temperature", "dev-1") == 10  # 31..40
        assert cli(cloud_config, "recover", primary)[0] == 0
        wait_until(lambda: writer.hints.queue(primary).stats().points == 0, 10, what="replay")
        assert writer.counters.hints_expired[primary] == 10  # 21..30 not replayed
        assert writer.count_on(primary, "temperature", "dev-1") == 10
        # A server that missed the deletion (restored from a backup, say) still holds 1..20.
        writer.nodes[primary].write(writer.database, [reading_to_line(r) for r in readings(20)])
        ids = [p.id for p in writer.points("dev-1", "temperature", limit=100)]
        assert ids == list(range(40, 30, -1))  # reads leave out what it kept
        code, out, _ = cli(cloud_config, "--json", "repair")
        assert code == 0 and json.loads(out)["points_copied"][secondary] == 0
        assert writer.count_on(secondary, "temperature", "dev-1") == 10
        StorageOps(settings).apply_deletions()  # what the API's maintenance does each run
        assert writer.count_on(primary, "temperature", "dev-1") == 10
        # A late redelivery of a deleted reading is refused, not stored again.
        refused = writer.write(readings(5))
        assert [r.reading.id for r in refused] == [1, 2, 3, 4, 5]
        assert "was deleted" in refused[0].reason
    finally:
        writer.close()


def test_maintenance_applies_retention_and_deletions_a_server_missed(cloud_config, cluster):
    from storage_nodes.ops import AutoRepair

    now_ms = int(__import__("time").time() * 1000)
    old = [
        Reading(i, "dev-1", now_ms - 3_600_000 - i, "sensor", "temperature", 1.0, "C")
        for i in range(1, 11)
    ]
    new = [
        Reading(i, "dev-1", now_ms - i, "sensor", "temperature", 1.0, "C") for i in range(11, 21)
    ]
    cluster.write(old + new)
    settings = cloud_config.config.storage.model_copy(update={"retention_s": 1800.0})
    ops = StorageOps(settings)
    try:
        maintenance = AutoRepair(ops)
        maintenance.run_once()
        for node in cluster.replicas("dev-1", "temperature"):
            assert cluster.count_on(node.name, "temperature", "dev-1") == 10
        assert maintenance.runs == 1 and maintenance.failures == 0
        assert ops.cluster.write(old[:1])[0].reason.startswith("the series is past retention")
    finally:
        ops.close()


def test_the_api_deletes_a_series(client, cluster):
    cluster.write(readings(10))
    resp = client.delete("/storage/series/dev-1/temperature?before=x")
    assert resp.status_code == 400 and resp.mimetype == "application/problem+json"
    resp = client.delete("/storage/series/dev-1/temperature")
    assert resp.status_code == 200 and resp.get_json()["layout_version"] == 1
    for name in cluster.nodes:
        assert cluster.count_on(name, "temperature", "dev-1") == 0
