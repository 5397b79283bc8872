"""HTTPS by configuration: an InfluxDB server with ``https-enabled`` and a certificate from
the local CA, verified by Vigil's storage client (storage.ca_file); the API, the console and
the cluster's InfluxDB endpoint behind vigil/tlsfront.py (api.tls_cert_file/tls_key_file),
with nothing of theirs left listening in the clear.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from support import wait_until

from stack.process import ManagedProcess, free_port
from storage_nodes import (
    InfluxNode,
    RetriableStorageError,
    StorageCluster,
    StorageError,
    reading_to_line,
)
from storage_nodes.provision import Credential, provision_server
from storage_nodes.server import influxd_command, render_influxd_conf
from vigil import localca
from vigil.messages import Reading

pytestmark = pytest.mark.integration


def test_influxd_conf_turns_https_on_only_when_asked(tmp_path):
    plain = render_influxd_conf(tmp_path, 8086, 8088)
    assert "https-enabled" not in plain
    tls = render_influxd_conf(tmp_path, 8086, 8088, tls=(Path("c.crt"), Path("c.key")))
    assert "https-enabled = true" in tls
    assert f'https-certificate = "{Path("c.crt").resolve()}"' in tls
    assert "auth-enabled = true" in tls  # TLS is besides authentication, not instead


@pytest.fixture
def https_influx(tmp_path):
    cert = localca.ensure_server_cert(tmp_path / "ca", tmp_path / "influx", "https", ["127.0.0.1"])
    port = free_port()
    proc = ManagedProcess(
        "influx-tls",
        influxd_command(tmp_path / "influx", port, free_port(), tls=(cert.cert, cert.key)),
        tmp_path / "influx.log",
    )
    proc.start()
    proc.wait_port("127.0.0.1", port, 30)
    yield f"https://127.0.0.1:{port}", cert.ca
    proc.stop()


def test_storage_client_verifies_an_https_server(https_influx):
    url, ca = https_influx
    admin, service = Credential("vigil-admin", "a-secret"), Credential("vigil-service", "s")
    provision_server(url, name="tls-1", admin=admin, database="vigil", service=service, ca_file=ca)
    node = InfluxNode("tls-1", url, username="vigil-service", password="s", ca_file=ca)
    reading = Reading(
        id=1, device="dev-1", ts=1_700_000_000_000, kind="sensor", metric="temperature", value=21.5
    )
    node.write("vigil", [reading_to_line(reading)])
    rows = node.query('SELECT value FROM "temperature"', "vigil")
    assert rows[0]["values"] == [[1_700_000_000_000, 21.5]]
    node.close()
    # The system's CAs do not know the local CA: refused, with the reason.
    stranger = InfluxNode("tls-1", url, username="vigil-service", password="s")
    with pytest.raises(RetriableStorageError, match="CERTIFICATE_VERIFY_FAILED"):
        stranger.query("SHOW DATABASES", None)
    stranger.close()
    # Plain HTTP to the HTTPS port gets no answer it could use.
    plain = InfluxNode("tls-1", url.replace("https:", "http:"), username="vigil-service")
    with pytest.raises(StorageError):
        plain.query("SHOW DATABASES", None)
    plain.close()
    # Authentication still holds over TLS.
    anonymous = requests.get(f"{url}/query", params={"q": "SHOW DATABASES"}, verify=ca, timeout=5)
    assert anonymous.status_code == 401


def test_api_console_and_influx_endpoint_over_https_only(tmp_path, cloud_config, run_service):
    StorageCluster(cloud_config.config.storage).ensure_database()
    api = cloud_config.config.api
    cert = localca.ensure_server_cert(tmp_path / "ca", tmp_path / "api-tls", "api", ["127.0.0.1"])
    env = {
        "VIGIL__API__TLS_CERT_FILE": str(cert.cert),
        "VIGIL__API__TLS_KEY_FILE": str(cert.key),
    }
    proc = run_service("api", "--config", str(cloud_config.path), env=env)
    proc.wait_port(api.host, api.port, 20)
    proc.wait_port(api.host, api.influx_port, 20)
    base = f"https://{api.host}:{api.port}"
    auth = {"Authorization": f"Bearer {cloud_config.admin_token}"}

    health = requests.get(f"{base}/health", verify=cert.ca, timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert requests.get(f"{base}/rules", verify=cert.ca, timeout=10).status_code == 401
    console = requests.get(f"{base}/console/", verify=cert.ca, timeout=10)
    assert console.status_code == 200 and "text/html" in console.headers["Content-Type"]
    # the OpenAPI document comes through the front too
    spec = requests.get(f"{base}/openapi.json", verify=cert.ca, timeout=10)
    assert spec.status_code == 200

    # A server-sent event stream passes through the TLS front as it is written.
    with requests.get(
        f"{base}/devices/dev-1/metrics/temperature/stream",
        headers=auth,
        verify=cert.ca,
        stream=True,
        timeout=10,
    ) as stream:
        assert stream.status_code == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        first = next(stream.iter_lines())
        assert first.startswith((b"event:", b":", b"retry:"))

    influx = f"https://{api.host}:{api.influx_port}"
    assert requests.get(f"{influx}/ping", verify=cert.ca, timeout=10).status_code == 204
    shown = requests.get(
        f"{influx}/query",
        params={"q": "SHOW MEASUREMENTS", "db": "vigil", "u": "admin"}
        | {"p": cloud_config.admin_token},
        verify=cert.ca,
        timeout=10,
    )
    assert shown.status_code == 200 and "results" in shown.json()

    # Nothing in the clear: plain HTTP to either port gets no answer, an unknown CA fails.
    for port in (api.port, api.influx_port):
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://{api.host}:{port}/health", timeout=5)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{base}/health", timeout=5)  # the system's CAs
    assert f"api listening on https://{api.host}:{api.port}" in proc.log_tail()

    proc.stop()
    assert proc.returncode() == 0


def test_a_bad_api_certificate_is_a_config_error(tmp_path, cloud_config, run_service):
    bogus = tmp_path / "api.crt"
    bogus.write_text("not a certificate")
    env = {"VIGIL__API__TLS_CERT_FILE": str(bogus), "VIGIL__API__TLS_KEY_FILE": str(bogus)}
    proc = run_service("api", "--config", str(cloud_config.path), env=env)
    wait_until(lambda: proc.returncode() is not None, 20, what="the API to exit")
    assert proc.returncode() == 2
    tail = proc.log_tail()
    assert str(cloud_config.path) in tail and "api.tls_cert_file" in tail
    assert "not a certificate and its key" in tail


def test_tls_front_frees_a_reset_connection_and_stops_twice(tmp_path):
    import socket
    import struct
    import threading

    from waitress import create_server

    from vigil.tls import client_context, server_context
    from vigil.tlsfront import TlsFront

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["wsgi.url_scheme"].encode()]

    cert = localca.ensure_server_cert(tmp_path / "ca", tmp_path / "t", "front", ["127.0.0.1"])
    sock = tmp_path / "app.sock"
    server = create_server(app, unix_socket=str(sock), url_scheme="https")
    threading.Thread(target=server.run, daemon=True).start()
    front = TlsFront("127.0.0.1", 0, server_context(cert.cert, cert.key), sock)
    front.start()
    try:
        url = f"https://127.0.0.1:{front.port}/"
        got = requests.get(url, verify=cert.ca, timeout=10, headers={"Connection": "close"})
        assert got.status_code == 200 and got.text == "https"
        # waitress closed it after the answer: both sides let go
        wait_until(lambda: not front._open, 10, what="the finished connection let go")
        raw = socket.create_connection(("127.0.0.1", front.port), timeout=5)
        tls = client_context(cert.ca).wrap_socket(raw, server_hostname="127.0.0.1")
        tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # half a request, then a reset
        wait_until(lambda: len(front._open) == 2, 10, what="the connection piped through")
        tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        tls.close()
        wait_until(lambda: not front._open, 10, what="both sides of the reset one closed")
    finally:
        front.stop()
        front.stop()  # again: nothing to do, at once
        server.close()
