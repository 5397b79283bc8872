"""``python -m api``: the real server process over HTTP, its metrics, configuration checks
and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import socket

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


def raw_http(host: str, port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as bytes (no client library to tidy it up); the status, headers
    (lower-case names) and body of the answer."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def test_raw_bytes_over_http_get_problems_not_500s(cloud_config, run_service):
    """What a test client cannot send: raw non-UTF-8 bytes in the request line, in headers
    and in the body, as waitress hands them to the app."""
    settings = cloud_config.config.api
    proc = run_service("api", "--config", str(cloud_config.path))
    proc.wait_port(settings.host, settings.port, 20)
    token = cloud_config.admin_token.encode()
    rule = b'{"id": "r\\n", "metric": "t", "op": "above", "threshold": 1}'
    # (request line and headers, body, who answers, status)
    cases = [
        (b"GET /devices/dev-1%0A HTTP/1.1\r\n", b"", "app", 400),
        (b"GET /devices/%FF%FE/metrics/t/latest HTTP/1.1\r\n", b"", "app", 400),
        (b"GET /rules HTTP/1.1\r\nAuthorization: Bearer \x80\xff\r\n", b"", "app", 401),
        (b"GET /health HTTP/1.1\r\nAuthorization: Bearer \x80\xff\r\n", b"", "app", 200),
        (b"POST /rules HTTP/1.1\r\nContent-Type: application/json\r\n", b"\xff\xfe{", "app", 400),
        (b"POST /rules HTTP/1.1\r\nContent-Type: application/json\r\n", rule, "app", 400),
        (b"POST /rules HTTP/1.1\r\nContent-Type: \xff\r\n", b"{}", "app", 415),
        # Not HTTP: waitress refuses these itself (plain text), the app never sees them.
        (b"GET /devices/\xff\xfe/metrics/t/latest HTTP/1.1\r\n", b"", "waitress", 400),
        (b"GET /devices/dev-1/metrics/t/mean?\xff=1 HTTP/1.1\r\n", b"", "waitress", 400),
        (b"GET /rules HTTP/1.1\r\nAuthorization: Bearer \x00\r\n", b"", "waitress", 400),
    ]
    for head, body, who, status in cases:
        auth = b"" if b"Authorization" in head else b"Authorization: Bearer " + token + b"\r\n"
        request = (
            head + auth + b"Host: x\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        got, headers, answer = raw_http(settings.host, settings.port, request)
        assert got == status, (head[:60], answer[:300])
        if who == "waitress":
            assert headers["content-type"].startswith("text/plain"), (head[:60], headers)
            continue
        expected = "application/problem+json" if status >= 400 else "application/json"
        assert headers["content-type"] == expected, (head, headers)
        parsed = json.loads(answer)
        if status >= 400:
            assert parsed["status"] == status and parsed["detail"]
    assert "unexpected" not in proc.log_tail()
