"""TLS: the local CA (vigil/localca.py), the broker's TLS listener and clients that verify it.

The broker fixture always provisions a TLS listener beside the plain loopback one, with a
certificate from a CA generated for the test. Devices connect to it with Vigil's real
clients (paho via vigil.mqtt, and the edge agent as a process); a client that trusts another
CA, or reaches the broker by a name its certificate does not carry, is refused before it
sends its password. A plain listener on a non-loopback address is refused by the
provisioning and by the configuration.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509
from support import agent_broker, connected, unique, wait_until, write_agent_config

from broker.provision import TlsListener, provision, render_tls_listener
from stack.process import ManagedProcess
from vigil import localca
from vigil.config_core import ConfigError, is_loopback_host
from vigil.messages import parse_readings
from vigil.mqtt import MqttClient
from vigil.settings import BrokerSettings, BrokerTlsSettings, load_config
from vigil.tls import TlsConfigError, client_context, server_context
from vigil.topics import Topics

ROOT = Path(__file__).resolve().parent.parent


# -- the local CA (pure enough: files in tmp_path) ---------------------------------------
def _sans(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n.value) for n in ext}


def test_ca_is_created_once_and_its_key_kept_private(tmp_path):
    ca = localca.ensure_ca(tmp_path / "tls")
    key = tmp_path / "tls" / "ca.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    first = ca.read_bytes()
    assert localca.ensure_ca(tmp_path / "tls").read_bytes() == first
    cert = x509.load_pem_x509_certificate(first)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_server_cert_is_reissued_only_when_its_names_change(tmp_path):
    ca_dir, out = tmp_path / "ca", tmp_path / "out"
    one = localca.ensure_server_cert(ca_dir, out, "broker", ["localhost", "127.0.0.1"])
    assert _sans(one.cert) == {"localhost", "127.0.0.1"}
    assert oct(one.key.stat().st_mode & 0o777) == "0o600"
    pem = one.cert.read_bytes()
    again = localca.ensure_server_cert(ca_dir, out, "broker", ["127.0.0.1", "localhost"])
    assert again.cert.read_bytes() == pem  # same names in another order: kept
    more = localca.ensure_server_cert(ca_dir, out, "broker", ["localhost", "broker.lan"])
    assert more.cert.read_bytes() != pem and _sans(more.cert) == {"localhost", "broker.lan"}
    # the pair loads as a server and verifies against the CA as a client would
    server_context(more.cert, more.key)
    client_context(more.ca)


def test_a_cert_from_another_ca_is_replaced(tmp_path):
    out = tmp_path / "out"
    old = localca.ensure_server_cert(tmp_path / "ca-1", out, "broker", ["localhost"])
    pem = old.cert.read_bytes()
    new = localca.ensure_server_cert(tmp_path / "ca-2", out, "broker", ["localhost"])
    assert new.cert.read_bytes() != pem
    issuer = x509.load_pem_x509_certificate(new.cert.read_bytes()).issuer
    assert issuer == x509.load_pem_x509_certificate(new.ca.read_bytes()).subject


def test_unusable_files_are_named(tmp_path):
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca" / "ca.crt").write_text("not a certificate")
    (tmp_path / "ca" / "ca.key").write_text("nor a key")
    with pytest.raises(localca.CertificateError, match=r"ca\.crt: not a PEM certificate"):
        localca.ensure_ca(tmp_path / "ca")
    with pytest.raises(TlsConfigError, match=r"ca\.crt: cannot be read as CA certificates"):
        client_context(tmp_path / "ca" / "ca.crt")
    with pytest.raises(TlsConfigError, match="not a certificate and its key"):
        server_context(tmp_path / "ca" / "ca.crt", tmp_path / "ca" / "ca.key")


# -- configuration -----------------------------------------------------------------------
def test_plain_listener_must_stay_on_loopback():
    with pytest.raises(ValueError, match="not a loopback address"):
        BrokerSettings(host="10.1.2.3")
    assert BrokerSettings(host="10.1.2.3", allow_plain_remote=True).host == "10.1.2.3"
    # a broker reached over TLS may be anywhere
    assert BrokerSettings(host="broker.example", port=8883, ca_file=Path("ca.crt")).port == 8883
    assert is_loopback_host("127.0.0.1") and is_loopback_host("::1")
    assert is_loopback_host("localhost") and is_loopback_host("[::1]")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("mosquitto")


def test_tls_pair_goes_together():
    with pytest.raises(ValueError, match="key_file: cert_file and key_file go together"):
        BrokerTlsSettings(cert_file=Path("broker.crt"))
    assert not BrokerTlsSettings(port=0).enabled


def test_config_names_file_and_key_of_a_remote_plain_listener(tmp_path):
    text = (ROOT / "config" / "vigil.yaml").read_text()
    bad = tmp_path / "vigil.yaml"
    bad.write_text(text.replace("  host: 127.0.0.1\n  port: 1883", "  host: 0.0.0.0\n  port: 1883"))
    with pytest.raises(ConfigError) as err:
        load_config(bad, environ={})
    assert str(bad) in str(err.value) and "broker.host" in str(err.value)
    assert "passwords in the clear" in str(err.value)


def test_fast_transport_refuses_a_tls_broker(tmp_path):
    text = (ROOT / "config" / "vigil.yaml").read_text()
    path = tmp_path / "vigil.yaml"
    path.write_text(text)
    (tmp_path / "ca.crt").write_text("x")
    with pytest.raises(ConfigError, match=r"ingest\.mqtt\.transport"):
        load_config(path, environ={"VIGIL__BROKER__CA_FILE": str(tmp_path / "ca.crt")})


def test_provision_refuses_a_remote_plain_listener(tmp_path):
    with pytest.raises(ValueError, match="in the clear"):
        provision(
            broker_dir=tmp_path / "b",
            secrets_dir=tmp_path / "s",
            host="0.0.0.0",
            port=1883,
            devices=[],
            topics=Topics(),
        )


def test_broker_cli_writes_the_tls_listener(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "broker",
            "provision",
            "--dir",
            str(tmp_path / "broker"),
            "--secrets",
            str(tmp_path / "secrets"),
            "--tls-port",
            "8883",
            "--tls-name",
            "mosquitto",
            "--tls-ca-copy",
            str(tmp_path / "public" / "ca.crt"),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    conf = (tmp_path / "broker" / "mosquitto.conf").read_text()
    assert "listener 8883 0.0.0.0" in conf and "tls_version tlsv1.2" in conf
    assert "mosquitto" in _sans(tmp_path / "broker" / "tls" / "broker.crt")
    ca = tmp_path / "secrets" / "tls" / "ca.crt"
    assert (tmp_path / "public" / "ca.crt").read_bytes() == ca.read_bytes()
    assert sorted(p.name for p in (tmp_path / "public").iterdir()) == ["ca.crt"]  # no key
    assert "tls listener    0.0.0.0:8883" in out.stdout
    plain = ["--dir", str(tmp_path / "b2"), "--secrets", str(tmp_path / "s2"), "--host", "::"]
    refused = subprocess.run(
        [sys.executable, "-m", "broker", "provision", *plain],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert refused.returncode == 1 and "in the clear" in refused.stderr


def test_rendered_listener():
    text = render_tls_listener(
        host="0.0.0.0", port=8883, cert=Path("/b/broker.crt"), key=Path("/b/broker.key")
    )
    assert "listener 8883 0.0.0.0\ncertfile /b/broker.crt\nkeyfile /b/broker.key\n" in text


def test_listener_from_settings():
    assert TlsListener.from_settings(BrokerTlsSettings(port=0)) is None
    tls = TlsListener.from_settings(BrokerTlsSettings(port=18883, names=["broker.lan"]))
    assert tls is not None and tls.port == 18883 and tls.names == ("broker.lan",)


# -- the real broker ---------------------------------------------------------------------
def _handshake(port: int, ctx: ssl.SSLContext, name: str) -> str:
    """ "" when a TLS handshake with the broker as ``name`` succeeds, else why not."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=name) as tls:
                return "" if tls.version() else "no version"
        except ssl.SSLError as exc:
            return exc.reason or str(exc)


