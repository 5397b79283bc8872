"""A local certificate authority for Vigil's TLS listeners (cloud side; needs ``cryptography``).

``ensure_ca(dir)`` creates, once, ``dir/ca.key`` (mode 0600) and ``dir/ca.crt`` (the file
devices and clients verify against) and reuses them afterwards. ``ensure_server_cert`` issues
a server certificate for a set of names (DNS names and IP addresses) from that CA, and issues
it again only when it is missing, for other names, from another CA, or near its end. Every
file is written atomically: a broker or a device never reads half a certificate.

Keys are ECDSA P-256, certificates SHA-256; the CA lives ten years, server certificates one
year (renewed in their last 30 days by the next provisioning).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vigil.atomic import write_atomic

CA_DAYS = 3650
SERVER_DAYS = 365
RENEW_BEFORE = dt.timedelta(days=30)
CA_CERT = "ca.crt"
CA_KEY = "ca.key"


class CertificateError(ValueError):
    """A file that should be a certificate or key is not one (names the file)."""


@dataclass(frozen=True)
class ServerCert:
    cert: Path
    key: Path
    ca: Path


def default_names() -> list[str]:
    """What a local listener is reached by: loopback and this machine's host names."""
    names = ["localhost", "127.0.0.1", "::1"]
    for name in (socket.gethostname(), socket.getfqdn()):
        if name and name not in names:
            names.append(name)
    return names


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _load(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as exc:
        raise CertificateError(f"{cert_path}: not a PEM certificate: {exc}") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"{key_path}: not an unencrypted PEM key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{key_path}: not an ECDSA key")
    if cert.public_key() != key.public_key():
        raise CertificateError(f"{cert_path} is not the certificate of the key {key_path}")
    return cert, key


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ensure_ca(directory: Path, name: str = "Vigil local CA") -> Path:
    """The CA certificate in ``directory``, created on first use; returns its path."""
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if cert_path.exists() and key_path.exists():
        _load(cert_path, key_path)  # a clear error now rather than a TLS failure later
        return cert_path
    if cert_path.exists() or key_path.exists():
        # A new CA would silently break every device's trust: say so instead.
        missing = key_path if cert_path.exists() else cert_path
        raise CertificateError(
            f"{missing} is missing beside its pair: restore it, or remove both to make a new "
            "CA (every device must then trust the new ca.crt)"
        )
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    # Each CA its own name: two local CAs are told apart by name as well as by key.
    unique = f"{name} {secrets.token_hex(4)}"
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, unique)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    write_atomic(key_path, _key_pem(key), mode=0o600)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert_path


def _general_names(names: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _still_good(
    cert_path: Path, key_path: Path, ca: x509.Certificate, sans: list[x509.GeneralName]
) -> bool:
    if not (cert_path.exists() and key_path.exists()):
        return False
    try:
        cert, _key = _load(cert_path, key_path)
        have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (CertificateError, x509.ExtensionNotFound):
        return False
    try:
        cert.verify_directly_issued_by(ca)  # signed by this CA, not one of the same name
    except (ValueError, TypeError, InvalidSignature):
        return False
    return set(have) == set(sans) and cert.not_valid_after_utc - _now() > RENEW_BEFORE


def issued_by(cert_path: Path, ca_dir: Path) -> bool:
    """Whether ``cert_path`` is a certificate signed by the local CA in ``ca_dir``."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        ca = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
        cert.verify_directly_issued_by(ca)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return False
    return True


def ensure_server_cert(ca_dir: Path, out_dir: Path, stem: str, names: Iterable[str]) -> ServerCert:
    """``out_dir/<stem>.crt`` and ``.key`` for ``names`` (DNS names or IP addresses), signed
    by the CA in ``ca_dir`` (created if missing); kept while still right, else issued anew."""
    names = list(names)
    if not names:
        raise ValueError("a server certificate needs at least one name")
    ca_path = ensure_ca(ca_dir)
    ca_cert, ca_key = _load(ca_path, ca_dir / CA_KEY)
    cert_path, key_path = out_dir / f"{stem}.crt", out_dir / f"{stem}.key"
    sans = _general_names(names)
    if _still_good(cert_path, key_path, ca_cert, sans):  # incl. the pair matching
        return ServerCert(cert_path, key_path, ca_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    # Provisioning runs before the server starts: it reads the pair afterwards.
    write_atomic(key_path, _key_pem(key), mode=0o600)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return ServerCert(cert_path, key_path, ca_path)
