"""``python -m api``: serve Vigil's REST API with waitress.

    python -m api [--config config/vigil.yaml] [--validate-config]
                  [--create-token NAME [--role admin|user]]

Listens on ``api.host:api.port``, exposes Prometheus metrics on ``api.metrics_port`` and
stops cleanly on SIGTERM or SIGINT. ``--create-token NAME`` creates the user NAME (role
``user`` unless ``--role admin``), stores a new token's digest and prints the token once (it
cannot be shown again).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sqlite3
import ssl
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from flask import Flask
from waitress import create_server
from waitress.server import BaseWSGIServer, MultiSocketServer

from api import INFLUX_EXTENSION, close_app, create_app
from api.auth import hash_token, new_token
from api.db import ROLES, DuplicateUser, Store, TooMany
from api.resources import EXTENSION, ApiResources
from api.storage import storage_ops
from storage_nodes.downsample import Downsampler
from storage_nodes.metrics import RepairCollector
from storage_nodes.ops import AutoRepair
from vigil.cli import load_or_exit, load_service_config, service_parser
from vigil.config_core import ConfigError
from vigil.logs import setup_logging
from vigil.names import NAME_RULE, is_name
from vigil.settings import ApiSettings, VigilConfig
from vigil.tls import TlsConfigError, server_context
from vigil.tlsfront import TlsFront

log = logging.getLogger("api")

#: Request threads of the API and of the cluster InfluxDB endpoint.
THREADS = {"api": 8, "influx": 4}


def _parser() -> argparse.ArgumentParser:
    p = service_parser("vigil-api", "Vigil's REST API")
    p.add_argument(
        "--create-token",
        metavar="NAME",
        help="create the user NAME with a token, print the token once, and exit",
    )
    p.add_argument(
        "--role",
        choices=ROLES,
        default="user",
        help="the role of the user --create-token creates (default user)",
    )
    return p


def load(path: str) -> VigilConfig:
    """The configuration, with the secret files the API reads checked too: its MQTT and
    InfluxDB passwords and the admin token digest (64 hex characters)."""
    return load_service_config(path, "api")


def create_token(config: VigilConfig, config_path: str, name: str, role: str = "user") -> int:
    if not is_name(name):
        print(f"invalid user name {name!r}: {NAME_RULE}", file=sys.stderr)
        return 2
    token = new_token()
    try:
        store = Store.open(config.api.database)
    except (OSError, sqlite3.Error) as exc:
        print(ConfigError(config_path, "api.database", f"cannot open: {exc}"), file=sys.stderr)
        return 2
    try:
        store.init_schema()
        store.add_user(name, role)
        store.add_token(name, hash_token(token), "create-token")
    except (DuplicateUser, TooMany) as exc:
        print(f"{config.api.database}: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(token)
    return 0


@dataclass
class _Listener:
    """A waitress server of one app, on ``host:port`` or, with TLS, on a private Unix
    socket behind a :class:`TlsFront` on ``host:port``."""

    server: BaseWSGIServer | MultiSocketServer
    front: TlsFront | None
    url: str

    def close(self) -> None:
        if self.front is not None:
            self.front.stop()
        self.server.close()


def _listen(
    app: Flask, host: str, port: int, what: str, tls: tuple[ssl.SSLContext, Path] | None
) -> _Listener | None:
    """Serve ``app`` on ``host:port``, over HTTPS when ``tls`` (a context and a private
    folder for the plain socket) is given; None, logged, if it cannot listen."""
    common: dict[str, Any] = {"threads": THREADS[what], "ident": f"vigil-{what}"}
    try:
        if tls is None:
            server = create_server(app, host=host, port=port, **common)
            bound = getattr(server, "effective_port", port)
            return _Listener(server, None, f"http://{host}:{bound}")
        context, folder = tls
        sock = folder / f"{what}.sock"
        server = create_server(
            app, unix_socket=str(sock), unix_socket_perms="600", url_scheme="https", **common
        )
        front = TlsFront(host, port, context, sock)
        try:
            front.start()
        except OSError:
            server.close()
            raise
        return _Listener(server, front, f"https://{host}:{front.port}")
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", host, port, exc)
        return None


def _tls(settings: ApiSettings, config_path: str) -> ssl.SSLContext | None:
    """The API's TLS context (None: no TLS)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    try:
        return server_context(settings.tls_cert_file, settings.tls_key_file)
    except TlsConfigError as exc:
        raise ConfigError(config_path, "api.tls_cert_file", str(exc)) from None


def serve(config: VigilConfig, config_path: str) -> int:
    settings = config.api
    try:
        context = _tls(settings, config_path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        app = create_app(config)
    except (OSError, sqlite3.Error) as exc:
        print(ConfigError(config_path, "api.database", f"cannot open: {exc}"), file=sys.stderr)
        return 2
    res: ApiResources = app.extensions[EXTENSION]
    # With TLS, the plain servers listen on Unix sockets in a private folder (mode 0700).
    tls = None if context is None else (context, Path(tempfile.mkdtemp(prefix="vigil-api-")))
    try:
        try:
            res.metrics.serve(settings.metrics_port, settings.metrics_host)
        except OSError as exc:
            log.error("cannot serve metrics on port %d: %s", settings.metrics_port, exc)
            return 1
        res.storage.log_server_check("api")
        repair = AutoRepair(storage_ops(res))
        repair.start()
        res.auto_repair = repair
        res.downsampler = Downsampler(res.storage, config.storage.downsample)
        res.downsampler.start()
        res.metrics.registry.register(RepairCollector(repair, "api"))
        influx_server = None
        if settings.influx_port:
            influx_server = _listen(
                app.extensions[INFLUX_EXTENSION],
                settings.host,
                settings.influx_port,
                "influx",
                tls,
            )
            if influx_server is None:
                return 1
            threading.Thread(
                target=influx_server.server.run, name="influx-endpoint", daemon=True
            ).start()
            log.info("the cluster as one InfluxDB on %s", influx_server.url)
        server = _listen(app, settings.host, settings.port, "api", tls)
        if server is None:
            if influx_server is not None:
                influx_server.close()
            return 1

        def stop(signum: int, _frame: FrameType | None) -> None:
            log.info("%s received: stopping", signal.Signals(signum).name)
            raise SystemExit(0)  # waitress's run() returns on SystemExit

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log.info(
            "api listening on %s (rules in %s)", server.url, Path(app.config["DATABASE"]).resolve()
        )
        server.server.run()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        server.close()
        if influx_server is not None:
            influx_server.close()
    finally:
        if tls is not None:
            shutil.rmtree(tls[1], ignore_errors=True)
        if res.auto_repair is not None:
            res.auto_repair.stop()
        if res.downsampler is not None:
            res.downsampler.stop()
        close_app(app)
    log.info("api stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = load_or_exit(args, load)
    if isinstance(config, int):
        return config
    if args.create_token:
        return create_token(config, args.config, args.create_token, args.role)
    setup_logging("api")
    return serve(config, args.config)


if __name__ == "__main__":
    raise SystemExit(main())