@pytest.mark.integration
def test_device_publishes_over_tls_and_the_broker_is_verified(broker, tmp_path):
    tls = broker.tls_settings()
    topic = f"{broker.topics.data('dev-3')}/temperature"
    got: list[bytes] = []
    watcher = connected(broker.settings, broker.ident("vigil-viewer", unique("v")))
    watcher.subscribe(topic, lambda m: got.append(m.payload))
    assert watcher.subscribed.wait(10)
    device = connected(tls, broker.ident("dev-3"))
    try:
        device.publish_wait(topic, b"over tls", timeout=10)
        wait_until(lambda: got == [b"over tls"], timeout=10, what="the TLS publish to arrive")
    finally:
        device.stop()
        watcher.stop()
    # The handshake itself, as any client sees it: TLS 1.2+, chain and name checked.
    assert _handshake(tls.port, client_context(tls.ca_file), "127.0.0.1") == ""
    assert _handshake(tls.port, client_context(tls.ca_file), "localhost") == ""


@pytest.mark.integration
def test_untrusted_or_misnamed_broker_is_refused_before_the_password(broker, tmp_path):
    tls = broker.tls_settings()
    other = localca.ensure_ca(tmp_path / "other-ca")
    assert "CERTIFICATE_VERIFY_FAILED" in _handshake(tls.port, client_context(other), "localhost")
    # the right CA, but asked for a name the certificate does not carry
    assert "CERTIFICATE_VERIFY_FAILED" in _handshake(
        tls.port, client_context(tls.ca_file), "broker.elsewhere"
    )
    client = MqttClient(tls.model_copy(update={"ca_file": other}), broker.ident("dev-4"))
    client.start()
    try:
        assert not client.wait_connected(3)
    finally:
        client.stop()
    # neither attempt reached the broker's authentication
    assert "dev-4" not in broker.files.log.read_text(errors="replace")


