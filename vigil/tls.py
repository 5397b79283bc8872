"""TLS for Vigil's clients, standard library only (the edge agent uses it too).

A client given a CA file verifies the server's certificate chain against it and the server's
name against the host it connects to; there is no switch to skip either.
"""

from __future__ import annotations

import ssl
from pathlib import Path


class TlsConfigError(ValueError):
    """A CA file that cannot be used (names the file and why)."""


def client_context(ca_file: Path) -> ssl.SSLContext:
    """A context that trusts exactly ``ca_file`` and checks host names (TLS 1.2 or later)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"{ca_file}: cannot be read as CA certificates: {exc}") from None
    return ctx


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server context for a certificate and its key (TLS 1.2 or later)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(
            f"{cert_file} / {key_file}: not a certificate and its key: {exc}"
        ) from None
    return ctx
