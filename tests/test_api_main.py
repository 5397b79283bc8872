"""``python -m api``: the real server process over HTTP, its metrics, configuration checks
and a clean stop on SIGTERM."""

from __future__ import annotations

import requests
from support import wait_until

from api.__main__ import main, serve
from storage_nodes.cluster import StorageCluster
from vigil.settings import load_config


def test_the_server_process_answers_http(cloud_config, run_service):
    StorageCluster(cloud_config.config.storage).ensure_database()
    settings = cloud_config.config.api
    proc = run_service("api", "--config", str(cloud_config.path))
    proc.wait_port(settings.host, settings.port, 20)
    base = f"http://{settings.host}:{settings.port}"

    health = wait_until(
        lambda: (r := requests.get(f"{base}/health", timeout=5)).json()["broker"] and r,
        20,
        what="the API connected to the broker",
    )
    assert health.status_code == 200 and health.json()["status"] == "ok"

    refused = requests.get(f"{base}/rules", timeout=5)
    assert refused.status_code == 401
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")

    auth = {"Authorization": f"Bearer {cloud_config.admin_token}"}
    created = requests.post(
        f"{base}/rules",
        headers=auth,
        timeout=10,
        json={"id": "hot", "metric": "temperature", "op": "above", "threshold": 30},
    )
    assert created.status_code == 201 and created.json()["pushed"] is True
    listed = requests.get(f"{base}/rules", headers=auth, timeout=5)
    assert listed.status_code == 200 and [r["id"] for r in listed.json()["rules"]] == ["hot"]
    missing = requests.get(
        f"{base}/devices/dev-1/metrics/temperature/latest", headers=auth, timeout=5
    )
    assert missing.status_code == 404

    metrics = requests.get(f"http://127.0.0.1:{settings.metrics_port}/metrics", timeout=5).text
    lines = dict(
        line.rsplit(" ", 1) for line in metrics.splitlines() if line and not line.startswith("#")
    )
    assert float(lines['vigil_messages_in_total{service="api"}']) >= 5
    assert float(lines['vigil_errors_total{kind="http_4xx",service="api"}']) == 2
    assert float(lines['vigil_step_seconds_count{service="api"}']) >= 5
    assert lines['vigil_api_rules_unpublished{service="api"}'] == "0.0"

    proc.stop()
    assert proc.returncode() == 0
    assert "api stopped" in proc.log_tail()


def test_validate_config(cloud_config, capsys):
    assert main(["--config", str(cloud_config.path), "--validate-config"]) == 0
    assert capsys.readouterr().out.strip() == "ok"


def test_a_bad_config_names_file_and_key_and_exits_2(tmp_path, cloud_config, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(cloud_config.path.read_text().replace("port:", "prot:", 1))
    assert main(["--config", str(bad), "--validate-config"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "unknown key" in err
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_an_unusable_database_path_is_a_config_error(tmp_path, cloud_config, capsys):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    env = {"VIGIL__API__DATABASE": str(blocker / "api.sqlite3")}
    config = load_config(cloud_config.path, environ=env)
    assert serve(config, str(cloud_config.path)) == 2
    err = capsys.readouterr().err
    assert str(cloud_config.path) in err and "api.database" in err and "cannot open" in err