@pytest.mark.integration
def test_tls_listener_authenticates_like_the_plain_one(broker):
    tls = broker.tls_settings()
    ident = broker.ident("dev-5").model_copy(update={"password_file": None})
    client = MqttClient(tls, ident)
    client.start()
    try:
        assert not client.wait_connected(3)  # no password: refused
    finally:
        client.stop()
    # and the ACL holds: a device cannot write another's topics over TLS either
    device = connected(tls, broker.ident("dev-5"))
    try:
        with pytest.raises(Exception, match="authori"):
            device.publish_wait(f"{broker.topics.data('dev-6')}/temperature", b"x", timeout=10)
    finally:
        device.stop()


@pytest.mark.integration
def test_edge_agent_process_sends_readings_over_tls(broker, tmp_path):
    config = write_agent_config(tmp_path, broker, "dev-7", tls=True, quotes={"symbols": []})
    assert agent_broker(broker.tls_settings())["ca_file"].endswith("ca.crt")
    got: list[bytes] = []
    lock = threading.Lock()

    def on(m) -> None:
        with lock:
            got.append(m.payload)

    watcher = connected(broker.settings, broker.ident("vigil-ingest", unique("ingest")))
    watcher.subscribe(f"{broker.topics.data('dev-7')}/#", on)
    assert watcher.subscribed.wait(10)
    agent = ManagedProcess(
        "agent", [sys.executable, "-m", "edge_agent", "--config", str(config)], tmp_path / "a.log"
    )
    agent.start()
    try:
        wait_until(lambda: len(got) >= 3, timeout=30, what="the agent's readings over TLS")
    finally:
        agent.stop()
        watcher.stop()
    with lock:
        readings = [r for p in got for r in parse_readings(p, "dev-7")]
    assert {r.device for r in readings} == {"dev-7"}
    assert "dev-7" in broker.files.log.read_text(errors="replace")  # it connected, on TLS


def test_a_key_without_its_certificate_is_reissued_and_a_lone_ca_half_refused(tmp_path):
    ca_dir, out = tmp_path / "ca", tmp_path / "out"
    first = localca.ensure_server_cert(ca_dir, out, "broker", ["localhost"])
    pem = first.cert.read_bytes()
    # a crash between the two renames: a new key beside the old certificate
    other = localca.ensure_server_cert(ca_dir, tmp_path / "other", "broker", ["localhost"])
    first.key.write_bytes(other.key.read_bytes())
    again = localca.ensure_server_cert(ca_dir, out, "broker", ["localhost"])
    assert again.cert.read_bytes() != pem
    server_context(again.cert, again.key)  # the pair matches again
    assert localca.issued_by(again.cert, ca_dir)
    assert not localca.issued_by(again.cert, localca.ensure_ca(tmp_path / "ca-2").parent)
    (ca_dir / "ca.key").unlink()
    with pytest.raises(localca.CertificateError, match=r"ca\.key is missing beside its pair"):
        localca.ensure_ca(ca_dir)
